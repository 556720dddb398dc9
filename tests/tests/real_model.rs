//! Principia against a real model with default settings: `principia run --generator openai` and a
//! one-worker fleet job on Part 1 of the example policy, served by llama-cpp-python with
//! SmolLM2-135M-Instruct (`tests::llama`).
//!
//! What holds for a model this small, and is asserted: the job completes with defaults (the
//! server's refusal of `json_schema` is met once and negotiated down, a one-slot server is not
//! sent a queue), candidates are made, and none is lost to grounding (this model never copies a
//! quote character for character; it cites the numbered sentences, which the schema enumerates);
//! any row kept carries its sentences verbatim. Whether its items pass the checks and its own
//! judge varies from run to run (see BENCHMARKS.md): rows are not asserted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use proto::Record;
use serde_json::Value;
use tests::fleet::Fleet;
use tests::llama::LlamaServer;
use tests::principia;

const INSTRUCTIONS: &str =
    "I want a chatbot that answers members' questions about Harbor's lending policy";

/// Part 1 of the example policy (its title, preamble and Sections 1.1 to 1.3), as a file of its
/// own in `dir`: three sections keep a run on a 2-core machine to a few minutes.
fn part_one(dir: &Path) -> PathBuf {
    let example = principia::workspace_root().join("examples/harbor-lending-policy.md");
    let text = std::fs::read_to_string(example).expect("the example policy");
    let end = text.find("## Part 2.").expect("the example has a Part 2");
    let path = dir.join("harbor-part-1.md");
    std::fs::write(&path, &text[..end]).expect("Part 1 written");
    path
}

fn read_dataset(path: &Path) -> Vec<Record> {
    let bytes = std::fs::read(path).expect("dataset written");
    proto::dataset::decode_parquet(Bytes::from(bytes))
        .expect("dataset decodes")
        .0
}

fn collect_texts(node: &Value, out: &mut HashMap<String, String>) {
    if let (Some(id), Some(text)) = (node["id"].as_str(), node["text"].as_str()) {
        out.insert(id.to_string(), text.to_string());
    }
    for child in node["children"].as_array().into_iter().flatten() {
        collect_texts(child, out);
    }
}

/// Every row is grounded: each evidence quote is the section's text at its stored offsets.
fn assert_grounded(records: &[Record], tree: &Value) {
    let mut texts = HashMap::new();
    collect_texts(&tree["root"], &mut texts);
    for record in records {
        assert_eq!(record.generator, "openai");
        assert!(!record.evidence.is_empty(), "{record:?}");
        for (quote, span) in record.evidence.iter().zip(&record.evidence_spans) {
            let text = &texts[&span.node_id];
            assert_eq!(&text[span.start as usize..span.end as usize], quote);
        }
    }
}

/// What the report says of the server and the candidates: the endpoint, JSON object with the
/// schema (this server refuses `json_schema`, once), at most two requests in flight (one slot),
/// candidates made and none ungrounded.
fn assert_report(report: &Value, server: &LlamaServer) {
    let found = &report["llm_server"];
    assert_eq!(found["endpoint"], server.base_url(), "{report}");
    assert_eq!(found["structured_output"], "json_object", "{report}");
    assert!(found["concurrency"].as_u64().unwrap() <= 2, "{report}");
    assert_eq!(report["generator"], "openai");
    assert_eq!(report["model"], server.model());
    let refusals: Vec<&Value> = report["server_errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["message"].as_str().unwrap().contains("json_object"))
        .collect();
    assert_eq!(refusals.len(), 1, "{report}");
    assert_eq!(refusals[0]["count"], 1, "{report}");
    assert!(
        report["items"]["candidates"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert_eq!(
        report["rejected"].get("evidence_not_in_source"),
        None,
        "{report}"
    );
}

#[test]
fn principia_run_with_defaults_completes_against_a_small_real_model_and_grounds_by_sentence_id() {
    let server = LlamaServer::start().expect("llama_cpp.server starts");
    let dir = tempfile::tempdir().unwrap();
    let input = part_one(dir.path());
    let out = dir.path().join("out");
    let output = principia::run(
        principia::command()
            .arg("run")
            .arg(&input)
            .args(["--instructions", INSTRUCTIONS, "--generator", "openai"])
            .args(["--llm-url", &server.base_url(), "--model", server.model()])
            .arg("--out")
            .arg(&out),
    );
    assert!(
        output.status.success(),
        "run failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        server.log_tail()
    );
    let records = read_dataset(&out.join("dataset.parquet"));
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["status"], "completed");
    assert_report(&report, &server);
    assert_eq!(report["items"]["accepted"], records.len() as u64);
    let job = report["job_id"].as_str().unwrap();
    let tree: Value = serde_json::from_slice(
        &std::fs::read(out.join("jobs").join(job).join("tree.json")).unwrap(),
    )
    .unwrap();
    assert_grounded(&records, &tree);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_job_with_one_default_worker_completes_against_a_small_real_model() {
    let server = LlamaServer::start().expect("llama_cpp.server starts");
    let dir = tempfile::tempdir().unwrap();
    let input = part_one(dir.path());
    let mut fleet = Fleet::new("real-model");
    fleet.use_llm(&server.base_url(), server.model());
    fleet.start_coordinator();
    fleet.start_default_worker();
    let job = fleet.submit(
        &[&input],
        &[
            "--instructions",
            INSTRUCTIONS,
            "--generator",
            "openai",
            "--model",
            server.model(),
        ],
    );
    let status = fleet.wait_finished(&job, Duration::from_secs(900));
    assert_eq!(status["status"], "completed", "{status}\n{}", fleet.logs());

    let path = dir.path().join("dataset.parquet");
    fleet.cli(&["download", &job, "-o", path.to_str().unwrap()]);
    let records = read_dataset(&path);
    // The coordinator reads the file as `principia convert` does: the same tree, the same ids.
    let tree_path = dir.path().join("tree.json");
    let converted = principia::run(
        principia::command()
            .arg("convert")
            .arg(&input)
            .arg("-o")
            .arg(&tree_path),
    );
    assert!(converted.status.success());
    let tree: Value = serde_json::from_slice(&std::fs::read(&tree_path).unwrap()).unwrap();
    assert_grounded(&records, &tree);
    let (code, body) = fleet.http_get(&format!("/v1/flow/alignment/{job}/report"));
    assert_eq!(code, 200, "{body}");
    let report: Value = serde_json::from_str(&body).expect("report is JSON");
    assert_report(&report, &server);
}
