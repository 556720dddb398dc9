//! The HTTP API in one process: the real router on a loopback port, the coordinator over a local
//! directory store and the in-process queue, and (where a job must finish) an in-process worker
//! pool with the extractive generator. Every endpoint, API keys, tenants, limits and the OpenAPI
//! document.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coordinator::fleet::api::{ApiConfig, JobDefaults, router_and_openapi};
use coordinator::fleet::keys::{KeyRing, KeyStore};
use coordinator::fleet::service::Coordinator;
use proto::job::{
    DEFAULT_MAX_ITEMS_PER_SECTION, DEFAULT_MIN_ITEMS_PER_SECTION, DEFAULT_SHARD_TOKEN_BUDGET,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use worker::generate::extractive::ExtractiveGenerator;
use worker::limits::MemoryTokenBudget;
use worker::pool::{PoolConfig, run_pool};
use worker::process::{Generators, ShardProcessor};
use worker::queue::MemoryQueue;
use worker::store::{LocalStore, ObjectStore};

const INSTRUCTIONS: &str = "I want a chatbot that specializes in Harbor's lending policy";
/// The upload limit of the test server.
const MAX_UPLOAD: usize = 64 * 1024;
/// The limit of other request bodies.
const MAX_REQUEST: usize = 16 * 1024;

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/harbor-lending-policy.md")
}

struct Server {
    url: String,
    http: reqwest::Client,
    store: Arc<dyn ObjectStore>,
    keys: KeyStore,
    queue: Arc<MemoryQueue>,
    stop: CancellationToken,
    openapi: utoipa::openapi::OpenApi,
    _dir: tempfile::TempDir,
}

impl Server {
    /// A coordinator serving on loopback; `open` lets it serve without keys while none exist.
    async fn start(open: bool) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()));
        let queue = Arc::new(MemoryQueue::new(3));
        let coordinator = Coordinator::start(store.clone(), queue.clone(), None, MAX_UPLOAD)
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
        let (router, openapi) = router_and_openapi(coordinator.clone(), Arc::new(ring), config);
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
            openapi,
            _dir: dir,
        }
    }

    /// Start consuming shards in this process.
    fn start_workers(&self) {
        let generators = Generators {
            extractive: Arc::new(ExtractiveGenerator::new()),
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

    async fn key(&self, tenant: &str) -> String {
        self.keys.create(tenant).await.unwrap().key
    }

    fn request(&self, method: Method, path: &str, key: Option<&str>) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.url));
        match key {
            Some(key) => request.header("authorization", format!("Bearer {key}")),
            None => request,
        }
    }

    async fn call(
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

    async fn get(&self, path: &str, key: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(key), None).await
    }

    /// Upload `content` as `name` with `purpose` the way SeekrFlow's SDK does (multipart fields
    /// `purpose`, `files`, `filename`).
    async fn upload(
        &self,
        key: &str,
        name: &str,
        purpose: &str,
        content: Vec<u8>,
    ) -> (StatusCode, Value) {
        self.try_upload(key, name, purpose, content).await.unwrap()
    }

    /// An upload that may be cut off by the server while it is being sent.
    async fn try_upload(
        &self,
        key: &str,
        name: &str,
        purpose: &str,
        content: Vec<u8>,
    ) -> Result<(StatusCode, Value), reqwest::Error> {
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
            .await?;
        let status = response.status();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    async fn upload_example(&self, key: &str) -> String {
        let (status, file) = self
            .upload(
                key,
                "harbor.md",
                "alignment",
                std::fs::read(example()).unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{file}");
        file["id"].as_str().unwrap().to_string()
    }

    async fn generate(&self, key: &str, files: &[&str]) -> (StatusCode, Value) {
        let body = json!({ "instructions": INSTRUCTIONS, "files": files, "type": "principle",
            "system_prompt": "You answer questions about Harbor's lending policy." });
        self.call(
            Method::POST,
            "/v1/flow/alignment/generate",
            Some(key),
            Some(body),
        )
        .await
    }

    async fn wait_for_status(&self, key: &str, job: &str, wanted: &[&str]) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
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

    async fn stored_under(&self, prefix: &str) -> Vec<String> {
        self.store.list(prefix).await.unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_of_one_tenant_from_upload_to_deletion() {
    let server = Server::start(false).await;
    server.start_workers();
    let key = server.key("acme").await;

    // Pre-upload validation, as the SDK calls it.
    let (status, valid) = server
        .call(
            Method::POST,
            "/v1/flow/files/validate_metadata",
            Some(&key),
            Some(json!({ "purpose": "alignment", "suffix": "md", "size": 1000 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(valid, json!({ "is_valid": true, "errors": null }));
    let (_, invalid) = server
        .call(
            Method::POST,
            "/v1/flow/files/validate_metadata",
            Some(&key),
            Some(json!({ "purpose": "alignment", "suffix": ".exe", "size": MAX_UPLOAD + 1 })),
        )
        .await;
    assert_eq!(invalid["is_valid"], false);
    let errors = invalid["errors"].as_str().unwrap();
    assert!(
        errors.contains("\"exe\" is not accepted") && errors.contains("the limit is"),
        "{errors}"
    );

    // Files: upload, retrieve, content, list (filter, sort, pages).
    let document = server.upload_example(&key).await;
    let (status, notes) = server
        .upload(
            &key,
            "notes.txt",
            "alignment",
            b"# Notes\n\nSome text.\n".to_vec(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(notes["type"], "txt");
    assert_eq!(notes["purpose"], "alignment");
    let (status, data) = server
        .upload(
            &key,
            "data.jsonl",
            "fine-tune",
            b"{\"messages\":[{\"role\":\"user\",\"content\":\"Who may apply?\"},{\"role\":\"assistant\",\"content\":\"Any member of the credit union may apply.\"}]}\n".to_vec(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(data["purpose"], "fine-tune");

    let (status, file) = server
        .get(&format!("/v1/flow/files/{document}"), &key)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(file["filename"], "harbor.md");
    assert_eq!(file["type"], "md");
    assert_eq!(file["object"], "file");
    let size = std::fs::metadata(example()).unwrap().len();
    assert_eq!(file["bytes"], size);
    let content = server
        .request(
            Method::GET,
            &format!("/v1/flow/files/{document}/content"),
            Some(&key),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(content.status(), StatusCode::OK);
    assert_eq!(
        content.bytes().await.unwrap(),
        std::fs::read(example()).unwrap()
    );

    let names = |list: &Value| -> Vec<String> {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["filename"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, alignment) = server
        .get(
            "/v1/flow/files?purpose=alignment&sort_by=filename&sort_order=asc",
            &key,
        )
        .await;
    assert_eq!(alignment["object"], "list");
    assert_eq!(names(&alignment), ["harbor.md", "notes.txt"]);
    let (_, by_size) = server
        .get(
            "/v1/flow/files?sort_by=size&sort_order=desc&limit=2&offset=1",
            &key,
        )
        .await;
    assert_eq!(names(&by_size), ["data.jsonl", "notes.txt"]);
    let (status, _) = server.get("/v1/flow/files?sort_by=colour", &key).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A job: generate, retrieve, wait, outputs, dataset, report, list.
    let (status, job) = server.generate(&key, &[&document]).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    let job_id = job["id"].as_str().unwrap().to_string();
    assert!(job_id.starts_with("al-"));
    assert!(
        ["pending", "queued", "running"].contains(&job["status"].as_str().unwrap()),
        "{job}"
    );
    let done = server
        .wait_for_status(&key, &job_id, &["completed", "failed"])
        .await;
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(done["progress"], 100.0);
    assert_eq!(done["current_step"], "done");
    let (status, outputs) = server
        .get(&format!("/v1/flow/alignment/{job_id}/outputs"), &key)
        .await;
    assert_eq!(status, StatusCode::OK);
    let outputs = outputs.as_array().unwrap();
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0]["purpose"], "fine-tune");
    assert_eq!(outputs[0]["file_type"], "parquet");
    let dataset_id = outputs[0]["id"].as_str().unwrap();
    let dataset = server
        .request(
            Method::GET,
            &format!("/v1/flow/files/{dataset_id}/content"),
            Some(&key),
        )
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let (records, _) = proto::dataset::decode_parquet(dataset).unwrap();
    assert!(!records.is_empty());
    assert!(records.iter().all(|r| r.job_id == job_id));
    assert_eq!(
        records[0].messages[0].content,
        "You answer questions about Harbor's lending policy."
    );
    let (_, fine_tune) = server.get("/v1/flow/files?purpose=fine-tune", &key).await;
    assert!(
        fine_tune["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["id"] == dataset_id)
    );
    let (status, report) = server
        .get(&format!("/v1/flow/alignment/{job_id}/report"), &key)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["items"]["accepted"], records.len());
    // The extractive generator: the estimate beside the actuals says no call, as happened.
    assert_eq!(report["estimate"]["shards"], report["shards"]["total"]);
    assert_eq!(report["estimate"]["calls"], 0);
    assert_eq!(report["tokens"]["calls"], 0);
    let (_, jobs) = server.get("/v1/flow/alignment", &key).await;
    assert_eq!(jobs["object"], "list");
    assert_eq!(jobs["data"][0]["id"], job_id.as_str());

    // Cancelling a finished job changes nothing.
    let (status, cancelled) = server
        .call(
            Method::POST,
            &format!("/v1/flow/alignment/{job_id}/cancel"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cancelled["status"], "completed");

    // Deleting: the job (204, then 404) and a file.
    let (status, _) = server
        .call(
            Method::DELETE,
            &format!("/v1/flow/alignment/{job_id}"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = server
        .get(&format!("/v1/flow/alignment/{job_id}"), &key)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        server
            .stored_under(&format!("jobs/{job_id}/"))
            .await
            .is_empty()
    );
    let (status, deleted) = server
        .call(
            Method::DELETE,
            &format!("/v1/flow/files/{document}"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        deleted,
        json!({ "id": document, "object": "file", "deleted": true })
    );
    let (status, _) = server
        .get(&format!("/v1/flow/files/{document}"), &key)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Operations endpoints need no key.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let (status, _) = server.call(Method::GET, path, None, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_a_valid_key_are_refused_and_both_header_forms_work() {
    let server = Server::start(false).await;
    let key = server.key("acme").await;
    let send = |authorization: Option<String>| {
        let mut request = server.http.get(format!("{}/v1/flow/files", server.url));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        async move { request.send().await.unwrap() }
    };
    let missing = send(None).await;
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    let body: Value = missing.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("API key is required"),
        "{body}"
    );
    let forged = format!("pk-{}", "0".repeat(64));
    for bad in [
        forged.clone(),
        format!("Bearer {forged}"),
        "Bearer".into(),
        "Basic abc".into(),
    ] {
        assert_eq!(
            send(Some(bad.clone())).await.status(),
            StatusCode::UNAUTHORIZED,
            "{bad}"
        );
    }
    assert_eq!(
        send(Some(format!("Bearer {key}"))).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send(Some(key.clone())).await.status(),
        StatusCode::OK,
        "the bare key"
    );
    // Every /v1 endpoint is behind the key, whatever the method.
    for (method, path) in [
        (Method::PUT, "/v1/flow/files"),
        (Method::POST, "/v1/flow/files/validate_metadata"),
        (Method::GET, "/v1/flow/files/file-0"),
        (Method::DELETE, "/v1/flow/files/file-0"),
        (Method::GET, "/v1/flow/files/file-0/content"),
        (Method::POST, "/v1/flow/alignment/generate"),
        (Method::GET, "/v1/flow/alignment"),
        (Method::GET, "/v1/flow/alignment/al-0"),
        (Method::DELETE, "/v1/flow/alignment/al-0"),
        (Method::GET, "/v1/flow/alignment/al-0/outputs"),
        (Method::POST, "/v1/flow/alignment/al-0/cancel"),
        (Method::GET, "/v1/flow/alignment/al-0/report"),
    ] {
        let (status, _) = server.call(method.clone(), path, Some(&forged), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
    }
    // Revoked: refused once the ring reloads (200 ms here).
    server.keys.revoke(&key).await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(send(Some(key)).await.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_keys_a_loopback_coordinator_is_open_until_the_first_key() {
    let server = Server::start(true).await;
    let (status, file) = server.call(Method::GET, "/v1/flow/files", None, None).await;
    assert_eq!(status, StatusCode::OK, "{file}");
    // The SDK always sends some key; without keys it is not checked.
    let (status, _) = server
        .call(Method::GET, "/v1/flow/alignment", Some("anything"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    // A new key works at once; requests without one are refused from the next reload (200 ms).
    let key = server.key("acme").await;
    let (status, _) = server.get("/v1/flow/files", &key).await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (status, _) = server.call(Method::GET, "/v1/flow/files", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread")]
async fn another_tenants_files_and_jobs_answer_404_and_are_not_listed() {
    let server = Server::start(false).await;
    let acme = server.key("acme").await;
    let globex = server.key("globex").await;
    let file = server.upload_example(&acme).await;
    let (status, job) = server.generate(&acme, &[&file]).await;
    assert_eq!(status, StatusCode::OK);
    let job = job["id"].as_str().unwrap().to_string();

    for (method, path) in [
        (Method::GET, format!("/v1/flow/files/{file}")),
        (Method::GET, format!("/v1/flow/files/{file}/content")),
        (Method::DELETE, format!("/v1/flow/files/{file}")),
        (Method::GET, format!("/v1/flow/alignment/{job}")),
        (Method::GET, format!("/v1/flow/alignment/{job}/outputs")),
        (Method::GET, format!("/v1/flow/alignment/{job}/report")),
        (Method::POST, format!("/v1/flow/alignment/{job}/cancel")),
        (Method::DELETE, format!("/v1/flow/alignment/{job}")),
    ] {
        let (status, body) = server
            .call(method.clone(), &path, Some(&globex), None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
    }
    // A job on another tenant's file: the file is not found.
    let (status, body) = server.generate(&globex, &[&file]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // Lists hold only the caller's own.
    let (_, files) = server.get("/v1/flow/files", &globex).await;
    assert_eq!(files["data"], json!([]));
    let (_, jobs) = server.get("/v1/flow/alignment", &globex).await;
    assert_eq!(jobs["data"], json!([]));
    // The owner still has everything, untouched.
    let (status, _) = server.get(&format!("/v1/flow/files/{file}"), &acme).await;
    assert_eq!(status, StatusCode::OK);
    let (_, mine) = server.get("/v1/flow/alignment", &acme).await;
    assert_eq!(mine["data"][0]["id"], job.as_str());
    assert_ne!(mine["data"][0]["status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_uploads_are_refused_with_a_reason_and_nothing_is_stored() {
    let server = Server::start(false).await;
    let key = server.key("acme").await;

    // Just over the limit: refused with the reason once the file's size is known. The server
    // may answer before the client has sent the last bytes and close the connection under it
    // (then the client sees an incomplete message, not the answer): a client retries.
    let mut answer = None;
    for _ in 0..5 {
        match server
            .try_upload(&key, "big.md", "alignment", vec![b'a'; MAX_UPLOAD + 1])
            .await
        {
            Ok(reply) => {
                answer = Some(reply);
                break;
            }
            Err(error) => assert!(error.is_request() || error.is_body(), "{error:?}"),
        }
    }
    let (status, body) = answer.expect("one of five uploads got the answer");
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("the limit is {MAX_UPLOAD}")),
        "{body}"
    );
    // Far over the limit: the body limit stops it while it is being sent. The server answers 413
    // and closes the connection; a client still writing may see the close (a broken pipe) before
    // it reads the answer. Either way nothing is stored (checked below).
    match server
        .try_upload(&key, "huge.md", "alignment", vec![b'a'; 3 * 1024 * 1024])
        .await
    {
        Ok((status, _)) => assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE),
        Err(error) => assert!(error.is_request() || error.is_body(), "{error:?}"),
    }

    let (status, body) = server
        .upload(&key, "tool.exe", "alignment", b"MZ".to_vec())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("file type \"exe\" is not accepted for purpose \"alignment\"")
            && message.contains("md"),
        "{message}"
    );
    let (status, body) = server
        .upload(&key, "policy.md", "fine-tune", b"# A\n\ntext\n".to_vec())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = server
        .upload(&key, "policy.md", "pre-train", b"# A\n\ntext\n".to_vec())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("purpose \"pre-train\"")
    );
    let (status, body) = server
        .upload(&key, "empty.md", "alignment", Vec::new())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"]["message"].as_str().unwrap().contains("empty"));
    let (status, _) = server
        .upload(&key, "..\\evil.md", "alignment", b"# A\n\ntext\n".to_vec())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    assert!(
        server.stored_under("files/").await.is_empty(),
        "nothing was stored"
    );

    // Other bodies have their own, smaller limit.
    let padding = "x".repeat(MAX_REQUEST + 1);
    let (status, _) = server
        .call(
            Method::POST,
            "/v1/flow/alignment/generate",
            Some(&key),
            Some(json!({ "instructions": padding, "files": [] })),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_ids_and_bad_job_requests_are_clear_errors() {
    let server = Server::start(false).await;
    let key = server.key("acme").await;
    for path in [
        "/v1/flow/files/..%2Fkeys",
        "/v1/flow/files/file-..",
        "/v1/flow/files/keys%2Fx/content",
        "/v1/flow/alignment/al-%2E%2E",
        "/v1/flow/alignment/file-0123",
    ] {
        let (status, _) = server.get(path, &key).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    let file = server.upload_example(&key).await;
    for (body, expected) in [
        (
            json!({ "instructions": " ", "files": [file] }),
            "instructions must not be empty",
        ),
        (
            json!({ "instructions": INSTRUCTIONS, "files": [] }),
            "at least one",
        ),
        (
            json!({ "instructions": INSTRUCTIONS, "files": [file], "type": "context_data" }),
            "not supported",
        ),
        (
            json!({ "instructions": INSTRUCTIONS, "files": [file], "generator": "openai" }),
            "needs a model",
        ),
    ] {
        let (status, answer) = server
            .call(
                Method::POST,
                "/v1/flow/alignment/generate",
                Some(&key),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{message}");
    }
    let (status, _) = server.get("/v1/flow/no-such-thing", &key).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_job_mid_way_stops_it_and_keeps_it_cancelled() {
    let server = Server::start(false).await;
    let key = server.key("acme").await;
    let file = server.upload_example(&key).await;
    let body = json!({ "instructions": INSTRUCTIONS, "files": [file], "shard_tokens": 300 });
    let (_, job) = server
        .call(
            Method::POST,
            "/v1/flow/alignment/generate",
            Some(&key),
            Some(body),
        )
        .await;
    let job = job["id"].as_str().unwrap().to_string();
    // Published, nothing consumed yet.
    let running = server.wait_for_status(&key, &job, &["running"]).await;
    let total = running["principia"]["shards_total"].as_u64().unwrap();
    assert!(total > 1, "{running:#}");
    let (status, cancelled) = server
        .call(
            Method::POST,
            &format!("/v1/flow/alignment/{job}/cancel"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cancelled["status"], "cancelled");
    assert!(cancelled["stopped_at"].is_string());
    assert!(
        cancelled["status_message"]
            .as_str()
            .unwrap()
            .contains(&format!("of {total} shards")),
        "{cancelled}"
    );
    // Workers arriving afterwards do not bring it back.
    server.start_workers();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, after) = server.get(&format!("/v1/flow/alignment/{job}"), &key).await;
    assert_eq!(after["status"], "cancelled");
    let (_, outputs) = server
        .get(&format!("/v1/flow/alignment/{job}/outputs"), &key)
        .await;
    assert_eq!(outputs, json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn combine_merges_a_job_dataset_with_uploaded_data_into_new_fine_tune_files() {
    let server = Server::start(false).await;
    server.start_workers();
    let key = server.key("acme").await;
    let document = server.upload_example(&key).await;
    let (status, job) = server.generate(&key, &[&document]).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    let job_id = job["id"].as_str().unwrap();
    let done = server
        .wait_for_status(&key, job_id, &["completed", "failed"])
        .await;
    assert_eq!(done["status"], "completed", "{done:#}");
    let (_, outputs) = server
        .get(&format!("/v1/flow/alignment/{job_id}/outputs"), &key)
        .await;
    let dataset = outputs[0]["id"].as_str().unwrap().to_string();
    let generated = {
        let response = server
            .request(
                Method::GET,
                &format!("/v1/flow/files/{dataset}/content"),
                Some(&key),
            )
            .send()
            .await
            .unwrap();
        let bytes = response.bytes().await.unwrap();
        proto::dataset::decode_parquet(bytes).unwrap().0
    };

    // The user's data: two repeats of generated items and two of its own.
    let mut mine = String::new();
    for record in &generated[..2] {
        mine.push_str(&format!(
            "{}\n",
            json!({"question": record.question, "answer": record.answer})
        ));
    }
    mine.push_str("{\"prompt\": \"Which branch closes mortgages in Halifax?\", \"completion\": \"The Quay Street branch does.\"}\n");
    mine.push_str("{\"prompt\": \"How long are signed loan files kept?\", \"completion\": \"Seven years after payoff.\"}\n");
    let (status, user_file) = server
        .upload(&key, "mine.jsonl", "fine-tune", mine.into_bytes())
        .await;
    assert_eq!(status, StatusCode::OK, "{user_file}");
    let user_file = user_file["id"].as_str().unwrap();

    let body = json!({"files": [dataset, user_file], "sources": ["generated"],
        "eval_fraction": 0.25, "seed": 3, "name": "harbor-plus-mine"});
    let (status, combined) = server
        .call(Method::POST, "/v1/flow/combine", Some(&key), Some(body))
        .await;
    assert_eq!(status, StatusCode::OK, "{combined}");
    let summary = &combined["summary"];
    let n = generated.len() as u64;
    assert_eq!(summary["rows"], n + 4);
    assert_eq!(summary["kept"], n + 2);
    assert_eq!(summary["sources"][1]["source"], "mine");
    assert_eq!(summary["sources"][1]["removed"]["exact_duplicate"], 2);
    assert_eq!(combined["file"]["filename"], "harbor-plus-mine.parquet");
    assert_eq!(combined["file"]["purpose"], "fine-tune");
    assert_eq!(
        combined["eval_file"]["filename"],
        "harbor-plus-mine.eval.parquet"
    );
    let mut rows = 0;
    for file in [&combined["file"], &combined["eval_file"]] {
        let id = file["id"].as_str().unwrap();
        let response = server
            .request(
                Method::GET,
                &format!("/v1/flow/files/{id}/content"),
                Some(&key),
            )
            .send()
            .await
            .unwrap();
        rows += proto::dataset::decode_parquet(response.bytes().await.unwrap())
            .unwrap()
            .0
            .len() as u64;
    }
    assert_eq!(rows, n + 2);
    assert_eq!(summary["eval"], ((n + 2) as f64 * 0.25).round() as u64);

    // Only fine-tune files of the caller's own tenant; unreadable data names file and line.
    let (status, error) = server
        .call(
            Method::POST,
            "/v1/flow/combine",
            Some(&key),
            Some(json!({"files": [document]})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    let other = server.key("globex").await;
    let (status, _) = server
        .call(
            Method::POST,
            "/v1/flow/combine",
            Some(&other),
            Some(json!({"files": [user_file]})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Data combine could not read is refused at upload, with the file and line.
    let (status, error) = server
        .upload(
            &key,
            "bad.jsonl",
            "fine-tune",
            b"{\"question\": 1}\n".to_vec(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error.to_string().contains("bad.jsonl:1"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_estimate_plans_the_uploaded_documents_like_the_cli_and_starts_nothing() {
    let server = Server::start(false).await;
    let key = server.key("acme").await;
    let document = server.upload_example(&key).await;
    let body = json!({"instructions": INSTRUCTIONS, "files": [document], "generator": "openai",
        "shard_tokens": 250, "price_in": 1.0, "price_out": 2.0});
    let (status, estimate) = server
        .call(
            Method::POST,
            "/v1/flow/alignment/estimate",
            Some(&key),
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{estimate}");
    let mut spec = proto::JobSpec::extractive(INSTRUCTIONS);
    spec.generator.kind = proto::GeneratorKind::Openai;
    spec.shard_token_budget = 250;
    let expected = coordinator::estimate::estimate_files(&[example()], None, &spec).unwrap();
    assert!(expected.calls > 0);
    assert_eq!(estimate["calls"], expected.calls);
    assert_eq!(estimate["shards"], expected.shards);
    assert_eq!(estimate["prompt_tokens"], expected.prompt_tokens);
    assert_eq!(estimate["completion_tokens"], expected.completion_tokens);
    let cost = (expected.prompt_tokens + 2 * expected.completion_tokens) as f64 / 1e6;
    assert!((estimate["cost"].as_f64().unwrap() - cost).abs() < 1e-12);
    let (_, jobs) = server.get("/v1/flow/alignment", &key).await;
    assert_eq!(jobs["data"].as_array().map_or(0, Vec::len), 0, "{jobs}");

    let (status, extractive) = server
        .call(
            Method::POST,
            "/v1/flow/alignment/estimate",
            Some(&key),
            Some(json!({"instructions": INSTRUCTIONS, "files": [document]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            extractive["generator"].as_str(),
            extractive["calls"].as_u64()
        ),
        (Some("extractive"), Some(0))
    );
    let (status, error) = server
        .call(
            Method::POST,
            "/v1/flow/alignment/estimate",
            Some(&key),
            Some(json!({"instructions": INSTRUCTIONS, "files": [document], "price_in": -1})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
}

/// `{id}` in a documented path, filled with a well-formed id that exists nowhere.
fn concrete(path: &str) -> String {
    let id = if path.contains("/files/") {
        "file-0"
    } else {
        "al-0"
    };
    path.replace("{id}", id)
        .replace("{node_id}", "0000000000000000")
        .replace("{record_id}", "rec-0")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_describes_every_route_and_every_described_route_is_served() {
    let server = Server::start(false).await;
    let key = server.key("acme").await;
    let (status, served) = server.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(served, serde_json::to_value(&server.openapi).unwrap());
    assert_eq!(served["openapi"], "3.1.0");
    assert!(served["components"]["securitySchemes"]["api_key"].is_object());

    let mut described = Vec::new();
    for (path, item) in served["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            described.push((method.to_uppercase(), path.clone()));
        }
    }
    described.sort();
    // Every operation is complete enough for generators: an id and described responses.
    for (method, path) in &described {
        let operation = &served["paths"][path][method.to_lowercase()];
        assert!(operation["operationId"].is_string(), "{method} {path}");
        for (status, response) in operation["responses"].as_object().unwrap() {
            assert!(
                response["description"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty()),
                "{method} {path} {status} has no description"
            );
        }
    }
    // The list of endpoints, each described.
    let mut expected: Vec<(String, String)> = [
        ("PUT", "/v1/flow/files"),
        ("GET", "/v1/flow/files"),
        ("POST", "/v1/flow/files/validate_metadata"),
        ("GET", "/v1/flow/files/{id}"),
        ("DELETE", "/v1/flow/files/{id}"),
        ("GET", "/v1/flow/files/{id}/content"),
        ("POST", "/v1/flow/alignment/generate"),
        ("GET", "/v1/flow/alignment"),
        ("GET", "/v1/flow/alignment/{id}"),
        ("DELETE", "/v1/flow/alignment/{id}"),
        ("GET", "/v1/flow/alignment/{id}/outputs"),
        ("POST", "/v1/flow/alignment/{id}/cancel"),
        ("GET", "/v1/flow/alignment/{id}/report"),
        ("POST", "/v1/flow/combine"),
        ("POST", "/v1/flow/alignment/estimate"),
        ("GET", "/v1/flow/alignment/{id}/review/tree"),
        ("GET", "/v1/flow/alignment/{id}/review/sections/{node_id}"),
        ("PUT", "/v1/flow/alignment/{id}/review/sections/{node_id}"),
        ("GET", "/v1/flow/alignment/{id}/review/items/{record_id}"),
        ("PUT", "/v1/flow/alignment/{id}/review/items/{record_id}"),
        ("PATCH", "/v1/flow/alignment/{id}/review/items/{record_id}"),
        ("POST", "/v1/flow/alignment/{id}/review/regenerate"),
        ("GET", "/v1/flow/alignment/{id}/review/export"),
        ("GET", "/metrics"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/openapi.json"),
    ]
    .iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    expected.sort();
    assert_eq!(described, expected);

    // Every described route is served: the router answers it (not its fallback, not 405).
    for (method, path) in &described {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let response = server
            .request(method.clone(), &concrete(path), Some(&key))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(!text.contains("no such route"), "{method} {path}: {text}");
    }
    // And the fallback is what an undescribed route gets.
    let (status, body) = server.get("/v1/flow/bulk_files", &key).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.to_string().contains("no such route"));
}
