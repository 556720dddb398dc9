//! Progress events a worker emits while it processes shards. Embedded mode feeds them to the
//! progress bar; the fleet turns them into Redis counters. They are informational: the part files
//! on storage, not the events, are the record of what is done.

use serde::{Deserialize, Serialize};

use crate::report::ShardReport;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ShardEvent {
    /// The shard's part was written by this attempt.
    Completed {
        job_id: String,
        report: Box<ShardReport>,
    },
    /// The shard's part already existed (an earlier attempt or another worker wrote it).
    Duplicate { job_id: String, shard_id: String },
    /// The shard's job was cancelled; nothing was generated.
    Cancelled { job_id: String, shard_id: String },
    /// The attempt failed; `requeued` tells whether the shard goes back to the queue.
    Failed {
        job_id: Option<String>,
        shard_id: Option<String>,
        requeued: bool,
        error: String,
    },
}
