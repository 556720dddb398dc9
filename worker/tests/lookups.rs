//! The openai generator's lookups against the LLM test server: the section's cross-references
//! and defined terms in its prompt, tool calls answered from the job's lookup index, cross-reference
//! items grounded in both sections, the plain fallback for a server that refuses tools, and the
//! evidence rule (a looked-up quote alone is not enough).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proto::lookup::{Definition, LOOKUP_INDEX_VERSION, LookupIndex, LookupNode, Reference};
use proto::{
    GeneratorKind, GeneratorSpec, Grounding, JobSpec, RejectReason, ShardMessage, ShardSection,
};
use serde_json::{Value, json};
use tests::{RequestKind, RunningServer, ScriptedReply, ServerConfig, spawn};
use worker::generate::Generator;
use worker::generate::openai::OpenAiGenerator;
use worker::llm::{LlmClient, LlmConfig, ToolMode};
use worker::store::{LocalStore, ObjectStore};

const DEFINITIONS: &str =
    "\"Member\" means a natural person who holds a share account with the Credit Union.";
const CHARGE_OFF: &str = "A consumer loan is charged off when it is 180 days past due, unless a hardship plan under Section 4.1 is in effect. The Credit Union must report the charge-off to the member in writing within 30 days.";
const HARDSHIP: &str = "The Credit Union must respond to a hardship request within 10 business days. During that period no collection call may be made about the loan.";
const INDEX_KEY: &str = "jobs/job-1/lookup/tree.json";

/// root > {§ 1.2 Definitions, § 4.1 Hardship, § 4.3 Charge-off}; § 4.3 cites § 4.1 and uses
/// "member", which § 1.2 defines.
fn index() -> LookupIndex {
    let node = |id: &str, citation: &str, parent, text: &str| LookupNode {
        id: id.into(),
        citation: citation.into(),
        label: citation.into(),
        kind: "section".into(),
        parent,
        active: true,
        text: text.into(),
        references: Vec::new(),
    };
    let mut nodes = vec![
        node("root", "Policy", None, ""),
        node("s12", "Section 1.2", Some(0), DEFINITIONS),
        node("s41", "Section 4.1", Some(0), HARDSHIP),
        node("s43", "Section 4.3", Some(0), CHARGE_OFF),
    ];
    let start = CHARGE_OFF.find("Section 4.1").unwrap();
    nodes[3].references.push(Reference {
        start,
        end: start + "Section 4.1".len(),
        target: 2,
    });
    LookupIndex {
        version: LOOKUP_INDEX_VERSION,
        tree_fingerprint: "tree".into(),
        nodes,
        definitions: vec![Definition {
            term: "Member".into(),
            node: 1,
            start: 0,
            end: DEFINITIONS.len(),
        }],
    }
}

fn shard(sections: &[(&str, &str, &str)]) -> ShardMessage {
    let spec = JobSpec {
        instructions: "A lending policy assistant.".into(),
        system_prompt: None,
        generator: GeneratorSpec {
            kind: GeneratorKind::Openai,
            model: Some("gen-model".into()),
            judge_model: None,
            temperature: 0.2,
            grounding: Grounding::default(),
        },
        shard_token_budget: 8000,
        min_items_per_section: 1,
        max_items_per_section: 4,
        token_budget: None,
        near_duplicate_threshold: proto::job::DEFAULT_NEAR_DUPLICATE_THRESHOLD,
    };
    let sections = sections
        .iter()
        .map(|(id, citation, text)| ShardSection {
            node_id: id.to_string(),
            citation: citation.to_string(),
            section_path: vec!["Policy".into(), citation.to_string()],
            text: text.to_string(),
        })
        .collect();
    let mut shard = ShardMessage::new("job-1".into(), spec, sections);
    shard.lookup = Some(INDEX_KEY.into());
    shard
}

async fn generator(
    server: &RunningServer,
    tools: ToolMode,
) -> (OpenAiGenerator, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()));
    store
        .put(
            INDEX_KEY,
            Bytes::from(serde_json::to_vec(&index()).unwrap()),
        )
        .await
        .unwrap();
    let mut config = LlmConfig::new(server.url.clone(), "gen-model");
    config.timeout = Duration::from_secs(10);
    config.retry_base_delay = Duration::from_millis(5);
    config.tools = tools;
    let client = Arc::new(LlmClient::new(config).unwrap());
    (OpenAiGenerator::new(client).with_lookups(store), dir)
}

fn recording(config: ServerConfig) -> ServerConfig {
    ServerConfig {
        record_requests: true,
        ..config
    }
}

#[tokio::test]
async fn tool_calls_are_answered_from_the_index_and_ground_cross_reference_items() {
    let server = spawn(recording(ServerConfig {
        look_up_references: true,
        ..ServerConfig::default()
    }))
    .await;
    let (generator, _dir) = generator(&server, ToolMode::Auto).await;
    let generation = generator
        .generate(&shard(&[("s43", "Section 4.3", CHARGE_OFF)]))
        .await
        .unwrap();

    // The reference and the term inlined, then one round of tool calls for them, then the items.
    let stats = server.stats();
    assert_eq!(stats.tool_call_replies, 1);
    assert_eq!(server.requests_of(RequestKind::Generate), 2);
    assert_eq!(generation.report.lookups, 4);
    let recorded = server.recorded();
    let first = &recorded[0].body;
    let tools: Vec<&str> = first["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        tools,
        ["lookup_section", "lookup_definition", "section_context"]
    );
    assert_eq!(first["tool_choice"], "auto");
    let prompt = first["messages"][1]["content"].as_str().unwrap();
    assert!(
        prompt.contains("- reference: Section 4.1 -> Section 4.1\n"),
        "{prompt}"
    );
    assert!(
        prompt.contains("- term: Member -> Section 1.2\n"),
        "{prompt}"
    );
    assert!(prompt.contains(&format!(
        "<lookup citation=\"Section 4.1\">\n{HARDSHIP}\n</lookup>"
    )));
    assert!(prompt.contains("The tools look up anything else you need"));
    // The follow-up carries the calls and their results; the judge is offered no tools.
    let second = &recorded[1].body;
    let messages = second["messages"].as_array().unwrap();
    assert_eq!(messages[2]["role"], "assistant");
    assert_eq!(messages[2]["tool_calls"].as_array().unwrap().len(), 2);
    assert_eq!(messages[3]["role"], "tool");
    let result: Value = serde_json::from_str(messages[3]["content"].as_str().unwrap()).unwrap();
    assert_eq!(result["text"], HARDSHIP);
    assert!(
        recorded
            .iter()
            .filter(|r| r.kind == RequestKind::Judge)
            .all(|r| r.body.get("tools").is_none())
    );
    let judge_prompt = recorded
        .iter()
        .find(|r| r.kind == RequestKind::Judge)
        .and_then(|r| r.message(1))
        .unwrap();
    assert!(
        judge_prompt.contains("<lookup citation=\"Section 4.1\">\nThe Credit Union must respond"),
        "the judge sees the looked-up text the evidence quotes"
    );

    // The cross-reference item quotes both sections, each at its own offsets.
    let item = generation
        .items
        .iter()
        .find(|i| i.question_type == "cross_reference")
        .expect("a cross-reference item");
    assert_eq!(item.evidence.len(), 2);
    assert_eq!(item.evidence[0].node_id, "s43");
    assert_eq!(item.evidence[1].node_id, "s41");
    let quoted = &item.evidence[1];
    assert_eq!(&HARDSHIP[quoted.start..quoted.end], quoted.text);
}

#[tokio::test]
async fn a_server_refusing_tools_gets_the_lookups_in_the_prompt_from_then_on() {
    let server = spawn(recording(ServerConfig {
        refuse_tools: true,
        ..ServerConfig::default()
    }))
    .await;
    let (generator, _dir) = generator(&server, ToolMode::Auto).await;
    let first = generator
        .generate(&shard(&[("s43", "Section 4.3", CHARGE_OFF)]))
        .await
        .unwrap();
    let second = generator
        .generate(&shard(&[("s41", "Section 4.1", HARDSHIP)]))
        .await
        .unwrap();

    assert_eq!(server.stats().tools_refused, 1, "refused once, remembered");
    assert_eq!(
        first.report.lookups, 2,
        "the reference and the term, inlined"
    );
    let plain = server
        .recorded()
        .into_iter()
        .filter(|r| r.kind == RequestKind::Generate && r.body.get("tools").is_none())
        .map(|r| r.message(1).unwrap().to_string())
        .collect::<Vec<_>>();
    assert_eq!(plain.len(), 2);
    assert!(
        plain[0].contains(&format!(
            "<lookup citation=\"Section 4.1\">\n{HARDSHIP}\n</lookup>"
        )),
        "{}",
        plain[0]
    );
    assert!(plain[0].contains(&format!(
        "<lookup citation=\"Section 1.2\">\n{DEFINITIONS}\n</lookup>"
    )));
    assert!(!plain[0].contains("The tools"), "no tools, none mentioned");
    let item = first
        .items
        .iter()
        .find(|i| i.question_type == "cross_reference")
        .expect("a cross-reference item from the inlined lookups");
    assert_eq!(item.evidence[1].node_id, "s41");
    // § 4.1 cites nothing and uses no term defined elsewhere: no lookups in its prompt.
    assert!(!plain[1].contains("<lookup"));
    assert!(
        second
            .items
            .iter()
            .all(|i| i.question_type != "cross_reference")
    );
}

#[tokio::test]
async fn evidence_must_quote_the_target_section_not_only_a_looked_up_one() {
    let items = json!({"items": [
        {
            "question": "How soon must the Credit Union answer a hardship request under Section 4.3?",
            "answer": "Within 10 business days.",
            "evidence": ["The Credit Union must respond to a hardship request within 10 business days."],
            "question_type": "cross_reference",
        },
        {
            "question": "When is a consumer loan charged off under Section 4.3, and what must the Credit Union do first for hardship requests?",
            "answer": "At 180 days past due unless a hardship plan is in effect; hardship requests are answered within 10 business days.",
            "evidence": [
                "A consumer loan is charged off when it is 180 days past due",
                "The Credit Union must respond to a hardship request within 10 business days."
            ],
            "question_type": "cross_reference",
        },
    ]});
    let server = spawn(ServerConfig {
        scripted: vec![ScriptedReply::content(items.to_string())],
        ..ServerConfig::default()
    })
    .await;
    let (generator, _dir) = generator(&server, ToolMode::Plain).await;
    let generation = generator
        .generate(&shard(&[("s43", "Section 4.3", CHARGE_OFF)]))
        .await
        .unwrap();
    assert_eq!(
        generation.report.rejected[&RejectReason::EvidenceNotInSource],
        1
    );
    assert_eq!(generation.items.len(), 1);
    assert_eq!(
        generation.items[0]
            .evidence
            .iter()
            .map(|q| q.node_id.as_str())
            .collect::<Vec<_>>(),
        ["s43", "s41"]
    );
    assert_eq!(
        server.stats().tool_call_replies,
        0,
        "plain mode offers no tools"
    );
}

#[tokio::test]
async fn a_missing_index_fails_the_shard_permanently() {
    let server = spawn(ServerConfig::default()).await;
    let (generator, _dir) = generator(&server, ToolMode::Auto).await;
    let mut shard = shard(&[("s43", "Section 4.3", CHARGE_OFF)]);
    shard.lookup = Some("jobs/job-1/lookup/other.json".into());
    let error = generator.generate(&shard).await.unwrap_err();
    assert!(
        matches!(&error, worker::generate::GenerateError::Permanent(m) if m.contains("missing")),
        "{error}"
    );
    assert_eq!(server.requests(), 0);
}
