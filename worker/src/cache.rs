//! The LLM response cache: a successful reply is stored under a digest of the request body
//! (model, messages, temperature, token limit, response format), so that a re-run after a crash,
//! or the regeneration of an edited subtree, does not pay again for calls already made.
//!
//! Entries live on the object store under `cache/llm/<digest>.json`, written create-only, so
//! every worker of a fleet shares them and the first writer wins. The cache never fails a call:
//! a store that cannot be read or written is logged and the call goes to the server.

use std::sync::Arc;

use bytes::Bytes;
use proto::hash::digest;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::ObjectStore;

/// Key prefix of cache entries on the object store.
pub const CACHE_PREFIX: &str = "cache/llm/";

/// What is kept of a reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedReply {
    pub content: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<crate::llm::ToolCall>,
    pub finish_reason: Option<String>,
    pub model: String,
    /// Tokens the original call cost (reported, not spent again).
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// A response cache over an object store.
#[derive(Clone)]
pub struct ResponseCache {
    store: Arc<dyn ObjectStore>,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache").finish_non_exhaustive()
    }
}

impl ResponseCache {
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        ResponseCache { store }
    }

    /// The storage key of a request body.
    pub fn key(body: &Value) -> String {
        let bytes = serde_json::to_vec(body).expect("request body serializes");
        format!(
            "{CACHE_PREFIX}{}.json",
            digest(&[b"llm-request", &bytes], 40)
        )
    }

    /// The cached reply of `key`, if there is a readable one.
    pub async fn get(&self, key: &str) -> Option<CachedReply> {
        match self.store.get(key).await {
            Ok(Some(bytes)) => match serde_json::from_slice(&bytes) {
                Ok(reply) => Some(reply),
                Err(error) => {
                    tracing::warn!(key, %error, "unreadable LLM cache entry; calling the server");
                    None
                }
            },
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(key, %error, "LLM cache unavailable; calling the server");
                None
            }
        }
    }

    /// Store a reply under `key` unless an entry exists.
    pub async fn put(&self, key: &str, reply: &CachedReply) {
        let body = serde_json::to_vec(reply).expect("cached reply serializes");
        if let Err(error) = self.store.put_if_absent(key, Bytes::from(body)).await {
            tracing::warn!(key, %error, "could not store an LLM reply in the cache");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalStore;
    use serde_json::json;

    #[tokio::test]
    async fn replies_round_trip_and_keys_depend_on_every_parameter() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResponseCache::new(Arc::new(LocalStore::new(dir.path())));
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let key = ResponseCache::key(&body);
        assert!(key.starts_with(CACHE_PREFIX));
        assert_ne!(
            key,
            ResponseCache::key(&json!({"model": "m", "messages": [], "temperature": 0.5}))
        );
        assert_eq!(cache.get(&key).await, None);
        let reply = CachedReply {
            content: "{}".into(),
            tool_calls: Vec::new(),
            finish_reason: Some("stop".into()),
            model: "m".into(),
            prompt_tokens: 10,
            completion_tokens: 2,
        };
        cache.put(&key, &reply).await;
        assert_eq!(cache.get(&key).await, Some(reply.clone()));
        let other = CachedReply {
            content: "other".into(),
            ..reply.clone()
        };
        cache.put(&key, &other).await;
        assert_eq!(cache.get(&key).await, Some(reply), "first writer wins");
    }
}
