//! Principia's test support: an OpenAI-compatible LLM test server ([`llm_server`]) that tests
//! spawn in-process and benchmarks run as the `llm-test-server` binary, a real local LLM server
//! ([`llama`]: llama-cpp-python with SmolLM2), and the external services the integration tests use
//! ([`moto`]).

pub mod llama;
pub mod llm_server;
pub mod moto;

pub use llm_server::{
    ContextWording, RecordedRequest, RequestKind, RunningServer, ScriptedReply, ServerConfig,
    ServerStats, spawn, try_spawn,
};
pub mod fleet;
pub mod principia;
