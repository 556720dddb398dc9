//! `principia combine` end to end: a generated dataset (an extractive run on the example policy)
//! plus a user JSONL that repeats some of its items exactly and some nearly, with new items of its
//! own: counts per source and reason, the outputs, and a stratified evaluation split.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use bytes::Bytes;
use proto::Record;
use serde_json::{Value, json};
use tests::principia;

fn generate(out: &Path) -> Vec<Record> {
    let output = principia::run(
        principia::command()
            .arg("run")
            .arg(principia::workspace_root().join("examples/harbor-lending-policy.md"))
            .args(["--instructions", "I want a lending assistant", "--out"])
            .arg(out),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    read(&out.join("dataset.parquet"))
}

fn read(path: &Path) -> Vec<Record> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    proto::dataset::decode_parquet(Bytes::from(bytes))
        .unwrap()
        .0
}

#[test]
fn combine_merges_dedups_across_sources_and_splits_by_section() {
    let dir = tempfile::tempdir().unwrap();
    let generated = generate(&dir.path().join("run"));
    assert!(generated.len() >= 20, "{}", generated.len());

    // The user's file: 3 exact repeats (case and spacing aside), 2 near repeats (punctuation),
    // 1 empty answer, 4 items of its own in two formats (2 with a section).
    let mut lines: Vec<Value> = Vec::new();
    for record in &generated[..3] {
        lines.push(json!({"question": format!("  {}", record.question.to_uppercase()), "answer": record.answer}));
    }
    for record in &generated[3..5] {
        let question = record.question.replace('?', " ?");
        lines.push(json!({"messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": record.answer},
        ]}));
    }
    lines.push(json!({"prompt": "Is there an answer here?", "completion": " "}));
    let own = [
        (
            "Which branch handles mortgage closings for members in Halifax?",
            "The Quay Street branch handles them.",
            "Branches",
        ),
        (
            "How long does Harbor keep signed loan files after payoff?",
            "Signed loan files are kept for seven years after payoff.",
            "Records",
        ),
        (
            "Can a member change the due date of a car loan payment?",
            "Yes, once a year on request.",
            "",
        ),
        (
            "Who approves an exception to the debt-to-income limit?",
            "The senior credit officer approves it in writing.",
            "",
        ),
    ];
    for (q, a, section) in own {
        if section.is_empty() {
            lines.push(json!({"instruction": q, "output": a}));
        } else {
            lines.push(json!({"question": q, "answer": a, "citation": section}));
        }
    }
    let user = dir.path().join("my-data.jsonl");
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&user, text).unwrap();

    let dataset = dir.path().join("run/dataset.parquet");
    let out = dir.path().join("combined");
    let output = principia::run(
        principia::command()
            .arg("combine")
            .arg(&dataset)
            .arg(&user)
            .args([
                "--source",
                "generated",
                "--eval-fraction",
                "0.2",
                "--seed",
                "7",
                "--json",
            ])
            .arg("-o")
            .arg(&out),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    let n = generated.len() as u64;
    assert_eq!(summary["rows"], n + 10);
    assert_eq!(summary["kept"], n + 4);
    assert_eq!(summary["sources"][0]["source"], "generated");
    assert_eq!(summary["sources"][0]["kept"], n);
    let mine = &summary["sources"][1];
    assert_eq!(mine["source"], "my-data");
    assert_eq!(mine["kept"], 4);
    assert_eq!(
        mine["removed"],
        json!({"exact_duplicate": 3, "near_duplicate": 2, "empty": 1})
    );

    let train = read(&out.with_extension("parquet"));
    let eval = read(&dir.path().join("combined.eval.parquet"));
    let total = (n + 4) as usize;
    assert_eq!(train.len() + eval.len(), total);
    assert_eq!(eval.len(), (0.2 * total as f64).round() as usize);
    assert_eq!(summary["eval"], eval.len());
    let train_ids: HashSet<&str> = train.iter().map(|r| r.record_id.as_str()).collect();
    assert!(
        eval.iter()
            .all(|r| !train_ids.contains(r.record_id.as_str()))
    );
    // Stratified: every section holds out about its share (within one row).
    let mut sizes: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (rows, held) in [(&train, false), (&eval, true)] {
        for r in rows.iter() {
            let key = if r.node_id.is_empty() {
                r.citation.clone()
            } else {
                r.node_id.clone()
            };
            let entry = sizes.entry(key).or_default();
            if held { entry.1 += 1 } else { entry.0 += 1 }
        }
    }
    assert_eq!(summary["strata"], sizes.len());
    for (section, (kept, held)) in &sizes {
        let share = 0.2 * (kept + held) as f64;
        assert!(
            (*held as f64 - share).abs() < 1.0,
            "{section}: {held} of {}",
            kept + held
        );
    }

    // The fine-tuning JSONL: one conversation per row, the same rows as the Parquet file.
    let jsonl = std::fs::read_to_string(dir.path().join("combined.jsonl")).unwrap();
    let conversations: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(conversations.len(), train.len());
    for (conversation, record) in conversations.iter().zip(&train) {
        let messages = conversation["messages"].as_array().unwrap();
        assert_eq!(messages.last().unwrap()["content"], record.answer.as_str());
        assert_eq!(messages.last().unwrap()["role"], "assistant");
    }
    let eval_lines = std::fs::read_to_string(dir.path().join("combined.eval.jsonl")).unwrap();
    assert_eq!(eval_lines.lines().count(), eval.len());
    let own_rows = train
        .iter()
        .chain(&eval)
        .filter(|r| r.generator == "user")
        .count();
    assert_eq!(own_rows, 4);
}

#[test]
fn bad_user_data_is_an_error_naming_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let user = dir.path().join("mine.jsonl");
    std::fs::write(
        &user,
        "{\"question\": \"Q?\", \"answer\": \"A.\"}\n{\"question\": \"Q?\", \"answer\": \n",
    )
    .unwrap();
    let output = principia::run(
        principia::command()
            .arg("combine")
            .arg(&user)
            .arg("-o")
            .arg(dir.path().join("out")),
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("mine.jsonl:2: bad JSON"), "{stderr}");
    assert!(!dir.path().join("out.parquet").exists());
}
