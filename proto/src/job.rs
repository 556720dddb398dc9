//! The job specification: what the user asked for and how items are generated.
//!
//! Its fingerprint covers everything that changes the generated data, so that shard and record ids
//! derived from it are identical for identical requests, whichever process runs them.

use serde::{Deserialize, Serialize};

use crate::hash::digest;

/// Which generator produces candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GeneratorKind {
    /// Built-in, model-free: questions over the source's own regulatory sentences.
    Extractive,
    /// Any OpenAI-compatible chat-completions server.
    Openai,
}

impl GeneratorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GeneratorKind::Extractive => "extractive",
            GeneratorKind::Openai => "openai",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratorSpec {
    pub kind: GeneratorKind,
    /// Generator model (openai only).
    #[serde(default)]
    pub model: Option<String>,
    /// Judge model; the generator model when unset.
    #[serde(default)]
    pub judge_model: Option<String>,
    #[serde(default)]
    pub temperature: f32,
    /// How generated items point at their evidence (openai only).
    #[serde(default, skip_serializing_if = "Grounding::is_default")]
    pub grounding: Grounding,
}

/// How an LLM-generated item points at the source text that supports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grounding {
    /// The target section's sentences are numbered in the prompt and the model cites their ids
    /// (`S2`); the evidence stored is those sentences, verbatim. Small models ground this way.
    #[default]
    Sentences,
    /// The model copies quotes, which must match the source character for character.
    Quotes,
}

impl Grounding {
    pub fn as_str(self) -> &'static str {
        match self {
            Grounding::Sentences => "sentences",
            Grounding::Quotes => "quotes",
        }
    }

    fn is_default(&self) -> bool {
        *self == Grounding::default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// What the user wants the model to become ("I want a chatbot that specializes in ...").
    pub instructions: String,
    /// Written as the `system` message of every conversation when set.
    #[serde(default)]
    pub system_prompt: Option<String>,
    pub generator: GeneratorSpec,
    /// Upper bound of source tokens per shard (a larger section becomes a shard of its own).
    pub shard_token_budget: usize,
    /// Items wanted per section at least; fewer is reported as (partially) uncovered.
    pub min_items_per_section: u32,
    /// Items kept per section at most.
    pub max_items_per_section: u32,
    /// LLM tokens the whole job may spend; once spent, remaining shards generate nothing and
    /// their sections are reported uncovered with the reason.
    #[serde(default)]
    pub token_budget: Option<u64>,
    /// Jaccard similarity of two questions' word sets from which the later one is a near
    /// duplicate and rejected (0.5–1; 1 removes only reworded identical questions).
    #[serde(default = "default_near_duplicate_threshold")]
    pub near_duplicate_threshold: f64,
}

fn default_near_duplicate_threshold() -> f64 {
    DEFAULT_NEAR_DUPLICATE_THRESHOLD
}

/// Source tokens per shard unless a job says otherwise.
pub const DEFAULT_SHARD_TOKEN_BUDGET: usize = 3000;
/// Accepted items wanted per section unless a job says otherwise.
pub const DEFAULT_MIN_ITEMS_PER_SECTION: u32 = 1;
/// Near-duplicate threshold unless a job says otherwise.
pub const DEFAULT_NEAR_DUPLICATE_THRESHOLD: f64 = 0.8;
/// Items kept per section unless a job says otherwise.
pub const DEFAULT_MAX_ITEMS_PER_SECTION: u32 = 8;

impl JobSpec {
    /// A job with the built-in extractive generator and the default sizes.
    pub fn extractive(instructions: impl Into<String>) -> Self {
        JobSpec {
            instructions: instructions.into(),
            system_prompt: None,
            generator: GeneratorSpec {
                kind: GeneratorKind::Extractive,
                model: None,
                judge_model: None,
                temperature: 0.0,
                grounding: Grounding::default(),
            },
            shard_token_budget: DEFAULT_SHARD_TOKEN_BUDGET,
            min_items_per_section: DEFAULT_MIN_ITEMS_PER_SECTION,
            max_items_per_section: DEFAULT_MAX_ITEMS_PER_SECTION,
            token_budget: None,
            near_duplicate_threshold: DEFAULT_NEAR_DUPLICATE_THRESHOLD,
        }
    }

    /// Digest of everything that determines the generated data.
    pub fn fingerprint(&self) -> String {
        let bytes = serde_json::to_vec(self).expect("job spec serializes");
        digest(&[b"job-spec", &bytes], 32)
    }
}
