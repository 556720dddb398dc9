//! Live job progress in Redis: workers add to per-job counters as shards finish, the coordinator
//! reads them for status. A cache only: the parts and failure records on the object store are the
//! truth, and the coordinator overwrites shard counts from them.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use proto::ShardEvent;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use worker::pool::EventSink;
use worker::process::JobGate;
use worker::store::ObjectStore;

use super::records::{failed_key, retried_key};

/// Counters a worker adds to while a job runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveCounters {
    pub accepted: u64,
    pub rejected: u64,
    pub tokens: u64,
}

#[derive(Clone)]
pub struct RedisProgress {
    connection: ConnectionManager,
    namespace: String,
}

impl RedisProgress {
    pub fn new(connection: ConnectionManager, namespace: impl Into<String>) -> Self {
        RedisProgress {
            connection,
            namespace: namespace.into(),
        }
    }

    fn key(&self, job_id: &str) -> String {
        format!("{}:job:{job_id}", self.namespace)
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut connection = self.connection.clone();
        redis::cmd("PING").query_async(&mut connection).await
    }

    pub async fn counters(&self, job_id: &str) -> redis::RedisResult<LiveCounters> {
        let mut connection = self.connection.clone();
        let (accepted, rejected, tokens): (Option<u64>, Option<u64>, Option<u64>) =
            redis::cmd("HMGET")
                .arg(self.key(job_id))
                .arg("accepted")
                .arg("rejected")
                .arg("tokens")
                .query_async(&mut connection)
                .await?;
        Ok(LiveCounters {
            accepted: accepted.unwrap_or(0),
            rejected: rejected.unwrap_or(0),
            tokens: tokens.unwrap_or(0),
        })
    }

    /// Mirror a job's status for dashboards and other readers.
    pub async fn set_status(
        &self,
        job_id: &str,
        status: &str,
        done: u64,
        total: u64,
    ) -> redis::RedisResult<()> {
        let mut connection = self.connection.clone();
        let _: () = connection
            .hset_multiple(
                self.key(job_id),
                &[
                    ("status", status.to_string()),
                    ("shards_done", done.to_string()),
                    ("shards_total", total.to_string()),
                ],
            )
            .await?;
        Ok(())
    }

    pub async fn forget(&self, job_id: &str) -> redis::RedisResult<()> {
        let mut connection = self.connection.clone();
        let _: () = connection.del(self.key(job_id)).await?;
        Ok(())
    }
}

#[async_trait]
impl JobGate for RedisProgress {
    async fn is_cancelled(&self, job_id: &str) -> bool {
        let mut connection = self.connection.clone();
        let status: redis::RedisResult<Option<String>> =
            connection.hget(self.key(job_id), "status").await;
        match status {
            Ok(status) => status.as_deref() == Some("cancelled"),
            Err(error) => {
                tracing::warn!(%error, %job_id, "reading the job status from Redis failed");
                false
            }
        }
    }
}

/// The fleet worker's event sink: counters to Redis, permanent failures to the object store (so
/// the job can report them even if Redis is flushed).
pub struct FleetEvents {
    pub progress: RedisProgress,
    pub store: Arc<dyn ObjectStore>,
}

#[async_trait]
impl EventSink for FleetEvents {
    async fn emit(&self, event: ShardEvent) {
        match event {
            ShardEvent::Completed { job_id, report } => {
                let mut connection = self.progress.connection.clone();
                let key = self.progress.key(&job_id);
                let result: redis::RedisResult<()> = redis::pipe()
                    .hincr(&key, "accepted", report.accepted)
                    .hincr(&key, "rejected", report.rejected_total())
                    .hincr(&key, "tokens", report.usage.total())
                    .query_async(&mut connection)
                    .await;
                if let Err(error) = result {
                    tracing::warn!(%error, %job_id, "updating live progress in Redis failed");
                }
            }
            // A final failure is recorded once (the first reason stands); a requeued one
            // overwrites the shard's last error, which a dead letter reports.
            ShardEvent::Failed {
                job_id: Some(job_id),
                shard_id: Some(shard_id),
                requeued,
                error,
            } => {
                let record = Bytes::from(
                    serde_json::json!({ "shard_id": shard_id, "reason": error }).to_string(),
                );
                let result = if requeued {
                    self.store
                        .put(&retried_key(&job_id, &shard_id), record)
                        .await
                } else {
                    self.store
                        .put_if_absent(&failed_key(&job_id, &shard_id), record)
                        .await
                        .map(|_| ())
                };
                if let Err(store_error) = result {
                    tracing::warn!(%store_error, %job_id, %shard_id, requeued, "recording the shard failure failed");
                }
            }
            ShardEvent::Failed { .. }
            | ShardEvent::Duplicate { .. }
            | ShardEvent::Cancelled { .. } => {}
        }
    }
}
