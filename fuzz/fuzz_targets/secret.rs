//! Secret parsing (AWS's secret JSON). Properties: a parsed secret survives
//! `to_json` → parse unchanged (every key kept), a new username and password
//! survive it too, and the password never shows in an error message or a
//! `Debug` print.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rotor::secret::{DbSecret, Require, SecretString};
use serde_json::Value;

fn same(a: &DbSecret, b: &DbSecret) -> bool {
    a.engine == b.engine
        && a.host == b.host
        && a.port == b.port
        && a.username == b.username
        && a.password.expose() == b.password.expose()
        && a.dbname == b.dbname
        && a.tls == b.tls
        && a.masterarn == b.masterarn
        && a.other_fields() == b.other_fields()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The same document with its password replaced by a canary that no
    // other key holds: no message and no Debug print may contain it.
    const CANARY: &str = "Zq9xW7kPcanary";
    if let Ok(Value::Object(mut doc)) = serde_json::from_str::<Value>(text)
        && doc.get("password").is_some_and(Value::is_string)
    {
        doc.insert("password".into(), Value::String(CANARY.into()));
        let doc = Value::Object(doc).to_string();
        if doc.matches(CANARY).count() == 1 {
            for require in [Require::Connection, Require::Login] {
                match DbSecret::parse(&SecretString::new(doc.clone()), "s", "v", require) {
                    Ok(secret) => assert!(!format!("{secret:?}").contains(CANARY), "Debug leaks"),
                    Err(e) => {
                        assert!(!e.to_string().contains(CANARY), "error leaks: {e}");
                        assert!(!format!("{e:?}").contains(CANARY), "error Debug leaks");
                    }
                }
            }
        }
    }
    let value = SecretString::new(text);
    for require in [Require::Connection, Require::Login] {
        match DbSecret::parse(&value, "s", "v", require) {
            Ok(secret) => {
                let again = DbSecret::parse(&secret.to_json(), "s", "v", require)
                    .expect("a parsed secret's JSON parses");
                assert!(
                    same(&secret, &again),
                    "to_json round trip changed the secret"
                );
                let next =
                    secret.with_credentials(Some("app_clone"), SecretString::new("n3w-p4ss"));
                let stored = DbSecret::parse(&next.to_json(), "s", "v", require)
                    .expect("a rotated secret's JSON parses");
                assert_eq!(stored.username, "app_clone");
                assert_eq!(stored.password.expose(), "n3w-p4ss");
                assert_eq!(stored.host, secret.host);
                assert_eq!(stored.port, secret.port);
                assert_eq!(stored.tls, secret.tls);
                for (k, v) in secret.other_fields() {
                    if k != "username" {
                        assert_eq!(stored.other_fields().get(k), Some(v), "key {k} lost");
                    }
                }
            }
            Err(_) => {}
        }
    }
});
