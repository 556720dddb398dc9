//! What a shard reports besides its rows: counts per stage, rejection reasons, uncovered sections,
//! token usage. Workers embed it in the part's Parquet metadata (one durable write carries both);
//! the coordinator sums the reports of all parts into the job report.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Why a candidate item was not kept. Every rejected candidate is counted under one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// An evidence quote is not verbatim in the source.
    EvidenceNotInSource,
    /// The answer is empty or too short to be useful.
    AnswerTooShort,
    /// The question is empty, too short, or not a question.
    MalformedQuestion,
    /// The question already contains the whole answer.
    QuestionLeaksAnswer,
    /// The critique (judge or deterministic checks) rejected it.
    CritiqueFailed,
    /// A near-duplicate of an item already kept.
    Duplicate,
    /// More candidates than the section's item cap.
    OverSectionCap,
    /// The model's reply was not valid JSON of the expected schema, after retries.
    MalformedReply,
    /// The model's reply was empty.
    EmptyReply,
    /// The model's reply was cut off (finish_reason = length).
    TruncatedReply,
    /// The LLM call failed after retries.
    LlmError,
    /// The job's token budget was spent.
    BudgetExhausted,
    /// Revised once after a fixable critique, and still not accepted.
    RefineRejected,
    /// The call's prompt does not fit the model's context window, even without the optional
    /// lookups; not retried.
    Context,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::EvidenceNotInSource => "evidence_not_in_source",
            RejectReason::AnswerTooShort => "answer_too_short",
            RejectReason::MalformedQuestion => "malformed_question",
            RejectReason::QuestionLeaksAnswer => "question_leaks_answer",
            RejectReason::CritiqueFailed => "critique_failed",
            RejectReason::Duplicate => "duplicate",
            RejectReason::OverSectionCap => "over_section_cap",
            RejectReason::MalformedReply => "malformed_reply",
            RejectReason::EmptyReply => "empty_reply",
            RejectReason::TruncatedReply => "truncated_reply",
            RejectReason::LlmError => "llm_error",
            RejectReason::BudgetExhausted => "budget_exhausted",
            RejectReason::RefineRejected => "refine_rejected",
            RejectReason::Context => "context",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Requests answered by the server.
    pub calls: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Requests answered from the response cache (no tokens spent).
    #[serde(default)]
    pub cached_calls: u64,
    /// Calls whose reply reported no `usage`: their tokens are estimated (bytes / 4).
    #[serde(default)]
    pub estimated_calls: u64,
}

impl TokenUsage {
    pub fn add(&mut self, other: TokenUsage) {
        self.calls += other.calls;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.cached_calls += other.cached_calls;
        self.estimated_calls += other.estimated_calls;
    }

    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// What the generator learned about its LLM server: where it is (never the key) and what it
/// accepts, as negotiated by the end of the shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmServer {
    /// The base URL requests went to.
    pub endpoint: String,
    /// How replies' JSON was asked for: `json_schema`, `json_object` or `prompt`.
    pub structured_output: String,
    /// Whether generation calls still offered tools: false once the server refused them, or when
    /// they are off. A server that accepts tools and never calls them (llama-cpp-python) is not
    /// told apart; the section's lookups are in its prompts either way.
    pub tools: bool,
    /// Requests the worker kept in flight at most by the end of the shard (learned from the
    /// server unless fixed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u64>,
}

/// A section that ended with fewer accepted items than the job asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UncoveredSection {
    pub node_id: String,
    pub citation: String,
    pub accepted: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardReport {
    pub shard_id: String,
    pub generator: String,
    #[serde(default)]
    pub model: Option<String>,
    pub sections: u64,
    /// Items the plan step asked for (0 for generators without one).
    #[serde(default)]
    pub planned: u64,
    /// Lookups (tool calls) the generator answered.
    #[serde(default)]
    pub lookups: u64,
    /// Candidates produced before critique.
    pub candidates: u64,
    pub accepted: u64,
    pub rejected: BTreeMap<RejectReason, u64>,
    /// Sections with fewer accepted items than the job's minimum, with the reason.
    pub uncovered: Vec<UncoveredSection>,
    /// Accepted items per question type.
    #[serde(default)]
    pub question_types: BTreeMap<String, u64>,
    pub usage: TokenUsage,
    pub duration_ms: u64,
    /// The LLM server as the generator found it (none for generators without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_server: Option<Box<LlmServer>>,
    /// Errors the LLM server answered on the way (retried, or refused formats that were
    /// negotiated down), by message (one line, truncated), with how often each came.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub server_errors: BTreeMap<String, u64>,
    /// Why the shard generated nothing at all, when it was skipped (e.g. the budget was spent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncovered_reason: Option<String>,
}

impl ShardReport {
    pub fn reject(&mut self, reason: RejectReason) {
        *self.rejected.entry(reason).or_insert(0) += 1;
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}
