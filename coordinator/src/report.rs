//! The job report (`report.json`): counts per stage, rejection reasons, coverage, tokens, time.
//! Built from the shard reports carried by the parts and from the merged rows, so it can be
//! rebuilt at any time from storage alone.

use std::collections::{BTreeMap, HashMap};

use proto::report::LlmServer;
use proto::{JobSpec, PrincipleTree, Record, ShardReport, TokenUsage, UncoveredSection};
use serde::{Deserialize, Serialize};

use crate::estimate::UsageEstimate;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobReport {
    pub job_id: String,
    pub status: String,
    pub generator: String,
    pub model: Option<String>,
    pub judge_model: Option<String>,
    /// The LLM server as the last shard that used one found it: endpoint, structured output,
    /// tools (see `tokens.estimated_calls` for replies without usage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_server: Option<LlmServer>,
    /// The most frequent distinct errors the LLM server answered (retried, or refused formats
    /// negotiated down), verbatim and truncated, most frequent first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_errors: Vec<ServerError>,
    pub shards: ShardCounts,
    pub sections: SectionCounts,
    pub items: ItemCounts,
    /// Rejected candidates per reason (generation, critique, and cross-shard dedup at merge).
    pub rejected: BTreeMap<String, u64>,
    pub coverage: Coverage,
    /// Accepted items per question type.
    pub question_types: BTreeMap<String, u64>,
    pub quality: Quality,
    pub tokens: TokenUsage,
    /// The usage expected before generation (`principia estimate`), beside the actual `tokens`;
    /// set for completed jobs (`principia run` and the fleet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<UsageEstimate>,
    /// Shards that could not be processed, with the reason.
    pub failed_shards: Vec<FailedShard>,
    pub wall_time_ms: u64,
}

/// A distinct server error and how often it came.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerError {
    pub message: String,
    pub count: u64,
}

/// Distinct server errors a report lists at most.
const LISTED_SERVER_ERRORS: usize = 5;

/// The shards' server errors summed by message, the most frequent [`LISTED_SERVER_ERRORS`].
fn server_errors(reports: &[ShardReport]) -> Vec<ServerError> {
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for report in reports {
        for (message, count) in &report.server_errors {
            *counts.entry(message).or_insert(0) += count;
        }
    }
    let mut errors: Vec<ServerError> = counts
        .into_iter()
        .map(|(message, count)| ServerError {
            message: message.to_string(),
            count,
        })
        .collect();
    errors.sort_by_key(|e| std::cmp::Reverse(e.count));
    errors.truncate(LISTED_SERVER_ERRORS);
    errors
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardCounts {
    pub total: u64,
    /// Finished by an earlier run or attempt and not redone.
    pub reused: u64,
    /// Processed by this run.
    pub processed: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SectionCounts {
    /// Nodes in the tree.
    pub nodes: u64,
    /// Sections in force with text: the units generation covers.
    pub units: u64,
    /// Repealed, omitted, reserved... sections left out of generation.
    pub inactive: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ItemCounts {
    pub candidates: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub acceptance_rate: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    pub covered: u64,
    pub total: u64,
    pub ratio: f64,
    pub uncovered: Vec<UncoveredSection>,
}

/// How good the data is, beyond how much of it there is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    /// Items the plan step asked for (0 for the extractive generator, which has no plan).
    pub planned: u64,
    /// Candidates whose evidence was checked (unusable replies never got that far).
    pub evidence_checked: u64,
    /// Share of checked candidates whose every evidence quote is verbatim in the source.
    pub grounding_rate: f64,
    /// Share of candidates removed as near duplicates (within shards and across the job).
    pub duplicate_rate: f64,
    /// Accepted items that passed only after one refinement.
    pub refined: u64,
    /// Lookups (tool calls for a section, a definition, a section's context) answered.
    #[serde(default)]
    pub lookups: u64,
    /// Accepted items whose evidence also quotes a looked-up section or definition.
    #[serde(default)]
    pub items_quoting_lookups: u64,
    /// Per judge criterion, the accepted items' scores.
    pub scores: BTreeMap<String, ScoreSummary>,
    /// LLM requests sent per accepted item (cache hits not included).
    pub calls_per_item: f64,
    pub prompt_tokens_per_item: f64,
    pub completion_tokens_per_item: f64,
}

/// Scores of one criterion (normalised to 0–1) over the accepted items.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoreSummary {
    pub mean: f64,
    /// Items per fifth of the range: [0, 0.2), [0.2, 0.4), ... [0.8, 1] (a 1–5 rubric score s
    /// lands in bin s - 1).
    pub histogram: [u64; 5],
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedShard {
    pub shard_id: String,
    pub reason: String,
}

/// What the report is built from.
pub struct ReportInput<'a> {
    pub job_id: &'a str,
    pub status: &'a str,
    pub tree: &'a PrincipleTree,
    /// The job's specification: its minimum items per section, and the generator and model a
    /// report names when no shard report does (a job that failed before any part).
    pub spec: &'a JobSpec,
    pub shard_reports: &'a [ShardReport],
    pub records: &'a [Record],
    /// Candidates removed as duplicates of items in other shards at merge.
    pub merge_duplicates: u64,
    pub shards_total: u64,
    pub shards_reused: u64,
    pub failed_shards: Vec<FailedShard>,
    pub wall_time_ms: u64,
}

pub fn build(input: ReportInput<'_>) -> JobReport {
    let nodes = input.tree.nodes();
    let units = input.tree.generation_units();
    let inactive = nodes.iter().filter(|n| !n.is_active()).count() as u64;

    let mut rejected: BTreeMap<String, u64> = BTreeMap::new();
    let mut tokens = TokenUsage::default();
    let mut candidates = 0;
    let mut planned = 0;
    let mut lookups = 0;
    let mut shard_uncovered: HashMap<&str, &UncoveredSection> = HashMap::new();
    for report in input.shard_reports {
        for (reason, n) in &report.rejected {
            *rejected.entry(reason.as_str().to_string()).or_default() += n;
        }
        tokens.add(report.usage);
        candidates += report.candidates;
        planned += report.planned;
        lookups += report.lookups;
        for section in &report.uncovered {
            shard_uncovered.insert(section.node_id.as_str(), section);
        }
    }
    if input.merge_duplicates > 0 {
        *rejected
            .entry(proto::RejectReason::Duplicate.as_str().to_string())
            .or_default() += input.merge_duplicates;
    }
    let rejected_total = rejected.values().sum();

    let mut accepted_per_node: HashMap<&str, u64> = HashMap::new();
    let mut question_types: BTreeMap<String, u64> = BTreeMap::new();
    for record in input.records {
        *accepted_per_node
            .entry(record.node_id.as_str())
            .or_default() += 1;
        *question_types
            .entry(record.question_type.clone())
            .or_default() += 1;
    }
    let minimum = u64::from(input.spec.min_items_per_section.max(1));
    let uncovered: Vec<UncoveredSection> = units
        .iter()
        .filter_map(|unit| {
            let got = accepted_per_node
                .get(unit.id.as_str())
                .copied()
                .unwrap_or(0);
            if got >= minimum {
                return None;
            }
            Some(match shard_uncovered.get(unit.id.as_str()) {
                Some(section) => UncoveredSection {
                    accepted: got,
                    ..(*section).clone()
                },
                None => UncoveredSection {
                    node_id: unit.id.clone(),
                    citation: unit.citation.clone(),
                    accepted: got,
                    reason: if input.failed_shards.is_empty() {
                        "items removed as duplicates of other sections' items at merge".into()
                    } else {
                        "its shard failed or was not processed".into()
                    },
                },
            })
        })
        .collect();
    let covered = units.len() as u64 - uncovered.len() as u64;
    let quality = quality(&input, &rejected, candidates, (planned, lookups), tokens);
    let first = input.shard_reports.first();
    let accepted = input.records.len() as u64;
    let processed = input.shards_total - input.shards_reused - input.failed_shards.len() as u64;
    JobReport {
        job_id: input.job_id.to_string(),
        status: input.status.to_string(),
        generator: first.map_or_else(
            || input.spec.generator.kind.as_str().to_string(),
            |r| r.generator.clone(),
        ),
        model: first
            .and_then(|r| r.model.clone())
            .or_else(|| input.spec.generator.model.clone()),
        judge_model: input.records.first().and_then(|r| r.judge_model.clone()),
        llm_server: input
            .shard_reports
            .iter()
            .rev()
            .find_map(|r| r.llm_server.as_deref().cloned()),
        server_errors: server_errors(input.shard_reports),
        shards: ShardCounts {
            total: input.shards_total,
            reused: input.shards_reused,
            processed,
            failed: input.failed_shards.len() as u64,
        },
        sections: SectionCounts {
            nodes: nodes.len() as u64,
            units: units.len() as u64,
            inactive,
        },
        items: ItemCounts {
            candidates,
            accepted,
            rejected: rejected_total,
            acceptance_rate: ratio(accepted, candidates),
        },
        rejected,
        coverage: Coverage {
            covered,
            total: units.len() as u64,
            ratio: ratio(covered, units.len() as u64),
            uncovered,
        },
        question_types,
        quality,
        tokens,
        estimate: None,
        failed_shards: input.failed_shards,
        wall_time_ms: input.wall_time_ms,
    }
}

/// Reasons under which a candidate never reached the evidence check (an unusable reply counts as
/// one candidate).
const UNCHECKED: [proto::RejectReason; 6] = [
    proto::RejectReason::Context,
    proto::RejectReason::MalformedReply,
    proto::RejectReason::EmptyReply,
    proto::RejectReason::TruncatedReply,
    proto::RejectReason::LlmError,
    proto::RejectReason::BudgetExhausted,
];

fn quality(
    input: &ReportInput<'_>,
    rejected: &BTreeMap<String, u64>,
    candidates: u64,
    (planned, lookups): (u64, u64),
    tokens: TokenUsage,
) -> Quality {
    let count = |reason: proto::RejectReason| rejected.get(reason.as_str()).copied().unwrap_or(0);
    let unchecked: u64 = UNCHECKED.into_iter().map(count).sum();
    let evidence_checked = candidates.saturating_sub(unchecked);
    let ungrounded = count(proto::RejectReason::EvidenceNotInSource);
    let mut scores: BTreeMap<String, (f64, [u64; 5])> = BTreeMap::new();
    for record in input.records {
        for score in &record.scores {
            let entry = scores.entry(score.criterion.clone()).or_default();
            entry.0 += score.value;
            let bin = ((score.value.clamp(0.0, 1.0) * 5.0) as usize).min(4);
            entry.1[bin] += 1;
        }
    }
    let accepted = input.records.len() as u64;
    let per_item = |x: u64| ratio(x, accepted);
    Quality {
        planned,
        evidence_checked,
        grounding_rate: ratio(
            evidence_checked.saturating_sub(ungrounded),
            evidence_checked,
        ),
        duplicate_rate: ratio(count(proto::RejectReason::Duplicate), candidates),
        refined: input
            .records
            .iter()
            .filter(|r| r.verdict == "accept_refined")
            .count() as u64,
        lookups,
        items_quoting_lookups: input
            .records
            .iter()
            .filter(|r| r.evidence_spans.iter().any(|s| s.node_id != r.node_id))
            .count() as u64,
        scores: scores
            .into_iter()
            .map(|(criterion, (sum, histogram))| {
                let n: u64 = histogram.iter().sum();
                (
                    criterion,
                    ScoreSummary {
                        mean: if n == 0 { 0.0 } else { sum / n as f64 },
                        histogram,
                    },
                )
            })
            .collect(),
        calls_per_item: per_item(tokens.calls),
        prompt_tokens_per_item: per_item(tokens.prompt_tokens),
        completion_tokens_per_item: per_item(tokens.completion_tokens),
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// A human-readable rendering of a job report (`principia report`).
pub fn render(report: &JobReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let percent = |x: f64| format!("{:.1}%", x * 100.0);
    let _ = writeln!(out, "job {}: {}", report.job_id, report.status);
    let model = match (&report.model, &report.judge_model) {
        (Some(m), Some(j)) if m != j => format!(" (model {m}, judge {j})"),
        (Some(m), _) => format!(" (model {m})"),
        _ => String::new(),
    };
    let _ = writeln!(out, "generator: {}{model}", report.generator);
    if let Some(server) = &report.llm_server {
        let _ = writeln!(
            out,
            "LLM server: {} (structured output {}, tools {}{}{})",
            server.endpoint,
            server.structured_output,
            if server.tools { "on" } else { "off" },
            server
                .concurrency
                .map_or_else(String::new, |n| format!(", {n} requests in flight")),
            if report.tokens.estimated_calls > 0 {
                format!(
                    "; no usage reported: tokens of {} calls estimated",
                    report.tokens.estimated_calls
                )
            } else {
                String::new()
            }
        );
    }
    for error in &report.server_errors {
        let _ = writeln!(out, "server error ({}×): {}", error.count, error.message);
    }
    let _ = writeln!(
        out,
        "shards: {} total, {} processed, {} reused, {} failed",
        report.shards.total, report.shards.processed, report.shards.reused, report.shards.failed
    );
    let _ = writeln!(
        out,
        "items: {} accepted of {} candidates ({} acceptance), {} rejected",
        report.items.accepted,
        report.items.candidates,
        percent(report.items.acceptance_rate),
        report.items.rejected
    );
    for (reason, n) in &report.rejected {
        let _ = writeln!(out, "  rejected {reason}: {n}");
    }
    let _ = writeln!(
        out,
        "coverage: {}/{} sections ({}); {} inactive sections left out",
        report.coverage.covered,
        report.coverage.total,
        percent(report.coverage.ratio),
        report.sections.inactive
    );
    for section in report.coverage.uncovered.iter().take(20) {
        let _ = writeln!(out, "  uncovered {}: {}", section.citation, section.reason);
    }
    if report.coverage.uncovered.len() > 20 {
        let _ = writeln!(
            out,
            "  ... and {} more",
            report.coverage.uncovered.len() - 20
        );
    }
    let types: Vec<String> = report
        .question_types
        .iter()
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect();
    let _ = writeln!(out, "question types: {}", types.join(", "));
    let quality = &report.quality;
    let _ = writeln!(
        out,
        "quality: {} grounded ({} candidates checked), {} near duplicates, {} accepted after refinement{}",
        percent(quality.grounding_rate),
        quality.evidence_checked,
        percent(quality.duplicate_rate),
        quality.refined,
        if quality.planned > 0 {
            format!(", {} items planned", quality.planned)
        } else {
            String::new()
        }
    );
    if quality.lookups > 0 || quality.items_quoting_lookups > 0 {
        let _ = writeln!(
            out,
            "lookups: {} answered; {} accepted items also quote a looked-up section or definition",
            quality.lookups, quality.items_quoting_lookups
        );
    }
    for (criterion, summary) in &quality.scores {
        let bins: Vec<String> = summary.histogram.iter().map(u64::to_string).collect();
        let _ = writeln!(
            out,
            "  score {criterion}: mean {:.2}, by fifths {}",
            summary.mean,
            bins.join(" / ")
        );
    }
    let _ = writeln!(
        out,
        "tokens: {} prompt + {} completion in {} calls, {} more answered from the cache ({:.1} calls and {:.0} prompt tokens per accepted item)",
        report.tokens.prompt_tokens,
        report.tokens.completion_tokens,
        report.tokens.calls,
        report.tokens.cached_calls,
        quality.calls_per_item,
        quality.prompt_tokens_per_item
    );
    if let Some(estimate) = &report.estimate {
        let _ = writeln!(
            out,
            "estimated before the run: {} prompt + {} completion tokens in {} calls",
            estimate.prompt_tokens, estimate.completion_tokens, estimate.calls
        );
    }
    for failed in &report.failed_shards {
        let _ = writeln!(out, "failed shard {}: {}", failed.shard_id, failed.reason);
    }
    let _ = writeln!(
        out,
        "wall time: {:.1} s",
        report.wall_time_ms as f64 / 1000.0
    );
    out
}
