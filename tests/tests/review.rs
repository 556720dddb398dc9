//! Review in the fleet: a coordinator and a worker as processes over RabbitMQ, Redis and S3
//! (moto), the `openai` generator against the LLM test server with the response cache off. After
//! a reviewer edits one section's text, `regenerate` sends LLM calls only for the shard holding
//! that section (every call of the regeneration carries the new text, and there are far fewer of
//! them than the first run made), the other shards are reused, and decisions survive.

use std::time::Duration;

use serde_json::{Value, json};
use tests::fleet::Fleet;
use tests::principia;
use tests::{RequestKind, ServerConfig, spawn};
use worker::amqp::{AmqpAdmin, AmqpConfig};

const INSTRUCTIONS: &str = "I want a chatbot that specializes in Harbor's lending policy";
const ADDED: &str = "Members who ask receive a written summary of the decision within ten days.";

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap()
    }

    async fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn regenerating_after_a_section_edit_calls_the_llm_only_for_the_changed_shard() {
    let llm = spawn(ServerConfig {
        record_requests: true,
        ..ServerConfig::default()
    })
    .await;
    let mut fleet = Fleet::new("review");
    fleet.use_llm(&llm.url, "test-model");
    fleet
        .worker_env
        .insert("PRINCIPIA_LLM_NO_CACHE".into(), "true".into());
    fleet.start_coordinator();
    fleet.start_worker(2);
    let example = principia::workspace_root().join("examples/harbor-lending-policy.md");
    let job = fleet.submit(
        &[&example],
        &[
            "--instructions",
            INSTRUCTIONS,
            "--generator",
            "openai",
            "--model",
            "test-model",
            "--shard-tokens",
            "250",
        ],
    );
    let status = fleet.wait_finished(&job, Duration::from_secs(120));
    assert_eq!(status["status"], "completed", "{status:#}");
    let shards = status["principia"]["shards_total"].as_u64().unwrap();
    assert!(shards > 3, "{status:#}");
    let first_run = llm.requests_of(RequestKind::Generate);
    let calls_before = llm.recorded().len();

    let api = Api {
        http: reqwest::Client::new(),
        base: format!("{}/v1/flow/alignment/{job}/review", fleet.coordinator_url),
    };
    // Walk the tree to the first section with items; approve one item of another section.
    let mut queue = vec![api.get("/tree").await["nodes"][0].clone()];
    let mut sections = Vec::new();
    while let Some(node) = queue.pop() {
        if node["has_text"] == true && node["own"]["items"].as_u64().unwrap() > 0 {
            sections.push(node["node_id"].as_str().unwrap().to_string());
        }
        if node["children"].as_u64().unwrap() > 0 {
            let id = node["node_id"].as_str().unwrap();
            let children = api.get(&format!("/tree?parent={id}&limit=500")).await;
            queue.extend(children["nodes"].as_array().unwrap().iter().rev().cloned());
        }
    }
    assert!(sections.len() > 3, "{sections:?}");
    // Items that quote a section or definition the generator looked up name it in their
    // evidence (the review page shows them under the answer).
    let mut quoting_lookups = 0;
    for section in &sections {
        let view = api.get(&format!("/sections/{section}")).await;
        for item in view["items"].as_array().unwrap() {
            for evidence in item["evidence"].as_array().unwrap() {
                if evidence["node_id"] != item["node_id"] {
                    quoting_lookups += 1;
                    assert!(evidence["citation"].is_string(), "{evidence}");
                    assert!(evidence["char_start"].is_null(), "{evidence}");
                } else {
                    assert!(evidence["citation"].is_null(), "{evidence}");
                }
            }
        }
    }
    assert!(quoting_lookups > 0);
    let edited = &sections[0];
    let kept = &sections[sections.len() - 1];
    let kept_section = api.get(&format!("/sections/{kept}")).await;
    let kept_item = kept_section["items"][0]["record_id"]
        .as_str()
        .unwrap()
        .to_string();
    api.call(
        reqwest::Method::PATCH,
        &format!("/items/{kept_item}"),
        Some(json!({ "status": "approved" })),
    )
    .await;

    let section = api.get(&format!("/sections/{edited}")).await;
    let text = format!("{}\n\n{ADDED}", section["text"].as_str().unwrap());
    let edit = api
        .call(
            reqwest::Method::PUT,
            &format!("/sections/{edited}"),
            Some(json!({ "text": text })),
        )
        .await;
    assert_eq!(edit["tree_version"], 2);
    let regenerated = api.call(reqwest::Method::POST, "/regenerate", None).await;
    assert_eq!(regenerated["shards_to_generate"], 1, "{regenerated}");
    assert_eq!(regenerated["shards_reused"], shards - 1);
    let status = fleet.wait_for(&job, Duration::from_secs(120), |s| {
        s["status"] == "completed" && s["current_step"] == "done" && s["completed_at"].is_string()
    });
    assert_eq!(status["status"], "completed", "{status:#}");

    // Only the changed shard's sections were asked about again, with the new text.
    let calls: Vec<_> = llm.recorded().into_iter().skip(calls_before).collect();
    assert!(!calls.is_empty());
    for call in &calls {
        assert!(
            call.body.to_string().contains(ADDED),
            "an LLM call of the regeneration without the edited text"
        );
    }
    let again = llm.requests_of(RequestKind::Generate) - first_run;
    assert!(
        again > 0 && again * 3 <= first_run,
        "{again} generate calls again after {first_run} in the first run"
    );

    // The new dataset is in place; the decision elsewhere held.
    let tree = api.get("/tree").await;
    assert_eq!(tree["dataset_version"], 2);
    assert_eq!(tree["nodes"][0]["subtree"]["approved"], 1);
    let item = api.get(&format!("/items/{kept_item}")).await;
    assert_eq!(item["status"], "approved");
    let report: Value = api
        .http
        .get(format!(
            "{}/v1/flow/alignment/{job}/report",
            fleet.coordinator_url
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["shards"]["reused"], shards - 1, "{report:#}");

    let queue_name = fleet.queue.clone();
    drop(fleet);
    let mut config = AmqpConfig::new(tests::moto::AMQP_URL);
    config.queue = queue_name;
    if let Ok(admin) = AmqpAdmin::connect(config).await {
        let _ = admin.delete_topology().await;
        admin.close().await;
    }
    llm.shutdown().await.unwrap();
}
