//! Client for any OpenAI-compatible chat-completions server (OpenAI, vLLM, Ollama, llama.cpp,
//! TGI's OpenAI route).
//!
//! [`LlmClient::chat`] posts one request to `{base_url}/chat/completions` and returns the reply's
//! text, finish reason and token usage. Around that single call it does what every caller would
//! otherwise repeat: a bound on concurrent requests (at most [`LlmConfig::concurrency`], learned
//! from the server by [`AdaptiveLimit`] unless fixed; a slot is held only while a request is in
//! flight), a per-request timeout, and retries with
//! exponential backoff and jitter on 429, 408, 5xx, timeouts and connection errors, honouring
//! `Retry-After` (seconds or an HTTP date) and `retry-after-ms`, capped at
//! [`LlmConfig::max_retry_delay`]. Other 4xx answers are not retried.
//!
//! [`LlmError::is_transient`] tells the shard's fate: retries exhausted is worth another try
//! later; a rejected request (bad key, unknown model, malformed request) is not.
//!
//! The API key is sent as a bearer token and never logged: [`LlmConfig`]'s `Debug` redacts it and
//! error messages from the server are scrubbed of it.
//!
//! With a [`ResponseCache`] ([`LlmClient::with_cache`]) a request identical to an earlier
//! successful one is answered from the cache: no request, no rate-limit wait, no tokens spent
//! (`usage.cached_calls` = 1).
//!
//! Requests may offer tools ([`ChatRequest::tools`], OpenAI's function-calling format); a reply
//! that calls them carries [`ChatResponse::tool_calls`], and the caller answers with
//! [`ChatMessage::tool`] messages. Which servers get tools is [`LlmConfig::tools`].
//!
//! Counters for calls, retries, tokens and latency are kept in [`LlmMetrics`], read with
//! [`LlmClient::metrics`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use proto::TokenUsage;
use proto::shard::approx_tokens;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cache::{CachedReply, ResponseCache};
use crate::concurrency::AdaptiveLimit;
use crate::limits::{RateLimiter, RateLimits};
use crate::metrics;
use crate::structured_output::{
    Negotiated, OutputShape, StructuredOutput, refuses_response_format, schema_instruction,
};

/// Where the LLM server is and how to talk to it.
#[derive(Clone, PartialEq)]
pub struct LlmConfig {
    /// Base URL including the API prefix, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    /// Sent as `Authorization: Bearer ...` when set.
    pub api_key: Option<String>,
    /// Generator model.
    pub model: String,
    /// Judge model; the generator model when unset.
    pub judge_model: Option<String>,
    /// Timeout of one HTTP request (connect, send, and read the whole reply).
    pub timeout: Duration,
    /// Retries after the first attempt, for retryable failures only.
    pub max_retries: u32,
    /// Requests in flight at once through this client at most.
    pub concurrency: usize,
    /// Whether the limit in flight is learned from the server, between 1 and `concurrency`
    /// ([`crate::concurrency`]), or fixed at `concurrency`.
    pub adaptive_concurrency: bool,
    /// First backoff delay; doubled on every retry, with jitter.
    pub retry_base_delay: Duration,
    /// Upper bound of any wait between attempts, including a server's `Retry-After`.
    pub max_retry_delay: Duration,
    /// How the generator's lookups reach the model.
    pub tools: ToolMode,
    /// How replies' JSON shape is asked for; see [`crate::structured_output`].
    pub structured_output: StructuredOutput,
}

/// How the generator's lookups (cross-references, definitions, the tree) reach the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ToolMode {
    /// `Plain`, and tools (function calling) for anything else; a server that refuses tools gets
    /// `Plain`.
    #[default]
    Auto,
    /// Put the section's cross-references and defined terms, looked up, into the prompt.
    Plain,
    /// No lookups.
    Off,
}

impl std::str::FromStr for ToolMode {
    type Err = ();

    fn from_str(value: &str) -> Result<Self, ()> {
        match value.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(ToolMode::Auto),
            "plain" => Ok(ToolMode::Plain),
            "off" => Ok(ToolMode::Off),
            _ => Err(()),
        }
    }
}

impl fmt::Debug for LlmConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("model", &self.model)
            .field("judge_model", &self.judge_model)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("concurrency", &self.concurrency)
            .field("adaptive_concurrency", &self.adaptive_concurrency)
            .field("retry_base_delay", &self.retry_base_delay)
            .field("max_retry_delay", &self.max_retry_delay)
            .field("tools", &self.tools)
            .field("structured_output", &self.structured_output)
            .finish()
    }
}

/// Base URL used when only `OPENAI_API_KEY` is set, as the OpenAI SDKs do.
pub const OPENAI_DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LlmConfigError {
    #[error(
        "no LLM server configured: set PRINCIPIA_LLM_URL (or OPENAI_BASE_URL, or OPENAI_API_KEY for OpenAI)"
    )]
    MissingUrl,
    #[error("no LLM model configured: set PRINCIPIA_LLM_MODEL")]
    MissingModel,
    #[error("{name}={value:?} is not a valid {expected}")]
    Invalid {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
}

impl LlmConfig {
    /// A configuration with defaults: 120 s timeout, 5 retries, up to 8 concurrent requests
    /// (adaptive), backoff from 500 ms up to 60 s.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        LlmConfig {
            base_url: base_url.into(),
            api_key: None,
            model: model.into(),
            judge_model: None,
            timeout: Duration::from_secs(120),
            max_retries: 5,
            concurrency: 8,
            adaptive_concurrency: true,
            retry_base_delay: Duration::from_millis(500),
            max_retry_delay: Duration::from_secs(60),
            tools: ToolMode::Auto,
            structured_output: StructuredOutput::Auto,
        }
    }

    /// Read the configuration from the process environment; see [`LlmConfig::from_lookup`].
    pub fn from_env() -> Result<Self, LlmConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Read the configuration through `lookup` (an environment in tests).
    ///
    /// - URL: `PRINCIPIA_LLM_URL`, else `OPENAI_BASE_URL`, else [`OPENAI_DEFAULT_BASE_URL`] when
    ///   `OPENAI_API_KEY` is set.
    /// - Key: `PRINCIPIA_LLM_API_KEY`, else `OPENAI_API_KEY` (optional: local servers need none).
    /// - Models: `PRINCIPIA_LLM_MODEL` (required), `PRINCIPIA_LLM_JUDGE_MODEL` (optional).
    /// - Optional tuning: `PRINCIPIA_LLM_TIMEOUT_SECS`, `PRINCIPIA_LLM_MAX_RETRIES`,
    ///   `PRINCIPIA_LLM_CONCURRENCY`, `PRINCIPIA_LLM_CONCURRENCY_MODE` (`adaptive` or `fixed`),
    ///   `PRINCIPIA_LLM_TOOLS` (`auto`, `plain` or `off`),
    ///   `PRINCIPIA_LLM_STRUCTURED_OUTPUT` (`auto`, `json_schema`, `json_object` or `prompt`).
    ///
    /// Empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, LlmConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let api_key = get("PRINCIPIA_LLM_API_KEY").or_else(|| get("OPENAI_API_KEY"));
        let base_url = get("PRINCIPIA_LLM_URL")
            .or_else(|| get("OPENAI_BASE_URL"))
            .or_else(|| {
                get("OPENAI_API_KEY")
                    .is_some()
                    .then(|| OPENAI_DEFAULT_BASE_URL.to_string())
            })
            .ok_or(LlmConfigError::MissingUrl)?;
        let model = get("PRINCIPIA_LLM_MODEL").ok_or(LlmConfigError::MissingModel)?;
        let mut config = LlmConfig::new(base_url, model);
        config.api_key = api_key;
        config.judge_model = get("PRINCIPIA_LLM_JUDGE_MODEL");
        let number = |name: &'static str| -> Result<Option<u64>, LlmConfigError> {
            get(name)
                .map(|value| {
                    value
                        .trim()
                        .parse::<u64>()
                        .map_err(|_| LlmConfigError::Invalid {
                            name,
                            value,
                            expected: "non-negative integer",
                        })
                })
                .transpose()
        };
        if let Some(secs) = number("PRINCIPIA_LLM_TIMEOUT_SECS")? {
            config.timeout = Duration::from_secs(secs.max(1));
        }
        if let Some(retries) = number("PRINCIPIA_LLM_MAX_RETRIES")? {
            config.max_retries = u32::try_from(retries).unwrap_or(u32::MAX);
        }
        if let Some(concurrency) = number("PRINCIPIA_LLM_CONCURRENCY")? {
            config.concurrency = usize::try_from(concurrency).unwrap_or(usize::MAX).max(1);
        }
        if let Some(value) = get("PRINCIPIA_LLM_CONCURRENCY_MODE") {
            config.adaptive_concurrency = match value.trim() {
                "adaptive" => true,
                "fixed" => false,
                _ => {
                    return Err(LlmConfigError::Invalid {
                        name: "PRINCIPIA_LLM_CONCURRENCY_MODE",
                        value,
                        expected: "concurrency mode (adaptive or fixed)",
                    });
                }
            };
        }
        if let Some(value) = get("PRINCIPIA_LLM_TOOLS") {
            config.tools = value.parse().map_err(|()| LlmConfigError::Invalid {
                name: "PRINCIPIA_LLM_TOOLS",
                value,
                expected: "tool mode (auto, plain or off)",
            })?;
        }
        if let Some(value) = get("PRINCIPIA_LLM_STRUCTURED_OUTPUT") {
            config.structured_output = value.parse().map_err(|()| LlmConfigError::Invalid {
                name: "PRINCIPIA_LLM_STRUCTURED_OUTPUT",
                value,
                expected: "structured-output mode (auto, json_schema, json_object or prompt)",
            })?;
        }
        Ok(config)
    }

    /// The judge model: [`LlmConfig::judge_model`], else the generator model.
    pub fn effective_judge_model(&self) -> &str {
        self.judge_model.as_deref().unwrap_or(&self.model)
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    pub content: String,
    /// The tools an assistant message called.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// The call a `tool` message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    fn with_role(role: &str, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::with_role("system", content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::with_role("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::with_role("assistant", content)
    }

    /// An assistant turn that called tools (as the reply carried them).
    pub fn assistant_calls(content: impl Into<String>, tool_calls: Vec<ToolCall>) -> Self {
        ChatMessage {
            tool_calls,
            ..Self::with_role("assistant", content)
        }
    }

    /// The result of the tool call `call_id`.
    pub fn tool(call_id: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            tool_call_id: Some(call_id.into()),
            ..Self::with_role("tool", content)
        }
    }
}

/// A function call in a reply, in OpenAI's wire format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as a JSON text (as the model wrote them: they may not parse).
    #[serde(default)]
    pub arguments: String,
}

fn function_kind() -> String {
    "function".into()
}

/// A structured-output constraint: `{"type":"json_schema","json_schema":{name, schema, strict}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonSchemaFormat {
    pub name: String,
    pub schema: Value,
    pub strict: bool,
}

/// A chat-completions request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
    pub response_format: Option<JsonSchemaFormat>,
    /// Tool definitions (`{"type": "function", "function": {...}}`), sent with `tool_choice`.
    pub tools: Vec<Value>,
    /// `auto`, `none` or `required`; sent only with tools.
    pub tool_choice: Option<String>,
}

impl ChatRequest {
    pub fn new(model: impl Into<String>, messages: Vec<ChatMessage>) -> Self {
        ChatRequest {
            model: model.into(),
            messages,
            temperature: None,
            max_tokens: None,
            response_format: None,
            tools: Vec::new(),
            tool_choice: None,
        }
    }

    /// The wire body, with the response format sent as `shape` (and the schema written into the
    /// last user message when the shape asks for it).
    fn body(&self, shape: OutputShape) -> Value {
        let mut messages = self.messages.clone();
        if let Some(format) = &self.response_format
            && shape.schema_in_prompt()
            && let Some(last) = messages.iter_mut().rev().find(|m| m.role == "user")
        {
            last.content
                .push_str(&schema_instruction(&format.name, &format.schema));
        }
        let mut body = serde_json::json!({
            "model": self.model,
            "messages": messages,
        });
        if let Some(t) = self.temperature {
            body["temperature"] = serde_json::json!(t);
        }
        if let Some(m) = self.max_tokens {
            body["max_tokens"] = serde_json::json!(m);
        }
        if let Some(format) = &self.response_format
            && let Some(sent) = shape.response_format(&format.name, &format.schema, format.strict)
        {
            body["response_format"] = sent;
        }
        if !self.tools.is_empty() {
            body["tools"] = Value::Array(self.tools.clone());
            if let Some(choice) = &self.tool_choice {
                body["tool_choice"] = serde_json::json!(choice);
            }
        }
        body
    }

    /// Estimated prompt tokens, for servers that report no usage.
    fn estimated_prompt_tokens(&self) -> u64 {
        self.messages
            .iter()
            .map(|m| approx_tokens(&m.content) as u64 + 4)
            .sum()
    }
}

/// A chat-completions reply.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// The first choice's text; empty when the server sent none (null content, refusal).
    pub content: String,
    /// The tools the reply calls (none unless the request offered tools).
    pub tool_calls: Vec<ToolCall>,
    /// `stop`, `length`, `content_filter`, ... as the server sent it.
    pub finish_reason: Option<String>,
    /// Tokens of this call (`calls` = 1); estimated when the server reports none.
    pub usage: TokenUsage,
    /// Whether `usage` is an estimate.
    pub usage_estimated: bool,
    /// The model that answered, as the server reports it (or the requested one).
    pub model: String,
    /// HTTP attempts it took (1 when no retry was needed).
    pub attempts: u32,
    /// Wall time of the whole call, retries and waits included.
    pub latency: Duration,
    /// Whether the reply came from the response cache (no request was sent).
    pub cached: bool,
    /// Why earlier attempts of this call failed (retried errors and refused formats), one line
    /// each of at most [`MAX_FAILED_ATTEMPT_BYTES`], in order.
    pub failed_attempts: Vec<String>,
}

impl ChatResponse {
    /// Whether the reply was cut off at the token limit.
    pub fn truncated(&self) -> bool {
        self.finish_reason.as_deref() == Some("length")
    }
}

/// A failed chat call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LlmError {
    /// Retryable failures (429, 5xx, timeouts, connection errors) went on after every retry.
    #[error("LLM server still failing after {attempts} attempts: {last}")]
    RetriesExhausted { attempts: u32, last: String },
    /// The server refused the request in a way retrying cannot fix (400, 401, 403, 404, ...).
    #[error("LLM server rejected the request with HTTP {status}: {message}")]
    Rejected { status: u16, message: String },
    /// The client could not be built or the request not formed (bad base URL, ...).
    #[error("LLM client configuration error: {0}")]
    Config(String),
}

impl LlmError {
    /// Whether a later retry of the whole unit of work may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, LlmError::RetriesExhausted { .. })
    }

    /// Whether the server refused the request because its prompt does not fit the model's
    /// context window: a smaller request may pass, the same one never will.
    pub fn exceeds_context(&self) -> bool {
        matches!(self, LlmError::Rejected { message, .. }
            if is_context_overflow(&message.to_ascii_lowercase()))
    }
}

/// Counters of a client's traffic, for metrics. Read with [`LlmClient::metrics`].
#[derive(Debug, Default)]
pub struct LlmMetrics {
    calls: AtomicU64,
    failed_calls: AtomicU64,
    attempts: AtomicU64,
    retries: AtomicU64,
    rate_limited: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    latency_micros: AtomicU64,
}

/// A point-in-time copy of [`LlmMetrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LlmMetricsSnapshot {
    /// Calls that returned a reply.
    pub calls: u64,
    /// Calls that ended in an error.
    pub failed_calls: u64,
    /// HTTP requests sent (first attempts and retries).
    pub attempts: u64,
    /// Retries after a retryable failure.
    pub retries: u64,
    /// 429 answers received.
    pub rate_limited: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Summed wall time of successful calls, in microseconds.
    pub latency_micros: u64,
}

impl LlmMetrics {
    fn snapshot(&self) -> LlmMetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LlmMetricsSnapshot {
            calls: get(&self.calls),
            failed_calls: get(&self.failed_calls),
            attempts: get(&self.attempts),
            retries: get(&self.retries),
            rate_limited: get(&self.rate_limited),
            prompt_tokens: get(&self.prompt_tokens),
            completion_tokens: get(&self.completion_tokens),
            latency_micros: get(&self.latency_micros),
        }
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// An OpenAI-compatible chat-completions client. Cheap to share behind an `Arc`.
pub struct LlmClient {
    config: LlmConfig,
    endpoint: String,
    http: reqwest::Client,
    limit: AdaptiveLimit,
    metrics: LlmMetrics,
    /// Fleet-wide (Redis) or process-wide limits of the endpoint, when configured.
    limiter: Option<(Arc<dyn RateLimiter>, RateLimits)>,
    /// Replies of earlier identical requests, when configured.
    cache: Option<ResponseCache>,
    /// The structured-output shape this server takes, learned from its refusals.
    structured: Negotiated,
    /// The server's last refusal of the API key (401/403) and when it came: for
    /// [`KEY_REFUSAL_MEMORY`] every call fails at once with it instead of sending the key again.
    key_refused: std::sync::Mutex<Option<(Instant, LlmError)>>,
}

/// How long a refused API key fails calls without sending them (a fixed key takes a restart or
/// a secret rotation, which this outlasts rarely; a transient auth outage costs this long).
const KEY_REFUSAL_MEMORY: Duration = Duration::from_secs(60);

impl std::fmt::Debug for LlmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmClient")
            .field("config", &self.config)
            .field(
                "rate_limited",
                &self.limiter.as_ref().map(|(_, limits)| limits),
            )
            .finish_non_exhaustive()
    }
}

/// Outcome of one HTTP attempt.
enum Attempt {
    Done(ChatResponse),
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    Fail(LlmError),
}

impl LlmClient {
    pub fn new(config: LlmConfig) -> Result<Self, LlmError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| LlmError::Config(e.to_string()))?;
        let endpoint = format!("{}/chat/completions", config.base_url.trim_end_matches('/'));
        reqwest::Url::parse(&endpoint).map_err(|e| {
            LlmError::Config(format!("invalid base URL {:?}: {e}", config.base_url))
        })?;
        let limit = AdaptiveLimit::new(config.concurrency, config.adaptive_concurrency);
        Ok(LlmClient {
            endpoint,
            http,
            limit,
            metrics: LlmMetrics::default(),
            limiter: None,
            cache: None,
            structured: Negotiated::new(config.structured_output),
            key_refused: std::sync::Mutex::new(None),
            config,
        })
    }

    /// Hold every request to `limits` through `limiter` (shared by all workers when it is the
    /// Redis limiter), keyed by the endpoint URL.
    pub fn with_rate_limiter(mut self, limiter: Arc<dyn RateLimiter>, limits: RateLimits) -> Self {
        self.limiter = Some((limiter, limits));
        self
    }

    /// Answer requests identical to earlier ones from `cache` instead of the server.
    pub fn with_cache(mut self, cache: ResponseCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Wait for the rate limiter, if any. A limiter that cannot be reached is logged and
    /// bypassed: the provider's own 429s still bound the rate.
    async fn wait_for_rate_limit(&self, body: &Value, request: &ChatRequest) {
        let Some((limiter, limits)) = &self.limiter else {
            return;
        };
        let estimate =
            (body.to_string().len() / 4) as u64 + u64::from(request.max_tokens.unwrap_or(0));
        match limiter
            .acquire(&self.config.base_url, *limits, estimate)
            .await
        {
            Ok(waited) => metrics::LLM_RATE_LIMIT_WAIT.observe(waited.as_secs_f64()),
            Err(error) => tracing::warn!(%error, "rate limiter unavailable; sending without it"),
        }
    }

    pub fn config(&self) -> &LlmConfig {
        &self.config
    }

    pub fn metrics(&self) -> LlmMetricsSnapshot {
        self.metrics.snapshot()
    }

    /// The server's refusal of the API key, if it came less than [`KEY_REFUSAL_MEMORY`] ago.
    fn key_refusal(&self) -> Option<LlmError> {
        let refused = self.key_refused.lock().unwrap_or_else(|e| e.into_inner());
        refused
            .as_ref()
            .filter(|(at, _)| at.elapsed() < KEY_REFUSAL_MEMORY)
            .map(|(_, error)| error.clone())
    }

    /// Requests this client keeps in flight at most now (learned, unless fixed).
    pub fn concurrency_limit(&self) -> usize {
        self.limit.current()
    }

    /// The structured-output shape requests are sent with now (learned from refusals).
    pub fn structured_output(&self) -> OutputShape {
        self.structured.current()
    }

    /// Send one chat request, retrying retryable failures; see the module docs.
    pub async fn chat(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        let started = Instant::now();
        let mut shape = self.structured.current();
        let mut body = request.body(shape);
        let mut cache_key = self.cache.as_ref().map(|_| ResponseCache::key(&body));
        if let Some(cached) = self.cached(cache_key.as_deref(), started).await {
            return Ok(cached);
        }
        if let Some(refusal) = self.key_refusal() {
            bump(&self.metrics.failed_calls, 1);
            return Err(refusal);
        }
        let mut attempts = 0u32;
        let mut failed_attempts = Vec::new();
        loop {
            attempts += 1;
            bump(&self.metrics.attempts, 1);
            self.wait_for_rate_limit(&body, &request).await;
            let (outcome, epoch, latency) = {
                let permit = self
                    .limit
                    .acquire()
                    .await
                    .map_err(|_| LlmError::Config("client closed".into()))?;
                // Another call may have learned a format the server takes while this one waited:
                // it is sent that way, not refused once more.
                let learned = self.structured.current();
                if learned != shape {
                    shape = learned;
                    body = request.body(shape);
                    cache_key = self.cache.as_ref().map(|_| ResponseCache::key(&body));
                }
                let sent = Instant::now();
                let outcome = self.attempt(&request, &body).await;
                (outcome, permit.epoch(), sent.elapsed())
            };
            match &outcome {
                Attempt::Done(_) => self.limit.on_success(epoch, latency),
                Attempt::Retry { reason, .. } if signals_overload(reason) => {
                    self.limit.on_overload();
                }
                _ => {}
            }
            match outcome {
                Attempt::Done(mut response) => {
                    response.attempts = attempts;
                    response.failed_attempts = failed_attempts;
                    response.latency = started.elapsed();
                    bump(&self.metrics.calls, 1);
                    metrics::LLM_TOKENS
                        .with_label_values(&["prompt"])
                        .inc_by(response.usage.prompt_tokens);
                    metrics::LLM_TOKENS
                        .with_label_values(&["completion"])
                        .inc_by(response.usage.completion_tokens);
                    bump(&self.metrics.prompt_tokens, response.usage.prompt_tokens);
                    bump(
                        &self.metrics.completion_tokens,
                        response.usage.completion_tokens,
                    );
                    bump(
                        &self.metrics.latency_micros,
                        u64::try_from(response.latency.as_micros()).unwrap_or(u64::MAX),
                    );
                    if let (Some(cache), Some(key)) = (&self.cache, &cache_key) {
                        let entry = CachedReply {
                            content: response.content.clone(),
                            tool_calls: response.tool_calls.clone(),
                            finish_reason: response.finish_reason.clone(),
                            model: response.model.clone(),
                            prompt_tokens: response.usage.prompt_tokens,
                            completion_tokens: response.usage.completion_tokens,
                        };
                        cache.put(key, &entry).await;
                    }
                    return Ok(response);
                }
                Attempt::Fail(LlmError::Rejected { status, message })
                    if request.response_format.is_some() && refuses_response_format(&message) =>
                {
                    let Some((next, changed)) = self.structured.step_down(shape) else {
                        bump(&self.metrics.failed_calls, 1);
                        return Err(LlmError::Rejected {
                            status,
                            message: format!(
                                "the server at {} rejects the response format {shape} ({message}); run with --structured-output prompt",
                                self.config.base_url
                            ),
                        });
                    };
                    failed_attempts.push(shorten(
                        &format!("HTTP {status}: {message}"),
                        MAX_FAILED_ATTEMPT_BYTES,
                    ));
                    if changed {
                        tracing::warn!(
                            refused = %shape,
                            now = %next,
                            %message,
                            "the LLM server refuses this structured-output format; asking for JSON another way"
                        );
                    }
                    shape = next;
                    body = request.body(shape);
                    cache_key = self.cache.as_ref().map(|_| ResponseCache::key(&body));
                    if let Some(cached) = self.cached(cache_key.as_deref(), started).await {
                        return Ok(cached);
                    }
                }
                Attempt::Fail(LlmError::Rejected { status, message })
                    if status == 401 || status == 403 =>
                {
                    bump(&self.metrics.failed_calls, 1);
                    let error = LlmError::Rejected {
                        status,
                        message: format!(
                            "the server at {} refuses the API key ({message}); set PRINCIPIA_LLM_API_KEY (or OPENAI_API_KEY) to a key it accepts",
                            self.config.base_url
                        ),
                    };
                    *self.key_refused.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some((Instant::now(), error.clone()));
                    return Err(error);
                }
                Attempt::Fail(error) => {
                    bump(&self.metrics.failed_calls, 1);
                    return Err(error);
                }
                Attempt::Retry {
                    reason,
                    retry_after,
                } => {
                    if attempts > self.config.max_retries {
                        bump(&self.metrics.failed_calls, 1);
                        return Err(LlmError::RetriesExhausted {
                            attempts,
                            last: reason,
                        });
                    }
                    failed_attempts.push(shorten(&reason, MAX_FAILED_ATTEMPT_BYTES));
                    let delay = retry_after
                        .unwrap_or_else(|| self.backoff(attempts))
                        .min(self.config.max_retry_delay);
                    tracing::debug!(
                        model = %request.model,
                        attempt = attempts,
                        delay_ms = delay.as_millis() as u64,
                        %reason,
                        "retrying LLM request"
                    );
                    bump(&self.metrics.retries, 1);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// The cached reply under `key`, if the client has a cache and it holds one.
    async fn cached(&self, key: Option<&str>, started: Instant) -> Option<ChatResponse> {
        let cached = self.cache.as_ref()?.get(key?).await?;
        metrics::LLM_CACHE_HITS.inc();
        Some(ChatResponse {
            content: cached.content,
            tool_calls: cached.tool_calls,
            finish_reason: cached.finish_reason,
            usage: TokenUsage {
                cached_calls: 1,
                ..TokenUsage::default()
            },
            usage_estimated: false,
            model: cached.model,
            attempts: 0,
            latency: started.elapsed(),
            cached: true,
            failed_attempts: Vec::new(),
        })
    }

    /// Exponential backoff with jitter: `base * 2^(attempt-1)`, times a random factor in
    /// [0.5, 1.0), capped at the configured maximum.
    fn backoff(&self, attempt: u32) -> Duration {
        let exponential = self
            .config
            .retry_base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.config.max_retry_delay);
        exponential.mul_f64(0.5 + fastrand::f64() / 2.0)
    }

    async fn attempt(&self, request: &ChatRequest, body: &Value) -> Attempt {
        let started = Instant::now();
        let attempt = self.send(request, body).await;
        metrics::LLM_DURATION.observe(started.elapsed().as_secs_f64());
        let class = match &attempt {
            Attempt::Done(_) => "2xx",
            Attempt::Retry { reason, .. } if reason.starts_with("HTTP 429") => "429",
            Attempt::Retry { reason, .. } if reason.starts_with("HTTP 5") => "5xx",
            Attempt::Retry { reason, .. } if reason.starts_with("timed out") => "timeout",
            Attempt::Retry { .. } => "error",
            Attempt::Fail(LlmError::Rejected { .. }) => "4xx",
            Attempt::Fail(_) => "error",
        };
        metrics::LLM_REQUESTS.with_label_values(&[class]).inc();
        attempt
    }

    async fn send(&self, request: &ChatRequest, body: &Value) -> Attempt {
        let mut builder = self.http.post(&self.endpoint).json(body);
        if let Some(key) = &self.config.api_key {
            builder = builder.bearer_auth(key);
        }
        let response = match builder.send().await {
            Ok(response) => response,
            Err(error) => return self.transport_error(error),
        };
        let status = response.status();
        let retry_after = retry_after(response.headers(), SystemTime::now());
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(error) => return self.transport_error(error),
        };
        if status.is_success() {
            if let Some(message) = error_in_success(&bytes) {
                let message = self.scrub(&message);
                return if names_request_field(&message) {
                    Attempt::Fail(LlmError::Rejected {
                        status: status.as_u16(),
                        message,
                    })
                } else {
                    Attempt::Retry {
                        reason: format!("HTTP {} with an error body: {message}", status.as_u16()),
                        retry_after,
                    }
                };
            }
            return match parse_reply(request, &bytes) {
                Ok(reply) => Attempt::Done(reply),
                Err(reason) => Attempt::Retry {
                    reason,
                    retry_after: None,
                },
            };
        }
        let message = self.scrub(&error_message(&bytes));
        if status == StatusCode::TOO_MANY_REQUESTS {
            bump(&self.metrics.rate_limited, 1);
        }
        if is_retryable(status) && !(status.is_server_error() && names_request_field(&message)) {
            Attempt::Retry {
                reason: format!("HTTP {}: {message}", status.as_u16()),
                retry_after,
            }
        } else {
            Attempt::Fail(LlmError::Rejected {
                status: status.as_u16(),
                message,
            })
        }
    }

    fn transport_error(&self, error: reqwest::Error) -> Attempt {
        if error.is_builder() {
            return Attempt::Fail(LlmError::Config(self.scrub(&error.to_string())));
        }
        let kind = if error.is_timeout() {
            "timed out"
        } else if error.is_connect() {
            "connection failed"
        } else {
            "transport error"
        };
        Attempt::Retry {
            reason: self.scrub(&format!("{kind}: {error}")),
            retry_after: None,
        }
    }

    /// Remove the API key from text that may echo it.
    fn scrub(&self, text: &str) -> String {
        match &self.config.api_key {
            Some(key) if !key.is_empty() => text.replace(key.as_str(), "[redacted]"),
            _ => text.to_string(),
        }
    }
}

/// Whether a retried failure says the server has more than it can take: a 429, a 503, or a
/// request that timed out (the server may still be computing it).
fn signals_overload(reason: &str) -> bool {
    reason.starts_with("HTTP 429")
        || reason.starts_with("HTTP 503")
        || reason.starts_with("timed out")
}

/// Whether a server's error message blames a field of the request (its response format, its
/// tools, its length): the same request fails the same way however often it is sent, so such a
/// 500 is a refusal, not an outage (llama-cpp-python answers request validation errors with 500).
fn names_request_field(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    refuses_response_format(message)
        || lower.contains("'tools'")
        || lower.contains("\"tools\"")
        || lower.contains("tool_choice")
        || is_context_overflow(&lower)
}

/// Whether an error message says the prompt does not fit the model's context (vLLM, OpenAI,
/// llama.cpp and llama-cpp-python wordings); `lower` is the message in lower case.
fn is_context_overflow(lower: &str) -> bool {
    lower.contains("maximum context length")
        || lower.contains("context_length_exceeded")
        || lower.contains("exceed context window")
        || lower.contains("exceeds the available context")
        || lower.contains("context size")
        || lower.contains("maximum model length")
}

/// The error message of a 2xx body that carries `{"error": ...}` and no choices (some proxies and
/// servers answer errors with 200).
fn error_in_success(bytes: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(bytes).ok()?;
    if value.get("choices").is_some() {
        return None;
    }
    let error = value.get("error")?;
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| error.to_string());
    Some(shorten(&one_line(&message), 500))
}

fn is_retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
}

/// The wait a server asks for: `retry-after-ms`, else `Retry-After` in seconds or as an HTTP date
/// (relative to `now`).
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = header("retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The `error.message` of an OpenAI-style error body, else the body itself, shortened.
fn error_message(bytes: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: ErrorDetail,
    }
    #[derive(Deserialize)]
    struct ErrorDetail {
        message: String,
    }
    let text = match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => body.error.message,
        Err(_) => String::from_utf8_lossy(bytes).trim().to_string(),
    };
    shorten(&one_line(&text), 500)
}

/// The text on one line: whitespace runs (a server's traceback, a multi-line validation error)
/// become one space, so a logged or reported message is one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Bytes of a failed attempt's message kept in [`ChatResponse::failed_attempts`] (and so in
/// reports).
pub const MAX_FAILED_ATTEMPT_BYTES: usize = 200;

fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[derive(Deserialize)]
struct WireReply {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    #[serde(default)]
    message: Option<WireMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCall>>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

/// Decode a 2xx body. An undecodable body is retryable (a proxy's error page, a cut connection).
fn parse_reply(request: &ChatRequest, bytes: &[u8]) -> Result<ChatResponse, String> {
    let wire: WireReply = serde_json::from_slice(bytes).map_err(|e| {
        format!(
            "undecodable reply ({e}): {}",
            shorten(&String::from_utf8_lossy(bytes), 200)
        )
    })?;
    let choice = wire
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| "reply has no choices".to_string())?;
    let (content, tool_calls) = choice.message.map_or_else(Default::default, |m| {
        (
            m.content.unwrap_or_default(),
            m.tool_calls.unwrap_or_default(),
        )
    });
    let reported = wire
        .usage
        .and_then(|u| Some((u.prompt_tokens?, u.completion_tokens?)));
    let (prompt_tokens, completion_tokens) = reported.unwrap_or_else(|| {
        (
            request.estimated_prompt_tokens(),
            approx_tokens(&content) as u64,
        )
    });
    Ok(ChatResponse {
        content,
        tool_calls,
        finish_reason: choice.finish_reason,
        usage: TokenUsage {
            calls: 1,
            prompt_tokens,
            completion_tokens,
            cached_calls: 0,
            estimated_calls: u64::from(reported.is_none()),
        },
        usage_estimated: reported.is_none(),
        model: wire.model.unwrap_or_else(|| request.model.clone()),
        attempts: 1,
        latency: Duration::ZERO,
        cached: false,
        failed_attempts: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;
    use std::collections::BTreeMap;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn retry_after_reads_seconds_dates_and_milliseconds() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            retry_after(&headers(&[("retry-after", "7")]), now),
            Some(Duration::from_secs(7))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            retry_after(&headers(&[("retry-after", &later)]), now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(
            retry_after(&headers(&[("retry-after", &earlier)]), now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after(
                &headers(&[("retry-after-ms", "250"), ("retry-after", "9")]),
                now
            ),
            Some(Duration::from_millis(250))
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")]), now), None);
        assert_eq!(retry_after(&headers(&[("retry-after", "-1")]), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn config_from_lookup_prefers_principia_variables() {
        let env: BTreeMap<&str, &str> = [
            ("PRINCIPIA_LLM_URL", "http://127.0.0.1:8000/v1"),
            ("OPENAI_BASE_URL", "http://elsewhere/v1"),
            ("PRINCIPIA_LLM_MODEL", "qwen"),
            ("OPENAI_API_KEY", "sk-secret"),
            ("PRINCIPIA_LLM_CONCURRENCY", "3"),
        ]
        .into_iter()
        .collect();
        let config =
            LlmConfig::from_lookup(|k| env.get(k).map(|v| v.to_string())).expect("configured");
        assert_eq!(config.base_url, "http://127.0.0.1:8000/v1");
        assert_eq!(config.model, "qwen");
        assert_eq!(config.api_key.as_deref(), Some("sk-secret"));
        assert_eq!(config.concurrency, 3);
        assert_eq!(config.effective_judge_model(), "qwen");
        assert!(!format!("{config:?}").contains("sk-secret"));
    }

    #[test]
    fn config_from_lookup_falls_back_and_reports_what_is_missing() {
        let openai = |k: &str| match k {
            "OPENAI_API_KEY" => Some("sk-x".to_string()),
            "PRINCIPIA_LLM_MODEL" => Some("gpt-4o-mini".to_string()),
            _ => None,
        };
        let config = LlmConfig::from_lookup(openai).unwrap();
        assert_eq!(config.base_url, OPENAI_DEFAULT_BASE_URL);
        assert_eq!(
            LlmConfig::from_lookup(|_| None),
            Err(LlmConfigError::MissingUrl)
        );
        let no_model = |k: &str| (k == "OPENAI_BASE_URL").then(|| "http://h/v1".to_string());
        assert_eq!(
            LlmConfig::from_lookup(no_model),
            Err(LlmConfigError::MissingModel)
        );
        let bad = |k: &str| match k {
            "PRINCIPIA_LLM_URL" => Some("http://h/v1".to_string()),
            "PRINCIPIA_LLM_MODEL" => Some("m".to_string()),
            "PRINCIPIA_LLM_MAX_RETRIES" => Some("many".to_string()),
            _ => None,
        };
        assert!(matches!(
            LlmConfig::from_lookup(bad),
            Err(LlmConfigError::Invalid {
                name: "PRINCIPIA_LLM_MAX_RETRIES",
                ..
            })
        ));
    }

    #[test]
    fn request_body_carries_the_json_schema_format() {
        let mut request = ChatRequest::new("m", vec![ChatMessage::user("hi")]);
        request.temperature = Some(0.0);
        request.max_tokens = Some(10);
        request.response_format = Some(JsonSchemaFormat {
            name: "items".into(),
            schema: serde_json::json!({"type": "object"}),
            strict: true,
        });
        let body = request.body(OutputShape::JsonSchema);
        assert_eq!(body["response_format"]["type"], "json_schema");
        assert_eq!(body["response_format"]["json_schema"]["name"], "items");
        assert_eq!(body["response_format"]["json_schema"]["strict"], true);
        assert_eq!(body["max_tokens"], 10);
        assert_eq!(body["messages"][0]["role"], "user");
    }

    #[test]
    fn replies_without_usage_get_an_estimate() {
        let request = ChatRequest::new("m", vec![ChatMessage::user("a".repeat(40))]);
        let body = br#"{"choices":[{"message":{"role":"assistant","content":"12345678"},"finish_reason":"length"}]}"#;
        let reply = parse_reply(&request, body).unwrap();
        assert!(reply.usage_estimated);
        assert_eq!(reply.usage.prompt_tokens, 14);
        assert_eq!(reply.usage.completion_tokens, 2);
        assert!(reply.truncated());
        assert_eq!(reply.model, "m");
        let null_content = br#"{"model":"x","choices":[{"message":{"content":null}}],"usage":{"prompt_tokens":3,"completion_tokens":0}}"#;
        let reply = parse_reply(&request, null_content).unwrap();
        assert_eq!(reply.content, "");
        assert!(!reply.usage_estimated);
        assert!(parse_reply(&request, b"<html>bad gateway</html>").is_err());
        assert!(parse_reply(&request, br#"{"choices":[]}"#).is_err());
    }
}
