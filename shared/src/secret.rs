//! Secret values: the redacting [`SecretString`] and the parsed database
//! secret [`DbSecret`] in AWS's JSON format.
//!
//! A secret value becomes a [`SecretString`] the moment it leaves the store and
//! stays one until it is written back; its `Debug` and `Display` print
//! `<redacted>` and its memory is zeroed on drop. [`DbSecret`] parses the JSON
//! that AWS's rotation functions use and keeps every key it does not know,
//! unchanged, so a new version differs from the old one only in `password`
//! (and, for alternating users, `username`).

use std::fmt;

use serde_json::{Map, Value};
use zeroize::Zeroize;

use crate::error::{Error, Result};

/// A string that must never be printed: passwords, whole secret documents.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        SecretString(value.into())
    }

    /// The plaintext. Call sites are few and deliberate: a database driver's
    /// password field, a store write, a SCRAM computation.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Drop for SecretString {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        SecretString(value)
    }
}

/// What the `ssl` key of a secret asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// `"ssl": true`: verified TLS or failure.
    Required,
    /// `ssl` absent: verified TLS when the server offers TLS; plaintext (with a
    /// warning) only when it offers none; a failed verification is an error.
    Preferred,
    /// `"ssl": false`: plaintext.
    Disabled,
}

impl TlsMode {
    /// The stricter of two settings: Required, then Preferred, then Disabled.
    pub fn stronger(self, other: TlsMode) -> TlsMode {
        let rank = |m: TlsMode| match m {
            TlsMode::Required => 2,
            TlsMode::Preferred => 1,
            TlsMode::Disabled => 0,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

/// A database secret in AWS's format. Unknown keys survive every rotation.
#[derive(Clone)]
pub struct DbSecret {
    /// `engine` as written (e.g. `postgres`, `aurora-postgresql`); may be
    /// empty for an RDS-managed master secret until resolved.
    pub engine: String,
    pub host: String,
    /// `port` as a number, whether it was written as a number or a string.
    pub port: Option<u16>,
    pub username: String,
    pub password: SecretString,
    pub dbname: Option<String>,
    pub tls: TlsMode,
    pub masterarn: Option<String>,
    /// Every key except `password`, exactly as stored.
    fields: Map<String, Value>,
}

impl fmt::Debug for DbSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbSecret")
            .field("engine", &self.engine)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("dbname", &self.dbname)
            .field("tls", &self.tls)
            .field("masterarn", &self.masterarn)
            .finish_non_exhaustive()
    }
}

/// What a parse requires beyond `username` and `password`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Require {
    /// A full connection secret: `engine` and `host` too.
    Connection,
    /// Just a login (an RDS-managed master secret holds only these two).
    Login,
}

impl DbSecret {
    /// Parses a secret value. `secret` and `version` name it in errors; the
    /// error never quotes the value itself (it may be a password).
    pub fn parse(
        value: &SecretString,
        secret: &str,
        version: &str,
        require: Require,
    ) -> Result<DbSecret> {
        let bad = |reason: String| Error::bad_secret(secret, version, reason);
        let parsed: Value = serde_json::from_str(value.expose()).map_err(|e| {
            // serde_json's message cites line/column only, never the input.
            bad(format!("the value is not valid JSON ({e}); store a JSON object like {{\"engine\":\"postgres\",\"host\":…,\"username\":…,\"password\":…}}"))
        })?;
        let Value::Object(mut fields) = parsed else {
            return Err(bad("the value is JSON but not an object; store a JSON object with engine, host, username and password".into()));
        };
        let password = match fields.remove("password") {
            Some(Value::String(p)) if !p.is_empty() => SecretString::new(p),
            Some(Value::String(_)) => return Err(bad("\"password\" is empty".into())),
            Some(_) => return Err(bad("\"password\" must be a string".into())),
            None => return Err(bad("the key \"password\" is missing".into())),
        };
        let text = |fields: &Map<String, Value>, key: &str| -> Result<Option<String>> {
            match fields.get(key) {
                None | Some(Value::Null) => Ok(None),
                // No database keeps a NUL in a name, and drivers disagree
                // about one: MySQL's protocol ends the user name there, so
                // `app\0x` would log in as `app` and rotate *its* password;
                // PostgreSQL's client fails as if the network were down.
                Some(Value::String(s)) if s.contains('\0') => Err(bad(format!(
                    "\"{key}\" contains a NUL character, which no database accepts in a name; remove it from the secret"
                ))),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(bad(format!("\"{key}\" must be a string"))),
            }
        };
        let username = text(&fields, "username")?
            .filter(|u| !u.is_empty())
            .ok_or_else(|| bad("the key \"username\" is missing or empty".into()))?;
        let host = text(&fields, "host")?.unwrap_or_default();
        let engine = text(&fields, "engine")?.unwrap_or_default();
        if require == Require::Connection {
            if host.is_empty() {
                return Err(bad("the key \"host\" is missing or empty".into()));
            }
            if engine.is_empty() {
                return Err(bad("the key \"engine\" is missing or empty".into()));
            }
        }
        let port = match fields.get("port") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => Some(
                n.as_u64()
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad(format!("\"port\" {n} is not a TCP port")))?,
            ),
            Some(Value::String(s)) => Some(
                s.trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad(format!("\"port\" {s:?} is not a TCP port")))?,
            ),
            Some(_) => return Err(bad("\"port\" must be a number or a string".into())),
        };
        let tls = match fields.get("ssl") {
            None | Some(Value::Null) => TlsMode::Preferred,
            Some(Value::Bool(true)) => TlsMode::Required,
            Some(Value::Bool(false)) => TlsMode::Disabled,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => TlsMode::Required,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => TlsMode::Disabled,
            // AWS's functions read any other string as false; Rotor refuses
            // rather than silently turning TLS off for "yes" or "required".
            Some(Value::String(s)) => {
                return Err(bad(format!(
                    "\"ssl\" is {s:?}; use true or false (or \"true\"/\"false\")"
                )));
            }
            Some(_) => {
                return Err(bad(
                    "\"ssl\" must be true, false, \"true\" or \"false\"".into()
                ));
            }
        };
        let dbname = text(&fields, "dbname")?.filter(|d| !d.is_empty());
        let masterarn = text(&fields, "masterarn")?.filter(|m| !m.is_empty());
        Ok(DbSecret {
            engine,
            host,
            port,
            username,
            password,
            dbname,
            tls,
            masterarn,
            fields,
        })
    }

    /// A copy with another password (and optionally another username); every
    /// other key is kept as it was.
    pub fn with_credentials(&self, username: Option<&str>, password: SecretString) -> DbSecret {
        let mut next = self.clone();
        if let Some(username) = username {
            next.username = username.to_string();
            next.fields
                .insert("username".into(), Value::String(username.to_string()));
        }
        next.password = password;
        next
    }

    /// Fills connection details that an RDS-managed master secret lacks.
    pub fn with_endpoint(&self, engine: &str, host: &str, port: Option<u16>) -> DbSecret {
        let mut next = self.clone();
        next.engine = engine.to_string();
        next.host = host.to_string();
        next.port = port;
        next
    }

    /// Sets the database name used to connect (not stored).
    pub fn with_dbname(&self, dbname: Option<String>) -> DbSecret {
        let mut next = self.clone();
        next.dbname = dbname;
        next
    }

    /// The JSON document to store, with the password put back in.
    pub fn to_json(&self) -> SecretString {
        let mut doc = self.fields.clone();
        doc.insert(
            "password".into(),
            Value::String(self.password.expose().to_string()),
        );
        let text = Value::Object(doc).to_string();
        // `doc` held a plaintext copy; the returned SecretString is zeroed on drop.
        SecretString::new(text)
    }

    /// The key set, for tests that check nothing else changed.
    pub fn other_fields(&self) -> &Map<String, Value> {
        &self.fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<DbSecret> {
        DbSecret::parse(&SecretString::new(json), "s", "v", Require::Connection)
    }

    #[test]
    fn parses_aws_format_and_keeps_unknown_keys() {
        let s = parse(r#"{"engine":"postgres","host":"h","port":"5433","username":"u","password":"p","dbname":"d","ssl":"TRUE","team":"x"}"#).unwrap();
        assert_eq!(s.port, Some(5433));
        assert_eq!(s.tls, TlsMode::Required);
        let next = s.with_credentials(Some("u_clone"), SecretString::new("q"));
        let json: Value = serde_json::from_str(next.to_json().expose()).unwrap();
        assert_eq!(json["team"], "x");
        assert_eq!(json["port"], "5433", "port keeps its original type");
        assert_eq!(json["username"], "u_clone");
        assert_eq!(json["password"], "q");
    }

    #[test]
    fn ssl_and_port_variants() {
        let base = r#""engine":"postgres","host":"h","username":"u","password":"p""#;
        assert_eq!(
            parse(&format!("{{{base}}}")).unwrap().tls,
            TlsMode::Preferred
        );
        assert_eq!(
            parse(&format!("{{{base},\"ssl\":false}}")).unwrap().tls,
            TlsMode::Disabled
        );
        assert_eq!(
            parse(&format!("{{{base},\"ssl\":\"false\"}}")).unwrap().tls,
            TlsMode::Disabled
        );
        assert_eq!(
            parse(&format!("{{{base},\"port\":5432}}")).unwrap().port,
            Some(5432)
        );
        assert!(parse(&format!("{{{base},\"port\":70000}}")).is_err());
        assert!(parse(&format!("{{{base},\"ssl\":3}}")).is_err());
        assert!(parse(&format!("{{{base},\"ssl\":\"yes\"}}")).is_err());
    }

    #[test]
    fn errors_name_the_problem_and_never_the_value() {
        for (json, needle) in [
            ("not json p4ssw0rd", "not valid JSON"),
            ("[1]", "not an object"),
            (
                r#"{"engine":"postgres","host":"h","username":"u"}"#,
                "\"password\" is missing",
            ),
            (
                r#"{"engine":"postgres","host":"h","password":"p4ssw0rd"}"#,
                "\"username\"",
            ),
            (
                r#"{"engine":"postgres","username":"u","password":"p4ssw0rd"}"#,
                "\"host\"",
            ),
        ] {
            let err = parse(json).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
            assert!(!err.contains("p4ssw0rd"), "{err}");
        }
    }

    #[test]
    fn nul_in_a_name_is_refused() {
        for key in ["username", "host", "dbname", "engine"] {
            let mut doc = serde_json::json!({"engine":"postgres","host":"h","username":"u","password":"p","dbname":"d"});
            doc[key] = serde_json::json!(format!("{}\0x", doc[key].as_str().unwrap_or("")));
            let err = parse(&doc.to_string()).unwrap_err().to_string();
            assert!(err.contains(&format!("\"{key}\" contains a NUL")), "{err}");
        }
    }

    #[test]
    fn debug_redacts() {
        let s = parse(r#"{"engine":"postgres","host":"h","username":"u","password":"hunter2"}"#)
            .unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{:?} {}", s.password, s.password).contains("hunter2"));
    }
}
