//! API keys and tenants.
//!
//! A key is `pk-` followed by 64 hex digits from the operating system's CSPRNG. It is shown once,
//! when created; the object store keeps only its SHA-256 digest, as `keys/<sha256 hex>.json` with
//! the tenant, the creation time and the key's first characters (its prefix, for `keys list` and
//! `keys revoke`). The store is the source of truth: `principia keys` writes there directly and the
//! coordinator's [`KeyRing`] holds a snapshot that it reloads every refresh interval, and looks a
//! well-formed key it does not know up on the store at once, so a new key works immediately and a
//! revoked one stops working within the refresh interval.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use worker::store::{ObjectStore, StoreError};

use super::records::now_ms;

/// Prefix of every API key.
pub const KEY_PREFIX: &str = "pk-";
/// Random bytes in a key (256 bits).
const KEY_RANDOM_BYTES: usize = 32;
/// Characters of a key kept in its record to name it (`pk-` and 8 hex digits).
const SHOWN_PREFIX_LEN: usize = KEY_PREFIX.len() + 8;
/// Shortest prefix `keys revoke` accepts.
const MIN_REVOKE_PREFIX_LEN: usize = KEY_PREFIX.len() + 4;
/// Where key records live on the object store.
const KEYS_DIR: &str = "keys/";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "tenant name {0:?} is not acceptable: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
    )]
    BadTenant(String),
    #[error("no API key matches {0:?}")]
    NotFound(String),
    #[error("{0:?} matches {1} keys; give the whole key or a longer prefix")]
    Ambiguous(String, usize),
    #[error("the operating system's random generator failed: {0}")]
    Random(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the store keeps about a key (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub tenant: String,
    pub created_at_ms: u64,
    /// The key's first characters, to tell keys apart in listings.
    pub prefix: String,
}

/// A key just created: the secret (shown once) and its record.
pub struct NewKey {
    pub key: String,
    pub record: KeyRecord,
}

/// SHA-256 of a key, in hex: the name of its record.
pub fn key_digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn record_key(digest: &str) -> String {
    format!("{KEYS_DIR}{digest}.json")
}

/// Whether `name` is an acceptable tenant name.
pub fn validate_tenant(name: &str) -> Result<(), KeyError> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(KeyError::BadTenant(name.to_string()))
    }
}

/// Whether `key` has the shape of a key (before looking it up).
fn looks_like_key(key: &str) -> bool {
    key.strip_prefix(KEY_PREFIX).is_some_and(|rest| {
        rest.len() == KEY_RANDOM_BYTES * 2 && rest.chars().all(|c| c.is_ascii_hexdigit())
    })
}

/// The key in an `Authorization` header: `Bearer KEY`, or the bare key as SeekrFlow's SDK sends it.
pub fn key_from_authorization(value: &str) -> &str {
    let value = value.trim();
    match value.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => value,
    }
}

/// Key records on the object store.
#[derive(Clone)]
pub struct KeyStore {
    store: Arc<dyn ObjectStore>,
}

impl KeyStore {
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        KeyStore { store }
    }

    /// Create a key for `tenant`; the returned secret is not stored anywhere.
    pub async fn create(&self, tenant: &str) -> Result<NewKey, KeyError> {
        validate_tenant(tenant)?;
        let mut random = [0u8; KEY_RANDOM_BYTES];
        getrandom::fill(&mut random).map_err(|e| KeyError::Random(e.to_string()))?;
        let key = format!("{KEY_PREFIX}{}", hex::encode(random));
        let record = KeyRecord {
            tenant: tenant.to_string(),
            created_at_ms: now_ms(),
            prefix: key[..SHOWN_PREFIX_LEN].to_string(),
        };
        let json = serde_json::to_vec(&record).expect("key record serializes");
        self.store
            .put_if_absent(&record_key(&key_digest(&key)), Bytes::from(json))
            .await?;
        Ok(NewKey { key, record })
    }

    /// The record of the key with this digest, if the key exists.
    pub async fn find(&self, digest: &str) -> Result<Option<KeyRecord>, KeyError> {
        let Some(bytes) = self.store.get(&record_key(digest)).await? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(&bytes).ok())
    }

    /// Every key record, by digest, oldest first.
    pub async fn list(&self) -> Result<Vec<(String, KeyRecord)>, KeyError> {
        let mut keys = Vec::new();
        for object in self.store.list(KEYS_DIR).await? {
            let Some(digest) = object
                .strip_prefix(KEYS_DIR)
                .and_then(|name| name.strip_suffix(".json"))
            else {
                continue;
            };
            let Some(bytes) = self.store.get(&object).await? else {
                continue;
            };
            match serde_json::from_slice::<KeyRecord>(&bytes) {
                Ok(record) => keys.push((digest.to_string(), record)),
                Err(error) => tracing::warn!(%object, %error, "ignoring an unreadable key record"),
            }
        }
        keys.sort_by_key(|(_, record)| record.created_at_ms);
        Ok(keys)
    }

    /// Revoke the key given whole, or by a prefix that names exactly one key.
    pub async fn revoke(&self, key_or_prefix: &str) -> Result<KeyRecord, KeyError> {
        let wanted = key_or_prefix.trim();
        let keys = self.list().await?;
        let matches: Vec<&(String, KeyRecord)> = if looks_like_key(wanted) {
            let digest = key_digest(wanted);
            keys.iter().filter(|(d, _)| *d == digest).collect()
        } else if wanted.len() >= MIN_REVOKE_PREFIX_LEN {
            keys.iter()
                .filter(|(_, record)| record.prefix.starts_with(wanted))
                .collect()
        } else {
            Vec::new()
        };
        match matches.as_slice() {
            [] => Err(KeyError::NotFound(wanted.to_string())),
            [(digest, record)] => {
                self.store.delete(&record_key(digest)).await?;
                Ok(record.clone())
            }
            many => Err(KeyError::Ambiguous(wanted.to_string(), many.len())),
        }
    }
}

/// Who is calling: the tenant of the key presented, or `None` on an open loopback coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: Option<String>,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "an API key is required: send it in the Authorization header (`Bearer KEY` or the bare key)"
    )]
    Missing,
    #[error("the API key is not valid")]
    Invalid,
}

struct Snapshot {
    tenants: HashMap<String, String>,
    loaded_at: Instant,
}

/// The coordinator's view of the keys: a snapshot of the store's key records.
pub struct KeyRing {
    keys: KeyStore,
    snapshot: RwLock<Snapshot>,
    reloading: tokio::sync::Mutex<()>,
    refresh: Duration,
    /// Serve without keys while none exist (only on a loopback address).
    open_without_keys: bool,
}

impl KeyRing {
    /// Load the keys; `open_without_keys` lets requests without a key through while there are none.
    pub async fn load(
        keys: KeyStore,
        refresh: Duration,
        open_without_keys: bool,
    ) -> Result<Self, KeyError> {
        let tenants = Self::read(&keys).await?;
        Ok(KeyRing {
            keys,
            snapshot: RwLock::new(Snapshot {
                tenants,
                loaded_at: Instant::now(),
            }),
            reloading: tokio::sync::Mutex::new(()),
            refresh,
            open_without_keys,
        })
    }

    async fn read(keys: &KeyStore) -> Result<HashMap<String, String>, KeyError> {
        Ok(keys
            .list()
            .await?
            .into_iter()
            .map(|(digest, record)| (digest, record.tenant))
            .collect())
    }

    /// Number of keys in the current snapshot.
    pub fn len(&self) -> usize {
        self.snapshot
            .read()
            .expect("key snapshot lock")
            .tenants
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn age(&self) -> Duration {
        self.snapshot
            .read()
            .expect("key snapshot lock")
            .loaded_at
            .elapsed()
    }

    /// Reload the snapshot if it is older than the refresh interval (one reload at a time).
    async fn reload_if_stale(&self) {
        let _guard = self.reloading.lock().await;
        if self.age() < self.refresh {
            return;
        }
        match Self::read(&self.keys).await {
            Ok(tenants) => {
                *self.snapshot.write().expect("key snapshot lock") = Snapshot {
                    tenants,
                    loaded_at: Instant::now(),
                };
            }
            // Keep serving with the keys known so far; the next request tries again.
            Err(error) => tracing::warn!(%error, "reloading API keys failed"),
        }
    }

    fn tenant_of(&self, digest: &str) -> Option<String> {
        self.snapshot
            .read()
            .expect("key snapshot lock")
            .tenants
            .get(digest)
            .cloned()
    }

    /// Decide who sends a request with this `Authorization` header value.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, AuthError> {
        if self.age() >= self.refresh {
            self.reload_if_stale().await;
        }
        let key = authorization
            .map(key_from_authorization)
            .filter(|k| !k.is_empty());
        if let Some(key) = key {
            let digest = key_digest(key);
            if let Some(tenant) = self.tenant_of(&digest) {
                return Ok(Caller {
                    tenant: Some(tenant),
                });
            }
            // Perhaps created since the last reload: one lookup of a well-formed key's record.
            if looks_like_key(key) {
                match self.keys.find(&digest).await {
                    Ok(Some(record)) => {
                        self.snapshot
                            .write()
                            .expect("key snapshot lock")
                            .tenants
                            .insert(digest, record.tenant.clone());
                        return Ok(Caller {
                            tenant: Some(record.tenant),
                        });
                    }
                    Ok(None) => {}
                    Err(error) => tracing::warn!(%error, "looking an API key up failed"),
                }
            }
        }
        if self.open_without_keys && self.is_empty() {
            return Ok(Caller { tenant: None });
        }
        Err(if key.is_some() {
            AuthError::Invalid
        } else {
            AuthError::Missing
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use worker::store::LocalStore;

    fn ring_store() -> (tempfile::TempDir, KeyStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(Arc::new(LocalStore::new(dir.path())));
        (dir, store)
    }

    #[test]
    fn authorization_takes_bearer_or_the_bare_key() {
        assert_eq!(key_from_authorization("Bearer pk-1"), "pk-1");
        assert_eq!(key_from_authorization("bearer  pk-1 "), "pk-1");
        assert_eq!(key_from_authorization("pk-1"), "pk-1");
    }

    #[test]
    fn tenant_names_are_checked() {
        assert!(validate_tenant("acme-bank_2.eu").is_ok());
        for bad in ["", "-acme", "a/b", "a b", &"x".repeat(65)] {
            assert!(validate_tenant(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn keys_are_random_stored_hashed_and_revocable_by_prefix() {
        let (dir, keys) = ring_store();
        let first = keys.create("acme").await.unwrap();
        let second = keys.create("acme").await.unwrap();
        assert_ne!(first.key, second.key);
        assert!(looks_like_key(&first.key), "{}", first.key);
        assert!(first.key.starts_with(&first.record.prefix));
        // Nothing on disk contains the key.
        for entry in walk(dir.path()) {
            let text = std::fs::read_to_string(&entry).unwrap_or_default();
            assert!(
                !text.contains(&first.key) && !entry.display().to_string().contains(&first.key)
            );
        }
        assert_eq!(keys.list().await.unwrap().len(), 2);
        assert!(matches!(
            keys.revoke("pk-").await,
            Err(KeyError::NotFound(_))
        ));
        keys.revoke(&first.record.prefix).await.unwrap();
        keys.revoke(&second.key).await.unwrap();
        assert!(keys.list().await.unwrap().is_empty());
        assert!(matches!(
            keys.create("a b").await,
            Err(KeyError::BadTenant(_))
        ));
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path);
            }
        }
        files
    }

    #[tokio::test]
    async fn the_ring_is_open_only_without_keys_and_sees_new_and_revoked_keys() {
        let (_dir, keys) = ring_store();
        let ring = KeyRing::load(keys.clone(), Duration::from_millis(50), true)
            .await
            .unwrap();
        assert_eq!(ring.authenticate(None).await, Ok(Caller { tenant: None }));
        let new = keys.create("acme").await.unwrap();
        // A key created after loading works at once.
        assert_eq!(
            ring.authenticate(Some(&format!("Bearer {}", new.key)))
                .await,
            Ok(Caller {
                tenant: Some("acme".into())
            })
        );
        // Now that a key exists, nothing gets in without one.
        assert_eq!(ring.authenticate(None).await, Err(AuthError::Missing));
        assert_eq!(
            ring.authenticate(Some("pk-wrong")).await,
            Err(AuthError::Invalid)
        );
        keys.revoke(&new.key).await.unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        // Revoked: the ring is empty again and open (loopback).
        assert_eq!(
            ring.authenticate(Some(&new.key)).await,
            Ok(Caller { tenant: None })
        );
    }

    #[tokio::test]
    async fn a_ring_that_may_not_be_open_refuses_everything_without_keys() {
        let (_dir, keys) = ring_store();
        let ring = KeyRing::load(keys, Duration::from_secs(60), false)
            .await
            .unwrap();
        assert_eq!(ring.authenticate(None).await, Err(AuthError::Missing));
        assert_eq!(
            ring.authenticate(Some("Bearer x")).await,
            Err(AuthError::Invalid)
        );
    }
}
