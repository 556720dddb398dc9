//! Processing one shard: decode, skip if already done, generate, turn items into rows, check
//! coverage, write the part with a create-only put. Errors carry their queue disposition.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use proto::dataset::{encode_parquet, record_id};
use proto::shard::ShardDecodeError;
use proto::{
    DatasetError, EvidenceSpan, GeneratorKind, Message, Record, RejectReason, ShardMessage,
    ShardReport, UncoveredSection,
};

use crate::dedup::NearDuplicates;
use crate::generate::{GenerateError, GeneratedItem, Generator, ShardGeneration};
use crate::limits::{LimitError, TokenBudget};
use crate::queue::Disposition;
use crate::store::{ObjectStore, PutOutcome, StoreError, validate_key};

/// Parquet metadata key under which a part carries its [`ShardReport`] as JSON.
pub const SHARD_REPORT_KEY: &str = "principia.shard_report";

/// Storage key of a shard's part.
pub fn part_key(job_id: &str, shard_id: &str) -> String {
    format!("jobs/{job_id}/parts/{shard_id}.parquet")
}

/// The generators a worker can run, by kind.
#[derive(Clone)]
pub struct Generators {
    pub extractive: Arc<dyn Generator>,
    /// Present when the worker has an LLM endpoint configured.
    pub openai: Option<Arc<dyn Generator>>,
}

impl Generators {
    fn get(&self, kind: GeneratorKind) -> Option<&Arc<dyn Generator>> {
        match kind {
            GeneratorKind::Extractive => Some(&self.extractive),
            GeneratorKind::Openai => self.openai.as_ref(),
        }
    }
}

/// Tells whether a job was cancelled, so that its queued shards are dropped unprocessed.
#[async_trait::async_trait]
pub trait JobGate: Send + Sync {
    /// Whether `job_id` was cancelled. Implementations answer `false` when they cannot tell:
    /// processing a shard of a cancelled job wastes work, dropping a live one loses it.
    async fn is_cancelled(&self, job_id: &str) -> bool;
}

#[derive(Debug)]
pub enum ShardOutcome {
    /// This attempt wrote the part.
    Written(Box<ShardReport>),
    /// The part existed already; nothing was generated or written.
    Duplicate,
    /// The job was cancelled; nothing was generated or written.
    Cancelled,
}

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error(transparent)]
    Decode(#[from] ShardDecodeError),
    #[error("job id {0:?} is not a valid storage key segment")]
    InvalidJobId(String),
    #[error("this worker has no `{0}` generator configured")]
    GeneratorUnavailable(&'static str),
    #[error(transparent)]
    Generate(#[from] GenerateError),
    #[error("encoding the part failed: {0}")]
    Encode(#[from] DatasetError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("checking the job's token budget: {0}")]
    Budget(#[from] LimitError),
}

impl ShardError {
    /// How the delivery that caused this error is settled.
    pub fn disposition(&self) -> Disposition {
        match self {
            ShardError::Generate(GenerateError::Transient(_)) | ShardError::Budget(_) => {
                Disposition::Requeue(self.to_string())
            }
            ShardError::Store(e) if e.is_transient() => Disposition::Requeue(self.to_string()),
            ShardError::Decode(_)
            | ShardError::InvalidJobId(_)
            | ShardError::GeneratorUnavailable(_)
            | ShardError::Generate(GenerateError::Permanent(_))
            | ShardError::Encode(_)
            | ShardError::Store(_) => Disposition::DeadLetter(self.to_string()),
        }
    }
}

/// Processes shards against one store with a set of generators.
#[derive(Clone)]
pub struct ShardProcessor {
    store: Arc<dyn ObjectStore>,
    generators: Generators,
    budget: Arc<dyn TokenBudget>,
    gate: Option<Arc<dyn JobGate>>,
}

impl ShardProcessor {
    /// `budget` keeps the tokens each job spent (in memory, or in Redis for the fleet).
    pub fn new(
        store: Arc<dyn ObjectStore>,
        generators: Generators,
        budget: Arc<dyn TokenBudget>,
    ) -> Self {
        ShardProcessor {
            store,
            generators,
            budget,
            gate: None,
        }
    }

    /// Drop the shards of jobs that `gate` says were cancelled.
    pub fn with_gate(mut self, gate: Arc<dyn JobGate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Whether the job has spent its token budget (never, without one).
    async fn budget_spent(&self, shard: &ShardMessage) -> Result<Option<u64>, LimitError> {
        let Some(limit) = shard.spec.token_budget else {
            return Ok(None);
        };
        let spent = self.budget.spent(&shard.job_id).await?;
        Ok((spent >= limit).then_some(limit))
    }

    /// Process a decoded shard. Idempotent per shard id: a finished shard is not redone.
    pub async fn process(&self, shard: &ShardMessage) -> Result<ShardOutcome, ShardError> {
        let started = Instant::now();
        let key = part_key(&shard.job_id, &shard.shard_id);
        validate_key(&key).map_err(|_| ShardError::InvalidJobId(shard.job_id.clone()))?;
        if self.store.exists(&key).await? {
            return Ok(ShardOutcome::Duplicate);
        }
        if let Some(gate) = &self.gate
            && gate.is_cancelled(&shard.job_id).await
        {
            return Ok(ShardOutcome::Cancelled);
        }
        let kind = shard.spec.generator.kind;
        let generator = self
            .generators
            .get(kind)
            .ok_or(ShardError::GeneratorUnavailable(kind.as_str()))?;
        let generation = match self.budget_spent(shard).await? {
            // Budget spent: generate nothing; the part records every section as uncovered.
            Some(limit) => {
                let mut skipped = crate::generate::ShardGeneration::default();
                skipped.report.uncovered_reason = Some(format!(
                    "the job's token budget of {limit} tokens was spent"
                ));
                skipped
            }
            None => {
                let generation = generator.generate(shard).await?;
                self.budget
                    .spend(
                        &shard.job_id,
                        generation.report.usage.total(),
                        shard.spec.token_budget,
                    )
                    .await?;
                generation
            }
        };

        let mut generation = generation;
        let items = std::mem::take(&mut generation.items);
        let records = to_records(shard, generator.as_ref(), items, &mut generation);
        let mut report = generation.report;
        report.shard_id = shard.shard_id.clone();
        report.generator = generator.name().to_string();
        report.model = generator.model(&shard.spec);
        report.sections = shard.sections.len() as u64;
        report.accepted = records.len() as u64;
        report.uncovered = uncovered(shard, &records, &report, &generation.section_rejections);
        report.duration_ms = started.elapsed().as_millis() as u64;

        let report_json = serde_json::to_string(&report).expect("report serializes");
        let body = encode_parquet(&records, &[(SHARD_REPORT_KEY, report_json)])?;
        match self.store.put_if_absent(&key, Bytes::from(body)).await? {
            PutOutcome::Created => Ok(ShardOutcome::Written(Box::new(report))),
            PutOutcome::AlreadyExists => Ok(ShardOutcome::Duplicate),
        }
    }

    /// Decode a delivery body and process it.
    pub async fn process_bytes(
        &self,
        body: &[u8],
    ) -> Result<(ShardMessage, ShardOutcome), ShardError> {
        let shard = ShardMessage::from_json(body)?;
        let outcome = self.process(&shard).await?;
        Ok((shard, outcome))
    }
}

/// Rows of the accepted items; items of sections outside the shard and near duplicates of
/// earlier items of the shard (across its sections) are counted in `generation` and dropped.
fn to_records(
    shard: &ShardMessage,
    generator: &dyn Generator,
    items: Vec<GeneratedItem>,
    generation: &mut ShardGeneration,
) -> Vec<Record> {
    let created_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let sections: BTreeMap<&str, _> = shard
        .sections
        .iter()
        .map(|s| (s.node_id.as_str(), s))
        .collect();
    let mut seen = NearDuplicates::new(shard.spec.near_duplicate_threshold);
    let mut records = Vec::with_capacity(items.len());
    for item in items {
        let Some(section) = sections.get(item.node_id.as_str()) else {
            // An item for a section outside the shard cannot be traced: count it, keep nothing.
            generation.reject(&item.node_id, RejectReason::EvidenceNotInSource);
            continue;
        };
        if !seen.admit(&item.question, &item.answer) {
            generation.reject(&item.node_id, RejectReason::Duplicate);
            continue;
        }
        let mut messages = Vec::with_capacity(3);
        if let Some(system) = &shard.spec.system_prompt {
            messages.push(Message {
                role: "system".into(),
                content: system.clone(),
            });
        }
        messages.push(Message {
            role: "user".into(),
            content: item.question.clone(),
        });
        messages.push(Message {
            role: "assistant".into(),
            content: item.answer.clone(),
        });
        records.push(Record {
            record_id: record_id(&shard.shard_id, &item.node_id, &item.question, &item.answer),
            job_id: shard.job_id.clone(),
            shard_id: shard.shard_id.clone(),
            node_id: item.node_id.clone(),
            citation: section.citation.clone(),
            section_path: section.section_path.clone(),
            evidence: item.evidence.iter().map(|q| q.text.clone()).collect(),
            evidence_spans: item
                .evidence
                .iter()
                .map(|q| EvidenceSpan {
                    node_id: q.node_id.clone(),
                    start: q.start as u64,
                    end: q.end as u64,
                })
                .collect(),
            question: item.question,
            answer: item.answer,
            messages,
            scores: item.scores,
            verdict: item.verdict,
            question_type: item.question_type,
            generator: generator.name().to_string(),
            model: generator.model(&shard.spec),
            judge_model: generator.judge_model(&shard.spec),
            prompt_version: item.prompt_version,
            created_at,
        });
    }
    let report = &mut generation.report;
    report.question_types = BTreeMap::new();
    for record in &records {
        *report
            .question_types
            .entry(record.question_type.clone())
            .or_insert(0) += 1;
    }
    records
}

/// Sections of the shard with fewer accepted items than the job's minimum, each with the
/// rejections of its own candidates as the reason.
fn uncovered(
    shard: &ShardMessage,
    records: &[Record],
    report: &ShardReport,
    section_rejections: &BTreeMap<String, BTreeMap<RejectReason, u64>>,
) -> Vec<UncoveredSection> {
    let minimum = u64::from(shard.spec.min_items_per_section.max(1));
    let mut accepted: BTreeMap<&str, u64> = BTreeMap::new();
    for record in records {
        *accepted.entry(record.node_id.as_str()).or_insert(0) += 1;
    }
    shard
        .sections
        .iter()
        .filter_map(|section| {
            let got = accepted.get(section.node_id.as_str()).copied().unwrap_or(0);
            if got >= minimum {
                return None;
            }
            let why = match (
                &report.uncovered_reason,
                section_rejections.get(&section.node_id),
            ) {
                (Some(reason), _) => reason.clone(),
                (None, Some(rejected)) if !rejected.is_empty() => {
                    let reasons: Vec<String> = rejected
                        .iter()
                        .map(|(reason, n)| format!("{} {n}", reason.as_str()))
                        .collect();
                    format!("rejected: {}", reasons.join(", "))
                }
                (None, _) => "no candidate could be generated from its text".to_string(),
            };
            Some(UncoveredSection {
                node_id: section.node_id.clone(),
                citation: section.citation.clone(),
                accepted: got,
                reason: format!("{got} of {minimum} required items accepted; {why}"),
            })
        })
        .collect()
}
