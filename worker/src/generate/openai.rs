//! The LLM generator: generation and judging by any OpenAI-compatible server.
//!
//! Per shard, every section gets:
//!
//! 1. **One generation call** (generator model). One call per section, not per shard: replies
//!    stay short (no truncation of a shard-sized reply), a bad reply costs one section, and the
//!    sections run concurrently under the client's concurrency bound. The cost of sending the
//!    shard's text with each call is paid once with prefix caching (vLLM, llama.cpp, OpenAI): the
//!    first message of every call of a shard, generation and judge alike, is the same
//!    `prompts/context.v1.md` rendering — the whole shard's source between `<source>` tags,
//!    labelled as data, then the user's instructions — and only the second message differs. The
//!    reply must follow a JSON schema (`response_format`), `{"items": [{question, answer,
//!    evidence: [verbatim quote, ...], question_type}]}`, asking for `min..=max` items.
//! 2. **Validation.** An unusable reply is retried up to [`REPAIR_ATTEMPTS`] times with the
//!    problem appended to the conversation; if it stays unusable the section counts one
//!    candidate rejected as [`RejectReason::EmptyReply`], [`RejectReason::TruncatedReply`]
//!    (`finish_reason = length`) or [`RejectReason::MalformedReply`] — never a null row.
//! 3. **Deterministic checks** per item: every evidence quote located in the section text with
//!    [`locate_quote`] (else `EvidenceNotInSource`), then the same answer, question, leak and
//!    duplicate checks as the extractive generator.
//! 4. **One judge call** (judge model) over the section's surviving candidates, with rubric
//!    scores 1–5 for faithfulness, relevance, specificity, self-containedness and citation and an
//!    accept/reject verdict. An item is kept when the verdict is `accept`, faithfulness is at
//!    least 4 and every other score at least 3; otherwise it is rejected as `CritiqueFailed`.
//!    Scores are stored normalised to 0–1 (`(s - 1) / 4`).
//! 5. **Cap**: more accepted items than `max_items_per_section` keeps the best by mean score
//!    (earlier first on ties); the rest are `OverSectionCap`.
//!
//! Token usage of every call, repairs included, is summed into the report. An LLM failure that
//! outlasts the client's retries makes the shard [`GenerateError::Transient`]; a rejected request
//! (bad key, unknown model, malformed request) makes it [`GenerateError::Permanent`].

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::try_join_all;
use proto::{JobSpec, RejectReason, Score, ShardMessage, ShardSection, TokenUsage};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extractive::{Dedup, QuestionType, check_answer, check_question};
use super::{GenerateError, GeneratedItem, Generator, Quote, ShardGeneration, locate_quote};
use crate::llm::{ChatMessage, ChatRequest, JsonSchemaFormat, LlmClient, LlmError};

/// Versions of the three templates, recorded in every row.
pub const PROMPT_VERSION: &str = "openai-ctx-1/gen-1/judge-1";

const CONTEXT_TEMPLATE: &str = include_str!("../../prompts/context.v1.md");
const GENERATE_TEMPLATE: &str = include_str!("../../prompts/generate.v1.md");
const JUDGE_TEMPLATE: &str = include_str!("../../prompts/judge.v1.md");

/// `response_format` schema names; the test server recognises requests by them.
pub const ITEMS_SCHEMA_NAME: &str = "principia_items";
pub const VERDICTS_SCHEMA_NAME: &str = "principia_verdicts";

/// Extra attempts after an unusable (empty, truncated, malformed) reply.
pub const REPAIR_ATTEMPTS: u32 = 2;

/// The judge's criteria, in the order of the rubric.
pub const CRITERIA: [&str; 5] = [
    "faithfulness",
    "relevance",
    "specificity",
    "self_containedness",
    "citation",
];

/// Question types the generator may use: the extractive ones and `other`.
const OTHER_TYPE: &str = "other";

/// The LLM generator; see the module docs.
#[derive(Debug, Clone)]
pub struct OpenAiGenerator {
    client: Arc<LlmClient>,
    model: String,
    judge_model: String,
}

impl OpenAiGenerator {
    /// Generator and judge models from the client's configuration (the judge defaults to the
    /// generator model).
    pub fn new(client: Arc<LlmClient>) -> Self {
        let model = client.config().model.clone();
        let judge_model = client.config().effective_judge_model().to_string();
        OpenAiGenerator {
            client,
            model,
            judge_model,
        }
    }
}

#[async_trait]
impl Generator for OpenAiGenerator {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn model(&self, spec: &JobSpec) -> Option<String> {
        Some(self.models(spec).0)
    }

    fn judge_model(&self, spec: &JobSpec) -> Option<String> {
        Some(self.models(spec).1)
    }

    async fn generate(&self, shard: &ShardMessage) -> Result<ShardGeneration, GenerateError> {
        let context = render_context(shard);
        let outcomes = try_join_all(
            shard
                .sections
                .iter()
                .enumerate()
                .map(|(i, section)| self.section(shard, &context, i + 1, section)),
        )
        .await?;
        let mut generation = ShardGeneration::default();
        let report = &mut generation.report;
        report.shard_id = shard.shard_id.clone();
        report.generator = self.name().to_string();
        report.model = self.model(&shard.spec);
        report.sections = shard.sections.len() as u64;
        for outcome in outcomes {
            report.candidates += outcome.candidates;
            report.usage.add(outcome.usage);
            for reason in outcome.rejected {
                report.reject(reason);
            }
            for item in &outcome.items {
                *report
                    .question_types
                    .entry(item.question_type.clone())
                    .or_insert(0) += 1;
            }
            generation.items.extend(outcome.items);
        }
        generation.report.accepted = generation.items.len() as u64;
        Ok(generation)
    }
}

#[derive(Debug, Default)]
struct SectionOutcome {
    items: Vec<GeneratedItem>,
    candidates: u64,
    rejected: Vec<RejectReason>,
    usage: TokenUsage,
}

/// A candidate that passed the deterministic checks, waiting for the judge.
struct Pending {
    question: String,
    answer: String,
    evidence: Vec<Quote>,
    question_type: String,
}

impl OpenAiGenerator {
    /// The job's generator and judge models; the worker's configuration fills what the job leaves
    /// open (a job that names a model runs that model, as its fingerprint says).
    fn models(&self, spec: &JobSpec) -> (String, String) {
        let model = spec
            .generator
            .model
            .clone()
            .unwrap_or_else(|| self.model.clone());
        let judge = spec
            .generator
            .judge_model
            .clone()
            .or_else(|| spec.generator.model.as_ref().map(|_| model.clone()))
            .unwrap_or_else(|| self.judge_model.clone());
        (model, judge)
    }

    async fn section(
        &self,
        shard: &ShardMessage,
        context: &str,
        number: usize,
        section: &ShardSection,
    ) -> Result<SectionOutcome, GenerateError> {
        let mut outcome = SectionOutcome::default();
        let max = shard.spec.max_items_per_section;
        if max == 0 {
            return Ok(outcome);
        }
        let min = shard.spec.min_items_per_section.min(max);
        let number_text = number.to_string();
        let prompt = render(
            GENERATE_TEMPLATE,
            &[
                ("min_items", &min.to_string()),
                ("max_items", &max.to_string()),
                ("section_number", &number_text),
                ("citation", &section.citation),
                ("section_path", &section.section_path.join(" > ")),
            ],
        );
        let (model, judge_model) = self.models(&shard.spec);
        let mut request = ChatRequest::new(
            model,
            vec![ChatMessage::system(context), ChatMessage::user(prompt)],
        );
        request.temperature = Some(shard.spec.generator.temperature);
        request.max_tokens = Some(max.saturating_mul(400).saturating_add(400).min(16_384));
        request.response_format = Some(items_format());
        let items = match self
            .ask(request, &mut outcome.usage, parse_items)
            .await
            .map_err(|e| shard_error(e, section))?
        {
            Ok(items) => items,
            Err(reason) => {
                outcome.candidates = 1;
                outcome.rejected.push(reason);
                return Ok(outcome);
            }
        };
        outcome.candidates = items.len() as u64;

        let mut dedup = Dedup::default();
        let mut pending = Vec::new();
        for item in items {
            let checked = locate_all(section, &item.evidence).and_then(|evidence| {
                check_answer(&item.answer)?;
                check_question(&item.question, &item.answer)?;
                dedup.admit(&item.question)?;
                Ok(evidence)
            });
            match checked {
                Ok(evidence) => pending.push(Pending {
                    question: item.question.trim().to_string(),
                    answer: item.answer.trim().to_string(),
                    evidence,
                    question_type: normalise_type(&item.question_type),
                }),
                Err(reason) => outcome.rejected.push(reason),
            }
        }
        if pending.is_empty() {
            return Ok(outcome);
        }

        let judge_prompt = render(
            JUDGE_TEMPLATE,
            &[
                ("section_number", &number_text),
                ("citation", &section.citation),
                ("candidates", &candidates_json(&pending)),
            ],
        );
        let mut request = ChatRequest::new(
            judge_model,
            vec![
                ChatMessage::system(context),
                ChatMessage::user(judge_prompt),
            ],
        );
        request.temperature = Some(0.0);
        request.max_tokens = Some(150 * pending.len() as u32 + 300);
        request.response_format = Some(verdicts_format());
        let count = pending.len();
        let verdicts = match self
            .ask(request, &mut outcome.usage, |text| {
                parse_verdicts(text, count)
            })
            .await
            .map_err(|e| shard_error(e, section))?
        {
            Ok(verdicts) => verdicts,
            Err(reason) => {
                outcome.rejected.extend(std::iter::repeat_n(reason, count));
                return Ok(outcome);
            }
        };

        let mut accepted: Vec<(f64, GeneratedItem)> = Vec::new();
        for (candidate, verdict) in pending.into_iter().zip(verdicts) {
            if !verdict.accepts() {
                outcome.rejected.push(RejectReason::CritiqueFailed);
                continue;
            }
            let scores: Vec<Score> = CRITERIA
                .iter()
                .zip(verdict.scores)
                .map(|(criterion, s)| Score {
                    criterion: criterion.to_string(),
                    value: f64::from(s - 1) / 4.0,
                })
                .collect();
            let mean = scores.iter().map(|s| s.value).sum::<f64>() / scores.len() as f64;
            accepted.push((
                mean,
                GeneratedItem {
                    node_id: section.node_id.clone(),
                    question: candidate.question,
                    answer: candidate.answer,
                    evidence: candidate.evidence,
                    scores,
                    verdict: "accept".into(),
                    question_type: candidate.question_type,
                    prompt_version: PROMPT_VERSION.to_string(),
                },
            ));
        }
        let cap = max as usize;
        if accepted.len() > cap {
            let mut order: Vec<usize> = (0..accepted.len()).collect();
            order.sort_by(|&a, &b| accepted[b].0.total_cmp(&accepted[a].0).then(a.cmp(&b)));
            let mut keep = order[..cap].to_vec();
            keep.sort_unstable();
            outcome.rejected.extend(std::iter::repeat_n(
                RejectReason::OverSectionCap,
                accepted.len() - cap,
            ));
            let mut kept = Vec::with_capacity(cap);
            for (i, (_, item)) in accepted.into_iter().enumerate() {
                if keep.binary_search(&i).is_ok() {
                    kept.push(item);
                }
            }
            outcome.items = kept;
        } else {
            outcome.items = accepted.into_iter().map(|(_, item)| item).collect();
        }
        Ok(outcome)
    }

    /// Call the model and parse its reply, repairing unusable replies; see the module docs.
    /// `Ok(Err(reason))` is a reply that stayed unusable; `Err` an LLM failure.
    async fn ask<T>(
        &self,
        mut request: ChatRequest,
        usage: &mut TokenUsage,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Result<T, RejectReason>, LlmError> {
        let mut attempt = 0;
        loop {
            let reply = self.client.chat(request.clone()).await?;
            usage.add(reply.usage);
            let (reason, problem) = if reply.content.trim().is_empty() {
                (
                    RejectReason::EmptyReply,
                    "Your reply was empty.".to_string(),
                )
            } else {
                match parse(&reply.content) {
                    Ok(value) => return Ok(Ok(value)),
                    Err(_) if reply.truncated() => (
                        RejectReason::TruncatedReply,
                        "Your reply was cut off at the length limit. Reply again with fewer and shorter items."
                            .to_string(),
                    ),
                    Err(error) => (
                        RejectReason::MalformedReply,
                        format!("Your reply is not valid: {error}."),
                    ),
                }
            };
            if attempt >= REPAIR_ATTEMPTS {
                tracing::debug!(reason = reason.as_str(), "LLM reply unusable after repairs");
                return Ok(Err(reason));
            }
            attempt += 1;
            request
                .messages
                .push(ChatMessage::assistant(reply.content.clone()));
            request.messages.push(ChatMessage::user(format!(
                "{problem} Reply again with JSON only, exactly in the shape asked for."
            )));
        }
    }
}

fn shard_error(error: LlmError, section: &ShardSection) -> GenerateError {
    let message = format!("section {}: {error}", section.citation);
    if error.is_transient() {
        GenerateError::Transient(message)
    } else {
        GenerateError::Permanent(message)
    }
}

/// Locate every quote in the section text; no quote, or one not found, is
/// `EvidenceNotInSource`.
fn locate_all(section: &ShardSection, quotes: &[String]) -> Result<Vec<Quote>, RejectReason> {
    if quotes.is_empty() {
        return Err(RejectReason::EvidenceNotInSource);
    }
    quotes
        .iter()
        .map(|quote| {
            let (start, end) =
                locate_quote(&section.text, quote).ok_or(RejectReason::EvidenceNotInSource)?;
            Ok(Quote {
                node_id: section.node_id.clone(),
                text: section.text[start..end].to_string(),
                start,
                end,
            })
        })
        .collect()
}

fn normalise_type(question_type: &str) -> String {
    let t = question_type
        .trim()
        .to_ascii_lowercase()
        .replace([' ', '-'], "_");
    match QuestionType::parse(&t) {
        Some(known) => known.as_str().to_string(),
        None => OTHER_TYPE.to_string(),
    }
}

/// `{{placeholder}}` substitution in one pass: substituted text is never expanded again.
fn render(template: &str, values: &[(&str, &str)]) -> String {
    let mut out =
        String::with_capacity(template.len() + values.iter().map(|(_, v)| v.len()).sum::<usize>());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            out.push_str(&rest[open..]);
            return out;
        };
        let key = &after[..close];
        match values.iter().find(|(k, _)| *k == key) {
            Some((_, value)) => out.push_str(value),
            None => out.push_str(&rest[open..open + 2 + close + 2]),
        }
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    out
}

/// The shared first message of every call of a shard.
fn render_context(shard: &ShardMessage) -> String {
    let mut sections = String::new();
    for (i, section) in shard.sections.iter().enumerate() {
        if i > 0 {
            sections.push('\n');
        }
        sections.push_str(&format!(
            "<section number=\"{}\" citation=\"{}\" path=\"{}\">\n{}\n</section>",
            i + 1,
            attribute(&section.citation),
            attribute(&section.section_path.join(" > ")),
            escape_source(&section.text),
        ));
    }
    render(
        CONTEXT_TEMPLATE,
        &[
            ("sections", &sections),
            ("instructions", shard.spec.instructions.trim()),
        ],
    )
}

fn attribute(value: &str) -> String {
    value.replace('"', "'").replace(['\n', '\r'], " ")
}

/// Keep the source's own text from closing the delimiters.
fn escape_source(text: &str) -> String {
    text.replace("</source>", "<\\/source>")
        .replace("</section>", "<\\/section>")
}

fn candidates_json(pending: &[Pending]) -> String {
    let list: Vec<Value> = pending
        .iter()
        .enumerate()
        .map(|(index, c)| {
            json!({
                "index": index,
                "question": c.question,
                "answer": c.answer,
                "evidence": c.evidence.iter().map(|q| q.text.as_str()).collect::<Vec<_>>(),
                "question_type": c.question_type,
            })
        })
        .collect();
    serde_json::to_string_pretty(&list).expect("candidates serialize")
}

fn items_format() -> JsonSchemaFormat {
    let mut types: Vec<&str> = QuestionType::ALL.iter().map(|t| t.as_str()).collect();
    types.push(OTHER_TYPE);
    JsonSchemaFormat {
        name: ITEMS_SCHEMA_NAME.into(),
        strict: true,
        schema: json!({
            "type": "object",
            "properties": {
                "items": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "question": {"type": "string"},
                            "answer": {"type": "string"},
                            "evidence": {"type": "array", "items": {"type": "string"}},
                            "question_type": {"type": "string", "enum": types},
                        },
                        "required": ["question", "answer", "evidence", "question_type"],
                        "additionalProperties": false,
                    },
                },
            },
            "required": ["items"],
            "additionalProperties": false,
        }),
    }
}

fn verdicts_format() -> JsonSchemaFormat {
    let mut properties = serde_json::Map::new();
    properties.insert("index".into(), json!({"type": "integer"}));
    for criterion in CRITERIA {
        properties.insert(criterion.into(), json!({"type": "integer"}));
    }
    properties.insert(
        "verdict".into(),
        json!({"type": "string", "enum": ["accept", "reject"]}),
    );
    properties.insert("reason".into(), json!({"type": "string"}));
    let required: Vec<&String> = properties.keys().collect();
    JsonSchemaFormat {
        name: VERDICTS_SCHEMA_NAME.into(),
        strict: true,
        schema: json!({
            "type": "object",
            "properties": {
                "verdicts": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": properties,
                        "required": required,
                        "additionalProperties": false,
                    },
                },
            },
            "required": ["verdicts"],
            "additionalProperties": false,
        }),
    }
}

/// The JSON object in a reply, tolerating code fences and surrounding prose.
fn json_object(text: &str) -> Result<&str, String> {
    let start = text.find('{').ok_or("it contains no JSON object")?;
    let end = text.rfind('}').ok_or("the JSON object is not closed")?;
    if end < start {
        return Err("the JSON object is not closed".into());
    }
    Ok(&text[start..=end])
}

#[derive(Debug, Deserialize)]
struct ItemsReply {
    items: Vec<ReplyItem>,
}

#[derive(Debug, Deserialize)]
struct ReplyItem {
    question: String,
    answer: String,
    evidence: Vec<String>,
    question_type: String,
}

fn parse_items(text: &str) -> Result<Vec<ReplyItem>, String> {
    let reply: ItemsReply = serde_json::from_str(json_object(text)?)
        .map_err(|e| format!("it does not match the schema ({e})"))?;
    Ok(reply.items)
}

#[derive(Debug, Deserialize)]
struct WireVerdict {
    index: usize,
    faithfulness: i64,
    relevance: i64,
    specificity: i64,
    self_containedness: i64,
    citation: i64,
    verdict: String,
}

#[derive(Debug, Deserialize)]
struct VerdictsReply {
    verdicts: Vec<WireVerdict>,
}

/// A checked verdict: scores in [`CRITERIA`] order, each 1–5.
#[derive(Debug)]
struct Verdict {
    scores: [u8; 5],
    accept: bool,
}

impl Verdict {
    fn accepts(&self) -> bool {
        self.accept && self.scores[0] >= 4 && self.scores.iter().all(|&s| s >= 3)
    }
}

/// Verdicts in candidate order; exactly one per index `0..count`.
fn parse_verdicts(text: &str, count: usize) -> Result<Vec<Verdict>, String> {
    let reply: VerdictsReply = serde_json::from_str(json_object(text)?)
        .map_err(|e| format!("it does not match the schema ({e})"))?;
    let mut slots: Vec<Option<Verdict>> = (0..count).map(|_| None).collect();
    for v in reply.verdicts {
        let slot = slots
            .get_mut(v.index)
            .ok_or_else(|| format!("index {} is not a candidate (0..{count})", v.index))?;
        if slot.is_some() {
            return Err(format!("index {} has more than one verdict", v.index));
        }
        let mut scores = [0u8; 5];
        let raw = [
            v.faithfulness,
            v.relevance,
            v.specificity,
            v.self_containedness,
            v.citation,
        ];
        for ((score, value), criterion) in scores.iter_mut().zip(raw).zip(CRITERIA) {
            *score = u8::try_from(value)
                .ok()
                .filter(|s| (1..=5).contains(s))
                .ok_or_else(|| format!("{criterion} of index {} must be 1 to 5", v.index))?;
        }
        let accept = match v.verdict.trim().to_ascii_lowercase().as_str() {
            "accept" => true,
            "reject" => false,
            other => {
                return Err(format!(
                    "verdict {other:?} must be \"accept\" or \"reject\""
                ));
            }
        };
        *slot = Some(Verdict { scores, accept });
    }
    slots
        .into_iter()
        .enumerate()
        .map(|(i, v)| v.ok_or_else(|| format!("candidate {i} has no verdict")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_without_leftover_placeholders() {
        let filled = |t: &str, keys: &[&str]| {
            let values: Vec<(&str, &str)> = keys.iter().map(|k| (*k, "X")).collect();
            render(t, &values)
        };
        for (template, keys) in [
            (CONTEXT_TEMPLATE, &["sections", "instructions"][..]),
            (
                GENERATE_TEMPLATE,
                &[
                    "min_items",
                    "max_items",
                    "section_number",
                    "citation",
                    "section_path",
                ][..],
            ),
            (
                JUDGE_TEMPLATE,
                &["section_number", "citation", "candidates"][..],
            ),
        ] {
            let out = filled(template, keys);
            assert!(!out.contains("{{"), "{out}");
        }
        assert_eq!(render("a {{x}} {{y}}", &[("x", "{{y}}")]), "a {{y}} {{y}}");
        assert!(CONTEXT_TEMPLATE.starts_with("<source>"));
    }

    #[test]
    fn replies_are_validated() {
        let ok = "```json\n{\"items\":[{\"question\":\"Q?\",\"answer\":\"A\",\"evidence\":[\"e\"],\"question_type\":\"scope\"}]}\n```";
        assert_eq!(parse_items(ok).unwrap().len(), 1);
        assert!(
            parse_items("{\"items\":[{\"question\":\"Q?\"}]}")
                .unwrap_err()
                .contains("answer")
        );
        assert!(parse_items("no json").is_err());
        let verdict = |i: usize, f: i64| {
            format!(
                "{{\"index\":{i},\"faithfulness\":{f},\"relevance\":5,\"specificity\":5,\"self_containedness\":5,\"citation\":5,\"verdict\":\"accept\",\"reason\":\"r\"}}"
            )
        };
        let two = format!("{{\"verdicts\":[{},{}]}}", verdict(1, 3), verdict(0, 5));
        let parsed = parse_verdicts(&two, 2).unwrap();
        assert!(parsed[0].accepts());
        assert!(!parsed[1].accepts(), "faithfulness 3 is not enough");
        assert!(parse_verdicts(&two, 3).unwrap_err().contains("candidate 2"));
        let out_of_range = format!("{{\"verdicts\":[{}]}}", verdict(0, 9));
        assert!(parse_verdicts(&out_of_range, 1).is_err());
        let twice = format!("{{\"verdicts\":[{},{}]}}", verdict(0, 5), verdict(0, 5));
        assert!(parse_verdicts(&twice, 1).is_err());
    }

    #[test]
    fn question_types_are_normalised() {
        assert_eq!(normalise_type("Cross-reference"), "cross_reference");
        assert_eq!(normalise_type("definition"), "definition");
        assert_eq!(normalise_type("procedure"), "other");
    }
}
