//! The S3 object store against moto: create-only puts, paginated listing, missing and invalid keys.

use aws_config::BehaviorVersion;
use aws_sdk_s3::config::Credentials;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use tests::moto::{MotoServer, unique_name};
use worker::s3::{S3Config, S3Store};
use worker::store::{ObjectStore, PutOutcome, StoreError};

async fn store(moto: &MotoServer, prefix: Option<&str>) -> S3Store {
    let config = S3Config {
        bucket: moto.bucket().to_string(),
        endpoint: Some(moto.endpoint().to_string()),
        // Explicit, so that the region chain does not ask the EC2 metadata service.
        region: Some("us-east-1".into()),
        prefix: prefix.map(str::to_string),
        force_path_style: true,
    };
    // Explicit credentials: the standard chain would look for real ones (and the metadata service).
    let loader = aws_config::defaults(BehaviorVersion::latest()).credentials_provider(
        Credentials::new("testing", "testing", None, None, "principia-tests"),
    );
    S3Store::with_loader(config, loader).await.unwrap()
}

fn start_moto() -> MotoServer {
    MotoServer::start(&unique_name("principia")).expect("moto starts")
}

#[tokio::test]
async fn create_only_put_keeps_the_first_write() {
    let moto = start_moto();
    let store = store(&moto, Some("run-1")).await;
    let key = "jobs/al-1/parts/sh-1.parquet";
    assert!(!store.exists(key).await.unwrap());
    assert_eq!(
        store
            .put_if_absent(key, Bytes::from("first"))
            .await
            .unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        store
            .put_if_absent(key, Bytes::from("second"))
            .await
            .unwrap(),
        PutOutcome::AlreadyExists
    );
    assert_eq!(store.get(key).await.unwrap(), Some(Bytes::from("first")));
    assert!(store.exists(key).await.unwrap());

    // The prefix is applied to every key and hidden from callers.
    let unprefixed = self::store(&moto, None).await;
    assert_eq!(
        unprefixed.get(&format!("run-1/{key}")).await.unwrap(),
        Some(Bytes::from("first"))
    );
    assert_eq!(unprefixed.get(key).await.unwrap(), None);

    store.put(key, Bytes::from("replaced")).await.unwrap();
    assert_eq!(store.get(key).await.unwrap(), Some(Bytes::from("replaced")));
    store.delete(key).await.unwrap();
    assert!(!store.exists(key).await.unwrap());
    store.delete(key).await.unwrap();
}

#[tokio::test]
async fn missing_keys_read_as_none() {
    let moto = start_moto();
    let store = store(&moto, None).await;
    assert_eq!(store.get("jobs/none/manifest.json").await.unwrap(), None);
    assert!(!store.exists("jobs/none/manifest.json").await.unwrap());
    assert!(store.list("jobs/none/").await.unwrap().is_empty());
}

#[tokio::test]
async fn invalid_keys_are_refused() {
    let moto = start_moto();
    let store = store(&moto, None).await;
    for key in ["../x", "/etc/passwd", "a//b", "a/./b", "a b", ""] {
        assert!(matches!(
            store.put(key, Bytes::from("x")).await,
            Err(StoreError::InvalidKey(_))
        ));
        assert!(matches!(
            store.get(key).await,
            Err(StoreError::InvalidKey(_))
        ));
        assert!(matches!(
            store.put_if_absent(key, Bytes::from("x")).await,
            Err(StoreError::InvalidKey(_))
        ));
    }
    let config = S3Config {
        bucket: moto.bucket().to_string(),
        prefix: Some("../escape".into()),
        ..S3Config::default()
    };
    assert!(matches!(
        S3Store::new(config).await,
        Err(StoreError::InvalidKey(_))
    ));
}

#[tokio::test]
async fn listing_follows_continuation_tokens_past_a_page() {
    let moto = start_moto();
    let store = store(&moto, Some("run-2")).await;
    // S3 pages hold at most 1000 keys.
    let count = 1100;
    let keys: Vec<String> = (0..count)
        .map(|i| format!("jobs/al-2/parts/sh-{i:04}.parquet"))
        .collect();
    futures_util::stream::iter(keys.iter())
        .map(|key| store.put_if_absent(key, Bytes::from_static(b"x")))
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    store
        .put("jobs/al-3/parts/sh-0.parquet", Bytes::from_static(b"y"))
        .await
        .unwrap();

    let listed = store.list("jobs/al-2/").await.unwrap();
    assert_eq!(listed.len(), count);
    assert_eq!(listed, keys);
    assert_eq!(store.list("jobs/").await.unwrap().len(), count + 1);
}
