//! The review API in one process: every review endpoint, tenants, the reviewed exports and their
//! upload as `fine-tune` files, and the round trip upload -> generate -> review -> edit a section
//! -> regenerate -> export, in which only the shard whose text changed is generated again (the
//! workers' generator counts the shards it generates) and every human decision survives.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use bytes::Bytes;
use common::{INSTRUCTIONS, Server};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use proto::Record;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn squash(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The job's dataset as generated.
async fn dataset(server: &Server, key: &str, job: &str) -> Vec<Record> {
    let outputs = server
        .ok(&format!("/v1/flow/alignment/{job}/outputs"), key)
        .await;
    let file = outputs[0]["id"].as_str().unwrap();
    let (status, bytes) = server
        .bytes(&format!("/v1/flow/files/{file}/content"), key)
        .await;
    assert_eq!(status, StatusCode::OK);
    proto::dataset::decode_parquet(bytes).unwrap().0
}

/// The review columns of a reviewed Parquet export, by record id.
fn review_columns(bytes: Bytes) -> HashMap<String, (String, Option<String>, bool, bool)> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap();
    let mut columns = HashMap::new();
    for batch in reader {
        let batch: RecordBatch = batch.unwrap();
        let text = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_string::<i32>()
                .clone()
        };
        let ids = text("record_id");
        let status = text("review_status");
        let reason = text("review_reason");
        let edited = batch
            .column_by_name("human_edited")
            .unwrap()
            .as_boolean()
            .clone();
        let reviewed_at = batch.column_by_name("reviewed_at").unwrap().clone();
        for row in 0..batch.num_rows() {
            columns.insert(
                ids.value(row).to_string(),
                (
                    status.value(row).to_string(),
                    (!reason.is_null(row)).then(|| reason.value(row).to_string()),
                    edited.value(row),
                    !reviewed_at.is_null(row),
                ),
            );
        }
    }
    columns
}

#[tokio::test(flavor = "multi_thread")]
async fn review_edit_regenerate_and_export_round_trip() {
    let server = Server::start(false).await;
    server.start_workers();
    let key = server.key("acme").await;
    let other = server.key("globex").await;
    let job = server.start_job(&key, 300).await;
    let done = server
        .wait_for_status(&key, &job, &["completed", "failed"])
        .await;
    assert_eq!(done["status"], "completed", "{done:#}");
    let shards = done["principia"]["shards_total"].as_u64().unwrap();
    assert!(shards > 2, "{done:#}");
    assert_eq!(
        server.shards_generated(),
        shards,
        "every shard generated once"
    );
    let records = dataset(&server, &key, &job).await;
    let review = format!("/v1/flow/alignment/{job}/review");

    // Sections by node, shards by their sections with items.
    let mut by_node: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for record in &records {
        by_node.entry(&record.node_id).or_default().push(record);
    }
    let mut nodes_of_shard: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for record in &records {
        let nodes = nodes_of_shard.entry(&record.shard_id).or_default();
        if !nodes.contains(&record.node_id.as_str()) {
            nodes.push(&record.node_id);
        }
    }
    // X: a section sharing its shard with another section Z; Y: a section of another shard.
    let (x_shard, x_nodes) = nodes_of_shard
        .iter()
        .find(|(_, nodes)| nodes.len() >= 2 && by_node[nodes[0]].len() >= 2)
        .expect("a shard with two sections with items");
    let (x, z) = (x_nodes[0], x_nodes[1]);
    let y = by_node
        .iter()
        .find(|(node, items)| items[0].shard_id != *x_shard && items.len() >= 2 && **node != x)
        .map(|(node, _)| *node)
        .expect("a section of another shard");
    let (x1, y1, y2, z1) = (by_node[x][0], by_node[y][0], by_node[y][1], by_node[z][0]);

    // The tree: the root with the job's totals, then its children a page at a time.
    let top = server.ok(&format!("{review}/tree"), &key).await;
    assert_eq!(top["total"], 1);
    assert_eq!(top["tree_version"], 1);
    assert_eq!(top["generated_version"], 1);
    let root = &top["nodes"][0];
    assert_eq!(root["subtree"]["items"], records.len());
    assert_eq!(root["subtree"]["pending"], records.len());
    assert_eq!(root["subtree"]["reviewed"], 0);
    assert!(root["sections"].as_u64().unwrap() >= by_node.len() as u64);
    let root_id = root["node_id"].as_str().unwrap();
    let children = server
        .ok(&format!("{review}/tree?parent={root_id}"), &key)
        .await;
    assert_eq!(children["parent"]["node_id"], root_id);
    assert_eq!(children["total"], root["children"]);
    let items_below: u64 = children["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["subtree"]["items"].as_u64().unwrap())
        .sum::<u64>()
        + root["own"]["items"].as_u64().unwrap();
    assert_eq!(items_below, records.len() as u64);
    let page = server
        .ok(
            &format!("{review}/tree?parent={root_id}&limit=1&offset=1"),
            &key,
        )
        .await;
    assert_eq!(page["nodes"].as_array().unwrap().len(), 1);
    assert_eq!(page["nodes"][0]["node_id"], children["nodes"][1]["node_id"]);
    let (status, _) = server
        .get(&format!("{review}/tree?parent=0000000000000000"), &key)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A section: its text, its items, each quote highlighted at its code point offsets.
    let section = server.ok(&format!("{review}/sections/{x}"), &key).await;
    assert_eq!(section["total"], by_node[x].len());
    assert_eq!(section["node"]["own"]["items"], by_node[x].len());
    let text = section["text"].as_str().unwrap();
    let chars: Vec<char> = text.chars().collect();
    for item in section["items"].as_array().unwrap() {
        assert_eq!(item["stale"], false);
        assert_eq!(item["status"], "pending");
        for evidence in item["evidence"].as_array().unwrap() {
            let (start, end) = (
                evidence["char_start"].as_u64().unwrap() as usize,
                evidence["char_end"].as_u64().unwrap() as usize,
            );
            let highlighted: String = chars[start..end].iter().collect();
            assert_eq!(
                squash(&highlighted),
                squash(evidence["quote"].as_str().unwrap())
            );
        }
    }
    let one = server
        .ok(&format!("{review}/sections/{x}?limit=1&offset=1"), &key)
        .await;
    assert_eq!(one["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        one["items"][0]["record_id"],
        section["items"][1]["record_id"]
    );
    assert_eq!(one["total"], section["total"]);

    // Decisions. A rejection needs a reason; PUT needs a status; text must not be empty.
    let item = |id: &str| format!("{review}/items/{id}");
    let send = |method: Method, path: String, body: Value| {
        let server = &server;
        let key = key.clone();
        async move { server.call(method, &path, Some(&key), Some(body)).await }
    };
    let (status, body) = send(
        Method::PUT,
        item(&y2.record_id),
        json!({ "status": "rejected" }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("reason")
    );
    let (status, _) = send(Method::PUT, item(&y2.record_id), json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = send(
        Method::PATCH,
        item(&y2.record_id),
        json!({ "question": "  " }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = send(
        Method::PATCH,
        item(&y2.record_id),
        json!({ "status": "maybe" }),
    )
    .await;
    assert!(status.is_client_error(), "{status}");
    let (status, rejected) = send(
        Method::PUT,
        item(&y2.record_id),
        json!({ "status": "rejected", "reason": "The threshold is wrong" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{rejected}");
    assert_eq!(rejected["status"], "rejected");
    assert_eq!(rejected["reason"], "The threshold is wrong");
    // PUT is idempotent: the same request leaves the same state, time included.
    let (_, first) = send(
        Method::PUT,
        item(&y1.record_id),
        json!({ "status": "approved" }),
    )
    .await;
    let (_, again) = send(
        Method::PUT,
        item(&y1.record_id),
        json!({ "status": "approved" }),
    )
    .await;
    assert_eq!(first["status"], "approved");
    assert_eq!(first, again);
    // Editing marks the item human-edited; approving it afterwards keeps the edit.
    let edited_answer = format!("{} (Reviewed by the lending team.)", x1.answer);
    let (status, edited) = send(
        Method::PATCH,
        item(&x1.record_id),
        json!({ "answer": edited_answer }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!(edited["human_edited"], true);
    assert_eq!(edited["status"], "pending");
    assert_eq!(edited["answer"], edited_answer.as_str());
    assert_eq!(edited["original_answer"], x1.answer.as_str());
    assert_eq!(edited["question"], x1.question.as_str());
    let (_, approved) = send(
        Method::PATCH,
        item(&x1.record_id),
        json!({ "status": "approved" }),
    )
    .await;
    assert_eq!(approved["status"], "approved");
    assert_eq!(approved["human_edited"], true);
    assert_eq!(approved["answer"], edited_answer.as_str());
    let (_, z_approved) = send(
        Method::PATCH,
        item(&z1.record_id),
        json!({ "status": "approved" }),
    )
    .await;
    assert_eq!(z_approved["status"], "approved");
    assert_eq!(z_approved["human_edited"], false);
    let fetched = server.ok(&item(&x1.record_id), &key).await;
    assert_eq!(fetched, approved);
    let (status, _) = server.get(&item("rec-nope"), &key).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Decisions are records on the store.
    assert_eq!(
        server
            .store
            .list(&format!("jobs/{job}/reviews/"))
            .await
            .unwrap()
            .len(),
        4
    );

    // Counts follow the decisions, per section and for the job.
    let top = server.ok(&format!("{review}/tree"), &key).await;
    let totals = &top["nodes"][0]["subtree"];
    assert_eq!(totals["approved"], 3, "{totals}");
    assert_eq!(totals["rejected"], 1);
    assert_eq!(totals["reviewed"], 4);
    assert_eq!(totals["edited"], 1);
    assert_eq!(totals["pending"], records.len() - 4);
    let y_rejected = server
        .ok(&format!("{review}/sections/{y}?status=rejected"), &key)
        .await;
    assert_eq!(y_rejected["total"], 1);
    assert_eq!(y_rejected["items"][0]["record_id"], y2.record_id.as_str());
    assert_eq!(y_rejected["node"]["own"]["reviewed"], 2);

    // Exports: edits applied, the rejected item left out.
    let (status, jsonl) = server
        .bytes(&format!("{review}/export?format=jsonl"), &key)
        .await;
    assert_eq!(status, StatusCode::OK);
    let lines: Vec<Value> = std::str::from_utf8(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), records.len() - 1);
    for line in &lines {
        assert_eq!(line.as_object().unwrap().len(), 1, "{line}");
        let roles: Vec<&str> = line["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["system", "user", "assistant"]);
    }
    assert!(
        lines
            .iter()
            .any(|l| l["messages"][2]["content"] == edited_answer.as_str())
    );
    assert!(
        !lines
            .iter()
            .any(|l| l["messages"][1]["content"] == y2.question.as_str()
                && l["messages"][2]["content"] == y2.answer.as_str())
    );
    let (status, parquet) = server.bytes(&format!("{review}/export"), &key).await;
    assert_eq!(status, StatusCode::OK);
    let (exported, metadata) = proto::dataset::decode_parquet(parquet.clone()).unwrap();
    assert_eq!(metadata["principia.reviewed"], "1");
    assert_eq!(exported.len(), records.len() - 1);
    let x1_out = exported
        .iter()
        .find(|r| r.record_id == x1.record_id)
        .unwrap();
    assert_eq!(x1_out.answer, edited_answer);
    assert_eq!(x1_out.messages[2].content, edited_answer);
    let columns = review_columns(parquet.clone());
    assert_eq!(
        columns[&x1.record_id],
        ("approved".to_string(), None, true, true)
    );
    assert_eq!(
        columns[&z1.record_id],
        ("approved".to_string(), None, false, true)
    );
    let pending = records
        .iter()
        .find(|r| {
            ![&x1, &y1, &y2, &z1]
                .iter()
                .any(|s| s.record_id == r.record_id)
        })
        .unwrap();
    assert_eq!(
        columns[&pending.record_id],
        ("pending".to_string(), None, false, false)
    );
    assert!(!columns.contains_key(&y2.record_id));
    let (status, _) = server
        .bytes(&format!("{review}/export?format=csv"), &key)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // The downloaded Parquet goes back in as a fine-tune file; one of another shape does not.
    let (status, uploaded) = server
        .upload(&key, "reviewed.parquet", "fine-tune", parquet.to_vec())
        .await;
    assert_eq!(status, StatusCode::OK, "{uploaded}");
    assert_eq!(uploaded["purpose"], "fine-tune");
    let (status, refused) = server
        .upload(&key, "other.parquet", "fine-tune", not_a_dataset())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("not a fine-tuning dataset") && message.contains("`messages`"),
        "{message}"
    );
    let (status, refused) = server
        .upload(&key, "broken.parquet", "fine-tune", b"PAR1 no".to_vec())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    let (status, refused) = server
        .upload(&key, "bad.jsonl", "fine-tune", b"{\"text\": 1}\n".to_vec())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    let (status, _) = server
        .upload(&key, "reviewed.jsonl", "fine-tune", jsonl.to_vec())
        .await;
    assert_eq!(status, StatusCode::OK);

    // Nothing edited yet: nothing to regenerate.
    let (status, body) = server
        .call(
            Method::POST,
            &format!("{review}/regenerate"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // Edit section X: a new tree version, a new id for X, nothing else changes.
    let new_text = format!(
        "{}\n\nThe credit union tells the member the outcome in writing within 5 business days.",
        section["text"].as_str().unwrap()
    );
    let (status, same) = send(
        Method::PUT,
        format!("{review}/sections/{x}"),
        json!({ "text": section["text"] }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{same}");
    assert_eq!(same["changed"], false);
    assert_eq!(same["tree_version"], 1);
    let (status, edit) = send(
        Method::PUT,
        format!("{review}/sections/{x}"),
        json!({ "text": new_text }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{edit}");
    assert_eq!(edit["changed"], true);
    assert_eq!(edit["tree_version"], 2);
    let new_x = edit["node_id"].as_str().unwrap().to_string();
    assert_ne!(new_x, x);
    assert!(
        server
            .store
            .exists(&format!("jobs/{job}/tree.v2.json"))
            .await
            .unwrap()
    );
    let (status, _) = server.get(&format!("{review}/sections/{x}"), &key).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the old id is gone");
    let before = server.ok(&format!("{review}/sections/{new_x}"), &key).await;
    assert_eq!(before["text"], new_text.as_str());
    assert_eq!(before["node"]["text_changed"], true);
    assert_eq!(
        before["total"],
        by_node[x].len(),
        "its items follow by path"
    );
    assert!(
        before["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["stale"] == true)
    );
    let top = server.ok(&format!("{review}/tree"), &key).await;
    assert_eq!(top["tree_version"], 2);
    assert_eq!(top["generated_version"], 1);

    // Regenerate: only X's shard is generated again.
    let (status, regenerated) = server
        .call(
            Method::POST,
            &format!("{review}/regenerate"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{regenerated}");
    assert_eq!(regenerated["shards_total"], shards);
    assert_eq!(regenerated["shards_to_generate"], 1);
    assert_eq!(regenerated["shards_reused"], shards - 1);
    assert_eq!(regenerated["tree_version"], 2);
    let done = server
        .wait_for_status(&key, &job, &["completed", "failed"])
        .await;
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(
        server.shards_generated(),
        shards + 1,
        "only the changed shard was generated again"
    );
    let report = server
        .ok(&format!("/v1/flow/alignment/{job}/report"), &key)
        .await;
    assert_eq!(report["shards"]["reused"], shards - 1, "{report:#}");

    // Every decision survived: unchanged shards keep their items and ids; the human-edited item
    // of the regenerated shard is kept as edited; Z's item, generated again under a new id, gets
    // its decision back.
    let after = dataset(&server, &key, &job).await;
    for kept in [&y1, &y2] {
        assert!(after.iter().any(|r| r.record_id == kept.record_id));
    }
    let x1_now = server.ok(&item(&x1.record_id), &key).await;
    assert_eq!(x1_now["status"], "approved");
    assert_eq!(x1_now["human_edited"], true);
    assert_eq!(x1_now["answer"], edited_answer.as_str());
    assert_eq!(x1_now["stale"], true);
    assert_eq!(
        server.ok(&item(&y1.record_id), &key).await["status"],
        "approved"
    );
    assert_eq!(
        server.ok(&item(&y2.record_id), &key).await["status"],
        "rejected"
    );
    let z1_again = after
        .iter()
        .find(|r| r.node_id == z1.node_id && r.question == z1.question)
        .expect("Z's item generated again");
    assert_ne!(z1_again.record_id, z1.record_id, "a new shard, a new id");
    assert_eq!(
        server.ok(&item(&z1_again.record_id), &key).await["status"],
        "approved"
    );
    let (status, _) = server.get(&item(&z1.record_id), &key).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let x_after = server
        .ok(&format!("{review}/sections/{new_x}?limit=500"), &key)
        .await;
    let x_items = x_after["items"].as_array().unwrap();
    assert!(
        x_items
            .iter()
            .any(|i| i["record_id"] == x1.record_id.as_str())
    );
    assert!(
        x_items.iter().any(|i| i["stale"] == false),
        "new items from the new text: {x_after:#}"
    );
    assert_eq!(x_after["node"]["text_changed"], false);
    let top = server.ok(&format!("{review}/tree"), &key).await;
    assert_eq!(top["generated_version"], 2);
    assert_eq!(top["dataset_version"], 2);
    assert_eq!(top["nodes"][0]["subtree"]["approved"], 3);
    assert_eq!(top["nodes"][0]["subtree"]["rejected"], 1);
    let (_, jsonl) = server
        .bytes(&format!("{review}/export?format=jsonl"), &key)
        .await;
    let text = String::from_utf8(jsonl.to_vec()).unwrap();
    assert!(text.contains(&serde_json::to_string(&edited_answer).unwrap()));
    assert_eq!(text.lines().count(), after.len() - 1);

    // Another tenant sees none of it; no key, no answer.
    for (method, path) in review_routes(&review, &new_x, &x1.record_id) {
        let (status, body) = server
            .call(
                method.clone(),
                &path,
                Some(&other),
                Some(json!({"status": "approved", "text": "x"})),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
        let (status, _) = server.call(method.clone(), &path, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
    }
}

fn review_routes(review: &str, node: &str, record: &str) -> Vec<(Method, String)> {
    vec![
        (Method::GET, format!("{review}/tree")),
        (Method::GET, format!("{review}/sections/{node}")),
        (Method::PUT, format!("{review}/sections/{node}")),
        (Method::GET, format!("{review}/items/{record}")),
        (Method::PUT, format!("{review}/items/{record}")),
        (Method::PATCH, format!("{review}/items/{record}")),
        (Method::POST, format!("{review}/regenerate")),
        (Method::GET, format!("{review}/export")),
    ]
}

/// A Parquet file without a `messages` column.
fn not_a_dataset() -> Vec<u8> {
    use arrow_array::StringArray;
    use arrow_schema::{DataType, Field, Schema};
    let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, false)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(StringArray::from(vec!["hello"]))],
    )
    .unwrap();
    let mut buffer = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut buffer, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    buffer
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_without_a_dataset_has_nothing_to_review_yet() {
    let server = Server::start(false).await;
    let key = server.key("acme").await;
    let job = server.start_job(&key, 300).await;
    server.wait_for_status(&key, &job, &["running"]).await;
    let review = format!("/v1/flow/alignment/{job}/review");
    for path in [
        format!("{review}/tree"),
        format!("{review}/sections/0000000000000000"),
        format!("{review}/items/rec-0"),
        format!("{review}/export"),
    ] {
        let (status, body) = server.get(&path, &key).await;
        assert_eq!(status, StatusCode::CONFLICT, "{path}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("no dataset"),
            "{body}"
        );
    }
    let (status, body) = server
        .call(
            Method::POST,
            &format!("{review}/regenerate"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("running")
    );
    let (status, _) = server
        .get("/v1/flow/alignment/al-0/review/tree", &key)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A finished job of 10,000 items over 200 sections, written straight to the store.
pub async fn seed_large_job(store: &dyn worker::store::ObjectStore) -> String {
    use proto::{EvidenceSpan, Message, PrincipleNode, PrincipleTree, Score};
    let job = "al-0123456789abcdef0123456789abcdef".to_string();
    let mut root = PrincipleNode::new("Large policy", "document");
    for part in 0..20 {
        let mut p = PrincipleNode::new(format!("Part {part}"), "part");
        for section in 0..10 {
            let mut s = PrincipleNode::new(format!("Section {part}.{section}"), "section");
            s.content = format!(
                "Le prêt numéro {part}.{section} exige une vérification. Members must repay within {section} months. Fees are capped at {part} percent."
            );
            p.children.push(s);
        }
        root.children.push(p);
    }
    let tree = PrincipleTree::new(root);
    let mut records = Vec::new();
    for node in tree.generation_units() {
        let quote = "Members must repay within";
        let start = node.content.find(quote).unwrap() as u64;
        for i in 0..50 {
            let question = format!("Question {i} about {}?", node.label);
            let answer = format!("Answer {i}: members must repay in time.");
            records.push(Record {
                record_id: proto::dataset::record_id("sh-x", &node.id, &question, &answer),
                job_id: job.clone(),
                shard_id: "sh-x".into(),
                node_id: node.id.clone(),
                citation: node.label.clone(),
                section_path: vec!["Large policy".into(), node.label.clone()],
                messages: vec![
                    Message {
                        role: "user".into(),
                        content: question.clone(),
                    },
                    Message {
                        role: "assistant".into(),
                        content: answer.clone(),
                    },
                ],
                question,
                answer,
                evidence: vec![quote.into()],
                evidence_spans: vec![EvidenceSpan {
                    node_id: node.id.clone(),
                    start,
                    end: start + quote.len() as u64,
                }],
                scores: vec![Score {
                    criterion: "faithfulness".into(),
                    value: 1.0,
                }],
                verdict: "accept".into(),
                question_type: "obligation".into(),
                generator: "extractive".into(),
                model: None,
                judge_model: None,
                prompt_version: "test".into(),
                created_at: 1_700_000_000_000,
            });
        }
    }
    // Section paths from the tree (root, part, section).
    let paths: HashMap<String, Vec<String>> = {
        let mut paths = HashMap::new();
        tree.walk(|visit, ancestors| {
            let mut path: Vec<String> = ancestors.iter().map(|a| a.label.clone()).collect();
            path.push(visit.node.label.clone());
            paths.insert(visit.node.id.clone(), path);
        });
        paths
    };
    for record in &mut records {
        record.section_path = paths[&record.node_id].clone();
    }
    let dataset = proto::dataset::encode_parquet(&records, &[]).unwrap();
    let now = 1_700_000_000_000u64;
    let file = json!({
        "id": format!("file-{}", job.trim_start_matches("al-")), "filename": "large.parquet",
        "purpose": "fine-tune", "type": "parquet", "bytes": dataset.len(), "created_at_ms": now,
        "content_key": format!("jobs/{job}/dataset.parquet"), "origin_job_id": job,
    });
    let record = json!({
        "id": job, "status": "completed", "spec": proto::JobSpec::extractive(INSTRUCTIONS),
        "files": [], "created_at_ms": now, "updated_at_ms": now, "completed_at_ms": now,
        "current_step": "done", "shards_total": 1, "shards_done": 1,
        "accepted": records.len(), "output_file": file,
    });
    store
        .put(
            &format!("jobs/{job}/tree.json"),
            Bytes::from(serde_json::to_vec(&tree).unwrap()),
        )
        .await
        .unwrap();
    store
        .put(&format!("jobs/{job}/dataset.parquet"), Bytes::from(dataset))
        .await
        .unwrap();
    store
        .put(
            &format!("jobs/{job}/job.json"),
            Bytes::from(record.to_string()),
        )
        .await
        .unwrap();
    job
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_items_are_served_a_page_at_a_time_and_fast() {
    let dir = tempfile::tempdir().unwrap();
    let store = worker::store::LocalStore::new(dir.path());
    let job = seed_large_job(&store).await;
    let server = Server::start_in(dir, true).await;
    let key = "any"; // no keys exist: the loopback coordinator is open
    let review = format!("/v1/flow/alignment/{job}/review");

    let timed = |path: String| {
        let server = &server;
        async move {
            let started = Instant::now();
            let response = server
                .request(Method::GET, &path, Some(key))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let body = response.bytes().await.unwrap();
            (started.elapsed(), body)
        }
    };
    // The first request decodes the dataset; later ones use what is kept in memory.
    let (first, body) = timed(format!("{review}/tree")).await;
    assert!(first < Duration::from_secs(10), "{first:?}");
    let top: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(top["nodes"][0]["subtree"]["items"], 10_000);
    assert_eq!(top["nodes"][0]["sections"], 200);
    let root = top["nodes"][0]["node_id"].as_str().unwrap().to_string();
    let (elapsed, body) = timed(format!("{review}/tree?parent={root}")).await;
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    let parts: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(parts["total"], 20);
    let part = parts["nodes"][3]["node_id"].as_str().unwrap().to_string();
    let (_, body) = timed(format!("{review}/tree?parent={part}")).await;
    let sections: Value = serde_json::from_slice(&body).unwrap();
    let section = sections["nodes"][7]["node_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(sections["nodes"][7]["own"]["items"], 50);
    let (elapsed, body) = timed(format!("{review}/sections/{section}?limit=20&offset=20")).await;
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    assert!(
        body.len() < 100_000,
        "a page, not everything: {} bytes",
        body.len()
    );
    let page: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(page["total"], 50);
    assert_eq!(page["items"].as_array().unwrap().len(), 20);
    // The evidence sits after accented text: code point offsets differ from byte offsets.
    let evidence = &page["items"][0]["evidence"][0];
    let text: Vec<char> = page["text"].as_str().unwrap().chars().collect();
    let (start, end) = (
        evidence["char_start"].as_u64().unwrap() as usize,
        evidence["char_end"].as_u64().unwrap() as usize,
    );
    assert_ne!(evidence["start"].as_u64().unwrap() as usize, start);
    assert_eq!(
        text[start..end].iter().collect::<String>(),
        "Members must repay within"
    );
    // Pages are bounded whatever is asked.
    let (_, body) = timed(format!("{review}/tree?parent={root}&limit=100000")).await;
    let capped: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(capped["limit"], 500);
    // A decision is quick too.
    let record = page["items"][0]["record_id"].as_str().unwrap();
    let started = Instant::now();
    let (status, _) = server
        .call(
            Method::PATCH,
            &format!("{review}/items/{record}"),
            Some(key),
            Some(json!({ "status": "approved" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(1));
    let (elapsed, body) = timed(format!("{review}/export?format=jsonl")).await;
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert_eq!(body.iter().filter(|b| **b == b'\n').count(), 10_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_review_pages_are_served_without_a_key_escaped_and_locked_down() {
    let server = Server::start(false).await;
    let _key = server.key("acme").await; // keys exist: the API needs one, the pages do not
    let get = |path: &str| server.request(Method::GET, path, None).send();

    let page = get("/review/al-0123abcd").await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let headers = page.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(html.contains("data-job=\"al-0123abcd\""));
    assert!(html.contains("<script src=\"/review/assets/review.js\"></script>"));
    assert!(!html.contains("{{"), "every placeholder filled");

    let list = get("/review").await.unwrap();
    assert_eq!(list.status(), StatusCode::OK);
    assert!(list.text().await.unwrap().contains("id=\"jobs\""));

    // A malformed id is not echoed as markup.
    let bad = get("/review/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::NOT_FOUND);
    let html = bad.text().await.unwrap();
    assert!(!html.contains("<script>alert"), "{html}");
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{html}"
    );

    for (path, kind) in [
        ("/review/assets/review.js", "text/javascript"),
        ("/review/assets/review.css", "text/css"),
    ] {
        let asset = get(path).await.unwrap();
        assert_eq!(asset.status(), StatusCode::OK);
        assert!(
            asset.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(kind)
        );
    }
    // The data behind the page still needs a key.
    let (status, _) = server
        .call(
            Method::GET,
            "/v1/flow/alignment/al-0123abcd/review/tree",
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
