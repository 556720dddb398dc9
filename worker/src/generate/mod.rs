//! Generators: turn a shard's sections into accepted question/answer items.
//!
//! One trait, two implementations: [`extractive`] (built-in, no model) and [`openai`] (any
//! OpenAI-compatible server). A generator runs its own candidate -> critique pipeline and returns
//! the items it kept plus a report in which every rejected candidate is counted with a reason.

pub mod extractive;
pub mod openai;
pub mod plan;
pub mod sentences;
pub mod tools;

use std::collections::BTreeMap;

use async_trait::async_trait;
use proto::{JobSpec, RejectReason, Score, ShardMessage, ShardReport};

/// An item that passed critique, before it becomes a dataset row.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedItem {
    pub node_id: String,
    pub question: String,
    pub answer: String,
    /// Verbatim quotes from the section's text with their byte offsets in it.
    pub evidence: Vec<Quote>,
    pub scores: Vec<Score>,
    pub verdict: String,
    pub question_type: String,
    pub prompt_version: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    pub node_id: String,
    pub text: String,
    pub start: usize,
    pub end: usize,
}

/// What a generator returns for a shard: the kept items and the counts behind them.
///
/// `report.candidates`, `report.rejected`, `report.usage` and `report.question_types` are filled by
/// the generator; shard-level fields (id, coverage, duration) are filled by the caller.
#[derive(Debug, Clone, Default)]
pub struct ShardGeneration {
    pub items: Vec<GeneratedItem>,
    pub report: ShardReport,
    /// Rejections per section (node id), for the uncovered list's reasons.
    pub section_rejections: BTreeMap<String, BTreeMap<RejectReason, u64>>,
}

impl ShardGeneration {
    /// Count a rejected candidate of the section `node_id`.
    pub fn reject(&mut self, node_id: &str, reason: RejectReason) {
        self.report.reject(reason);
        *self
            .section_rejections
            .entry(node_id.to_string())
            .or_default()
            .entry(reason)
            .or_insert(0) += 1;
    }
}

/// Failures of a whole shard's generation. Per-item problems are rejections, not errors.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// Worth retrying later (LLM unreachable, rate limited beyond retries, 5xx beyond retries).
    #[error("temporary generation failure: {0}")]
    Transient(String),
    /// Retrying cannot help (the shard itself is unusable, or the configuration is wrong).
    #[error("permanent generation failure: {0}")]
    Permanent(String),
}

#[async_trait]
pub trait Generator: Send + Sync {
    /// `extractive` or `openai`: recorded in every row and in the report.
    fn name(&self) -> &'static str;
    /// The generator model a job with this specification runs, if any.
    fn model(&self, spec: &JobSpec) -> Option<String>;
    /// The judge model a job with this specification runs, if any.
    fn judge_model(&self, spec: &JobSpec) -> Option<String>;
    /// Generate, critique and keep items for every section of the shard.
    async fn generate(&self, shard: &ShardMessage) -> Result<ShardGeneration, GenerateError>;
}

/// Find `quote` verbatim in `text`; whitespace runs in either may differ. Returns byte offsets in
/// `text`.
pub fn locate_quote(text: &str, quote: &str) -> Option<(usize, usize)> {
    let quote = quote.trim();
    if quote.is_empty() {
        return None;
    }
    if let Some(start) = text.find(quote) {
        return Some((start, start + quote.len()));
    }
    // Whitespace-insensitive match: compare the non-space characters in order.
    let words: Vec<&str> = quote.split_whitespace().collect();
    let first = words.first()?;
    let mut from = 0;
    while let Some(pos) = text[from..].find(first) {
        let start = from + pos;
        let mut cursor = start;
        let mut matched = true;
        for (i, word) in words.iter().enumerate() {
            if i > 0 {
                let rest = &text[cursor..];
                let trimmed = rest.trim_start();
                if trimmed.len() == rest.len() {
                    matched = false;
                    break;
                }
                cursor += rest.len() - trimmed.len();
            }
            if text[cursor..].starts_with(word) {
                cursor += word.len();
            } else {
                matched = false;
                break;
            }
        }
        if matched {
            return Some((start, cursor));
        }
        from = start + first.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::locate_quote;

    #[test]
    fn quotes_match_verbatim_or_modulo_whitespace() {
        let text = "(a) The holder shall\n   keep records. (b) Other.";
        assert_eq!(locate_quote(text, "keep records."), Some((24, 37)));
        let (s, e) = locate_quote(text, "holder shall keep records.").unwrap();
        assert_eq!(&text[s..e], "holder shall\n   keep records.");
        assert_eq!(locate_quote(text, "holder must keep"), None);
        assert_eq!(locate_quote(text, "  "), None);
    }
}
