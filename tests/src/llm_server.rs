//! An OpenAI-compatible chat-completions server for tests and benchmarks, on loopback only.
//!
//! `POST /v1/chat/completions` and `GET /v1/models`. By default it is "grounded": it answers a
//! generation request (`response_format.json_schema.name` = `principia_items`, or a prompt with a
//! `Target section: number N` line and no judge candidates) with items whose answers and evidence
//! are real sentences of that section, taken from the `<section number="N" ...>` block of the
//! `<source>` in the first message (evidence cites them by id, `S3`, when the prompt numbers the
//! section's sentences, and quotes them otherwise); it answers a judge request (`principia_verdicts`, or a prompt
//! with a `<candidates>` block) by accepting every candidate with top scores; it answers a refine
//! request (`principia_revisions`) by returning every candidate with its question reworded.
//! Anything else gets a short plain reply. Replies carry `usage` estimated from text length (4 bytes a token).
//!
//! [`ServerConfig`] adds latency, faults and scripts, applied in this order to each request:
//! capacity (`max_concurrent`: excess requests wait), latency, API key (401), model (404),
//! the first `fail_first_429` requests get 429 with `Retry-After`, the next `fail_first_500` get
//! 500, then the `scripted` replies are served in order, then generation and judge replies may be
//! made malformed (`malformed_first`, `malformed_every`), carry a fabricated quote
//! (`fabricate_evidence`) or reject (`judge_reject`, `judge_fixable`, `judge_reject_first`).
//!
//! Lookups: once something is looked up (`<lookup>` blocks in the prompt, or tool results), a
//! generation reply's last item is a `cross_reference` item whose evidence quotes a sentence of
//! the target section and one of the first looked-up text. With `look_up_references`, a
//! generation request that offers tools (`tools`, `tool_choice` not `none`) gets, before any tool
//! result is in the conversation, a reply calling `lookup_section` for each `- reference: WRITTEN
//! -> CITATION` line of the prompt and `lookup_definition` for each `- term: TERM -> CITATION`
//! line, as a model that checks every listed lookup would. With `refuse_tools`, any request offering tools gets a 400 naming them,
//! as vLLM does without a tool parser.
//!
//! [`RunningServer`] counts what it received by [`RequestKind`] and can record request bodies.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;

/// Schema names used by Principia's prompts (`worker::generate::openai`).
pub const ITEMS_SCHEMA_NAME: &str = "principia_items";
pub const VERDICTS_SCHEMA_NAME: &str = "principia_verdicts";
pub const REVISIONS_SCHEMA_NAME: &str = "principia_revisions";

/// A reply served instead of the default one, in order, before the default behaviour resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptedReply {
    /// A 200 chat completion with this content and finish reason.
    Content {
        content: String,
        finish_reason: String,
    },
    /// Any status with a raw body (and optionally a `Retry-After` header).
    Status {
        status: u16,
        body: String,
        retry_after: Option<String>,
    },
}

impl ScriptedReply {
    /// A normal reply with `content`.
    pub fn content(content: impl Into<String>) -> Self {
        ScriptedReply::Content {
            content: content.into(),
            finish_reason: "stop".into(),
        }
    }

    /// A reply cut off at the token limit (`finish_reason = length`).
    pub fn truncated(content: impl Into<String>) -> Self {
        ScriptedReply::Content {
            content: content.into(),
            finish_reason: "length".into(),
        }
    }

    /// An HTTP error with an OpenAI-style error body.
    pub fn status(status: u16, message: &str) -> Self {
        ScriptedReply::Status {
            status,
            body: json!({"error": {"message": message, "type": "test_server"}}).to_string(),
            retry_after: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Added to every request before it is answered.
    pub latency: Duration,
    /// The first this many requests get 429.
    pub fail_first_429: u32,
    /// `Retry-After` value sent with those 429s (none when unset).
    pub retry_after: Option<String>,
    /// The next this many requests get 500.
    pub fail_first_500: u32,
    /// Served in order before the default behaviour.
    pub scripted: Vec<ScriptedReply>,
    /// The first this many generation/judge replies are malformed JSON.
    pub malformed_first: u32,
    /// Every n-th generation/judge reply is malformed JSON (0: never).
    pub malformed_every: u32,
    /// The first item of every generation reply carries a quote that is not in the source.
    pub fabricate_evidence: bool,
    /// The judge rejects every candidate (low scores, verdict `reject`).
    pub judge_reject: bool,
    /// The judge's rejections say `fixable: true`.
    pub judge_fixable: bool,
    /// The first this many judge requests reject every candidate as fixable.
    pub judge_reject_first: u32,
    /// Items per generation reply at most (also bounded by the prompt's maximum).
    pub items_per_reply: usize,
    /// Requests processed at once at most; excess requests wait.
    pub max_concurrent: Option<usize>,
    /// When set, requests without `Authorization: Bearer <key>` get 401.
    pub api_key: Option<String>,
    /// When non-empty, other models get 404 `model_not_found`.
    pub models: Vec<String>,
    /// Leave `usage` out of replies.
    pub omit_usage: bool,
    /// Wrap JSON replies in prose and a code fence, as chatty models do without a grammar.
    pub json_in_prose: bool,
    /// Keep every request body for [`RunningServer::recorded`].
    pub record_requests: bool,
    /// Answer requests that offer tools with 400.
    pub refuse_tools: bool,
    /// Answer `response_format: {type: json_schema}` with 500 naming the field, as
    /// llama-cpp-python does.
    pub refuse_json_schema: bool,
    /// Answer `response_format: {type: json_object}` with 400 naming the field too.
    pub refuse_json_object: bool,
    /// Call the tools for the prompt's listed references and terms; see the module docs.
    pub look_up_references: bool,
    /// The model's context window in tokens (4 bytes a token, messages plus `max_tokens`): a
    /// request past it gets 400 in [`ServerConfig::context_wording`].
    pub context_tokens: Option<usize>,
    pub context_wording: ContextWording,
}

/// How a server words the 400 of a prompt past the model's context window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ContextWording {
    /// `code: context_length_exceeded`, "This model's maximum context length is N tokens. However,
    /// your messages resulted in M tokens. ..."
    #[default]
    OpenAi,
    /// vLLM 0.6 to 0.9: "This model's maximum context length is N tokens. However, you requested M
    /// tokens (P in the messages, C in the completion). ...", `type: BadRequestError`.
    Vllm,
    /// vLLM 0.10 and later: "The decoder prompt (length M) is longer than the maximum model length
    /// of N. ...".
    VllmDecoderPrompt,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            port: 0,
            latency: Duration::ZERO,
            fail_first_429: 0,
            retry_after: None,
            fail_first_500: 0,
            scripted: Vec::new(),
            malformed_first: 0,
            malformed_every: 0,
            fabricate_evidence: false,
            judge_reject: false,
            judge_fixable: false,
            judge_reject_first: 0,
            items_per_reply: 3,
            max_concurrent: None,
            api_key: None,
            models: Vec::new(),
            omit_usage: false,
            json_in_prose: false,
            record_requests: false,
            refuse_tools: false,
            refuse_json_schema: false,
            refuse_json_object: false,
            look_up_references: false,
            context_tokens: None,
            context_wording: ContextWording::OpenAi,
        }
    }
}

/// What a request was taken to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Generate,
    Judge,
    Refine,
    Other,
}

/// A received chat request, when [`ServerConfig::record_requests`] is set.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub kind: RequestKind,
    pub model: String,
    pub body: Value,
}

impl RecordedRequest {
    /// Content of the message at `index`.
    pub fn message(&self, index: usize) -> Option<&str> {
        self.body["messages"][index]["content"].as_str()
    }
}

/// Counts of what the server received and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Chat requests received.
    pub requests: u64,
    pub generate: u64,
    pub judge: u64,
    pub refine: u64,
    pub other: u64,
    pub rate_limited: u64,
    pub server_errors: u64,
    pub unauthorized: u64,
    pub unknown_model: u64,
    pub scripted: u64,
    pub malformed: u64,
    /// Replies that called tools.
    pub tool_call_replies: u64,
    /// Requests refused for offering tools.
    pub tools_refused: u64,
    /// Requests refused for their response format (`refuse_json_schema`, `refuse_json_object`).
    pub formats_refused: u64,
    /// Requests refused for a prompt past `context_tokens`.
    pub context_exceeded: u64,
    /// Most chat requests inside the server at once (waiting for capacity included).
    pub peak_in_flight: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    generate: AtomicU64,
    judge: AtomicU64,
    refine: AtomicU64,
    other: AtomicU64,
    rate_limited: AtomicU64,
    server_errors: AtomicU64,
    unauthorized: AtomicU64,
    unknown_model: AtomicU64,
    scripted: AtomicU64,
    malformed: AtomicU64,
    tool_call_replies: AtomicU64,
    tools_refused: AtomicU64,
    formats_refused: AtomicU64,
    context_exceeded: AtomicU64,
    json_replies: AtomicU64,
    judged: AtomicU64,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
}

struct AppState {
    config: ServerConfig,
    counters: Counters,
    capacity: Option<Semaphore>,
    scripted: Mutex<VecDeque<ScriptedReply>>,
    recorded: Mutex<Vec<RecordedRequest>>,
}

/// A server running on a tokio task; shut down by [`RunningServer::shutdown`] or on drop.
pub struct RunningServer {
    /// Base URL with the API prefix: `http://127.0.0.1:PORT/v1`.
    pub url: String,
    pub addr: SocketAddr,
    state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

/// Start a server; panics when no loopback port can be bound (see [`try_spawn`]).
pub async fn spawn(config: ServerConfig) -> RunningServer {
    try_spawn(config)
        .await
        .expect("bind the LLM test server on 127.0.0.1")
}

/// Start a server on `127.0.0.1:config.port`.
pub async fn try_spawn(config: ServerConfig) -> io::Result<RunningServer> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", config.port)).await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(AppState {
        capacity: config.max_concurrent.map(|n| Semaphore::new(n.max(1))),
        scripted: Mutex::new(config.scripted.iter().cloned().collect()),
        recorded: Mutex::new(Vec::new()),
        counters: Counters::default(),
        config,
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .with_state(state.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    Ok(RunningServer {
        url: format!("http://{addr}/v1"),
        addr,
        state,
        stop: Some(stop),
        task: Some(task),
    })
}

impl RunningServer {
    /// Serve `replies` next, in order, before the default behaviour resumes (as
    /// [`ServerConfig::scripted`], from now on).
    pub fn script(&self, replies: impl IntoIterator<Item = ScriptedReply>) {
        self.state
            .scripted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(replies);
    }

    pub fn stats(&self) -> ServerStats {
        let c = &self.state.counters;
        let get = |a: &AtomicU64| a.load(Ordering::SeqCst);
        ServerStats {
            requests: get(&c.requests),
            generate: get(&c.generate),
            judge: get(&c.judge),
            refine: get(&c.refine),
            other: get(&c.other),
            rate_limited: get(&c.rate_limited),
            server_errors: get(&c.server_errors),
            unauthorized: get(&c.unauthorized),
            unknown_model: get(&c.unknown_model),
            scripted: get(&c.scripted),
            malformed: get(&c.malformed),
            tool_call_replies: get(&c.tool_call_replies),
            tools_refused: get(&c.tools_refused),
            formats_refused: get(&c.formats_refused),
            context_exceeded: get(&c.context_exceeded),
            peak_in_flight: get(&c.peak_in_flight),
        }
    }

    /// Chat requests received.
    pub fn requests(&self) -> u64 {
        self.stats().requests
    }

    /// Chat requests received of one kind (faulted requests are counted by kind too).
    pub fn requests_of(&self, kind: RequestKind) -> u64 {
        let stats = self.stats();
        match kind {
            RequestKind::Generate => stats.generate,
            RequestKind::Judge => stats.judge,
            RequestKind::Refine => stats.refine,
            RequestKind::Other => stats.other,
        }
    }

    /// Request bodies received so far (only with [`ServerConfig::record_requests`]).
    pub fn recorded(&self) -> Vec<RecordedRequest> {
        self.state
            .recorded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stop accepting, finish requests in flight, and wait for the server task.
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    let names = if state.config.models.is_empty() {
        vec!["test-model".to_string()]
    } else {
        state.config.models.clone()
    };
    let data: Vec<Value> = names
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "principia-tests"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// Decrements the in-flight count when a request ends, however it ends.
struct InFlight<'a>(&'a Counters);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn error(status: StatusCode, message: &str, code: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"message": message, "type": "test_server", "code": code}})),
    )
        .into_response()
}

async fn chat(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let counters = &state.counters;
    counters.requests.fetch_add(1, Ordering::SeqCst);
    let now = counters.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    counters.peak_in_flight.fetch_max(now, Ordering::SeqCst);
    let _in_flight = InFlight(counters);
    let _permit = match &state.capacity {
        Some(capacity) => Some(capacity.acquire().await.expect("capacity semaphore open")),
        None => None,
    };
    if !state.config.latency.is_zero() {
        tokio::time::sleep(state.config.latency).await;
    }
    let config = &state.config;

    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        counters.other.fetch_add(1, Ordering::SeqCst);
        return error(StatusCode::BAD_REQUEST, "body is not JSON", "invalid_json");
    };
    let kind = request_kind(&request);
    match kind {
        RequestKind::Generate => &counters.generate,
        RequestKind::Judge => &counters.judge,
        RequestKind::Refine => &counters.refine,
        RequestKind::Other => &counters.other,
    }
    .fetch_add(1, Ordering::SeqCst);
    let model = request["model"].as_str().unwrap_or("").to_string();
    if config.record_requests {
        state
            .recorded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(RecordedRequest {
                kind,
                model: model.clone(),
                body: request.clone(),
            });
    }

    if let Some(key) = &config.api_key {
        let expected = format!("Bearer {key}");
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            counters.unauthorized.fetch_add(1, Ordering::SeqCst);
            return error(
                StatusCode::UNAUTHORIZED,
                "Incorrect API key provided.",
                "invalid_api_key",
            );
        }
    }
    if !config.models.is_empty() && !config.models.contains(&model) {
        counters.unknown_model.fetch_add(1, Ordering::SeqCst);
        return error(
            StatusCode::NOT_FOUND,
            &format!("The model `{model}` does not exist."),
            "model_not_found",
        );
    }
    let faulted = counters.rate_limited.load(Ordering::SeqCst)
        + counters.server_errors.load(Ordering::SeqCst);
    if faulted < u64::from(config.fail_first_429) {
        counters.rate_limited.fetch_add(1, Ordering::SeqCst);
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            "Rate limit reached.",
            "rate_limit_exceeded",
        );
        if let Some(after) = config.retry_after.as_deref().and_then(|v| v.parse().ok()) {
            response.headers_mut().insert(header::RETRY_AFTER, after);
        }
        return response;
    }
    if faulted < u64::from(config.fail_first_429) + u64::from(config.fail_first_500) {
        counters.server_errors.fetch_add(1, Ordering::SeqCst);
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The server had an error.",
            "server_error",
        );
    }

    let format = request["response_format"]["type"].as_str().unwrap_or("");
    if (config.refuse_json_schema && format == "json_schema")
        || (config.refuse_json_object && format == "json_object")
    {
        counters.formats_refused.fetch_add(1, Ordering::SeqCst);
        let (status, message) = if format == "json_schema" {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), 'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}",
            )
        } else {
            (
                StatusCode::BAD_REQUEST,
                "response_format of type json_object is not supported by this model",
            )
        };
        return error(status, message, "invalid_request_error");
    }
    let offers_tools = request["tools"].as_array().is_some_and(|t| !t.is_empty());
    if config.refuse_tools && offers_tools {
        counters.tools_refused.fetch_add(1, Ordering::SeqCst);
        return error(
            StatusCode::BAD_REQUEST,
            "\"auto\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set",
            "invalid_request_error",
        );
    }

    let prompt_bytes: usize = request["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| m["content"].as_str().map_or(0, str::len))
                .sum()
        })
        .unwrap_or(0);
    if let Some(limit) = config.context_tokens {
        let completion = request["max_tokens"].as_u64().unwrap_or(0) as usize;
        let prompt = prompt_bytes.div_ceil(4);
        if prompt + completion > limit {
            counters.context_exceeded.fetch_add(1, Ordering::SeqCst);
            let (message, kind, code) = match config.context_wording {
                ContextWording::OpenAi => (
                    format!(
                        "This model's maximum context length is {limit} tokens. However, your messages resulted in {} tokens. Please reduce the length of the messages.",
                        prompt + completion
                    ),
                    "invalid_request_error",
                    "context_length_exceeded",
                ),
                ContextWording::Vllm => (
                    format!(
                        "This model's maximum context length is {limit} tokens. However, you requested {} tokens ({prompt} in the messages, {completion} in the completion). Please reduce the length of the messages or completion.",
                        prompt + completion
                    ),
                    "BadRequestError",
                    "400",
                ),
                ContextWording::VllmDecoderPrompt => (
                    format!(
                        "The decoder prompt (length {prompt}) is longer than the maximum model length of {limit}. Make sure that `max_model_len` is no smaller than the number of text tokens."
                    ),
                    "BadRequestError",
                    "400",
                ),
            };
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": {"message": message, "type": kind, "param": "messages", "code": code}})),
            )
                .into_response();
        }
    }
    let scripted = state
        .scripted
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop_front();
    if let Some(reply) = scripted {
        counters.scripted.fetch_add(1, Ordering::SeqCst);
        return match reply {
            ScriptedReply::Content {
                content,
                finish_reason,
            } => completion(config, &model, &content, &finish_reason, prompt_bytes),
            ScriptedReply::Status {
                status,
                body,
                retry_after,
            } => {
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let mut response =
                    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
                if let Some(after) = retry_after.and_then(|v| v.parse().ok()) {
                    response.headers_mut().insert(header::RETRY_AFTER, after);
                }
                response
            }
        };
    }

    if kind == RequestKind::Generate
        && config.look_up_references
        && offers_tools
        && request["tool_choice"] != "none"
        && !request["messages"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["role"] == "tool"))
    {
        let calls = tool_calls(&request);
        if !calls.is_empty() {
            counters.tool_call_replies.fetch_add(1, Ordering::SeqCst);
            return tool_call_completion(config, &model, calls, prompt_bytes);
        }
    }
    let content = match kind {
        RequestKind::Other => "OK".to_string(),
        RequestKind::Generate | RequestKind::Judge | RequestKind::Refine => {
            let n = counters.json_replies.fetch_add(1, Ordering::SeqCst) + 1;
            let malformed = n <= u64::from(config.malformed_first)
                || (config.malformed_every > 0 && n % u64::from(config.malformed_every) == 0);
            if malformed {
                counters.malformed.fetch_add(1, Ordering::SeqCst);
                "{\"items\": [{\"question\": \"unterminated".to_string()
            } else {
                let json = match kind {
                    RequestKind::Generate => generate_reply(config, &request),
                    RequestKind::Refine => refine_reply(&request),
                    _ => {
                        let n = counters.judged.fetch_add(1, Ordering::SeqCst) + 1;
                        judge_reply(config, &request, n <= u64::from(config.judge_reject_first))
                    }
                };
                if config.json_in_prose {
                    format!(
                        "Sure! Here is the JSON you asked for:\n\n```json\n{json}\n```\n\nLet me know if you need anything else."
                    )
                } else {
                    json
                }
            }
        }
    };
    completion(config, &model, &content, "stop", prompt_bytes)
}

fn completion(
    config: &ServerConfig,
    model: &str,
    content: &str,
    finish_reason: &str,
    prompt_bytes: usize,
) -> Response {
    let message = json!({"role": "assistant", "content": content});
    chat_completion(
        config,
        model,
        message,
        finish_reason,
        (prompt_bytes, content.len()),
    )
}

/// A reply calling `calls` (`finish_reason = tool_calls`, no content).
fn tool_call_completion(
    config: &ServerConfig,
    model: &str,
    calls: Vec<Value>,
    prompt_bytes: usize,
) -> Response {
    let completion_bytes = Value::Array(calls.clone()).to_string().len();
    let message = json!({"role": "assistant", "content": null, "tool_calls": calls});
    chat_completion(
        config,
        model,
        message,
        "tool_calls",
        (prompt_bytes, completion_bytes),
    )
}

/// A chat completion with one choice, and usage from `(prompt, completion)` bytes.
fn chat_completion(
    config: &ServerConfig,
    model: &str,
    message: Value,
    finish_reason: &str,
    (prompt_bytes, completion_bytes): (usize, usize),
) -> Response {
    let mut body = json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
    });
    if !config.omit_usage {
        let prompt = prompt_bytes.div_ceil(4);
        let completion = completion_bytes.div_ceil(4);
        body["usage"] = json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        });
    }
    axum::Json(body).into_response()
}

/// The tool calls for the `- reference:` and `- term:` lines of the generation prompt.
fn tool_calls(request: &Value) -> Vec<Value> {
    let prompt = user_message_with(request, "Target section: number ");
    prompt
        .lines()
        .filter_map(|line| {
            let (tool, argument, rest) = if let Some(rest) = line.strip_prefix("- reference: ") {
                ("lookup_section", "citation", rest)
            } else {
                ("lookup_definition", "term", line.strip_prefix("- term: ")?)
            };
            let (written, citation) = rest.split_once(" -> ")?;
            let value = if argument == "citation" {
                citation
            } else {
                written
            };
            Some((tool, argument, value.to_string()))
        })
        .enumerate()
        .map(|(i, (tool, argument, value))| {
            json!({
                "id": format!("call_{i}"),
                "type": "function",
                "function": {
                    "name": tool,
                    "arguments": json!({argument: value}).to_string(),
                },
            })
        })
        .collect()
}

/// Texts the conversation looked up: tool results (`text`, or each definition's `text`) and
/// `<lookup>` blocks of the user prompt.
fn looked_up(request: &Value) -> Vec<String> {
    let mut texts = Vec::new();
    for message in request["messages"].as_array().into_iter().flatten() {
        let Some(content) = message["content"].as_str() else {
            continue;
        };
        if message["role"] == "tool" {
            let Ok(result) = serde_json::from_str::<Value>(content) else {
                continue;
            };
            texts.extend(result["text"].as_str().map(str::to_string));
            for definition in result["definitions"].as_array().into_iter().flatten() {
                texts.extend(definition["text"].as_str().map(str::to_string));
            }
        } else if message["role"] == "user" {
            let mut rest = content;
            while let Some(start) = rest.find("<lookup citation=\"") {
                let after = &rest[start..];
                let Some(body_start) = after.find("\">\n").map(|p| p + 3) else {
                    break;
                };
                let Some(body_end) = after[body_start..].find("\n</lookup>") else {
                    break;
                };
                texts.push(after[body_start..body_start + body_end].to_string());
                rest = &after[body_start + body_end..];
            }
        }
    }
    texts
}

/// The latest user message containing `needle` (a repair turn does not repeat the task).
fn user_message_with<'a>(request: &'a Value, needle: &str) -> &'a str {
    request["messages"]
        .as_array()
        .and_then(|messages| {
            messages
                .iter()
                .rev()
                .filter(|m| m["role"] == "user")
                .filter_map(|m| m["content"].as_str())
                .find(|c| c.contains(needle))
        })
        .unwrap_or("")
}

fn request_kind(request: &Value) -> RequestKind {
    match request["response_format"]["json_schema"]["name"].as_str() {
        Some(ITEMS_SCHEMA_NAME) => return RequestKind::Generate,
        Some(VERDICTS_SCHEMA_NAME) => return RequestKind::Judge,
        Some(REVISIONS_SCHEMA_NAME) => return RequestKind::Refine,
        _ => {}
    }
    let all: String = request["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|m| m["content"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    // Without a json_schema format the schema is named in the prompt ("JSON Schema (NAME)").
    let named = |name: &str| all.contains(&format!("JSON Schema ({name})"));
    if named(REVISIONS_SCHEMA_NAME) {
        return RequestKind::Refine;
    }
    if named(VERDICTS_SCHEMA_NAME) {
        return RequestKind::Judge;
    }
    if named(ITEMS_SCHEMA_NAME) {
        return RequestKind::Generate;
    }
    if all.contains("<candidates>") {
        RequestKind::Judge
    } else if all.contains("Target section: number") {
        RequestKind::Generate
    } else {
        RequestKind::Other
    }
}

/// The target section of a request: its number's `<section>` block in any message.
fn target_section(request: &Value) -> Option<(String, String)> {
    let marker = "Target section: number ";
    let prompt = user_message_with(request, marker);
    let at = prompt.find(marker)? + marker.len();
    let number: String = prompt[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let open = format!("<section number=\"{number}\"");
    let messages = request["messages"].as_array()?;
    messages.iter().find_map(|m| {
        let content = m["content"].as_str()?;
        let start = content.find(&open)?;
        // Attribute values may contain `>` (citations like `Policy > Part 4`) but never `"`.
        let tag_end = start + content[start..].find("\">")? + 2;
        let tag = &content[start..tag_end];
        let citation = tag
            .split("citation=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("the section")
            .to_string();
        let body_start = tag_end + usize::from(content[tag_end..].starts_with('\n'));
        let body_end = body_start + content[body_start..].find("\n</section>")?;
        let text = content[body_start..body_end]
            .replace("<\\/source>", "</source>")
            .replace("<\\/section>", "</section>");
        Some((citation, text))
    })
}

/// The line after which a generation prompt numbers the target section's sentences
/// (`worker/prompts/generate.v4.md`).
const NUMBERED_SENTENCES: &str = "<sentences>";

/// Sentences of at least eight words that do not introduce a list.
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut rest = line.trim();
        while !rest.is_empty() {
            let end = rest.find(". ").map_or(rest.len(), |p| p + 1);
            let sentence = rest[..end].trim();
            if sentence.split_whitespace().count() >= 8
                && !sentence.ends_with(':')
                && !sentence.ends_with('—')
            {
                out.push(sentence);
            }
            rest = rest[end..].trim_start();
        }
    }
    out
}

/// `between A and B` in the prompt: B.
fn requested_max(prompt: &str) -> Option<usize> {
    let at = prompt.find("between ")?;
    let rest = &prompt[at + "between ".len()..];
    let and = rest.find(" and ")?;
    rest[and + 5..].split_whitespace().next()?.parse().ok()
}

fn question_type(sentence: &str) -> &'static str {
    let lower = sentence.to_lowercase();
    if lower.contains(" means ") {
        "definition"
    } else if lower.contains("shall not") || lower.contains("must not") {
        "prohibition"
    } else if lower.contains("shall") || lower.contains("must") {
        "obligation"
    } else if lower.contains(" may ") {
        "permission"
    } else {
        "scope"
    }
}

/// The numbered sentences of a generation prompt that asks for sentence ids (`S3: text` lines
/// after [`NUMBERED_SENTENCES`]), as (id, sentence).
fn numbered_sentences(prompt: &str) -> Option<Vec<(String, String)>> {
    let (_, list) = prompt.split_once(NUMBERED_SENTENCES)?;
    Some(
        list.lines()
            .skip_while(|line| line.trim().is_empty())
            .map_while(|line| {
                let (id, sentence) = line.split_once(": ")?;
                let numbered = id.len() > 1
                    && id.starts_with('S')
                    && id[1..].bytes().all(|b| b.is_ascii_digit());
                numbered.then(|| (id.to_string(), sentence.to_string()))
            })
            .collect(),
    )
}

fn generate_reply(config: &ServerConfig, request: &Value) -> String {
    let Some((citation, text)) = target_section(request) else {
        return json!({"items": []}).to_string();
    };
    let prompt = user_message_with(request, "Target section: number ");
    let limit = requested_max(prompt)
        .unwrap_or(usize::MAX)
        .min(config.items_per_reply);
    // Evidence as the prompt asks for it: sentence ids when it numbers the section's sentences
    // (those of eight words or more, not list lead-ins), else the sentences quoted.
    let evidenced: Vec<(String, String)> = match numbered_sentences(prompt) {
        Some(numbered) => numbered
            .into_iter()
            .filter(|(_, sentence)| sentences(sentence).len() == 1)
            .collect(),
        None => sentences(&text)
            .into_iter()
            .map(|s| (s.to_string(), s.to_string()))
            .collect(),
    };
    let mut items: Vec<Value> = evidenced
        .iter()
        .take(limit)
        .enumerate()
        .map(|(i, (cited, sentence))| {
            // The first five and the last four words: distinct sentences give distinct questions.
            let words: Vec<String> = sentence
                .split_whitespace()
                .map(|w| {
                    w.trim_matches(|c: char| !c.is_alphanumeric())
                        .to_lowercase()
                })
                .collect();
            let mut topic: Vec<String> = words.iter().take(5).cloned().collect();
            topic.push("...".into());
            topic.extend(
                words
                    .iter()
                    .skip(5.max(words.len().saturating_sub(4)))
                    .cloned(),
            );
            let evidence = if config.fabricate_evidence && i == 0 {
                "This sentence was invented and appears nowhere in the source text.".to_string()
            } else {
                cited.clone()
            };
            json!({
                "question": format!(
                    "What does rule {} of {citation} provide about \"{}\"?",
                    i + 1,
                    topic.join(" ")
                ),
                "answer": sentence,
                "evidence": [evidence],
                "question_type": question_type(sentence),
            })
        })
        .collect();
    let lookup_sentence = looked_up(request).iter().find_map(|looked| {
        sentences(looked)
            .first()
            .map(|s| s.to_string())
            .or_else(|| Some(looked.trim().to_string()).filter(|l| !l.is_empty()))
    });
    if let (Some(quoted), Some((own_cited, own))) = (lookup_sentence, evidenced.first()) {
        if items.len() == limit {
            items.pop();
        }
        items.push(json!({
            "question": format!(
                "How does {citation} combine with the provision it refers to, which begins \"{}\"?",
                quoted
                    .split_whitespace()
                    .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
                    .filter(|w| !w.is_empty())
                    .take(6)
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            "answer": format!("{own} The provision it refers to states: {quoted}"),
            "evidence": [own_cited, &quoted],
            "question_type": "cross_reference",
        }));
    }
    json!({"items": items}).to_string()
}

/// The candidates of a judge or refine prompt: the last `<candidates>` block (the prose before
/// it may name the tag).
fn candidates(request: &Value) -> Vec<Value> {
    let prompt = user_message_with(request, "<candidates>");
    prompt
        .rsplit_once("<candidates>")
        .and_then(|(_, rest)| rest.split("</candidates>").next())
        .and_then(|c| serde_json::from_str::<Vec<Value>>(c.trim()).ok())
        .unwrap_or_default()
}

/// Every candidate back, revised: its question prefixed with "Precisely, ", lower-casing the
/// original's first letter.
fn refine_reply(request: &Value) -> String {
    let items: Vec<Value> = candidates(request)
        .into_iter()
        .map(|c| {
            let question = c["question"].as_str().unwrap_or("");
            let mut chars = question.chars();
            let revised = match chars.next() {
                Some(first) => format!("Precisely, {}{}", first.to_lowercase(), chars.as_str()),
                None => String::new(),
            };
            json!({
                "index": c["index"],
                "question": revised,
                "answer": c["answer"],
                "evidence": c["evidence"],
                "question_type": c["question_type"],
            })
        })
        .collect();
    json!({"items": items}).to_string()
}

fn judge_reply(config: &ServerConfig, request: &Value, reject_first: bool) -> String {
    let candidates = candidates(request);
    let (score, verdict, reason) = if config.judge_reject || reject_first {
        (2, "reject", "The answer is not supported by the section.")
    } else {
        (5, "accept", "Grounded, specific and self-contained.")
    };
    let fixable = reject_first || (config.judge_reject && config.judge_fixable);
    let verdicts: Vec<Value> = (0..candidates.len())
        .map(|index| {
            json!({
                "index": index,
                "faithfulness": score,
                "relevance": score,
                "specificity": score,
                "self_containedness": score,
                "citation": score,
                "verdict": verdict,
                "fixable": fixable,
                "reason": reason,
            })
        })
        .collect();
    json!({"verdicts": verdicts}).to_string()
}
