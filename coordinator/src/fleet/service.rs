//! The coordinator service: files, jobs, publishing, progress, merge.
//!
//! Every decision is re-derivable from the object store: a job's record, tree and (recomputable)
//! plan are stored before its shards are published; a shard is done when its part exists, failed
//! when its failure record exists; the job completes when the create-only merge has written the
//! dataset. A restarted coordinator reloads the records and carries on; republishing a shard whose
//! part already exists costs a worker one existence check.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use proto::{JobSpec, PrincipleTree, ShardMessage};
use tokio_util::sync::CancellationToken;
use worker::process::part_key;
use worker::queue::ShardPublisher;
use worker::store::{ObjectStore, StoreError};

use super::progress::RedisProgress;
use super::records::*;
use super::review::ReviewCache;
use crate::combine;
use crate::estimate::{UsageEstimate, estimate_shards};
use crate::ingest;
use crate::lookup::{JobLookups, link_lookups};
use crate::merge::{MergeInput, dataset_version_key, merge_job};
use crate::plan::{largest_first, plan_shards};
use crate::report::{self, FailedShard, ReportInput};

/// Shards published at once (publisher confirms outstanding).
const PUBLISH_CONCURRENCY: usize = 32;

/// Parts of a running job read from the store at once by the monitor.
const PART_READ_CONCURRENCY: usize = 16;

/// Why publishing a job's shards stopped early.
enum PublishStop {
    /// The job was cancelled or deleted meanwhile.
    Stopped,
    Failed(String),
}

/// Largest upload accepted unless configured otherwise (`PRINCIPIA_MAX_UPLOAD_BYTES`).
pub const DEFAULT_MAX_UPLOAD_BYTES: usize = 256 * 1024 * 1024;
/// Suffixes accepted for `alignment` files (the one list of accepted document types).
pub const ALIGNMENT_SUFFIXES: &[&str] = &[
    "md", "markdown", "json", "xml", "txt", "html", "htm", "pdf", "docx",
];
/// Suffixes accepted for `fine-tune` files.
pub const FINE_TUNE_SUFFIXES: &[&str] = &["parquet", "jsonl"];

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    /// The request does not fit the job's state (e.g. reviewing a job without a dataset).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct GenerateRequest {
    pub spec: JobSpec,
    pub files: Vec<String>,
}

/// What to combine and how (`POST /v1/flow/combine`).
pub struct CombineRequest {
    /// Ids of `fine-tune` files, in order of precedence.
    pub files: Vec<String>,
    /// Source names of the first files, in order (the others: their file stems).
    pub sources: Vec<String>,
    /// Name of the new files (`NAME.parquet`, `NAME.eval.parquet`).
    pub name: String,
    pub settings: combine::CombineSettings,
}

/// The new files and what happened to the rows.
pub struct CombineOutcome {
    pub summary: combine::CombineSummary,
    pub file: FileRecord,
    pub eval_file: Option<FileRecord>,
}

pub struct Coordinator {
    pub(super) store: Arc<dyn ObjectStore>,
    max_upload_bytes: usize,
    publisher: Arc<dyn ShardPublisher>,
    progress: Option<RedisProgress>,
    jobs: Mutex<BTreeMap<String, JobRecord>>,
    /// Each job's current plan (parts of other versions' shards do not count).
    plans: Mutex<HashMap<String, Arc<JobPlan>>>,
    /// Decoded datasets, trees and reviews that the review routes read.
    pub(super) review: ReviewCache,
    /// Bytes of the parts of running jobs read so far, by job id and part key: the monitor reads
    /// new parts as they appear, so the merge fetches only the last ones.
    read_parts: Mutex<HashMap<String, HashMap<String, Bytes>>>,
}

/// A job's plan for the tree version it generates, as prepared for publishing.
struct JobPlan {
    /// Shard ids in plan order (the merge's order).
    order: Vec<String>,
    ids: HashSet<String>,
    /// The usage estimate, computed while the shards are published, for the report.
    estimate: Mutex<Option<UsageEstimate>>,
}

/// What [`Coordinator::prepare`] makes of a job: its tree, shards and lookups.
pub(super) struct Prepared {
    tree: PrincipleTree,
    shards: Vec<ShardMessage>,
    lookups: Option<JobLookups>,
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// File type from a file name's suffix (`markdown` is called `md`, as SeekrFlow's types name it).
pub fn file_type(filename: &str) -> String {
    let suffix = Path::new(filename)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if suffix == "markdown" {
        "md".into()
    } else {
        suffix
    }
}

/// Problems with a would-be upload's purpose and file name, checked before its content is read.
pub fn check_upload_name(purpose: &str, filename: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let suffix = file_type(filename);
    let allowed = match purpose {
        PURPOSE_ALIGNMENT => Some(ALIGNMENT_SUFFIXES),
        PURPOSE_FINE_TUNE => Some(FINE_TUNE_SUFFIXES),
        other => {
            errors.push(format!(
                "purpose {other:?} is not supported (use {PURPOSE_ALIGNMENT:?} or {PURPOSE_FINE_TUNE:?})"
            ));
            None
        }
    };
    if let Some(allowed) = allowed
        && !allowed.contains(&suffix.as_str())
    {
        errors.push(format!(
            "file type {suffix:?} is not accepted for purpose {purpose:?} (accepted: {})",
            allowed.join(", ")
        ));
    }
    if filename.is_empty()
        || filename.len() > 255
        || filename.contains(['/', '\\', '\0'])
        || filename.chars().any(char::is_control)
    {
        errors.push(format!("file name {filename:?} is not acceptable"));
    }
    errors
}

/// Check a would-be upload's purpose, name and size (SeekrFlow's `validate_metadata`).
pub fn validate_upload(purpose: &str, filename: &str, size: u64, max_bytes: usize) -> Vec<String> {
    let mut errors = check_upload_name(purpose, filename);
    if size == 0 {
        errors.push("the file is empty".into());
    }
    if size > max_bytes as u64 {
        errors.push(too_large(size, max_bytes));
    }
    errors
}

/// A `fine-tune` upload must be training data Principia can use: a Parquet file in the
/// fine-tuning schema (`messages`, and Principia's own columns of their types, as an exported
/// review has them), or any file `principia combine` reads (JSONL or Parquet with `messages`,
/// `question`/`answer`, `prompt`/`completion` or `instruction`/`output`). Checked before anything
/// is stored.
async fn check_fine_tune_content(filename: &str, content: Bytes) -> Result<(), ServiceError> {
    let path = std::path::PathBuf::from(filename);
    let verdict = tokio::task::spawn_blocking(move || {
        let readable = |content: Bytes| {
            combine::read_input(&path, "upload", content)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        match file_type(&path.to_string_lossy()).as_str() {
            "parquet" => match proto::dataset::check_fine_tune_parquet(content.clone()) {
                Ok(_) => Ok(()),
                Err(schema) => readable(content).map_err(|_| {
                    format!("the Parquet file is not a fine-tuning dataset: {schema}")
                }),
            },
            "jsonl" => readable(content),
            _ => Ok(()),
        }
    })
    .await
    .map_err(|e| ServiceError::Invalid(format!("checking the upload failed: {e}")))?;
    verdict.map_err(ServiceError::Invalid)
}

/// The message for an upload over the limit.
pub fn too_large(size: u64, max_bytes: usize) -> String {
    format!("the file is {size} bytes; the limit is {max_bytes} bytes")
}

/// Whether a record's owner is the caller (`None` on both sides: the tenant-less mode).
fn owned_by(owner: &Option<String>, tenant: Option<&str>) -> bool {
    owner.as_deref() == tenant
}

impl Coordinator {
    /// Whether the object store and Redis answer within `timeout`; the reason when not.
    pub async fn check_ready(&self, timeout: std::time::Duration) -> Result<(), String> {
        match tokio::time::timeout(timeout, self.store.exists("readyz")).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(format!("object store: {error}")),
            Err(_) => return Err("object store: no answer in time".into()),
        }
        if let Some(progress) = &self.progress {
            match tokio::time::timeout(timeout, progress.ping()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(format!("redis: {error}")),
                Err(_) => return Err("redis: no answer in time".into()),
            }
        }
        Ok(())
    }

    /// Load the jobs recorded on the store and resume those that were not finished.
    /// `max_upload_bytes` bounds the files `upload_file` accepts.
    pub async fn start(
        store: Arc<dyn ObjectStore>,
        publisher: Arc<dyn ShardPublisher>,
        progress: Option<RedisProgress>,
        max_upload_bytes: usize,
    ) -> Result<Arc<Self>, ServiceError> {
        let mut jobs = BTreeMap::new();
        for key in store.list("jobs/").await? {
            if !key.ends_with("/job.json") {
                continue;
            }
            let Some(bytes) = store.get(&key).await? else {
                continue;
            };
            match serde_json::from_slice::<JobRecord>(&bytes) {
                Ok(job) => {
                    jobs.insert(job.id.clone(), job);
                }
                Err(error) => tracing::warn!(%key, %error, "ignoring an unreadable job record"),
            }
        }
        let coordinator = Arc::new(Coordinator {
            store,
            max_upload_bytes,
            publisher,
            progress,
            jobs: Mutex::new(jobs),
            plans: Mutex::new(HashMap::new()),
            review: ReviewCache::default(),
            read_parts: Mutex::new(HashMap::new()),
        });
        let unfinished: Vec<JobRecord> = coordinator
            .jobs
            .lock()
            .expect("jobs lock")
            .values()
            .filter(|j| !j.status.is_terminal())
            .cloned()
            .collect();
        for job in unfinished {
            tracing::info!(job_id = %job.id, status = job.status.as_str(), "resuming job after restart");
            let this = coordinator.clone();
            tokio::spawn(async move { this.prepare_and_publish(job.id).await });
        }
        Ok(coordinator)
    }

    // ----- files -----

    /// Largest upload accepted.
    pub fn max_upload_bytes(&self) -> usize {
        self.max_upload_bytes
    }

    /// Store a file for `tenant` after checking its purpose, name and size.
    pub async fn upload_file(
        &self,
        filename: &str,
        purpose: &str,
        content: Bytes,
        tenant: Option<&str>,
    ) -> Result<FileRecord, ServiceError> {
        let errors = validate_upload(
            purpose,
            filename,
            content.len() as u64,
            self.max_upload_bytes,
        );
        if !errors.is_empty() {
            return Err(ServiceError::Invalid(errors.join("; ")));
        }
        if purpose == PURPOSE_FINE_TUNE {
            check_fine_tune_content(filename, content.clone()).await?;
        }
        self.store_new_file(filename, purpose, content, tenant)
            .await
    }

    /// Store a new file of `tenant` (its name and purpose already checked).
    async fn store_new_file(
        &self,
        filename: &str,
        purpose: &str,
        content: Bytes,
        tenant: Option<&str>,
    ) -> Result<FileRecord, ServiceError> {
        let id = new_id("file");
        let record = FileRecord {
            id: id.clone(),
            filename: filename.to_string(),
            purpose: purpose.to_string(),
            file_type: file_type(filename),
            bytes: content.len() as u64,
            created_at_ms: now_ms(),
            content_key: file_content_key(&id),
            origin_job_id: None,
            tenant: tenant.map(str::to_string),
        };
        self.store.put(&record.content_key, content).await?;
        self.put_file_record(&record).await?;
        Ok(record)
    }

    /// `principia combine` on the tenant's `fine-tune` files: the combined rows become a new
    /// `fine-tune` file `NAME.parquet` (and `NAME.eval.parquet` with an evaluation split); the
    /// summary's `outputs` are their ids.
    pub async fn combine_files(
        &self,
        request: CombineRequest,
        tenant: Option<&str>,
    ) -> Result<CombineOutcome, ServiceError> {
        if request.files.is_empty() {
            return Err(ServiceError::Invalid(
                "files must name at least one uploaded file".into(),
            ));
        }
        if request.sources.len() > request.files.len() {
            return Err(ServiceError::Invalid(format!(
                "{} source names for {} files",
                request.sources.len(),
                request.files.len()
            )));
        }
        let train_name = format!("{}.parquet", request.name);
        let eval_name = format!("{}.eval.parquet", request.name);
        let name_errors = check_upload_name(PURPOSE_FINE_TUNE, &eval_name);
        if !name_errors.is_empty() {
            return Err(ServiceError::Invalid(name_errors.join("; ")));
        }
        let mut inputs = Vec::with_capacity(request.files.len());
        let mut names = request.sources.into_iter();
        for id in &request.files {
            let (file, bytes) = self.file_content(id, tenant).await?;
            if file.purpose != PURPOSE_FINE_TUNE {
                return Err(ServiceError::Invalid(format!(
                    "file {id} has purpose {:?}; combine takes files with purpose {PURPOSE_FINE_TUNE:?}",
                    file.purpose
                )));
            }
            inputs.push(combine::InputContent {
                source: names
                    .next()
                    .unwrap_or_else(|| combine::stem(Path::new(&file.filename))),
                name: file.filename,
                bytes,
            });
        }
        let settings = request.settings;
        let (mut combined, train, eval) = tokio::task::spawn_blocking(move || {
            let combined = combine::combine_inputs(inputs, settings)?;
            let encode = |rows: &[combine::SourcedRecord]| {
                combine::encode_parquet(rows).map_err(|source| combine::CombineError::Write {
                    path: "the combined dataset".into(),
                    source,
                })
            };
            let train = encode(&combined.train)?;
            let eval = match settings.eval_fraction {
                Some(_) => Some(encode(&combined.eval)?),
                None => None,
            };
            Ok::<_, combine::CombineError>((combined, train, eval))
        })
        .await
        .map_err(|e| ServiceError::Invalid(format!("combine task: {e}")))?
        .map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let file = self
            .store_new_file(&train_name, PURPOSE_FINE_TUNE, Bytes::from(train), tenant)
            .await?;
        combined.summary.outputs = vec![file.id.clone()];
        let eval_file = match eval {
            Some(eval) => {
                let record = self
                    .store_new_file(&eval_name, PURPOSE_FINE_TUNE, Bytes::from(eval), tenant)
                    .await?;
                combined.summary.outputs.push(record.id.clone());
                Some(record)
            }
            None => None,
        };
        Ok(CombineOutcome {
            summary: combined.summary,
            file,
            eval_file,
        })
    }

    async fn put_file_record(&self, record: &FileRecord) -> Result<(), StoreError> {
        let json = serde_json::to_vec(record).expect("file record serializes");
        self.store
            .put(&file_record_key(&record.id), Bytes::from(json))
            .await
    }

    /// The tenant's file `id`; another tenant's file is not found, like a missing one.
    pub async fn file(&self, id: &str, tenant: Option<&str>) -> Result<FileRecord, ServiceError> {
        let not_found = || ServiceError::NotFound(format!("file {id}"));
        // The id becomes part of a storage key: only well-formed ids get that far.
        if !is_id(id, "file") {
            return Err(not_found());
        }
        let bytes = self
            .store
            .get(&file_record_key(id))
            .await?
            .ok_or_else(not_found)?;
        let record: FileRecord = serde_json::from_slice(&bytes)
            .map_err(|e| ServiceError::Invalid(format!("file record {id} is unreadable: {e}")))?;
        if !owned_by(&record.tenant, tenant) {
            return Err(not_found());
        }
        Ok(record)
    }

    pub async fn file_content(
        &self,
        id: &str,
        tenant: Option<&str>,
    ) -> Result<(FileRecord, Bytes), ServiceError> {
        let record = self.file(id, tenant).await?;
        let content = self
            .store
            .get(&record.content_key)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("content of file {id}")))?;
        Ok((record, content))
    }

    /// The tenant's files, optionally of one purpose.
    pub async fn files(
        &self,
        purpose: Option<&str>,
        tenant: Option<&str>,
    ) -> Result<Vec<FileRecord>, ServiceError> {
        let mut files = Vec::new();
        for key in self.store.list("files/").await? {
            if !key.ends_with(".json") || key.matches('/').count() != 1 {
                continue;
            }
            if let Some(bytes) = self.store.get(&key).await?
                && let Ok(record) = serde_json::from_slice::<FileRecord>(&bytes)
                && owned_by(&record.tenant, tenant)
                && purpose.is_none_or(|p| p == record.purpose)
            {
                files.push(record);
            }
        }
        Ok(files)
    }

    pub async fn delete_file(&self, id: &str, tenant: Option<&str>) -> Result<(), ServiceError> {
        let record = self.file(id, tenant).await?;
        if record.origin_job_id.is_none() {
            self.store.delete(&record.content_key).await?;
        }
        self.store.delete(&file_record_key(id)).await?;
        Ok(())
    }

    // ----- jobs -----

    /// Start a job for `tenant` on files of that tenant.
    pub async fn create_job(
        self: &Arc<Self>,
        request: GenerateRequest,
        tenant: Option<&str>,
    ) -> Result<JobRecord, ServiceError> {
        if request.spec.instructions.trim().is_empty() {
            return Err(ServiceError::Invalid(
                "instructions must not be empty".into(),
            ));
        }
        if request.files.is_empty() {
            return Err(ServiceError::Invalid(
                "files must name at least one uploaded file".into(),
            ));
        }
        for id in &request.files {
            let file = self.file(id, tenant).await?;
            if file.purpose != PURPOSE_ALIGNMENT {
                return Err(ServiceError::Invalid(format!(
                    "file {id} has purpose {:?}; alignment jobs take files with purpose {PURPOSE_ALIGNMENT:?}",
                    file.purpose
                )));
            }
        }
        let now = now_ms();
        let job = JobRecord {
            id: new_id("al"),
            tenant: tenant.map(str::to_string),
            status: JobStatus::Pending,
            spec: request.spec,
            files: request.files,
            created_at_ms: now,
            updated_at_ms: now,
            completed_at_ms: None,
            stopped_at_ms: None,
            current_step: "ingest".into(),
            status_message: None,
            shards_total: 0,
            shards_done: 0,
            shards_failed: 0,
            accepted: 0,
            rejected: 0,
            tokens: 0,
            model: None,
            llm_server: None,
            server_errors: Vec::new(),
            output_file: None,
            tree_version: 1,
            generated_version: 1,
            shards_reused: 0,
        };
        self.save(job.clone()).await?;
        let this = self.clone();
        let id = job.id.clone();
        tokio::spawn(async move { this.prepare_and_publish(id).await });
        Ok(job)
    }

    /// The tenant's jobs, newest first.
    pub fn jobs(&self, tenant: Option<&str>) -> Vec<JobRecord> {
        let mut jobs: Vec<JobRecord> = self
            .jobs
            .lock()
            .expect("jobs lock")
            .values()
            .filter(|job| owned_by(&job.tenant, tenant))
            .cloned()
            .collect();
        jobs.sort_by_key(|j| std::cmp::Reverse(j.created_at_ms));
        jobs
    }

    /// Every job, of every tenant, newest first (for the monitor).
    fn all_jobs(&self) -> Vec<JobRecord> {
        let mut jobs: Vec<JobRecord> = self
            .jobs
            .lock()
            .expect("jobs lock")
            .values()
            .cloned()
            .collect();
        jobs.sort_by_key(|j| std::cmp::Reverse(j.created_at_ms));
        jobs
    }

    /// The tenant's job `id`; another tenant's job is not found, like a missing one.
    pub fn job(&self, id: &str, tenant: Option<&str>) -> Result<JobRecord, ServiceError> {
        let not_found = || ServiceError::NotFound(format!("alignment job {id}"));
        if !is_id(id, "al") {
            return Err(not_found());
        }
        self.job_record(id)
            .filter(|job| owned_by(&job.tenant, tenant))
            .ok_or_else(not_found)
    }

    /// A job of any tenant (internal bookkeeping).
    pub(super) fn job_record(&self, id: &str) -> Option<JobRecord> {
        self.jobs.lock().expect("jobs lock").get(id).cloned()
    }

    /// Cancel the tenant's job: publishing stops, workers drop its queued shards, finished shards
    /// are kept. A finished job is returned unchanged.
    pub async fn cancel_job(
        &self,
        id: &str,
        tenant: Option<&str>,
    ) -> Result<JobRecord, ServiceError> {
        let mut job = self.job(id, tenant)?;
        if !job.status.is_terminal() {
            job.status = JobStatus::Cancelled;
            job.stopped_at_ms = Some(now_ms());
            job.status_message = Some(format!(
                "cancelled with {} of {} shards finished; finished shards are kept",
                job.shards_done, job.shards_total
            ));
            self.save(job.clone()).await?;
        }
        Ok(job)
    }

    /// Cancel and delete the tenant's job with its parts, report and dataset.
    pub async fn delete_job(&self, id: &str, tenant: Option<&str>) -> Result<(), ServiceError> {
        let job = self.cancel_job(id, tenant).await?;
        for key in self.store.list(&format!("jobs/{}/", job.id)).await? {
            self.store.delete(&key).await?;
        }
        if let Some(file) = &job.output_file {
            self.store.delete(&file_record_key(&file.id)).await?;
        }
        self.jobs.lock().expect("jobs lock").remove(id);
        self.plans.lock().expect("plans lock").remove(id);
        self.review.forget(id);
        if let Some(progress) = &self.progress {
            let _ = progress.forget(id).await;
        }
        Ok(())
    }

    /// Persist a job record (store first, then memory, then the Redis mirror).
    pub(super) async fn save(&self, mut job: JobRecord) -> Result<(), StoreError> {
        job.updated_at_ms = now_ms();
        let json = serde_json::to_vec(&job).expect("job record serializes");
        self.store
            .put(&job_record_key(&job.id), Bytes::from(json))
            .await?;
        if let Some(progress) = &self.progress
            && let Err(error) = progress
                .set_status(
                    &job.id,
                    job.status.as_str(),
                    job.shards_done,
                    job.shards_total,
                )
                .await
        {
            tracing::warn!(%error, job_id = %job.id, "mirroring job status to Redis failed");
        }
        self.jobs
            .lock()
            .expect("jobs lock")
            .insert(job.id.clone(), job);
        Ok(())
    }

    /// Whether the job is still wanted (not cancelled or deleted meanwhile).
    fn still_active(&self, id: &str) -> bool {
        self.job_record(id).is_some_and(|j| !j.status.is_terminal())
    }

    async fn fail(&self, id: &str, message: String) {
        tracing::warn!(job_id = %id, %message, "job failed");
        if let Some(mut job) = self.job_record(id) {
            job.status = JobStatus::Failed;
            job.stopped_at_ms = Some(now_ms());
            job.status_message = Some(message);
            if let Err(error) = self.save(job).await {
                tracing::error!(%error, job_id = %id, "recording the failure failed");
            }
        }
    }

    /// Ingest the job's files, plan, store the tree, publish the shards whose parts are missing.
    pub(super) async fn prepare_and_publish(self: Arc<Self>, id: String) {
        let Prepared {
            shards, lookups, ..
        } = match self.prepare(&id).await {
            Ok(prepared) => prepared,
            Err(message) => return self.fail(&id, message).await,
        };
        let Some(mut job) = self.job_record(&id) else {
            return;
        };
        if job.status.is_terminal() {
            return;
        }
        let done: HashSet<String> = match self.store.list(&format!("jobs/{id}/parts/")).await {
            Ok(keys) => keys.into_iter().collect(),
            Err(error) => {
                return self
                    .fail(&id, format!("listing finished parts: {error}"))
                    .await;
            }
        };
        job.status = JobStatus::Queued;
        job.current_step = "publish".into();
        job.shards_total = shards.len() as u64;
        job.shards_reused = shards
            .iter()
            .filter(|s| done.contains(&part_key(&id, &s.shard_id)))
            .count() as u64;
        if let Err(error) = self.save(job.clone()).await {
            return self
                .fail(&id, format!("storing the job record: {error}"))
                .await;
        }
        // Publish with many confirms outstanding at once: each publish waits for its broker
        // confirm, and confirms of a quorum queue take milliseconds each.
        let mut pending: Vec<ShardMessage> = shards
            .iter()
            .filter(|s| !done.contains(&part_key(&id, &s.shard_id)))
            .cloned()
            .collect();
        largest_first(&mut pending);
        // The report's estimate, worked out while the shards go out, not when the job ends.
        let estimating = {
            let spec = job.spec.clone();
            tokio::task::spawn_blocking(move || {
                estimate_shards(&spec, lookups.as_ref().map(|l| &l.lookups), &shards)
            })
        };
        let published = pending.len();
        let (this, job_id) = (&self, id.as_str());
        let mut results = futures_util::stream::iter(pending)
            .map(move |shard| async move { this.publish_with_retries(job_id, &shard).await })
            .buffer_unordered(PUBLISH_CONCURRENCY);
        while let Some(result) = results.next().await {
            match result {
                Ok(()) => {}
                Err(PublishStop::Stopped) => {
                    tracing::info!(job_id = %id, "job stopped; publishing stopped");
                    return;
                }
                Err(PublishStop::Failed(message)) => {
                    drop(results);
                    return self.fail(&id, message).await;
                }
            }
        }
        tracing::info!(job_id = %id, published, reused = done.len(), "shards published");
        if let (Ok(estimate), Some(plan)) = (
            estimating.await,
            self.plans.lock().expect("plans lock").get(&id),
        ) {
            *plan.estimate.lock().expect("estimate lock") = Some(estimate);
        }
        if let Some(mut job) = self.job_record(&id)
            && !job.status.is_terminal()
        {
            job.status = JobStatus::Running;
            job.current_step = "generate".into();
            if let Err(error) = self.save(job).await {
                tracing::warn!(%error, "storing the job record failed");
            }
        }
    }

    /// Publish one shard, retrying a failed publish a few times with backoff.
    async fn publish_with_retries(
        &self,
        id: &str,
        shard: &ShardMessage,
    ) -> Result<(), PublishStop> {
        if !self.still_active(id) {
            return Err(PublishStop::Stopped);
        }
        let mut attempt = 0;
        loop {
            match self.publisher.publish(shard).await {
                Ok(()) => {
                    worker::metrics::SHARDS_PUBLISHED
                        .with_label_values(&["ok"])
                        .inc();
                    return Ok(());
                }
                Err(error) => {
                    worker::metrics::SHARDS_PUBLISHED
                        .with_label_values(&["error"])
                        .inc();
                    if attempt >= 5 {
                        return Err(PublishStop::Failed(format!(
                            "publishing shard {}: {error}",
                            shard.shard_id
                        )));
                    }
                    attempt += 1;
                    tracing::warn!(%error, attempt, "publishing a shard failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
                }
            }
        }
    }

    /// The job's tree at the version generated (ingested once, then read back from the store),
    /// its shards and lookups; the lookup index is stored and the plan kept for progress and the
    /// merge.
    pub(super) async fn prepare(&self, id: &str) -> Result<Prepared, String> {
        let job = self
            .job_record(id)
            .ok_or_else(|| format!("job {id} was deleted"))?;
        let tree = self.generated_tree(&job).await?;
        let mut shards = plan_shards(&tree, id, &job.spec);
        if shards.is_empty() {
            return Err("the documents contain no section with text to generate from".into());
        }
        let lookups = link_lookups(id, &tree, &job.spec, &mut shards);
        if let Some(lookups) = &lookups {
            lookups
                .store(self.store.as_ref())
                .await
                .map_err(|e| format!("storing the lookup index: {e}"))?;
        }
        let order: Vec<String> = shards.iter().map(|s| s.shard_id.clone()).collect();
        let plan = JobPlan {
            ids: order.iter().cloned().collect(),
            order,
            estimate: Mutex::new(None),
        };
        self.plans
            .lock()
            .expect("plans lock")
            .insert(id.to_string(), Arc::new(plan));
        Ok(Prepared {
            tree,
            shards,
            lookups,
        })
    }

    /// The job's tree at the version it generates: ingested once, then read back from the store.
    async fn generated_tree(&self, job: &JobRecord) -> Result<PrincipleTree, String> {
        let id = &job.id;
        let tree_key = job_tree_version_key(id, job.generated_version);
        let tree = match self.store.get(&tree_key).await.map_err(|e| e.to_string())? {
            Some(bytes) => serde_json::from_slice::<PrincipleTree>(&bytes)
                .map_err(|e| format!("stored tree is unreadable: {e}"))?,
            None if job.generated_version > 1 => {
                return Err(format!(
                    "tree version {} of the job is missing",
                    job.generated_version
                ));
            }
            None => {
                let tree = self
                    .ingest(&job.files, job.tenant.as_deref())
                    .await
                    .map_err(|e| e.to_string())?;
                let json = serde_json::to_vec(&tree).expect("tree serializes");
                self.store
                    .put(&tree_key, Bytes::from(json))
                    .await
                    .map_err(|e| e.to_string())?;
                tree
            }
        };
        Ok(tree)
    }

    /// The tenant's `alignment` files as one principle tree. A missing file is `NotFound`; a
    /// document that cannot be read is `Invalid`, with the reader's message.
    async fn ingest(
        &self,
        files: &[String],
        tenant: Option<&str>,
    ) -> Result<PrincipleTree, ServiceError> {
        let invalid = ServiceError::Invalid;
        let dir =
            tempfile::tempdir().map_err(|e| invalid(format!("creating a work directory: {e}")))?;
        let mut paths = Vec::new();
        for (i, file_id) in files.iter().enumerate() {
            let (record, content) = self.file_content(file_id, tenant).await?;
            // The stored name is validated at upload; prefix the index so two equal names coexist.
            let path = dir.path().join(format!("{i}-{}", record.filename));
            tokio::fs::write(&path, &content)
                .await
                .map_err(|e| invalid(format!("staging {}: {e}", record.filename)))?;
            paths.push(path);
        }
        let ingested = tokio::task::spawn_blocking(move || ingest::read_files(&paths, None))
            .await
            .map_err(|e| invalid(format!("ingest task: {e}")))?
            .map_err(|e| invalid(e.to_string()))?;
        for warning in &ingested.warnings {
            tracing::warn!("{warning}");
        }
        Ok(ingested.tree)
    }

    /// `principia estimate` for a would-be job on the tenant's `alignment` files: ingest and plan
    /// as the job would, no model called, nothing stored.
    pub async fn estimate(
        &self,
        spec: &JobSpec,
        files: &[String],
        tenant: Option<&str>,
    ) -> Result<UsageEstimate, ServiceError> {
        if files.is_empty() {
            return Err(ServiceError::Invalid(
                "files must name at least one uploaded file".into(),
            ));
        }
        for id in files {
            let file = self.file(id, tenant).await?;
            if file.purpose != PURPOSE_ALIGNMENT {
                return Err(ServiceError::Invalid(format!(
                    "file {id} has purpose {:?}; estimates take files with purpose {PURPOSE_ALIGNMENT:?}",
                    file.purpose
                )));
            }
        }
        let tree = self.ingest(files, tenant).await?;
        let job_id = crate::embedded::job_id(spec, &tree);
        let mut shards = plan_shards(&tree, &job_id, spec);
        if shards.is_empty() {
            return Err(ServiceError::Invalid(
                "the documents contain no section with text to generate from".into(),
            ));
        }
        let lookups = link_lookups(&job_id, &tree, spec, &mut shards);
        Ok(estimate_shards(
            spec,
            lookups.as_ref().map(|l| &l.lookups),
            &shards,
        ))
    }

    /// Bring every running job's progress up to date; merge the ones whose shards are all done.
    pub async fn tick(&self) {
        let running: Vec<JobRecord> = self
            .all_jobs()
            .into_iter()
            .filter(|j| j.status == JobStatus::Running)
            .collect();
        self.read_parts
            .lock()
            .expect("read parts lock")
            .retain(|id, _| running.iter().any(|j| &j.id == id));
        for job in running {
            if let Err(error) = self.refresh(job).await {
                tracing::warn!(%error, "refreshing job progress failed");
            }
        }
    }

    /// The job's current plan.
    async fn plan(&self, id: &str) -> Result<Arc<JobPlan>, ServiceError> {
        if let Some(plan) = self.plans.lock().expect("plans lock").get(id) {
            return Ok(plan.clone());
        }
        self.prepare(id).await.map_err(ServiceError::Invalid)?;
        self.plans
            .lock()
            .expect("plans lock")
            .get(id)
            .cloned()
            .ok_or_else(|| ServiceError::NotFound(format!("plan of job {id}")))
    }

    async fn refresh(&self, mut job: JobRecord) -> Result<(), ServiceError> {
        let id = job.id.clone();
        // Only the current plan's shards count: after a regeneration, parts and failures of
        // shards that the new tree no longer has are history.
        let plan = self.plan(&id).await?;
        let in_plan = |key: &String| {
            let name = key.rsplit('/').next().unwrap_or_default();
            let shard = name
                .strip_suffix(".parquet")
                .or_else(|| name.strip_suffix(".json"))
                .unwrap_or(name);
            plan.ids.contains(shard)
        };
        let part_keys: Vec<String> = self
            .store
            .list(&format!("jobs/{id}/parts/"))
            .await?
            .into_iter()
            .filter(|k| in_plan(k))
            .collect();
        let parts = part_keys.len() as u64;
        self.read_new_parts(&id, part_keys).await;
        let failed_keys: Vec<String> = self
            .store
            .list(&failed_prefix(&id))
            .await?
            .into_iter()
            .filter(|k| in_plan(k))
            .collect();
        let changed = parts != job.shards_done || failed_keys.len() as u64 != job.shards_failed;
        job.shards_done = parts;
        job.shards_failed = failed_keys.len() as u64;
        if let Some(progress) = &self.progress
            && let Ok(counters) = progress.counters(&id).await
        {
            job.accepted = counters.accepted;
            job.rejected = counters.rejected;
            job.tokens = counters.tokens;
        }
        if parts + job.shards_failed < job.shards_total {
            if changed {
                self.save(job).await?;
            }
            return Ok(());
        }
        if !failed_keys.is_empty() {
            let mut reasons = Vec::new();
            for key in failed_keys.iter().take(3) {
                if let Some(bytes) = self.store.get(key).await?
                    && let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes)
                {
                    reasons.push(value["reason"].as_str().unwrap_or("unknown").to_string());
                }
            }
            job.status = JobStatus::Failed;
            job.stopped_at_ms = Some(now_ms());
            job.status_message = Some(format!(
                "{} of {} shards failed (dead-lettered); finished shards are kept. First reasons: {}",
                job.shards_failed,
                job.shards_total,
                reasons.join(" | ")
            ));
            self.save(job).await?;
            return Ok(());
        }
        job.current_step = "merge".into();
        self.merge(job).await
    }

    /// Read the parts among `keys` that were not read yet (parts are create-only, so their
    /// bytes are final), [`PART_READ_CONCURRENCY`] at a time. Best effort: a part that cannot be
    /// read now is read by the merge.
    async fn read_new_parts(&self, id: &str, keys: Vec<String>) {
        let new: Vec<String> = {
            let read = self.read_parts.lock().expect("read parts lock");
            let known = read.get(id);
            keys.into_iter()
                .filter(|k| !known.is_some_and(|parts| parts.contains_key(k)))
                .collect()
        };
        let store = self.store.as_ref();
        let fetches: Vec<_> = new
            .into_iter()
            .map(|key| async move {
                let bytes = store.get(&key).await;
                (key, bytes)
            })
            .collect();
        let fetched: Vec<(String, Result<Option<Bytes>, StoreError>)> =
            futures_util::stream::iter(fetches)
                .buffered(PART_READ_CONCURRENCY)
                .collect()
                .await;
        let mut read = self.read_parts.lock().expect("read parts lock");
        let parts = read.entry(id.to_string()).or_default();
        for (key, bytes) in fetched {
            match bytes {
                Ok(Some(bytes)) => {
                    parts.insert(key, bytes);
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::debug!(%error, key, "reading a part ahead of the merge failed");
                }
            }
        }
    }

    async fn merge(&self, mut job: JobRecord) -> Result<(), ServiceError> {
        let id = job.id.clone();
        // The plan and estimate made when the shards were published; after a restart, again.
        let published = self
            .plans
            .lock()
            .expect("plans lock")
            .get(&id)
            .and_then(|plan| {
                let estimate = plan.estimate.lock().expect("estimate lock").clone()?;
                Some((plan.order.clone(), estimate))
            });
        let (tree, shard_ids, estimate) = match published {
            Some((order, estimate)) => (
                self.generated_tree(&job)
                    .await
                    .map_err(ServiceError::Invalid)?,
                order,
                estimate,
            ),
            None => {
                let prepared = self.prepare(&id).await.map_err(ServiceError::Invalid)?;
                let estimate = estimate_shards(
                    &job.spec,
                    prepared.lookups.as_ref().map(|l| &l.lookups),
                    &prepared.shards,
                );
                let order = prepared.shards.iter().map(|s| s.shard_id.clone()).collect();
                (prepared.tree, order, estimate)
            }
        };
        let threshold = job.spec.near_duplicate_threshold;
        let version = job.generated_version.max(1);
        // A regeneration keeps the human-edited items of the shards it replaced.
        let carried = if version > 1 {
            self.carried_items(&job, &shard_ids).await?
        } else {
            Vec::new()
        };
        let read_parts = self
            .read_parts
            .lock()
            .expect("read parts lock")
            .remove(&id)
            .unwrap_or_default();
        let input = MergeInput {
            version,
            carried,
            read_parts,
        };
        let merged = match merge_job(self.store.as_ref(), &id, &shard_ids, threshold, input).await {
            Ok(merged) => merged,
            Err(error) => {
                self.fail(&id, format!("merging the parts failed: {error}"))
                    .await;
                return Ok(());
            }
        };
        let mut report = report::build(ReportInput {
            job_id: &id,
            status: "completed",
            tree: &tree,
            spec: &job.spec,
            shard_reports: &merged.shard_reports,
            records: &merged.records,
            merge_duplicates: merged.duplicates,
            shards_total: shard_ids.len() as u64,
            shards_reused: job.shards_reused,
            failed_shards: Vec::<FailedShard>::new(),
            wall_time_ms: now_ms().saturating_sub(job.created_at_ms),
        });
        report.estimate = Some(estimate);
        let report_json = serde_json::to_vec_pretty(&report).expect("report serializes");
        self.store
            .put(&report_key(&id), Bytes::from(report_json))
            .await?;
        let file = FileRecord {
            id: format!("file-{}", id.trim_start_matches("al-")),
            filename: format!("{id}-dataset.parquet"),
            purpose: PURPOSE_FINE_TUNE.into(),
            file_type: "parquet".into(),
            bytes: merged.dataset.len() as u64,
            created_at_ms: now_ms(),
            content_key: dataset_version_key(&id, version),
            origin_job_id: Some(id.clone()),
            tenant: job.tenant.clone(),
        };
        self.put_file_record(&file).await?;
        job.status = JobStatus::Completed;
        job.current_step = "done".into();
        job.completed_at_ms = Some(now_ms());
        job.accepted = report.items.accepted;
        job.rejected = report.items.rejected;
        job.tokens = report.tokens.total();
        job.model = report.model.clone();
        job.llm_server = report.llm_server.clone();
        job.server_errors = report.server_errors.clone();
        job.status_message = Some(format!(
            "{} items; coverage {}/{} sections",
            report.items.accepted, report.coverage.covered, report.coverage.total
        ));
        job.output_file = Some(file);
        if version > 1 {
            // Decisions on items that the regenerated shards produced again follow them.
            self.carry_decisions(&job, &merged.records).await?;
        }
        self.save(job).await?;
        tracing::info!(job_id = %id, items = report.items.accepted, "job completed");
        Ok(())
    }

    /// The stored report of the tenant's finished job.
    pub async fn report(&self, id: &str, tenant: Option<&str>) -> Result<Bytes, ServiceError> {
        self.job(id, tenant)?;
        self.store
            .get(&report_key(id))
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("report of job {id} (not finished)")))
    }

    /// Tick until cancelled.
    pub async fn run_monitor(self: Arc<Self>, every: Duration, cancel: CancellationToken) {
        let mut interval = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = interval.tick() => self.tick().await,
            }
        }
    }

    /// Record a dead-lettered shard on its job, unless the worker already did.
    pub async fn record_dead_letter(&self, body: &[u8], reason: &str) -> Result<(), StoreError> {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
            tracing::warn!(
                reason,
                "a dead letter that is not a shard message was discarded"
            );
            return Ok(());
        };
        let (Some(job_id), Some(shard_id)) = (value["job_id"].as_str(), value["shard_id"].as_str())
        else {
            tracing::warn!(
                reason,
                "a dead letter without job or shard id was discarded"
            );
            return Ok(());
        };
        if worker::store::validate_key(&failed_key(job_id, shard_id)).is_err() {
            return Ok(());
        }
        // The broker knows only why it gave up (the delivery limit); the worker recorded why the
        // shard kept failing.
        let last_error = match self.store.get(&retried_key(job_id, shard_id)).await {
            Ok(Some(bytes)) => serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["reason"].as_str().map(|r| format!("; last error: {r}"))),
            _ => None,
        };
        let record = serde_json::json!({
            "shard_id": shard_id,
            "reason": format!("dead-lettered by the broker: {reason}{}", last_error.unwrap_or_default()),
        });
        self.store
            .put_if_absent(
                &failed_key(job_id, shard_id),
                Bytes::from(record.to_string()),
            )
            .await
            .map(|_| ())
    }
}

fn is_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric()))
}
