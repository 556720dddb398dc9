//! The real local LLM server the tests use (llama-cpp-python 0.3 with SmolLM2-135M-Instruct, see
//! `tests::llama`): that the harness starts it, and what this server does with the parts of a
//! request Principia relies on, each documented by a small request (at most 64 tokens).
//!
//! - `response_format: {"type": "json_schema", ...}` is refused: HTTP 500 whose message is
//!   pydantic's validation error naming `response_format` ("Input should be 'text' or
//!   'json_object'").
//! - `{"type": "json_object", "schema": {...}}` is honoured: the reply is constrained by a
//!   grammar made from the schema.
//! - `tools` (with `tool_choice` absent or `auto`) are ignored: a plain text reply, no
//!   `tool_calls`.
//! - A prompt past the context window is a 400 with `code: context_length_exceeded`.

use serde_json::{Value, json};
use tests::llama::LlamaServer;

fn start() -> LlamaServer {
    LlamaServer::start().expect("llama_cpp.server starts")
}

/// POST a chat completion with `body`; returns the status and the JSON reply.
async fn chat(server: &LlamaServer, mut body: Value) -> (u16, Value) {
    body["model"] = json!(server.model());
    body["temperature"] = json!(0);
    let response = reqwest::Client::new()
        .post(format!("{}/chat/completions", server.base_url()))
        .json(&body)
        .send()
        .await
        .expect("the server answers");
    let status = response.status().as_u16();
    let text = response.text().await.expect("a body");
    let reply = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {text}\n{}", server.log_tail()));
    (status, reply)
}

fn answer_schema() -> Value {
    json!({
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"]
    })
}

fn message(reply: &Value) -> &Value {
    &reply["choices"][0]["message"]
}

#[tokio::test]
async fn the_server_lists_its_alias() {
    let server = start();
    assert!(server.base_url().starts_with("http://127.0.0.1:"));
    assert!(server.log_path().is_file());
    let models: Value = reqwest::get(format!("{}/models", server.base_url()))
        .await
        .expect("GET /v1/models")
        .json()
        .await
        .expect("JSON");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .expect("a data list")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, [server.model()], "{models}");
}

#[tokio::test]
async fn json_schema_response_format_is_a_500_naming_it() {
    let server = start();
    let (status, reply) = chat(
        &server,
        json!({
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "Reply in JSON."}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": answer_schema(), "strict": true}
            }
        }),
    )
    .await;
    assert_eq!(status, 500, "{reply}");
    let error = reply["error"]["message"]
        .as_str()
        .expect("an error message");
    assert!(error.contains("response_format"), "{error}");
    assert!(
        error.contains("Input should be 'text' or 'json_object'"),
        "{error}"
    );
}

#[tokio::test]
async fn json_object_with_a_schema_is_constrained_by_it() {
    let server = start();
    let (status, reply) = chat(
        &server,
        json!({
            "max_tokens": 64,
            "messages": [{
                "role": "user",
                "content": "What is the capital of France? Reply in JSON with the key \"answer\"."
            }],
            "response_format": {"type": "json_object", "schema": answer_schema()}
        }),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["choices"][0]["finish_reason"], "stop", "{reply}");
    let content = message(&reply)["content"].as_str().expect("text content");
    let parsed: Value = serde_json::from_str(content)
        .unwrap_or_else(|e| panic!("the content is not JSON ({e}): {content}"));
    assert!(parsed["answer"].is_string(), "{parsed}");
}

#[tokio::test]
async fn offered_tools_are_ignored() {
    let server = start();
    let (status, reply) = chat(
        &server,
        json!({
            "max_tokens": 32,
            "messages": [{"role": "user", "content": "Look up section 2.1 with the tool."}],
            "tools": [{
                "type": "function",
                "function": {
                    "name": "lookup_section",
                    "description": "The text of a section, by citation.",
                    "parameters": {
                        "type": "object",
                        "properties": {"citation": {"type": "string"}},
                        "required": ["citation"]
                    }
                }
            }],
            "tool_choice": "auto"
        }),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let message = message(&reply);
    assert!(message.get("tool_calls").is_none(), "{reply}");
    assert!(message["content"].is_string(), "{reply}");
    assert_ne!(reply["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn a_prompt_past_the_context_window_is_a_400() {
    let server = start();
    let (status, reply) = chat(
        &server,
        json!({
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "word ".repeat(9000)}]
        }),
    )
    .await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["error"]["code"], "context_length_exceeded", "{reply}");
}
