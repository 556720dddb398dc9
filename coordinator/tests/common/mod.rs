//! A coordinator in one process for the review tests: the real router on a loopback port, a
//! local directory store, the in-process queue, and in-process workers whose generator counts the
//! shards it generates.

#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use coordinator::fleet::api::{ApiConfig, JobDefaults, router_and_openapi};
use coordinator::fleet::keys::{KeyRing, KeyStore};
use coordinator::fleet::service::Coordinator;
use proto::job::{
    DEFAULT_MAX_ITEMS_PER_SECTION, DEFAULT_MIN_ITEMS_PER_SECTION, DEFAULT_SHARD_TOKEN_BUDGET,
};
use proto::{JobSpec, ShardMessage};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use worker::generate::extractive::ExtractiveGenerator;
use worker::generate::{GenerateError, Generator, ShardGeneration};
use worker::limits::MemoryTokenBudget;
use worker::pool::{PoolConfig, run_pool};
use worker::process::{Generators, ShardProcessor};
use worker::queue::MemoryQueue;
use worker::store::{LocalStore, ObjectStore};

pub const INSTRUCTIONS: &str = "I want a chatbot that specializes in Harbor's lending policy";
pub const MAX_REQUEST: usize = 256 * 1024;

pub fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/harbor-lending-policy.md")
}

/// The extractive generator, counting the shards it generates.
pub struct Counting {
    inner: ExtractiveGenerator,
    pub shards: AtomicU64,
}

#[async_trait::async_trait]
impl Generator for Counting {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn model(&self, spec: &JobSpec) -> Option<String> {
        self.inner.model(spec)
    }
    fn judge_model(&self, spec: &JobSpec) -> Option<String> {
        self.inner.judge_model(spec)
    }
    async fn generate(&self, shard: &ShardMessage) -> Result<ShardGeneration, GenerateError> {
        self.shards.fetch_add(1, Ordering::SeqCst);
        self.inner.generate(shard).await
    }
}

pub struct Server {
    pub url: String,
    pub http: reqwest::Client,
    pub store: Arc<dyn ObjectStore>,
    pub keys: KeyStore,
    pub queue: Arc<MemoryQueue>,
    pub stop: CancellationToken,
    pub generator: Arc<Counting>,
    pub dir: tempfile::TempDir,
}

impl Server {
    /// A coordinator serving on loopback; `open` lets it serve without keys while none exist.
    pub async fn start(open: bool) -> Server {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, open).await
    }

    /// A coordinator over an existing store directory (jobs already there are loaded).
    pub async fn start_in(dir: tempfile::TempDir, open: bool) -> Server {
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()));
        let queue = Arc::new(MemoryQueue::new(3));
        let coordinator = Coordinator::start(store.clone(), queue.clone(), None, 8 * 1024 * 1024)
            .await
            .unwrap();
        let keys = KeyStore::new(store.clone());
        let ring = KeyRing::load(keys.clone(), Duration::from_millis(200), open)
            .await
            .unwrap();
        let config = ApiConfig {
            defaults: JobDefaults {
                model: None,
                judge_model: None,
                shard_token_budget: DEFAULT_SHARD_TOKEN_BUDGET,
                min_items_per_section: DEFAULT_MIN_ITEMS_PER_SECTION,
                max_items_per_section: DEFAULT_MAX_ITEMS_PER_SECTION,
                near_duplicate_threshold: proto::job::DEFAULT_NEAR_DUPLICATE_THRESHOLD,
            },
            max_json_bytes: MAX_REQUEST,
        };
        let (router, _) = router_and_openapi(coordinator.clone(), Arc::new(ring), config);
        let stop = CancellationToken::new();
        tokio::spawn(
            coordinator
                .clone()
                .run_monitor(Duration::from_millis(50), stop.clone()),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let serve_stop = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { serve_stop.cancelled().await })
                .await
                .unwrap();
        });
        Server {
            url,
            http: reqwest::Client::new(),
            store,
            keys,
            queue,
            stop,
            generator: Arc::new(Counting {
                inner: ExtractiveGenerator::new(),
                shards: AtomicU64::new(0),
            }),
            dir,
        }
    }

    /// Start consuming shards in this process.
    pub fn start_workers(&self) {
        let generators = Generators {
            extractive: self.generator.clone(),
            openai: None,
        };
        let processor = ShardProcessor::new(
            self.store.clone(),
            generators,
            Arc::new(MemoryTokenBudget::new()),
        );
        let (events, _) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(run_pool(
            self.queue.consumer(),
            processor,
            Arc::new(events),
            PoolConfig {
                concurrency: 2,
                grace: Duration::from_secs(5),
            },
            self.stop.clone(),
        ));
    }

    /// Shards generated so far.
    pub fn shards_generated(&self) -> u64 {
        self.generator.shards.load(Ordering::SeqCst)
    }

    pub async fn key(&self, tenant: &str) -> String {
        self.keys.create(tenant).await.unwrap().key
    }

    pub fn request(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.url));
        match key {
            Some(key) => request.header("authorization", format!("Bearer {key}")),
            None => request,
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.request(method, path, key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str, key: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(key), None).await
    }

    /// GET that must answer 200; its JSON.
    pub async fn ok(&self, path: &str, key: &str) -> Value {
        let (status, body) = self.get(path, key).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    pub async fn bytes(&self, path: &str, key: &str) -> (StatusCode, bytes::Bytes) {
        let response = self
            .request(Method::GET, path, Some(key))
            .send()
            .await
            .unwrap();
        (response.status(), response.bytes().await.unwrap())
    }

    pub async fn upload(
        &self,
        key: &str,
        name: &str,
        purpose: &str,
        content: Vec<u8>,
    ) -> (StatusCode, Value) {
        let form = reqwest::multipart::Form::new()
            .text("purpose", purpose.to_string())
            .part(
                "files",
                reqwest::multipart::Part::bytes(content).file_name(name.to_string()),
            )
            .text("filename", name.to_string());
        let response = self
            .request(Method::PUT, "/v1/flow/files", Some(key))
            .multipart(form)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Upload the example policy and start a job on it with `shard_tokens`; returns the job id.
    pub async fn start_job(&self, key: &str, shard_tokens: u64) -> String {
        let (status, file) = self
            .upload(
                key,
                "harbor.md",
                "alignment",
                std::fs::read(example()).unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{file}");
        let body = json!({ "instructions": INSTRUCTIONS, "files": [file["id"]],
            "shard_tokens": shard_tokens, "system_prompt": "You answer questions about Harbor's lending policy." });
        let (status, job) = self
            .call(
                Method::POST,
                "/v1/flow/alignment/generate",
                Some(key),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{job}");
        job["id"].as_str().unwrap().to_string()
    }

    pub async fn wait_for_status(&self, key: &str, job: &str, wanted: &[&str]) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self.get(&format!("/v1/flow/alignment/{job}"), key).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            if wanted.contains(&body["status"].as_str().unwrap_or_default()) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "job never got to {wanted:?}: {body:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
