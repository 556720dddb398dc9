//! `principia estimate`: what a job would cost, without calling any model.
//!
//! The documents are read and planned exactly as `principia run` does it; every shard is then
//! estimated by its generator: the `openai` generator renders its real prompts
//! ([`worker::generate::openai::estimate_shard`]), the `extractive` generator makes no call.
//! The sums are the expected calls and tokens when the judge accepts every candidate and no reply
//! needs a repair (a refine round adds two calls to a section), with one round of lookups for a
//! section that has cross-references or defined terms (tools offered, the default).
//!
//! Cost is `prompt tokens × price-in + completion tokens × price-out`, prices per million tokens
//! (in whatever currency they are given). Time models the LLM client: `calls × latency /
//! concurrency`, but never less than one section's two sequential calls.

use std::path::PathBuf;

use proto::{GeneratorKind, JobSpec};
use serde::{Deserialize, Serialize};
use worker::generate::openai::estimate_shard;
use worker::generate::tools::Lookups;

use crate::ingest::{self, Format, IngestError};
use crate::lookup::link_lookups;
use crate::plan::plan_shards;

/// Expected usage of a job, as `report.json` records it next to the actuals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageEstimate {
    pub generator: String,
    /// The generator model named for the job (the estimate does not depend on it).
    pub model: Option<String>,
    pub shards: u64,
    /// Sections the plan gives at least one item.
    pub sections: u64,
    pub planned_items: u64,
    pub calls: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Prices and throughput an estimate is priced and timed at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pricing {
    /// Price of a million prompt tokens.
    pub price_in: Option<f64>,
    /// Price of a million completion tokens.
    pub price_out: Option<f64>,
    /// Mean seconds one LLM call takes.
    pub latency_secs: f64,
    /// LLM calls in flight at once.
    pub concurrency: usize,
}

/// An estimate with its cost and time.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PricedEstimate {
    #[serde(flatten)]
    pub usage: UsageEstimate,
    /// Cost at the given prices (absent without them).
    pub cost: Option<f64>,
    /// Expected wall time of the LLM calls, in seconds.
    pub time_secs: f64,
    pub latency_secs: f64,
    pub concurrency: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum EstimateError {
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error("the documents contain no section with text to generate from")]
    NothingToDo,
}

/// The expected usage of a job with `spec` on these shards, with the job's lookups (see
/// [`crate::lookup::link_lookups`]).
pub fn estimate_shards(
    spec: &JobSpec,
    lookups: Option<&Lookups>,
    shards: &[proto::ShardMessage],
) -> UsageEstimate {
    let mut usage = UsageEstimate {
        generator: spec.generator.kind.as_str().to_string(),
        model: spec.generator.model.clone(),
        shards: shards.len() as u64,
        ..UsageEstimate::default()
    };
    for shard in shards {
        if spec.generator.kind == GeneratorKind::Openai {
            let shard = estimate_shard(shard, lookups);
            usage.sections += shard.sections;
            usage.planned_items += shard.planned_items;
            usage.calls += shard.calls;
            usage.prompt_tokens += shard.prompt_tokens;
            usage.completion_tokens += shard.completion_tokens;
        } else {
            usage.sections += shard.sections.len() as u64;
        }
    }
    usage
}

/// Read, plan and estimate a job on `inputs`, as `principia run` would plan it.
pub fn estimate_files(
    inputs: &[PathBuf],
    format: Option<Format>,
    spec: &JobSpec,
) -> Result<UsageEstimate, EstimateError> {
    let ingested = ingest::read_files(inputs, format)?;
    for warning in &ingested.warnings {
        tracing::warn!("{warning}");
    }
    let job_id = crate::embedded::job_id(spec, &ingested.tree);
    let mut shards = plan_shards(&ingested.tree, &job_id, spec);
    if shards.is_empty() {
        return Err(EstimateError::NothingToDo);
    }
    let lookups = link_lookups(&job_id, &ingested.tree, spec, &mut shards);
    Ok(estimate_shards(
        spec,
        lookups.as_ref().map(|l| &l.lookups),
        &shards,
    ))
}

/// Cost and time of `usage` at `pricing`.
pub fn price(usage: UsageEstimate, pricing: Pricing) -> PricedEstimate {
    let per_million = |tokens: u64, price: f64| tokens as f64 * price / 1_000_000.0;
    let cost = match (pricing.price_in, pricing.price_out) {
        (None, None) => None,
        (price_in, price_out) => Some(
            per_million(usage.prompt_tokens, price_in.unwrap_or(0.0))
                + per_million(usage.completion_tokens, price_out.unwrap_or(0.0)),
        ),
    };
    let concurrency = pricing.concurrency.max(1);
    let time_secs = if usage.calls == 0 {
        0.0
    } else {
        (usage.calls as f64 * pricing.latency_secs / concurrency as f64)
            .max(2.0 * pricing.latency_secs)
    };
    PricedEstimate {
        usage,
        cost,
        time_secs,
        latency_secs: pricing.latency_secs,
        concurrency,
    }
}

/// The estimate as a small table (`principia estimate`).
pub fn render(estimate: &PricedEstimate) -> String {
    use std::fmt::Write;
    let usage = &estimate.usage;
    let mut out = String::new();
    let mut row = |name: &str, value: String| {
        let _ = writeln!(out, "{name:<18} {value}");
    };
    row(
        "generator",
        match &usage.model {
            Some(model) => format!("{} (model {model})", usage.generator),
            None => usage.generator.clone(),
        },
    );
    row("shards", usage.shards.to_string());
    row("sections", usage.sections.to_string());
    row("planned items", usage.planned_items.to_string());
    row("LLM calls", usage.calls.to_string());
    row("prompt tokens", usage.prompt_tokens.to_string());
    row("completion tokens", usage.completion_tokens.to_string());
    row(
        "cost",
        match estimate.cost {
            Some(cost) => format!("{cost:.4} (prices per million tokens)"),
            None => "- (give --price-in and --price-out)".to_string(),
        },
    );
    row(
        "time",
        format!(
            "{:.0} s ({} calls at {} s each, {} at once)",
            estimate.time_secs, usage.calls, estimate.latency_secs, estimate.concurrency
        ),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(calls: u64) -> UsageEstimate {
        UsageEstimate {
            calls,
            prompt_tokens: 2_000_000,
            completion_tokens: 500_000,
            ..UsageEstimate::default()
        }
    }

    #[test]
    fn cost_is_per_million_tokens_and_time_divides_by_concurrency() {
        let pricing = Pricing {
            price_in: Some(0.5),
            price_out: Some(2.0),
            latency_secs: 10.0,
            concurrency: 8,
        };
        let priced = price(usage(80), pricing);
        assert_eq!(priced.cost, Some(2.0));
        assert_eq!(priced.time_secs, 100.0);
        // One section's two calls run one after the other, whatever the concurrency.
        assert_eq!(price(usage(2), pricing).time_secs, 20.0);
        let unpriced = price(
            usage(0),
            Pricing {
                price_in: None,
                price_out: None,
                ..pricing
            },
        );
        assert_eq!((unpriced.cost, unpriced.time_secs), (None, 0.0));
        assert!(render(&unpriced).contains("--price-in"));
    }
}
