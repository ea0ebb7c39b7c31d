//! One conformance suite for every `SecretStore`: the local file store and
//! Secrets Manager (moto) must show the same versions and staging labels.

use std::sync::Arc;

use libtest_mimic::Trial;
use rotor::store::{
    AWSCURRENT, AWSPENDING, AWSPREVIOUS, LocalStore, SecretStore, SecretsManagerStore, VersionRef,
};
use rotor::{Error, SecretString};
use rotor_tests::{MotoService, TestEnv, unique};

use crate::trial;

pub fn trials(env: &TestEnv) -> Vec<Trial> {
    vec![
        trial("stores::conformance::local", env, |_env| async move {
            let dir = std::env::temp_dir().join(unique("rotor-store"));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let path = dir.join("store.json");
            let store = LocalStore::open(&path).expect("open");
            let arn = store
                .put_current("app/db", &SecretString::new(r#"{"v":1}"#))
                .expect("put");
            conformance(Arc::new(store), &arn, true).await;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "local store file mode");
            }
            // A torn or foreign file is refused with a clear error, not overwritten.
            std::fs::write(&path, b"{ not json").expect("write");
            let err = LocalStore::open(&path).expect_err("garbage must be refused");
            assert!(err.to_string().contains("not a Rotor local store"), "{err}");
            let _ = std::fs::remove_dir_all(&dir);
        }),
        trial(
            "stores::conformance::secretsmanager_moto",
            env,
            |env| async move {
                let moto = MotoService::new(&env);
                let arn = moto
                    .create_secret(&unique("rotor/store"), r#"{"v":1}"#)
                    .await;
                conformance(
                    Arc::new(SecretsManagerStore::new(env.sm_client())),
                    &arn,
                    false,
                )
                .await;
            },
        ),
    ]
}

/// `strict_put`: whether the store rejects a repeated token with another
/// value (the real service does; moto silently overwrites — testing notes).
async fn conformance(store: Arc<dyn SecretStore>, arn: &str, strict_put: bool) {
    let meta = store.describe(arn).await.expect("describe");
    assert_eq!(meta.arn, arn);
    let v1 = meta
        .version_with(AWSCURRENT)
        .expect("AWSCURRENT")
        .to_string();
    assert_eq!(meta.versions.len(), 1, "{:?}", meta.versions);
    let current = store
        .get(arn, VersionRef::Stage(AWSCURRENT))
        .await
        .expect("get");
    assert_eq!(
        current.as_ref().map(SecretString::expose),
        Some(r#"{"v":1}"#)
    );
    assert!(
        store
            .get(arn, VersionRef::Stage(AWSPENDING))
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        store
            .get(arn, VersionRef::Id("no-such-version-0000000000000000"))
            .await
            .expect("get")
            .is_none()
    );

    // Put a pending version; repeating it with the same value is a no-op.
    let token = uuid::Uuid::new_v4().to_string();
    let v2 = SecretString::new(r#"{"v":2}"#);
    store
        .put_pending(arn, &token, &v2, None)
        .await
        .expect("put pending");
    store
        .put_pending(arn, &token, &v2, None)
        .await
        .expect("repeat put pending");
    if strict_put {
        let err = store
            .put_pending(arn, &token, &SecretString::new(r#"{"v":3}"#), None)
            .await
            .expect_err("another value under the same token");
        assert!(err.to_string().contains("ResourceExistsException"), "{err}");
    }
    let meta = store.describe(arn).await.expect("describe");
    assert_eq!(meta.stages_of(&token), [AWSPENDING]);
    assert_eq!(meta.stages_of(&v1), [AWSCURRENT]);
    assert_eq!(
        store
            .get(arn, VersionRef::Id(&token))
            .await
            .expect("get")
            .as_ref()
            .map(SecretString::expose),
        Some(r#"{"v":2}"#)
    );

    // Moving AWSCURRENT without naming the version it leaves is refused.
    let err = store
        .update_stage(arn, AWSCURRENT, Some(&token), None)
        .await;
    assert!(
        err.is_err(),
        "moving AWSCURRENT without RemoveFromVersionId must fail"
    );
    // Moving it properly puts AWSPREVIOUS on the old version.
    store
        .update_stage(arn, AWSCURRENT, Some(&token), Some(&v1))
        .await
        .expect("move");
    store
        .update_stage(arn, AWSPENDING, None, Some(&token))
        .await
        .expect("remove pending");
    let meta = store.describe(arn).await.expect("describe");
    assert_eq!(meta.version_with(AWSCURRENT), Some(token.as_str()));
    assert_eq!(meta.version_with(AWSPREVIOUS), Some(v1.as_str()));
    assert!(meta.version_with(AWSPENDING).is_none());
    // Removing a stage from a version that does not carry it is refused.
    assert!(
        store
            .update_stage(arn, AWSPENDING, None, Some(&v1))
            .await
            .is_err()
    );

    // A third version: AWSPREVIOUS follows, the oldest loses every label.
    let token3 = uuid::Uuid::new_v4().to_string();
    store
        .put_pending(arn, &token3, &SecretString::new(r#"{"v":3}"#), None)
        .await
        .expect("put");
    store
        .update_stage(arn, AWSCURRENT, Some(&token3), Some(&token))
        .await
        .expect("move");
    let meta = store.describe(arn).await.expect("describe");
    assert_eq!(meta.version_with(AWSCURRENT), Some(token3.as_str()));
    assert_eq!(meta.version_with(AWSPREVIOUS), Some(token.as_str()));
    assert!(
        meta.stages_of(&v1).is_empty(),
        "v1 should be unlabelled: {:?}",
        meta.versions
    );
    let all = store.list_versions(arn).await.expect("list versions");
    assert!(
        all.contains(&v1) && all.contains(&token) && all.contains(&token3),
        "{all:?}"
    );

    // Unknown secrets are NotFound with the name in the message.
    match store.describe("rotor/does-not-exist").await {
        Err(Error::NotFound { what }) => assert!(what.contains("rotor/does-not-exist")),
        other => panic!("expected NotFound, got {other:?}"),
    }
}
