//! Merging a job's parts into its dataset.
//!
//! Parts are read in plan order (fetched [`PART_FETCH_CONCURRENCY`] at a time, unless the
//! caller read them already: parts are create-only, so bytes read earlier are final), near-identical
//! questions across shards are removed (counted as duplicates), and the dataset and its manifest
//! are written with create-only puts: a merge that runs twice (a restarted coordinator) finds the
//! first result in place.

use std::collections::HashMap;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use proto::dataset::{decode_parquet, encode_parquet};
use proto::hash::digest;
use proto::{DatasetError, Record, ShardReport};
use serde::{Deserialize, Serialize};
use worker::dedup::NearDuplicates;
use worker::process::{SHARD_REPORT_KEY, part_key};
use worker::store::{ObjectStore, StoreError};

/// Parts fetched from the store at once during a merge: one request's latency is paid per
/// batch, not per part, while at most this many parts are held before they are decoded.
const PART_FETCH_CONCURRENCY: usize = 16;

pub fn dataset_key(job_id: &str) -> String {
    dataset_version_key(job_id, 1)
}

pub fn manifest_key(job_id: &str) -> String {
    manifest_version_key(job_id, 1)
}

/// The dataset of the job's tree `version` (1: the first generation; later: regenerations after
/// section edits in review).
pub fn dataset_version_key(job_id: &str, version: u32) -> String {
    if version <= 1 {
        format!("jobs/{job_id}/dataset.parquet")
    } else {
        format!("jobs/{job_id}/dataset.v{version}.parquet")
    }
}

pub fn manifest_version_key(job_id: &str, version: u32) -> String {
    if version <= 1 {
        format!("jobs/{job_id}/manifest.json")
    } else {
        format!("jobs/{job_id}/manifest.v{version}.json")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartEntry {
    pub shard_id: String,
    pub key: String,
    pub rows: u64,
    pub bytes: u64,
    /// BLAKE3 digest of the part's bytes.
    pub checksum: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub job_id: String,
    pub dataset_key: String,
    pub rows: u64,
    pub dataset_checksum: String,
    pub parts: Vec<PartEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("part of shard {0} is missing")]
    MissingPart(String),
    #[error("part {key} is unreadable: {source}")]
    BadPart {
        key: String,
        #[source]
        source: DatasetError,
    },
    #[error("part {0} carries no shard report")]
    MissingReport(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("encoding the dataset failed: {0}")]
    Encode(#[from] DatasetError),
}

pub struct Merged {
    pub records: Vec<Record>,
    pub shard_reports: Vec<ShardReport>,
    /// Items dropped because an earlier shard had a near-duplicate question.
    pub duplicates: u64,
    pub manifest: Manifest,
    /// The dataset file's bytes, as stored.
    pub dataset: Bytes,
}

/// What a merge writes: the tree version it is for, and items kept from earlier versions.
#[derive(Debug, Clone, Default)]
pub struct MergeInput {
    /// The tree version merged (1 for a first generation).
    pub version: u32,
    /// Items of an earlier version kept whatever the parts hold (human-edited items of shards
    /// that were regenerated): they come first, so a regenerated near duplicate of one is dropped.
    pub carried: Vec<Record>,
    /// Parts already read, by part key; the others are fetched.
    pub read_parts: HashMap<String, Bytes>,
}

/// One shard's part, read and decoded.
struct ReadPart {
    entry: PartEntry,
    report: ShardReport,
    records: Vec<Record>,
}

/// Fetch (unless `already` holds its bytes) and decode the part of `shard_id`; decoding overlaps
/// the other fetches in flight.
async fn read_part(
    store: &dyn ObjectStore,
    job_id: &str,
    shard_id: &str,
    already: Option<Bytes>,
) -> Result<ReadPart, MergeError> {
    let key = part_key(job_id, shard_id);
    let bytes = match already {
        Some(bytes) => bytes,
        None => store
            .get(&key)
            .await?
            .ok_or_else(|| MergeError::MissingPart(shard_id.to_string()))?,
    };
    let (records, metadata) =
        decode_parquet(bytes.clone()).map_err(|source| MergeError::BadPart {
            key: key.clone(),
            source,
        })?;
    let report: ShardReport = metadata
        .get(SHARD_REPORT_KEY)
        .and_then(|json| serde_json::from_str(json).ok())
        .ok_or_else(|| MergeError::MissingReport(key.clone()))?;
    let entry = PartEntry {
        shard_id: shard_id.to_string(),
        key,
        rows: records.len() as u64,
        bytes: bytes.len() as u64,
        checksum: digest(&[&bytes], 64),
    };
    Ok(ReadPart {
        entry,
        report,
        records,
    })
}

/// Read every part of the job (in the order given), drop near duplicates across shards (word-set
/// similarity from `near_duplicate_threshold`, the first kept), write the dataset and the
/// manifest of `input.version`.
pub async fn merge_job(
    store: &dyn ObjectStore,
    job_id: &str,
    shard_ids: &[String],
    near_duplicate_threshold: f64,
    mut input: MergeInput,
) -> Result<Merged, MergeError> {
    let mut records = Vec::new();
    let mut shard_reports = Vec::with_capacity(shard_ids.len());
    let mut parts = Vec::with_capacity(shard_ids.len());
    let mut seen = NearDuplicates::new(near_duplicate_threshold);
    let mut duplicates = 0;
    for record in &input.carried {
        seen.admit(&record.question, &record.answer);
    }
    // The futures are collected first (they do nothing until the stream polls them): mapping
    // lazily inside the stream trips rustc's `Send` inference for the spawned merge
    // (higher-ranked lifetimes of the borrowed ids).
    let reads: Vec<_> = shard_ids
        .iter()
        .map(|shard_id| {
            let already = input.read_parts.remove(&part_key(job_id, shard_id));
            read_part(store, job_id, shard_id, already)
        })
        .collect();
    let mut read = futures_util::stream::iter(reads).buffered(PART_FETCH_CONCURRENCY);
    while let Some(part) = read.try_next().await? {
        parts.push(part.entry);
        shard_reports.push(part.report);
        for record in part.records {
            if seen.admit(&record.question, &record.answer) {
                records.push(record);
            } else {
                duplicates += 1;
            }
        }
    }

    records.extend(input.carried);
    let dataset_key = dataset_version_key(job_id, input.version.max(1));
    let encoded = Bytes::from(encode_parquet(&records, &[])?);
    store.put_if_absent(&dataset_key, encoded).await?;
    // Whoever wrote first, the stored file is the dataset.
    let dataset = store
        .get(&dataset_key)
        .await?
        .ok_or_else(|| MergeError::MissingPart(dataset_key.clone()))?;
    let manifest = Manifest {
        job_id: job_id.to_string(),
        dataset_key: dataset_key.clone(),
        rows: records.len() as u64,
        dataset_checksum: digest(&[&dataset], 64),
        parts,
    };
    let manifest_json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
    store
        .put_if_absent(
            &manifest_version_key(job_id, input.version.max(1)),
            Bytes::from(manifest_json),
        )
        .await?;
    Ok(Merged {
        records,
        shard_reports,
        duplicates,
        manifest,
        dataset,
    })
}

#[cfg(test)]
mod tests {
    use worker::store::LocalStore;

    use super::*;

    /// A part without rows whose report counts `accepted` items.
    fn part(accepted: u64) -> Bytes {
        let report = ShardReport {
            accepted,
            ..ShardReport::default()
        };
        let json = serde_json::to_string(&report).expect("report serializes");
        Bytes::from(encode_parquet(&[], &[(SHARD_REPORT_KEY, json)]).expect("part encodes"))
    }

    #[tokio::test]
    async fn parts_read_ahead_are_used_and_the_others_fetched_in_plan_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = LocalStore::new(dir.path());
        let ids = vec!["sh-a".to_string(), "sh-b".to_string()];
        store
            .put(&part_key("al-1", "sh-b"), part(2))
            .await
            .expect("part stored");

        let missing = merge_job(&store, "al-1", &ids, 0.9, MergeInput::default()).await;
        assert!(
            matches!(&missing, Err(MergeError::MissingPart(id)) if id == "sh-a"),
            "{:?}",
            missing.err()
        );

        let input = MergeInput {
            read_parts: HashMap::from([(part_key("al-1", "sh-a"), part(1))]),
            ..MergeInput::default()
        };
        let merged = merge_job(&store, "al-1", &ids, 0.9, input)
            .await
            .expect("merged");
        let accepted: Vec<u64> = merged.shard_reports.iter().map(|r| r.accepted).collect();
        assert_eq!(accepted, [1, 2]);
        let keys: Vec<&str> = merged
            .manifest
            .parts
            .iter()
            .map(|p| p.key.as_str())
            .collect();
        assert_eq!(
            keys,
            [part_key("al-1", "sh-a"), part_key("al-1", "sh-b")],
            "parts in plan order"
        );
    }
}
