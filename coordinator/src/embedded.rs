//! `principia run`: a whole alignment job in one process.
//!
//! The same pieces as the fleet, with in-process implementations of the same traits: the planner
//! publishes shards to a [`MemoryQueue`], a worker pool ([`worker::pool::run_pool`]) consumes them
//! and writes parts to a [`LocalStore`] rooted at the output directory, then the parts are merged.
//! Finished parts survive an interruption, so running the same command again redoes only the rest.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proto::hash::digest;
use proto::{JobSpec, PrincipleTree, ShardEvent};
use tokio_util::sync::CancellationToken;
use worker::limits::{MemoryTokenBudget, TokenBudget};
use worker::pool::{EventSink, PoolConfig, run_pool};
use worker::process::SHARD_REPORT_KEY;
use worker::process::{Generators, ShardProcessor, part_key};
use worker::queue::{MemoryQueue, ShardPublisher};
use worker::store::{LocalStore, ObjectStore, StoreError};

use crate::estimate::estimate_shards;
use crate::ingest::{self, Format, IngestError};
use crate::lookup::link_lookups;
use crate::merge::{MergeError, MergeInput, merge_job};
use crate::plan::plan_shards;
use crate::progress::Progress;
use crate::report::{self, FailedShard, JobReport, ReportInput};

/// Deliveries of one shard before it is given up on (as the broker's delivery limit).
const DELIVERY_LIMIT: u32 = 5;

pub struct RunOptions {
    pub inputs: Vec<PathBuf>,
    pub format: Option<Format>,
    pub spec: JobSpec,
    pub out_dir: PathBuf,
    pub concurrency: usize,
    pub generators: Generators,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error("the documents contain no section with text to generate from")]
    NothingToDo,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Merge(#[from] MergeError),
    #[error(
        "interrupted: {done} of {total} shards are finished and kept; run the same command again to continue"
    )]
    Interrupted { done: u64, total: u64 },
    #[error("{} shard(s) failed (first: {}); finished shards are kept, see {report}", failed.len(), failed[0].reason)]
    ShardsFailed {
        failed: Vec<FailedShard>,
        report: PathBuf,
    },
}

pub struct RunOutput {
    pub job_id: String,
    pub dataset: PathBuf,
    pub report_path: PathBuf,
    pub report: JobReport,
}

/// Job id of an embedded run: the same request on the same documents gets the same id, which is
/// how a re-run finds its finished shards.
pub fn job_id(spec: &JobSpec, tree: &PrincipleTree) -> String {
    format!(
        "al-{}",
        digest(
            &[spec.fingerprint().as_bytes(), tree.fingerprint().as_bytes()],
            20
        )
    )
}

pub async fn run(options: RunOptions, cancel: CancellationToken) -> Result<RunOutput, RunError> {
    let started = Instant::now();
    let ingested = ingest::read_files(&options.inputs, options.format)?;
    for warning in &ingested.warnings {
        tracing::warn!("{warning}");
    }
    let tree = ingested.tree;
    let spec = options.spec;
    let job_id = job_id(&spec, &tree);
    let store = Arc::new(LocalStore::new(&options.out_dir));
    let mut shards = plan_shards(&tree, &job_id, &spec);
    if shards.is_empty() {
        return Err(RunError::NothingToDo);
    }
    let lookups = link_lookups(&job_id, &tree, &spec, &mut shards);
    if let Some(lookups) = &lookups {
        lookups.store(store.as_ref()).await?;
    }
    let estimate = estimate_shards(&spec, lookups.as_ref().map(|l| &l.lookups), &shards);
    tracing::info!(%job_id, shards = shards.len(), sections = tree.generation_units().len(), calls = estimate.calls, "job planned");
    let tree_json = serde_json::to_vec(&tree).expect("tree serializes");
    store
        .put(&format!("jobs/{job_id}/tree.json"), Bytes::from(tree_json))
        .await?;
    let spec_json = serde_json::to_vec_pretty(&spec).expect("spec serializes");
    store
        .put(&format!("jobs/{job_id}/spec.json"), Bytes::from(spec_json))
        .await?;

    let done: HashSet<String> = store
        .list(&format!("jobs/{job_id}/parts/"))
        .await?
        .into_iter()
        .collect();
    let pending: Vec<_> = shards
        .iter()
        .filter(|s| !done.contains(&part_key(&job_id, &s.shard_id)))
        .collect();
    let reused = (shards.len() - pending.len()) as u64;
    if reused > 0 {
        tracing::info!(reused, "resuming: finished shards are not redone");
    }

    let queue = MemoryQueue::new(DELIVERY_LIMIT);
    for shard in &pending {
        queue
            .publish(shard)
            .await
            .expect("the in-process queue accepts every message");
    }
    let (events, mut received) = tokio::sync::mpsc::unbounded_channel::<ShardEvent>();
    // Tokens spent by earlier runs of the same job are in their parts' reports.
    let budget = Arc::new(MemoryTokenBudget::new());
    if spec.token_budget.is_some() && reused > 0 {
        let spent = spent_by_parts(store.as_ref(), &done).await?;
        budget
            .spend(&job_id, spent, None)
            .await
            .expect("the in-memory budget does not fail");
    }
    let processor = ShardProcessor::new(store.clone(), options.generators, budget);
    let pool_cancel = cancel.child_token();
    let pool = tokio::spawn(run_pool(
        queue.consumer(),
        processor,
        Arc::new(events) as Arc<dyn EventSink>,
        PoolConfig {
            concurrency: options.concurrency,
            grace: Duration::from_secs(30),
        },
        pool_cancel.clone(),
    ));

    let mut progress = Progress::new(shards.len() as u64, reused);
    let mut interrupted = false;
    while queue.outstanding() > 0 {
        tokio::select! {
            _ = cancel.cancelled() => { interrupted = true; break; }
            event = received.recv() => match event {
                Some(event) => progress.observe(&event),
                None => break,
            },
        }
    }
    queue.close();
    if interrupted {
        pool_cancel.cancel();
    }
    pool.await.expect("worker pool task");
    while let Ok(event) = received.try_recv() {
        progress.observe(&event);
    }
    progress.finish();

    let report_path = options.out_dir.join("report.json");
    let dead = queue.dead_letters();
    if interrupted {
        let finished = store.list(&format!("jobs/{job_id}/parts/")).await?.len() as u64;
        return Err(RunError::Interrupted {
            done: finished,
            total: shards.len() as u64,
        });
    }
    if !dead.is_empty() {
        let failed: Vec<FailedShard> = dead
            .into_iter()
            .map(|(shard_id, reason)| FailedShard { shard_id, reason })
            .collect();
        let report = report::build(ReportInput {
            job_id: &job_id,
            status: "failed",
            tree: &tree,
            spec: &spec,
            shard_reports: &[],
            records: &[],
            merge_duplicates: 0,
            shards_total: shards.len() as u64,
            shards_reused: reused,
            failed_shards: failed.clone(),
            wall_time_ms: started.elapsed().as_millis() as u64,
        });
        write_json(&report_path, &report).await?;
        return Err(RunError::ShardsFailed {
            failed,
            report: report_path,
        });
    }

    let shard_ids: Vec<String> = shards.iter().map(|s| s.shard_id.clone()).collect();
    let merged = merge_job(
        store.as_ref(),
        &job_id,
        &shard_ids,
        spec.near_duplicate_threshold,
        MergeInput {
            version: 1,
            ..MergeInput::default()
        },
    )
    .await?;
    let dataset = options.out_dir.join("dataset.parquet");
    write_file(&dataset, merged.dataset.clone()).await?;
    let mut report = report::build(ReportInput {
        job_id: &job_id,
        status: "completed",
        tree: &tree,
        spec: &spec,
        shard_reports: &merged.shard_reports,
        records: &merged.records,
        merge_duplicates: merged.duplicates,
        shards_total: shards.len() as u64,
        shards_reused: reused,
        failed_shards: Vec::new(),
        wall_time_ms: started.elapsed().as_millis() as u64,
    });
    report.estimate = Some(estimate);
    write_json(&report_path, &report).await?;
    Ok(RunOutput {
        job_id,
        dataset,
        report_path,
        report,
    })
}

/// Tokens recorded in the reports of the given parts.
async fn spent_by_parts(store: &dyn ObjectStore, parts: &HashSet<String>) -> Result<u64, RunError> {
    let mut spent = 0;
    for key in parts {
        let Some(bytes) = store.get(key).await? else {
            continue;
        };
        let (_, metadata) =
            proto::dataset::decode_parquet(bytes).map_err(|source| MergeError::BadPart {
                key: key.clone(),
                source,
            })?;
        if let Some(report) = metadata
            .get(SHARD_REPORT_KEY)
            .and_then(|json| serde_json::from_str::<proto::ShardReport>(json).ok())
        {
            spent += report.usage.total();
        }
    }
    Ok(spent)
}

async fn write_file(path: &std::path::Path, bytes: Bytes) -> Result<(), StoreError> {
    tokio::fs::write(path, &bytes)
        .await
        .map_err(|source| StoreError::Io {
            key: path.display().to_string(),
            source,
        })
}

async fn write_json(path: &std::path::Path, report: &JobReport) -> Result<(), StoreError> {
    let json = serde_json::to_vec_pretty(report).expect("report serializes");
    write_file(path, Bytes::from(json)).await
}
