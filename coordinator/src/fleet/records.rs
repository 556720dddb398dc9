//! What the coordinator persists about files and jobs, in SeekrFlow's shapes.
//!
//! Records live on the object store (`files/<id>.json`, `jobs/<id>/job.json`), the source of
//! truth; Redis mirrors job progress for fast reads and is rebuilt from these records. Every record
//! names its tenant; the API's shapes of them are in [`super::wire`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::JobSpec;
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// RFC 3339 time for the API (SeekrFlow returns ISO 8601 strings).
pub fn iso(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

pub fn file_record_key(id: &str) -> String {
    format!("files/{id}.json")
}

pub fn file_content_key(id: &str) -> String {
    format!("files/{id}/content")
}

pub fn job_record_key(id: &str) -> String {
    format!("jobs/{id}/job.json")
}

pub fn job_tree_key(id: &str) -> String {
    format!("jobs/{id}/tree.json")
}

/// The job's tree at `version`: version 1 is the ingested tree, later ones are edits made in
/// review.
pub fn job_tree_version_key(id: &str, version: u32) -> String {
    if version <= 1 {
        job_tree_key(id)
    } else {
        format!("jobs/{id}/tree.v{version}.json")
    }
}

pub fn reviews_prefix(job_id: &str) -> String {
    format!("jobs/{job_id}/reviews/")
}

pub fn review_key(job_id: &str, record_id: &str) -> String {
    format!("jobs/{job_id}/reviews/{record_id}.json")
}

pub fn failed_prefix(id: &str) -> String {
    format!("jobs/{id}/failed/")
}

pub fn failed_key(job_id: &str, shard_id: &str) -> String {
    format!("jobs/{job_id}/failed/{shard_id}.json")
}

/// The last failure of a shard that was handed back to the queue: the reason a dead letter gives
/// when the broker's delivery limit ends it (the broker itself knows none).
pub fn retried_key(job_id: &str, shard_id: &str) -> String {
    format!("jobs/{job_id}/retried/{shard_id}.json")
}

pub fn report_key(id: &str) -> String {
    format!("jobs/{id}/report.json")
}

/// File purposes, as SeekrFlow names them.
pub const PURPOSE_ALIGNMENT: &str = "alignment";
pub const PURPOSE_FINE_TUNE: &str = "fine-tune";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    pub id: String,
    pub filename: String,
    pub purpose: String,
    /// File type from the suffix (`md`, `xml`, `json`, `parquet`, ...).
    #[serde(rename = "type")]
    pub file_type: String,
    pub bytes: u64,
    pub created_at_ms: u64,
    /// Storage key of the content.
    pub content_key: String,
    /// The job that produced this file, for generated datasets.
    #[serde(default)]
    pub origin_job_id: Option<String>,
    /// The tenant that owns the file (none on a coordinator serving without API keys).
    #[serde(default)]
    pub tenant: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Pending,
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    /// The tenant that owns the job (none on a coordinator serving without API keys).
    #[serde(default)]
    pub tenant: Option<String>,
    pub status: JobStatus,
    pub spec: JobSpec,
    pub files: Vec<String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    #[serde(default)]
    pub completed_at_ms: Option<u64>,
    #[serde(default)]
    pub stopped_at_ms: Option<u64>,
    #[serde(default)]
    pub current_step: String,
    #[serde(default)]
    pub status_message: Option<String>,
    #[serde(default)]
    pub shards_total: u64,
    #[serde(default)]
    pub shards_done: u64,
    #[serde(default)]
    pub shards_failed: u64,
    /// Live counters from the workers (Redis); final figures are in the report.
    #[serde(default)]
    pub accepted: u64,
    #[serde(default)]
    pub rejected: u64,
    #[serde(default)]
    pub tokens: u64,
    /// The model that generated, the LLM server as the workers found it, and the errors it
    /// answered on the way, from the report once the job completed.
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub llm_server: Option<proto::report::LlmServer>,
    #[serde(default)]
    pub server_errors: Vec<crate::report::ServerError>,
    /// Id of the dataset file (purpose `fine-tune`) once the job completed.
    #[serde(default)]
    pub output_file: Option<FileRecord>,
    /// The newest version of the job's tree (1: as ingested; each section edit adds one).
    #[serde(default = "first_version")]
    pub tree_version: u32,
    /// The tree version the last generation ran on (`regenerate` moves it to `tree_version`).
    #[serde(default = "first_version")]
    pub generated_version: u32,
    /// Shards of the current plan whose parts existed before publishing (not regenerated).
    #[serde(default)]
    pub shards_reused: u64,
}

fn first_version() -> u32 {
    1
}

/// A person's decision on one item of a job's dataset (`jobs/<id>/reviews/<record_id>.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewRecord {
    pub record_id: String,
    pub status: ReviewStatus,
    /// Why the item was rejected (required for `rejected`).
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub edited_question: Option<String>,
    #[serde(default)]
    pub edited_answer: Option<String>,
    /// The question or answer was edited by a person: regeneration never replaces the item.
    #[serde(default)]
    pub human_edited: bool,
    pub updated_at_ms: u64,
    #[serde(default)]
    pub tenant: Option<String>,
    /// Digest of the item's section, question and answer as generated: a regenerated shard that
    /// yields the same item again gets this decision back.
    #[serde(default)]
    pub item_key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReviewStatus {
    Pending,
    Approved,
    Rejected,
}

impl ReviewStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewStatus::Pending => "pending",
            ReviewStatus::Approved => "approved",
            ReviewStatus::Rejected => "rejected",
        }
    }
}

impl JobRecord {
    pub fn progress_percent(&self) -> f64 {
        if self.status == JobStatus::Completed {
            return 100.0;
        }
        if self.shards_total == 0 {
            return 0.0;
        }
        (self.shards_done + self.shards_failed) as f64 * 100.0 / self.shards_total as f64
    }

    /// Estimated minutes left, from the rate so far.
    pub fn eta_minutes(&self) -> Option<f64> {
        let done = self.shards_done + self.shards_failed;
        if self.status.is_terminal() || done == 0 || self.shards_total <= done {
            return None;
        }
        let elapsed = now_ms().saturating_sub(self.created_at_ms) as f64;
        let per_shard = elapsed / done as f64;
        Some(per_shard * (self.shards_total - done) as f64 / 60_000.0)
    }
}
