//! Object storage: where parts, manifests and datasets live.
//!
//! S3 in the fleet, a local directory in embedded mode: the same trait, the same keys
//! (`jobs/<job>/parts/<shard>.parquet`, ...). Create-only puts make every write idempotent per key:
//! the first writer wins and a later attempt learns that the object already exists.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    /// The key existed already; nothing was written.
    AlreadyExists,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid object key {0:?}")]
    InvalidKey(String),
    #[error("storage I/O on {key}: {source}")]
    Io {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("object store request for {key} failed: {message}")]
    Remote { key: String, message: String },
}

impl StoreError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        !matches!(self, StoreError::InvalidKey(_))
    }
}

#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// Write `body` at `key` unless the key exists (S3 `If-None-Match: *`).
    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<PutOutcome, StoreError>;
    /// Write `body` at `key`, replacing what is there.
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError>;
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError>;
    async fn exists(&self, key: &str) -> Result<bool, StoreError>;
    /// Keys under `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
}

/// Keys are relative, `/`-separated, made of safe characters only: no `..`, no absolute paths.
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    let ok = !key.is_empty()
        && !key.starts_with('/')
        && key.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '='))
        });
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidKey(key.to_string()))
    }
}

/// A directory on the local file system.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore { root: root.into() }
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }
}

fn io(key: &str) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        key: key.to_string(),
        source,
    }
}

/// Write to a temporary file beside `path` and fsync it; the caller links or renames it in place.
fn write_temp(path: &Path, body: &[u8]) -> std::io::Result<tempfile::NamedTempFile> {
    use std::io::Write;
    let dir = path.parent().expect("object paths have a parent");
    std::fs::create_dir_all(dir)?;
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    temp.write_all(body)?;
    temp.as_file().sync_all()?;
    Ok(temp)
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<PutOutcome, StoreError> {
        let path = self.path(key)?;
        let key_owned = key.to_string();
        tokio::task::spawn_blocking(move || {
            let temp = write_temp(&path, &body)?;
            // A hard link fails atomically if the target exists: create-only semantics.
            match std::fs::hard_link(temp.path(), &path) {
                Ok(()) => {
                    sync_dir(&path)?;
                    Ok(PutOutcome::Created)
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    Ok(PutOutcome::AlreadyExists)
                }
                Err(e) => Err(e),
            }
        })
        .await
        .expect("blocking store task")
        .map_err(io(&key_owned))
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let key_owned = key.to_string();
        tokio::task::spawn_blocking(move || {
            let temp = write_temp(&path, &body)?;
            temp.persist(&path).map_err(|e| e.error)?;
            sync_dir(&path)
        })
        .await
        .expect("blocking store task")
        .map_err(io(&key_owned))
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let path = self.path(key)?;
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Some(Bytes::from(bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(key)(e)),
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        let path = self.path(key)?;
        tokio::fs::try_exists(&path).await.map_err(io(key))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || {
            // Walk only the directory the prefix names, then filter by the rest of the prefix.
            let dir_part = prefix.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
            let mut keys = Vec::new();
            let mut stack = vec![root.join(dir_part)];
            while let Some(dir) = stack.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io(&prefix)(e)),
                };
                for entry in entries {
                    let entry = entry.map_err(io(&prefix))?;
                    let path = entry.path();
                    if entry.file_type().map_err(io(&prefix))?.is_dir() {
                        stack.push(path);
                        continue;
                    }
                    let Ok(relative) = path.strip_prefix(&root) else {
                        continue;
                    };
                    let key = relative.to_string_lossy().replace('\\', "/");
                    if key.starts_with(&prefix) && validate_key(&key).is_ok() {
                        keys.push(key);
                    }
                }
            }
            keys.sort();
            Ok(keys)
        })
        .await
        .expect("blocking store task")
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(key)(e)),
        }
    }
}

/// Any store, with every operation counted and timed in Prometheus (`principia_store_*`).
pub struct Metered<S> {
    inner: S,
}

impl<S: ObjectStore> Metered<S> {
    pub fn new(inner: S) -> Self {
        Metered { inner }
    }
}

/// Time `operation` and count it under `op` with the result `label` gives it.
async fn observe<T>(
    op: &str,
    operation: impl std::future::Future<Output = Result<T, StoreError>>,
    label: impl FnOnce(&T) -> &'static str,
) -> Result<T, StoreError> {
    let started = std::time::Instant::now();
    let result = operation.await;
    crate::metrics::STORE_DURATION
        .with_label_values(&[op])
        .observe(started.elapsed().as_secs_f64());
    let outcome = result.as_ref().map_or("error", label);
    crate::metrics::STORE_REQUESTS
        .with_label_values(&[op, outcome])
        .inc();
    result
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for Metered<S> {
    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<PutOutcome, StoreError> {
        observe(
            "put_if_absent",
            self.inner.put_if_absent(key, body),
            |o| match o {
                PutOutcome::Created => "created",
                PutOutcome::AlreadyExists => "exists",
            },
        )
        .await
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        observe("put", self.inner.put(key, body), |_| "ok").await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        observe("get", self.inner.get(key), |v| {
            if v.is_some() { "ok" } else { "missing" }
        })
        .await
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        observe("exists", self.inner.exists(key), |e| {
            if *e { "ok" } else { "missing" }
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        observe("list", self.inner.list(prefix), |_| "ok").await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        observe("delete", self.inner.delete(key), |_| "ok").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn create_only_put_keeps_the_first_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let key = "jobs/al-1/parts/sh-1.parquet";
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
        assert_eq!(store.get(key).await.unwrap().unwrap(), Bytes::from("first"));
        assert_eq!(store.list("jobs/al-1/parts/").await.unwrap(), vec![key]);
        assert!(store.list("jobs/none/").await.unwrap().is_empty());
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("jobs/al-1/parts"))
            .unwrap()
            .collect();
        assert_eq!(names.len(), 1);
    }

    #[tokio::test]
    async fn metered_stores_count_each_operation_by_result() {
        let dir = tempfile::tempdir().unwrap();
        let store = Metered::new(LocalStore::new(dir.path()));
        let count = |op: &str, result: &str| {
            crate::metrics::STORE_REQUESTS
                .with_label_values(&[op, result])
                .get()
        };
        let (created, exists, missing) = (
            count("put_if_absent", "created"),
            count("put_if_absent", "exists"),
            count("get", "missing"),
        );
        store.put_if_absent("a/b", Bytes::from("x")).await.unwrap();
        store.put_if_absent("a/b", Bytes::from("y")).await.unwrap();
        assert_eq!(store.get("a/none").await.unwrap(), None);
        assert_eq!(count("put_if_absent", "created"), created + 1);
        assert_eq!(count("put_if_absent", "exists"), exists + 1);
        assert_eq!(count("get", "missing"), missing + 1);
        assert!(crate::metrics::render().contains("principia_store_request_duration_seconds"));
    }

    #[tokio::test]
    async fn keys_that_escape_the_root_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        for key in ["../x", "/etc/passwd", "a//b", "a/./b", "a b", ""] {
            assert!(matches!(
                store.get(key).await,
                Err(StoreError::InvalidKey(_))
            ));
        }
    }
}
