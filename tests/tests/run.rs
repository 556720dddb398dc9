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
fn convert_reads_an_html_page_and_refuses_a_wrongly_forced_format() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("policy.htm");
    std::fs::write(
        &page,
        "<!DOCTYPE html><html><head><title>Lending</title><script>track()</script></head><body>\
         <nav><a href=\"/\">Home</a></nav><main><h1>Harbor Lending Policy</h1>\
         <p>Applies to consumer loans.</p><h2>Section 1 Approval</h2>\
         <p>A loan officer may approve up to $50,000.</p><h2>Section 2 Fees</h2>\
         <ul><li>Late fee: $25.</li><li>No prepayment fee.</li></ul></main></body></html>",
    )
    .unwrap();
    let output = principia::run(principia::command().arg("convert").arg(&page));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(tree["label"], "Harbor Lending Policy");
    assert_eq!(tree["content"], "Applies to consumer loans.");
    let labels: Vec<&str> = tree["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|child| child["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["Section 1 Approval", "Section 2 Fees"]);
    assert_eq!(
        tree["children"][1]["content"],
        "- Late fee: $25.\n- No prepayment fee."
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !stdout.contains("Home") && !stdout.contains("track"),
        "{stdout}"
    );

    let forced = principia::run(
        principia::command()
            .arg("convert")
            .arg(&page)
            .args(["--format", "pdf"]),
    );
    assert!(!forced.status.success());
    let stderr = String::from_utf8_lossy(&forced.stderr);
    assert!(
        stderr.contains("policy.htm: not a readable pdf file"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
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

fn run_openai(url: &str, out: &Path, extra: &[&str]) -> std::process::Command {
    let mut command = principia::command();
    command
        .env("PRINCIPIA_LLM_URL", url)
        .env("PRINCIPIA_LLM_MODEL", "test-model")
        .env("PRINCIPIA_LLM_JUDGE_MODEL", "test-judge")
        .arg("run")
        .arg(example())
        .args(["--instructions", INSTRUCTIONS, "--shard-tokens", "250"])
        .args(extra)
        .arg("--out")
        .arg(out);
    command
}

#[tokio::test(flavor = "multi_thread")]
async fn an_openai_run_retries_through_faults_and_keeps_judged_items() {
    let llm = tests::spawn(tests::ServerConfig {
        fail_first_429: 2,
        retry_after: Some("1".into()),
        fail_first_500: 2,
        ..tests::ServerConfig::default()
    })
    .await;
    let out = tempfile::tempdir().unwrap();
    let output = principia::run(&mut run_openai(&llm.url, out.path(), &[]));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stats = llm.stats();
    let report = read_report(out.path());
    assert_eq!(report["generator"], "openai");
    assert_eq!(report["model"], "test-model");
    assert_eq!(report["judge_model"], "test-judge");
    let calls = report["tokens"]["calls"].as_u64().unwrap();
    assert!(
        llm.requests() >= calls + 4,
        "the 4 failed requests were retried ({stats:?})"
    );
    let records = read_dataset(&out.path().join("dataset.parquet"));
    assert!(!records.is_empty());
    for record in &records {
        assert_eq!(record.generator, "openai");
        assert_eq!(record.judge_model.as_deref(), Some("test-judge"));
        let criteria: Vec<_> = record.scores.iter().map(|s| s.criterion.as_str()).collect();
        assert!(criteria.contains(&"faithfulness"), "{criteria:?}");
        assert!(!record.evidence.is_empty());
    }
    llm.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_openai_run_looks_up_cross_references_and_definitions_and_says_where_quotes_sit() {
    let llm = tests::spawn(tests::ServerConfig::default()).await;
    let out = tempfile::tempdir().unwrap();
    let output = principia::run(&mut run_openai(&llm.url, out.path(), &[]));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The example's sections cite "Section 2.3", "Section 4.1", "Part 2" and use terms that
    // Section 1.2 defines: their prompts carry those texts, and offer the tools for more (this
    // server calls none unless told to).
    let report = read_report(out.path());
    let quality = &report["quality"];
    assert!(quality["lookups"].as_u64().unwrap() >= 10, "{quality}");
    assert_eq!(llm.stats().tool_call_replies, 0);
    let records = read_dataset(&out.path().join("dataset.parquet"));
    let job = &records[0].job_id;
    let tree: Value = serde_json::from_slice(
        &std::fs::read(out.path().join("jobs").join(job).join("tree.json")).unwrap(),
    )
    .unwrap();
    let mut texts = std::collections::HashMap::new();
    collect_texts(&tree["root"], &mut texts);
    let mut quoting_lookups = 0;
    for record in &records {
        for (quote, span) in record.evidence.iter().zip(&record.evidence_spans) {
            let text = &texts[&span.node_id];
            assert_eq!(&text[span.start as usize..span.end as usize], quote);
        }
        assert!(
            record
                .evidence_spans
                .iter()
                .any(|s| s.node_id == record.node_id),
            "every item quotes its own section"
        );
        if record
            .evidence_spans
            .iter()
            .any(|s| s.node_id != record.node_id)
        {
            quoting_lookups += 1;
            assert_eq!(record.question_type, "cross_reference");
        }
    }
    assert!(quoting_lookups >= 3, "{quoting_lookups}");
    assert_eq!(quality["items_quoting_lookups"], quoting_lookups);
    // Charge-off (Section 4.3) cites Section 4.1: its cross-reference item quotes 4.1's text.
    let charge_off = records
        .iter()
        .find(|r| r.citation.starts_with("Section 4.3 of ") && r.question_type == "cross_reference")
        .expect("a cross-reference item for Section 4.3");
    let hardship = &texts[&charge_off.evidence_spans[1].node_id];
    assert!(hardship.starts_with("The Credit Union must respond to a hardship request"));
    let index = std::fs::read_dir(out.path().join("jobs").join(job).join("lookup"))
        .unwrap()
        .count();
    assert_eq!(index, 1, "one lookup index, beside the tree");
    llm.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_report_measures_quality_and_a_rerun_after_a_crash_calls_nothing_again() {
    let llm = tests::spawn(tests::ServerConfig {
        fabricate_evidence: true,
        judge_reject_first: 1,
        ..tests::ServerConfig::default()
    })
    .await;
    let out = tempfile::tempdir().unwrap();
    let output = principia::run(&mut run_openai(&llm.url, out.path(), &[]));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = read_report(out.path());
    let quality = &report["quality"];
    let records = read_dataset(&out.path().join("dataset.parquet"));
    // One fabricated quote per section's reply: grounding is measured, below 1.
    let checked = quality["evidence_checked"].as_u64().unwrap();
    let ungrounded = report["rejected"]["evidence_not_in_source"]
        .as_u64()
        .unwrap();
    assert!(ungrounded > 0);
    let grounding = quality["grounding_rate"].as_f64().unwrap();
    assert!((grounding - (checked - ungrounded) as f64 / checked as f64).abs() < 1e-9);
    assert!(quality["planned"].as_u64().unwrap() >= report["sections"]["units"].as_u64().unwrap());
    let faithfulness = &quality["scores"]["faithfulness"];
    let binned: u64 = faithfulness["histogram"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(binned, records.len() as u64);
    let refined = records
        .iter()
        .filter(|r| r.verdict == "accept_refined")
        .count() as u64;
    assert_eq!(quality["refined"], refined);
    let calls = report["tokens"]["calls"].as_u64().unwrap();
    let per_item = quality["calls_per_item"].as_f64().unwrap();
    assert!((per_item - calls as f64 / records.len() as f64).abs() < 1e-9);
    let rendered = principia::run(
        principia::command()
            .arg("report")
            .arg(out.path().join("report.json")),
    );
    let text = String::from_utf8_lossy(&rendered.stdout);
    assert!(text.contains("grounded"), "{text}");

    // A crash before any part was written: every LLM reply is in the response cache, so the
    // same command makes the same dataset without a single request.
    let sent = llm.requests();
    std::fs::remove_dir_all(out.path().join("jobs")).unwrap();
    std::fs::remove_file(out.path().join("dataset.parquet")).unwrap();
    std::fs::remove_file(out.path().join("report.json")).unwrap();
    let output = principia::run(&mut run_openai(&llm.url, out.path(), &[]));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(llm.requests(), sent, "no request was sent again");
    let again = read_dataset(&out.path().join("dataset.parquet"));
    let ids = |r: &[Record]| r.iter().map(|r| r.record_id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&again), ids(&records));
    let report = read_report(out.path());
    assert_eq!(report["tokens"]["calls"], 0);
    assert_eq!(report["tokens"]["cached_calls"], calls);
    llm.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_keeps_finished_shards_and_the_same_command_resumes() {
    let llm = tests::spawn(tests::ServerConfig {
        latency: std::time::Duration::from_millis(300),
        ..tests::ServerConfig::default()
    })
    .await;
    let out = tempfile::tempdir().unwrap();
    let child = run_openai(&llm.url, out.path(), &["--concurrency", "1"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once the first part is on disk.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let parts = || parts_on_disk(out.path());
    while parts() == 0 {
        assert!(std::time::Instant::now() < deadline, "no part was written");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let killed = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("run the same command again"));
    let finished = parts();
    assert!(finished >= 1);
    let requests_before = llm.requests();

    let again = principia::run(&mut run_openai(
        &llm.url,
        out.path(),
        &["--concurrency", "1"],
    ));
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let report = read_report(out.path());
    assert_eq!(report["status"], "completed");
    let reused = report["shards"]["reused"].as_u64().unwrap();
    assert!(
        reused >= finished as u64,
        "finished shards were not redone ({reused} reused)"
    );
    let total = report["shards"]["total"].as_u64().unwrap();
    assert!(reused < total, "the interrupted run left work to do");
    // The resumed run paid only for the shards that were not finished.
    let resumed_calls = llm.requests() - requests_before;
    let job_calls = report["tokens"]["calls"].as_u64().unwrap();
    assert!(
        resumed_calls < job_calls,
        "{resumed_calls} calls on resume of a {job_calls}-call job"
    );
    llm.shutdown().await.unwrap();
}

/// Parts written under `out/jobs/*/parts/`.
fn parts_on_disk(out: &Path) -> usize {
    let Ok(jobs) = std::fs::read_dir(out.join("jobs")) else {
        return 0;
    };
    jobs.filter_map(Result::ok)
        .filter_map(|job| std::fs::read_dir(job.path().join("parts")).ok())
        .map(|parts| {
            parts
                .filter_map(Result::ok)
                .filter(|p| p.file_name().to_string_lossy().ends_with(".parquet"))
                .count()
        })
        .sum()
}

#[test]
fn a_run_that_cannot_reach_its_llm_server_says_why_it_failed() {
    // A port nothing listens on: every call fails to connect.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let out = tempfile::tempdir().unwrap();
    let output = principia::run(&mut run_openai(
        &format!("http://127.0.0.1:{port}/v1"),
        out.path(),
        &["--llm-max-retries", "0"],
    ));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr
        .lines()
        .find(|line| line.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(last.contains("delivery limit"), "{last}");
    assert!(last.contains("last error"), "{last}");
    assert!(last.contains("connection failed"), "{last}");
    let report = read_report(out.path());
    assert_eq!(report["status"], "failed");
    assert_eq!(report["generator"], "openai");
    assert_eq!(report["model"], "test-model");
    let reason = report["failed_shards"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("connection failed"), "{reason}");
}
