//! The coordinator service: files, jobs, publishing, progress, merge.
//!
//! Every decision is re-derivable from the object store: a job's record, tree and (recomputable)
//! plan are stored before its shards are published; a shard is done when its part exists, failed
//! when its failure record exists; the job completes when the create-only merge has written the
//! dataset. A restarted coordinator reloads the records and carries on; republishing a shard whose
//! part already exists costs a worker one existence check.

use std::collections::{BTreeMap, HashSet};
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
use crate::ingest;
use crate::merge::{dataset_key, merge_job};
use crate::plan::plan_shards;
use crate::report::{self, FailedShard, ReportInput};

/// Shards published at once (publisher confirms outstanding).
const PUBLISH_CONCURRENCY: usize = 32;

/// Why publishing a job's shards stopped early.
enum PublishStop {
    /// The job was cancelled or deleted meanwhile.
    Stopped,
    Failed(String),
}

/// Largest upload accepted.
pub const MAX_UPLOAD_BYTES: usize = 256 * 1024 * 1024;
/// Suffixes accepted for `alignment` files.
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
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct GenerateRequest {
    pub spec: JobSpec,
    pub files: Vec<String>,
}

pub struct Coordinator {
    store: Arc<dyn ObjectStore>,
    publisher: Arc<dyn ShardPublisher>,
    progress: Option<RedisProgress>,
    jobs: Mutex<BTreeMap<String, JobRecord>>,
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// File type from a file name's suffix.
pub fn file_type(filename: &str) -> String {
    Path::new(filename)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// Check a would-be upload's purpose, suffix and size (SeekrFlow's `validate_metadata`).
pub fn validate_upload(purpose: &str, filename: &str, size: usize) -> Vec<String> {
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
    if size == 0 {
        errors.push("the file is empty".into());
    }
    if size > MAX_UPLOAD_BYTES {
        errors.push(format!(
            "the file is {size} bytes; the limit is {MAX_UPLOAD_BYTES}"
        ));
    }
    if filename.is_empty() || filename.len() > 255 || filename.contains(['/', '\\', '\0']) {
        errors.push(format!("file name {filename:?} is not acceptable"));
    }
    errors
}

impl Coordinator {
    /// Load the jobs recorded on the store and resume those that were not finished.
    pub async fn start(
        store: Arc<dyn ObjectStore>,
        publisher: Arc<dyn ShardPublisher>,
        progress: Option<RedisProgress>,
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
            publisher,
            progress,
            jobs: Mutex::new(jobs),
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

    pub async fn upload_file(
        &self,
        filename: &str,
        purpose: &str,
        content: Bytes,
    ) -> Result<FileRecord, ServiceError> {
        let errors = validate_upload(purpose, filename, content.len());
        if !errors.is_empty() {
            return Err(ServiceError::Invalid(errors.join("; ")));
        }
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
        };
        self.store.put(&record.content_key, content).await?;
        self.put_file_record(&record).await?;
        Ok(record)
    }

    async fn put_file_record(&self, record: &FileRecord) -> Result<(), StoreError> {
        let json = serde_json::to_vec(record).expect("file record serializes");
        self.store
            .put(&file_record_key(&record.id), Bytes::from(json))
            .await
    }

    pub async fn file(&self, id: &str) -> Result<FileRecord, ServiceError> {
        if !is_id(id, "file") {
            return Err(ServiceError::NotFound(format!("file {id}")));
        }
        let bytes = self
            .store
            .get(&file_record_key(id))
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("file {id}")))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ServiceError::Invalid(format!("file record {id} is unreadable: {e}")))
    }

    pub async fn file_content(&self, id: &str) -> Result<(FileRecord, Bytes), ServiceError> {
        let record = self.file(id).await?;
        let content = self
            .store
            .get(&record.content_key)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("content of file {id}")))?;
        Ok((record, content))
    }

    pub async fn files(&self, purpose: Option<&str>) -> Result<Vec<FileRecord>, ServiceError> {
        let mut files = Vec::new();
        for key in self.store.list("files/").await? {
            if !key.ends_with(".json") || key.matches('/').count() != 1 {
                continue;
            }
            if let Some(bytes) = self.store.get(&key).await?
                && let Ok(record) = serde_json::from_slice::<FileRecord>(&bytes)
                && purpose.is_none_or(|p| p == record.purpose)
            {
                files.push(record);
            }
        }
        Ok(files)
    }

    pub async fn delete_file(&self, id: &str) -> Result<(), ServiceError> {
        let record = self.file(id).await?;
        if record.origin_job_id.is_none() {
            self.store.delete(&record.content_key).await?;
        }
        self.store.delete(&file_record_key(id)).await?;
        Ok(())
    }

    // ----- jobs -----

    pub async fn create_job(
        self: &Arc<Self>,
        request: GenerateRequest,
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
            let file = self.file(id).await?;
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
            output_file: None,
        };
        self.save(job.clone()).await?;
        let this = self.clone();
        let id = job.id.clone();
        tokio::spawn(async move { this.prepare_and_publish(id).await });
        Ok(job)
    }

    pub fn jobs(&self) -> Vec<JobRecord> {
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

    pub fn job(&self, id: &str) -> Result<JobRecord, ServiceError> {
        self.jobs
            .lock()
            .expect("jobs lock")
            .get(id)
            .cloned()
            .ok_or_else(|| ServiceError::NotFound(format!("alignment job {id}")))
    }

    pub async fn cancel_job(&self, id: &str) -> Result<JobRecord, ServiceError> {
        let mut job = self.job(id)?;
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

    pub async fn delete_job(&self, id: &str) -> Result<(), ServiceError> {
        let job = self.cancel_job(id).await?;
        for key in self.store.list(&format!("jobs/{}/", job.id)).await? {
            self.store.delete(&key).await?;
        }
        if let Some(file) = &job.output_file {
            self.store.delete(&file_record_key(&file.id)).await?;
        }
        self.jobs.lock().expect("jobs lock").remove(id);
        if let Some(progress) = &self.progress {
            let _ = progress.forget(id).await;
        }
        Ok(())
    }

    /// Persist a job record (store first, then memory, then the Redis mirror).
    async fn save(&self, mut job: JobRecord) -> Result<(), StoreError> {
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
        self.job(id).is_ok_and(|j| !j.status.is_terminal())
    }

    async fn fail(&self, id: &str, message: String) {
        tracing::warn!(job_id = %id, %message, "job failed");
        if let Ok(mut job) = self.job(id) {
            job.status = JobStatus::Failed;
            job.stopped_at_ms = Some(now_ms());
            job.status_message = Some(message);
            if let Err(error) = self.save(job).await {
                tracing::error!(%error, job_id = %id, "recording the failure failed");
            }
        }
    }

    /// Ingest the job's files, plan, store the tree, publish the shards whose parts are missing.
    async fn prepare_and_publish(self: Arc<Self>, id: String) {
        let (_, shards) = match self.prepare(&id).await {
            Ok(planned) => planned,
            Err(message) => return self.fail(&id, message).await,
        };
        let Ok(mut job) = self.job(&id) else { return };
        if job.status.is_terminal() {
            return;
        }
        job.status = JobStatus::Queued;
        job.current_step = "publish".into();
        job.shards_total = shards.len() as u64;
        if let Err(error) = self.save(job.clone()).await {
            return self
                .fail(&id, format!("storing the job record: {error}"))
                .await;
        }
        let done: HashSet<String> = match self.store.list(&format!("jobs/{id}/parts/")).await {
            Ok(keys) => keys.into_iter().collect(),
            Err(error) => {
                return self
                    .fail(&id, format!("listing finished parts: {error}"))
                    .await;
            }
        };
        // Publish with many confirms outstanding at once: each publish waits for its broker
        // confirm, and confirms of a quorum queue take milliseconds each.
        let pending: Vec<ShardMessage> = shards
            .into_iter()
            .filter(|s| !done.contains(&part_key(&id, &s.shard_id)))
            .collect();
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
        if let Ok(mut job) = self.job(&id)
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

    /// The job's tree (ingested once, then read back from the store) and its shards.
    async fn prepare(&self, id: &str) -> Result<(PrincipleTree, Vec<ShardMessage>), String> {
        let job = self.job(id).map_err(|e| e.to_string())?;
        let tree_key = job_tree_key(id);
        let tree = match self.store.get(&tree_key).await.map_err(|e| e.to_string())? {
            Some(bytes) => serde_json::from_slice::<PrincipleTree>(&bytes)
                .map_err(|e| format!("stored tree is unreadable: {e}"))?,
            None => {
                let tree = self.ingest(&job).await?;
                let json = serde_json::to_vec(&tree).expect("tree serializes");
                self.store
                    .put(&tree_key, Bytes::from(json))
                    .await
                    .map_err(|e| e.to_string())?;
                tree
            }
        };
        let shards = plan_shards(&tree, id, &job.spec);
        if shards.is_empty() {
            return Err("the documents contain no section with text to generate from".into());
        }
        Ok((tree, shards))
    }

    async fn ingest(&self, job: &JobRecord) -> Result<PrincipleTree, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("creating a work directory: {e}"))?;
        let mut paths = Vec::new();
        for (i, file_id) in job.files.iter().enumerate() {
            let (record, content) = self
                .file_content(file_id)
                .await
                .map_err(|e| e.to_string())?;
            // The stored name is validated at upload; prefix the index so two equal names coexist.
            let path = dir.path().join(format!("{i}-{}", record.filename));
            tokio::fs::write(&path, &content)
                .await
                .map_err(|e| format!("staging {}: {e}", record.filename))?;
            paths.push(path);
        }
        let ingested = tokio::task::spawn_blocking(move || ingest::read_files(&paths, None))
            .await
            .map_err(|e| format!("ingest task: {e}"))?
            .map_err(|e| e.to_string())?;
        for warning in &ingested.warnings {
            tracing::warn!(job_id = %job.id, "{warning}");
        }
        Ok(ingested.tree)
    }

    /// Bring every running job's progress up to date; merge the ones whose shards are all done.
    pub async fn tick(&self) {
        let running: Vec<JobRecord> = self
            .jobs()
            .into_iter()
            .filter(|j| j.status == JobStatus::Running)
            .collect();
        for job in running {
            if let Err(error) = self.refresh(job).await {
                tracing::warn!(%error, "refreshing job progress failed");
            }
        }
    }

    async fn refresh(&self, mut job: JobRecord) -> Result<(), ServiceError> {
        let id = job.id.clone();
        let parts = self.store.list(&format!("jobs/{id}/parts/")).await?.len() as u64;
        let failed_keys = self.store.list(&failed_prefix(&id)).await?;
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

    async fn merge(&self, mut job: JobRecord) -> Result<(), ServiceError> {
        let id = job.id.clone();
        let (tree, shards) = self.prepare(&id).await.map_err(ServiceError::Invalid)?;
        let shard_ids: Vec<String> = shards.iter().map(|s| s.shard_id.clone()).collect();
        let threshold = job.spec.near_duplicate_threshold;
        let merged = match merge_job(self.store.as_ref(), &id, &shard_ids, threshold).await {
            Ok(merged) => merged,
            Err(error) => {
                self.fail(&id, format!("merging the parts failed: {error}"))
                    .await;
                return Ok(());
            }
        };
        let report = report::build(ReportInput {
            job_id: &id,
            status: "completed",
            tree: &tree,
            min_items_per_section: job.spec.min_items_per_section,
            shard_reports: &merged.shard_reports,
            records: &merged.records,
            merge_duplicates: merged.duplicates,
            shards_total: shard_ids.len() as u64,
            shards_reused: 0,
            failed_shards: Vec::<FailedShard>::new(),
            wall_time_ms: now_ms().saturating_sub(job.created_at_ms),
        });
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
            content_key: dataset_key(&id),
            origin_job_id: Some(id.clone()),
        };
        self.put_file_record(&file).await?;
        job.status = JobStatus::Completed;
        job.current_step = "done".into();
        job.completed_at_ms = Some(now_ms());
        job.accepted = report.items.accepted;
        job.rejected = report.items.rejected;
        job.tokens = report.tokens.total();
        job.status_message = Some(format!(
            "{} items; coverage {}/{} sections",
            report.items.accepted, report.coverage.covered, report.coverage.total
        ));
        job.output_file = Some(file);
        self.save(job).await?;
        tracing::info!(job_id = %id, items = report.items.accepted, "job completed");
        Ok(())
    }

    /// The stored report of a finished job.
    pub async fn report(&self, id: &str) -> Result<Bytes, ServiceError> {
        self.job(id)?;
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
        let record = serde_json::json!({ "shard_id": shard_id, "reason": format!("dead-lettered by the broker: {reason}") });
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
