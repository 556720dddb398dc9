//! `principia estimate` against the truth: a real `principia run` with the openai generator on
//! the LLM test server, whose usage is bytes / 4 like the estimate's. The judge accepts every
//! candidate, no reply is malformed and every section gets a candidate past the checks, so the
//! calls must match exactly; prompt tokens must be within [`PROMPT_TOLERANCE`], completion tokens
//! within [`COMPLETION_TOLERANCE`] and all tokens within [`TOTAL_TOLERANCE`] of the actuals
//! (BENCHMARKS.md records them). Completions are the loosest: how many items a model writes and
//! how long they are is up to the model; the plan only bounds them.

use std::path::PathBuf;

use serde_json::Value;
use tests::principia;

const INSTRUCTIONS: &str = "I want a chatbot that specializes in lending and source code policy";

/// Largest relative differences allowed between estimated and actual tokens.
const PROMPT_TOLERANCE: f64 = 0.10;
const COMPLETION_TOLERANCE: f64 = 0.35;
const TOTAL_TOLERANCE: f64 = 0.15;

fn inputs() -> Vec<PathBuf> {
    let mut inputs = vec![principia::workspace_root().join("examples/harbor-lending-policy.md")];
    // A real policy excerpt.
    let corpora = principia::corpora().expect("the estimate test reads ../shared/corpora");
    for page in ["objectives.md", "scope.md", "reuse.md"] {
        inputs.push(corpora.join("federal-source-code-policy").join(page));
    }
    inputs
}

fn within(estimated: u64, actual: u64, tolerance: f64) -> bool {
    (estimated as f64 - actual as f64).abs() <= tolerance * actual as f64
}

#[tokio::test(flavor = "multi_thread")]
async fn the_estimate_matches_the_calls_and_tokens_of_a_real_run() {
    let llm = tests::spawn(tests::ServerConfig {
        items_per_reply: 8,
        ..tests::ServerConfig::default()
    })
    .await;
    let sizes = ["--shard-tokens", "600", "--max-items", "4"];
    let estimated = principia::run(
        principia::command()
            .arg("estimate")
            .args(inputs())
            .args(["--instructions", INSTRUCTIONS, "--json"])
            .args(sizes)
            .args(["--price-in", "1", "--price-out", "4"]),
    );
    assert!(
        estimated.status.success(),
        "{}",
        String::from_utf8_lossy(&estimated.stderr)
    );
    let estimate: Value = serde_json::from_slice(&estimated.stdout).expect("estimate is JSON");
    let field = |v: &Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));

    let out = tempfile::tempdir().unwrap();
    let run = principia::run(
        principia::command()
            .env("PRINCIPIA_LLM_URL", &llm.url)
            .env("PRINCIPIA_LLM_MODEL", "test-model")
            .arg("run")
            .args(inputs())
            .args(["--instructions", INSTRUCTIONS])
            .args(sizes)
            .arg("--out")
            .arg(out.path()),
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("report.json")).unwrap()).unwrap();
    let actual = &report["tokens"];
    let stored = &report["estimate"];

    // The run stored the same estimate the command printed, next to the actuals.
    for key in ["shards", "calls", "prompt_tokens", "completion_tokens"] {
        assert_eq!(field(stored, key), field(&estimate, key), "{key}");
    }
    assert_eq!(
        field(&estimate, "shards"),
        field(&report["shards"], "total")
    );
    // Every section got a candidate past the deterministic checks, hence its judge call.
    assert_eq!(report["coverage"]["covered"], report["coverage"]["total"]);
    assert_eq!(
        field(&estimate, "calls"),
        field(actual, "calls"),
        "{report}"
    );
    assert_eq!(llm.requests(), field(actual, "calls"));
    let (prompt, completion) = (
        field(&estimate, "prompt_tokens"),
        field(&estimate, "completion_tokens"),
    );
    let (actual_prompt, actual_completion) = (
        field(actual, "prompt_tokens"),
        field(actual, "completion_tokens"),
    );
    eprintln!(
        "estimate: {} calls, {prompt} prompt, {completion} completion; actual: {actual_prompt} prompt, {actual_completion} completion",
        field(actual, "calls")
    );
    assert!(
        within(prompt, actual_prompt, PROMPT_TOLERANCE),
        "prompt {prompt} vs {actual_prompt}"
    );
    assert!(
        within(completion, actual_completion, COMPLETION_TOLERANCE),
        "completion {completion} vs {actual_completion}"
    );
    assert!(
        within(
            prompt + completion,
            actual_prompt + actual_completion,
            TOTAL_TOLERANCE
        ),
        "total {} vs {}",
        prompt + completion,
        actual_prompt + actual_completion
    );
    let cost = estimate["cost"].as_f64().unwrap();
    assert!((cost - (prompt as f64 + 4.0 * completion as f64) / 1e6).abs() < 1e-12);
    llm.shutdown().await.unwrap();
}
