//! `principia run` end to end, as a user runs it: a separate process, real files.

use std::collections::HashSet;
use std::path::Path;

use bytes::Bytes;
use proto::Record;
use serde_json::Value;
use tests::principia;

const INSTRUCTIONS: &str = "I want a chatbot that specializes in Harbor's lending policy";

fn example() -> std::path::PathBuf {
    principia::workspace_root().join("examples/harbor-lending-policy.md")
}

fn read_dataset(path: &Path) -> Vec<Record> {
    let bytes = std::fs::read(path).expect("dataset written");
    proto::dataset::decode_parquet(Bytes::from(bytes))
        .expect("dataset decodes")
        .0
}

fn read_report(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("report.json")).expect("report written"))
        .expect("report is JSON")
}

fn run_extractive(input: &Path, out: &Path) -> std::process::Output {
    principia::run(
        principia::command()
            .arg("run")
            .arg(input)
            .args([
                "--instructions",
                INSTRUCTIONS,
                "--system-prompt",
                "You are Harbor's lending assistant.",
            ])
            .arg("--out")
            .arg(out),
    )
}

#[test]
fn extractive_run_writes_a_grounded_dataset_and_resumes_without_redoing_work() {
    let out = tempfile::tempdir().unwrap();
    let output = run_extractive(&example(), out.path());
    assert!(
        output.status.success(),
        "run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("extractive generator"), "{stdout}");

    let records = read_dataset(&out.path().join("dataset.parquet"));
    assert!(records.len() >= 20, "only {} items", records.len());
    let ids: HashSet<_> = records.iter().map(|r| r.record_id.clone()).collect();
    assert_eq!(ids.len(), records.len(), "record ids are unique");

    // Every answer is grounded: its evidence is verbatim in the section's text at the stored offsets.
    let tree: Value = serde_json::from_slice(
        &std::fs::read(
            out.path()
                .join("jobs")
                .join(&records[0].job_id)
                .join("tree.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut texts = std::collections::HashMap::new();
    collect_texts(&tree["root"], &mut texts);
    for record in &records {
        let text = &texts[&record.node_id];
        assert!(!record.evidence.is_empty());
        for (quote, span) in record.evidence.iter().zip(&record.evidence_spans) {
            assert_eq!(&text[span.start as usize..span.end as usize], quote);
        }
        let roles: Vec<_> = record.messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant"]);
        assert_eq!(record.messages[1].content, record.question);
        assert_eq!(record.messages[2].content, record.answer);
        assert!(record.section_path.len() >= 2);
        assert_eq!(record.generator, "extractive");
    }

    let report = read_report(out.path());
    assert_eq!(report["status"], "completed");
    assert_eq!(report["generator"], "extractive");
    assert_eq!(report["items"]["accepted"], records.len() as u64);
    let candidates = report["items"]["candidates"].as_u64().unwrap();
    let rejected = report["items"]["rejected"].as_u64().unwrap();
    assert_eq!(
        candidates,
        records.len() as u64 + rejected,
        "every candidate is accounted for"
    );
    let reasons: u64 = report["rejected"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(reasons, rejected);
    let coverage = &report["coverage"];
    assert_eq!(
        coverage["total"].as_u64().unwrap(),
        coverage["covered"].as_u64().unwrap()
            + coverage["uncovered"].as_array().unwrap().len() as u64
    );
    assert!(coverage["covered"].as_u64().unwrap() >= 14);

    // The same command again: nothing is redone and the dataset is the same, row for row.
    let again = run_extractive(&example(), out.path());
    assert!(again.status.success());
    let report = read_report(out.path());
    assert_eq!(report["shards"]["reused"], report["shards"]["total"]);
    assert_eq!(report["shards"]["processed"], 0);
    let rerun: Vec<_> = read_dataset(&out.path().join("dataset.parquet"))
        .into_iter()
        .map(|r| r.record_id)
        .collect();
    let first: Vec<_> = records.iter().map(|r| r.record_id.clone()).collect();
    assert_eq!(rerun, first);
}

fn collect_texts(node: &Value, into: &mut std::collections::HashMap<String, String>) {
    into.insert(
        node["id"].as_str().unwrap().to_string(),
        node["content"].as_str().unwrap_or("").to_string(),
    );
    for child in node["children"].as_array().into_iter().flatten() {
        collect_texts(child, into);
    }
}

#[test]
fn convert_writes_seekrflow_json_with_exactly_four_keys() {
    let out = tempfile::tempdir().unwrap();
    let tree_path = out.path().join("tree.json");
    let output = principia::run(
        principia::command()
            .arg("convert")
            .arg(example())
            .arg("-o")
            .arg(&tree_path),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree: Value = serde_json::from_slice(&std::fs::read(&tree_path).unwrap()).unwrap();
    fn check(node: &Value, depth: usize, count: &mut usize) {
        let keys: Vec<_> = node.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 4, "{keys:?}");
        assert_eq!(node["level"], Value::String(depth.to_string()));
        *count += 1;
        for child in node["children"].as_array().unwrap() {
            check(child, depth + 1, count);
        }
    }
    let mut count = 0;
    check(&tree, 0, &mut count);
    assert_eq!(count, 20, "root + 5 parts + 14 sections");
    // And it reads back as an input of its own.
    let again = principia::run(principia::command().arg("convert").arg(&tree_path));
    assert!(again.status.success());
    let reread: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(reread, tree);
}

#[test]
fn bad_input_gives_a_one_line_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty.md", Vec::new()),
        ("binary.md", vec![0, 159, 146, 150, 0, 1, 2]),
        (
            "broken.xml",
            b"<uscDoc xmlns=\"http://xml.house.gov/schemas/uslm/1.0\"><main><title>".to_vec(),
        ),
        (
            "broken.json",
            b"{\"label\": \"x\", \"content\": 3, \"children\": [], \"level\": \"0\"}".to_vec(),
        ),
    ];
    for (name, bytes) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let output = run_extractive(&path, &dir.path().join("out"));
        assert!(!output.status.success(), "{name} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let error_lines: Vec<_> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(error_lines.len(), 1, "{name}: {stderr}");
        assert!(error_lines[0].contains(name), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
    let missing = run_extractive(&dir.path().join("missing.md"), &dir.path().join("out"));
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("missing.md"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_budget_stops_generation_cleanly_and_says_so() {
    let llm = tests::spawn(tests::ServerConfig::default()).await;
    let out = tempfile::tempdir().unwrap();
    let budget = 4000;
    let output = principia::run(
        principia::command()
            .env("PRINCIPIA_LLM_URL", &llm.url)
            .env("PRINCIPIA_LLM_MODEL", "test-model")
            .arg("run")
            .arg(example())
            .args([
                "--instructions",
                INSTRUCTIONS,
                "--shard-tokens",
                "250",
                "--concurrency",
                "1",
            ])
            .args(["--token-budget", &budget.to_string(), "--out"])
            .arg(out.path()),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = read_report(out.path());
    assert_eq!(report["generator"], "openai");
    let spent = report["tokens"]["prompt_tokens"].as_u64().unwrap()
        + report["tokens"]["completion_tokens"].as_u64().unwrap();
    assert!(spent >= budget, "the budget was reached ({spent})");
    let uncovered = report["coverage"]["uncovered"].as_array().unwrap();
    let over_budget = uncovered
        .iter()
        .filter(|u| {
            u["reason"]
                .as_str()
                .unwrap()
                .contains("token budget of 4000 tokens was spent")
        })
        .count();
    assert!(
        over_budget > 0,
        "sections past the budget are reported: {uncovered:?}"
    );
    assert!(
        report["coverage"]["covered"].as_u64().unwrap() > 0,
        "work before the budget is kept"
    );
    // Generation stopped: far fewer calls than the unbudgeted job's two per section.
    let sections = report["sections"]["units"].as_u64().unwrap();
    assert!(
        llm.requests() < 2 * sections,
        "{} calls for {sections} sections",
        llm.requests()
    );
    llm.shutdown().await.unwrap();
}
