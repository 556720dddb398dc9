//! Generation cost benchmark: `principia run` with the `openai` generator against the LLM test
//! server on the bundled example policy and on US Code Title 21; reports LLM calls and prompt
//! tokens per accepted item, and the prefix-sharing ratio: the share of all prompt tokens that
//! repeat a shard's shared first message (the tokens a server with prefix caching does not
//! recompute). Prints a markdown table for BENCHMARKS.md.
//!
//! `cargo build --release -p coordinator -p tests && target/release/generation-bench`

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::Value;
use tests::{ServerConfig, principia, spawn};

const INSTRUCTIONS: &str = "I want a chatbot that answers questions about these rules precisely";

/// Tokens of a text as the test server counts them (4 bytes a token).
fn tokens(text: &str) -> u64 {
    text.len().div_ceil(4) as u64
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let mut inputs = vec![(
        "example policy",
        principia::workspace_root().join("examples/harbor-lending-policy.md"),
    )];
    if let Some(corpora) = principia::corpora() {
        inputs.push((
            "US Code Title 21",
            corpora.join("us-code-title21/usc21.xml"),
        ));
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "| input | sections | shards | accepted items | LLM calls | calls per item | prompt tokens per item | prefix-sharing ratio |"
    )?;
    writeln!(
        out,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )?;
    for (name, input) in inputs {
        let row = runtime.block_on(measure(input))?;
        writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {:.2} | {:.0} | {:.2} |",
            row.sections,
            row.shards,
            row.accepted,
            row.calls,
            row.calls as f64 / row.accepted as f64,
            row.prompt_tokens as f64 / row.accepted as f64,
            row.shared_prefix_tokens as f64 / row.prompt_tokens as f64,
        )?;
    }
    Ok(())
}

struct Row {
    sections: u64,
    shards: u64,
    accepted: u64,
    calls: u64,
    prompt_tokens: u64,
    shared_prefix_tokens: u64,
}

async fn measure(input: PathBuf) -> anyhow::Result<Row> {
    let llm = spawn(ServerConfig {
        record_requests: true,
        ..ServerConfig::default()
    })
    .await;
    let out = tempfile::tempdir()?;
    let output = principia::run(
        principia::command()
            .env("PRINCIPIA_LLM_URL", &llm.url)
            .env("PRINCIPIA_LLM_MODEL", "bench-model")
            .arg("run")
            .arg(&input)
            .args(["--instructions", INSTRUCTIONS, "--no-llm-cache", "--out"])
            .arg(out.path()),
    );
    if !output.status.success() {
        bail!(
            "principia run failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let report: Value = serde_json::from_slice(&std::fs::read(out.path().join("report.json"))?)
        .context("reading report.json")?;
    // Calls of a shard share their first message; every repeat of it is a cacheable prefix.
    let mut prompt_tokens = 0;
    let mut first_messages: HashMap<String, u64> = HashMap::new();
    for request in llm.recorded() {
        let messages = request.body["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        prompt_tokens += messages
            .iter()
            .map(|m| tokens(m["content"].as_str().unwrap_or("")))
            .sum::<u64>();
        if let Some(first) = messages.first().and_then(|m| m["content"].as_str()) {
            *first_messages.entry(first.to_string()).or_default() += 1;
        }
    }
    let shared_prefix_tokens = first_messages
        .iter()
        .map(|(prefix, calls)| (calls - 1) * tokens(prefix))
        .sum();
    let count = |pointer: &str| report.pointer(pointer).and_then(Value::as_u64).unwrap_or(0);
    Ok(Row {
        sections: count("/sections/units"),
        shards: count("/shards/total"),
        accepted: count("/items/accepted"),
        calls: llm.requests(),
        prompt_tokens,
        shared_prefix_tokens,
    })
}
