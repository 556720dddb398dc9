//! The API's request and response bodies, in SeekrFlow's shapes (`seekrai` 0.35: `FileResponse`,
//! `AlignmentResponse`, ...), with their OpenAPI schemas. Principia's own additions are optional
//! request fields and the `principia` object of a job; SeekrFlow's SDK ignores unknown fields.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::records::{FileRecord, JobRecord, JobStatus, iso, now_ms};

/// A stored file (`FileResponse`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FileResponse {
    /// `file-` and 32 hex digits.
    pub id: String,
    /// Always `file`.
    pub object: String,
    /// RFC 3339.
    pub created_at: String,
    /// File type from the name's suffix (`md`, `json`, `xml`, `txt`, `parquet`, `jsonl`).
    #[serde(rename = "type")]
    pub file_type: String,
    /// `alignment` (documents to generate from) or `fine-tune` (datasets).
    pub purpose: String,
    pub filename: String,
    /// Size in bytes.
    pub bytes: u64,
    pub created_by: String,
    pub origin_file_id: Option<String>,
    pub deleted: bool,
}

impl From<&FileRecord> for FileResponse {
    fn from(file: &FileRecord) -> Self {
        FileResponse {
            id: file.id.clone(),
            object: "file".into(),
            created_at: iso(file.created_at_ms),
            file_type: file.file_type.clone(),
            purpose: file.purpose.clone(),
            filename: file.filename.clone(),
            bytes: file.bytes,
            created_by: "principia".into(),
            origin_file_id: None,
            deleted: false,
        }
    }
}

/// A page of files.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FileList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<FileResponse>,
}

/// The answer to deleting a file.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FileDeleted {
    pub id: String,
    /// Always `file`.
    pub object: String,
    pub deleted: bool,
}

/// SeekrFlow's pre-upload check of an alignment file.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ValidateMetadataRequest {
    pub purpose: String,
    /// File name suffix, with or without the dot.
    pub suffix: String,
    /// Size in bytes.
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ValidateMetadataResponse {
    pub is_valid: bool,
    /// Every problem, `; `-separated; absent when valid.
    pub errors: Option<String>,
}

/// `POST /v1/flow/alignment/generate`: SeekrFlow's fields, then Principia's optional settings.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GenerateRequest {
    /// What the aligned model should be (required, not blank).
    pub instructions: String,
    /// Ids of uploaded files with purpose `alignment`.
    pub files: Vec<String>,
    /// Only `principle` is supported.
    #[serde(rename = "type", default)]
    pub job_type: Option<String>,
    /// The `system` message of every generated conversation.
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// Principia: `extractive` or `openai` (default: `openai` when the coordinator has a model).
    #[serde(default)]
    pub generator: Option<String>,
    /// Principia: generator model (`openai`).
    #[serde(default)]
    pub model: Option<String>,
    /// Principia: judge model (`openai`).
    #[serde(default)]
    pub judge_model: Option<String>,
    /// Principia: sampling temperature (`openai`).
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Principia: `sentences` (cite numbered sentences, the default) or `quotes` (`openai`).
    #[serde(default)]
    pub grounding: Option<String>,
    /// Principia: source tokens per shard at most.
    #[serde(default)]
    pub shard_tokens: Option<usize>,
    /// Principia: accepted items wanted per section.
    #[serde(default)]
    pub min_items: Option<u32>,
    /// Principia: items kept per section at most.
    #[serde(default)]
    pub max_items: Option<u32>,
    /// Principia: LLM tokens the job may spend.
    #[serde(default)]
    pub token_budget: Option<u64>,
}

/// One output file of a job (`AlignmentOutput`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AlignmentOutput {
    pub id: String,
    pub filename: String,
    pub bytes: u64,
    pub created_at: String,
    /// `parquet` for the dataset.
    pub file_type: String,
    /// `fine-tune` for the dataset.
    pub purpose: String,
}

/// Principia's counters of a job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobCounters {
    pub generator: String,
    pub model: Option<String>,
    /// The LLM server as the workers found it (endpoint, structured output, tools, requests in
    /// flight), once the job completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub llm_server: Option<proto::report::LlmServer>,
    /// The most frequent errors the LLM server answered on the way (`message`, `count`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub server_errors: Vec<crate::report::ServerError>,
    pub shards_total: u64,
    pub shards_done: u64,
    pub shards_failed: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub tokens: u64,
}

/// An alignment job (`AlignmentResponse`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AlignmentResponse {
    /// `al-` and 32 hex digits.
    pub id: String,
    /// Always `alignment.job`.
    pub object: String,
    pub created_at: String,
    pub updated_at: String,
    pub completed_at: Option<String>,
    pub stopped_at: Option<String>,
    pub status: JobStatus,
    /// `ingest`, `publish`, `generate`, `merge` or `done`.
    pub current_step: String,
    /// Job progress, 0 to 100.
    pub progress: f64,
    pub step_progress: f64,
    /// Whole minutes left (rounded up), from the rate so far.
    pub eta_minutes: Option<u64>,
    pub estimated_completion_at: Option<String>,
    pub status_message: Option<String>,
    pub instructions: String,
    pub files: Vec<String>,
    pub output_files: Vec<AlignmentOutput>,
    pub principia: JobCounters,
}

impl From<&JobRecord> for AlignmentResponse {
    fn from(job: &JobRecord) -> Self {
        let eta = job.eta_minutes();
        AlignmentResponse {
            id: job.id.clone(),
            object: "alignment.job".into(),
            created_at: iso(job.created_at_ms),
            updated_at: iso(job.updated_at_ms),
            completed_at: job.completed_at_ms.map(iso),
            stopped_at: job.stopped_at_ms.map(iso),
            status: job.status,
            current_step: job.current_step.clone(),
            progress: job.progress_percent(),
            step_progress: job.progress_percent(),
            eta_minutes: eta.map(|minutes| minutes.ceil() as u64),
            estimated_completion_at: eta.map(|m| iso(now_ms() + (m * 60_000.0) as u64)),
            status_message: job.status_message.clone(),
            instructions: job.spec.instructions.clone(),
            files: job.files.clone(),
            output_files: job
                .output_file
                .iter()
                .map(|f| AlignmentOutput {
                    id: f.id.clone(),
                    filename: f.filename.clone(),
                    bytes: f.bytes,
                    created_at: iso(f.created_at_ms),
                    file_type: f.file_type.clone(),
                    purpose: f.purpose.clone(),
                })
                .collect(),
            principia: JobCounters {
                generator: job.spec.generator.kind.as_str().into(),
                model: job
                    .spec
                    .generator
                    .model
                    .clone()
                    .or_else(|| job.model.clone()),
                llm_server: job.llm_server.clone(),
                server_errors: job.server_errors.clone(),
                shards_total: job.shards_total,
                shards_done: job.shards_done,
                shards_failed: job.shards_failed,
                accepted: job.accepted,
                rejected: job.rejected,
                tokens: job.tokens,
            },
        }
    }
}

/// A list of jobs, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AlignmentList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<AlignmentResponse>,
}

/// Every error: a message and the HTTP status (`detail` repeats the message, as FastAPI does).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    pub status: u16,
}

/// `POST /v1/flow/combine`: generated datasets and the user's own data, merged (Principia).
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CombineBody {
    /// Ids of uploaded files with purpose `fine-tune` (`.parquet` or `.jsonl`), in order of
    /// precedence: a duplicate of an earlier file's row is removed.
    pub files: Vec<String>,
    /// Source names of the files, in order (default: each file's name without its extension).
    #[serde(default)]
    pub sources: Vec<String>,
    /// Share of rows held out for evaluation, stratified by section (0 < F < 1).
    #[serde(default)]
    pub eval_fraction: Option<f64>,
    /// Seed of the evaluation split (0).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Word-set similarity (0.5–1) from which a question is a near duplicate (0.8).
    #[serde(default)]
    pub near_duplicate_threshold: Option<f64>,
    /// Name of the new files: `NAME.parquet` and `NAME.eval.parquet` (`combined`).
    #[serde(default)]
    pub name: Option<String>,
}

/// The combined dataset as new `fine-tune` files, and the counts behind it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CombineResponse {
    /// The combined (training) rows: the dataset schema plus `source`.
    pub file: FileResponse,
    /// The evaluation rows, when a split was asked for.
    pub eval_file: Option<FileResponse>,
    pub summary: crate::combine::CombineSummary,
}

/// `POST /v1/flow/alignment/estimate`: a generate request, and what to price and time it at
/// (Principia).
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct EstimateBody {
    #[serde(flatten)]
    pub job: GenerateRequest,
    /// Price of a million prompt tokens.
    #[serde(default)]
    pub price_in: Option<f64>,
    /// Price of a million completion tokens.
    #[serde(default)]
    pub price_out: Option<f64>,
    /// Mean seconds one LLM call takes (10).
    #[serde(default)]
    pub latency_secs: Option<f64>,
    /// LLM calls in flight at once (8).
    #[serde(default)]
    pub llm_concurrency: Option<usize>,
}
