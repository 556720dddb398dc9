//! The worker loop: take deliveries up to the configured concurrency, process each shard, settle
//! it according to the outcome, report progress. On cancellation it stops taking deliveries and
//! lets the shards it holds finish within a grace period.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use proto::ShardEvent;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info_span, warn};

use crate::metrics;
use crate::process::{ShardOutcome, ShardProcessor};
use crate::queue::{Delivery, Disposition, ShardConsumer};

/// Receives progress events. Must not block.
#[async_trait]
pub trait EventSink: Send + Sync {
    async fn emit(&self, event: ShardEvent);
}

#[async_trait]
impl EventSink for tokio::sync::mpsc::UnboundedSender<ShardEvent> {
    async fn emit(&self, event: ShardEvent) {
        // The receiver going away (the progress display ended) is not the worker's concern.
        let _ = self.send(event);
    }
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Shards processed at once (and, for RabbitMQ, the prefetch count).
    pub concurrency: usize,
    /// How long in-flight shards may take to finish after cancellation.
    pub grace: Duration,
}

/// Run until `cancel` fires or the consumer closes. Returns when in-flight work is finished or the
/// grace period is over (unfinished deliveries are then returned to the queue by the broker).
pub async fn run_pool(
    mut consumer: impl ShardConsumer,
    processor: ShardProcessor,
    events: Arc<dyn EventSink>,
    config: PoolConfig,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let tracker = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            permit = slots.clone().acquire_owned() => permit.expect("semaphore is never closed"),
        };
        let delivery = tokio::select! {
            _ = cancel.cancelled() => break,
            delivery = consumer.next() => delivery,
        };
        match delivery {
            None => break,
            Some(Err(error)) => {
                warn!(%error, "receiving a delivery failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Some(Ok(delivery)) => {
                let processor = processor.clone();
                let events = events.clone();
                tracker.spawn(async move {
                    handle(delivery, &processor, events.as_ref()).await;
                    drop(permit);
                });
            }
        }
    }
    consumer.close().await;
    tracker.close();
    if tokio::time::timeout(config.grace, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            grace_secs = config.grace.as_secs(),
            "shards still running after the grace period; leaving them to be redelivered"
        );
    }
}

async fn handle(delivery: Delivery, processor: &ShardProcessor, events: &dyn EventSink) {
    let message_id = delivery.message_id.clone().unwrap_or_default();
    // The job id is read before decoding so that every event of the shard, a failed decode's
    // included, carries it.
    let job_id = serde_json::from_slice::<serde_json::Value>(&delivery.body)
        .ok()
        .and_then(|v| v.get("job_id")?.as_str().map(String::from));
    let span = info_span!(
        "shard",
        job_id = job_id.as_deref().unwrap_or(""),
        shard_id = %message_id,
        redelivered = delivery.redelivered
    );
    metrics::DELIVERIES
        .with_label_values(&[if delivery.redelivered {
            "true"
        } else {
            "false"
        }])
        .inc();
    if let Some(published) = delivery.published_at_ms {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(published);
        metrics::QUEUE_WAIT.observe(now.saturating_sub(published) as f64 / 1000.0);
    }
    let started = std::time::Instant::now();
    metrics::SHARDS_IN_PROGRESS.inc();
    async {
        let (disposition, event) = match processor.process_bytes(&delivery.body).await {
            Ok((shard, ShardOutcome::Written(report))) => {
                tracing::info!(accepted = report.accepted, "part written");
                (
                    Disposition::Ack,
                    ShardEvent::Completed {
                        job_id: shard.job_id,
                        report,
                    },
                )
            }
            Ok((shard, ShardOutcome::Duplicate)) => {
                tracing::info!("part already written; acknowledging duplicate");
                (
                    Disposition::Ack,
                    ShardEvent::Duplicate {
                        job_id: shard.job_id,
                        shard_id: shard.shard_id,
                    },
                )
            }
            Ok((shard, ShardOutcome::Cancelled)) => {
                tracing::info!("job cancelled; dropping its shard");
                (
                    Disposition::Ack,
                    ShardEvent::Cancelled {
                        job_id: shard.job_id,
                        shard_id: shard.shard_id,
                    },
                )
            }
            Err(error) => {
                let disposition = error.disposition();
                warn!(%error, ?disposition, "shard failed");
                (
                    disposition.clone(),
                    ShardEvent::Failed {
                        job_id,
                        shard_id: delivery.message_id.clone(),
                        requeued: matches!(disposition, Disposition::Requeue(_)),
                        error: error.to_string(),
                    },
                )
            }
        };
        let outcome = match (&disposition, &event) {
            (Disposition::Ack, ShardEvent::Duplicate { .. }) => "duplicate",
            (Disposition::Ack, ShardEvent::Cancelled { .. }) => "cancelled",
            (Disposition::Ack, _) => "success",
            (Disposition::Requeue(_), _) => "retry",
            (Disposition::DeadLetter(_), _) => "dead_letter",
            (Disposition::Release, _) => "released",
        };
        if let ShardEvent::Completed { report, .. } = &event {
            metrics::ITEMS
                .with_label_values(&["accepted", ""])
                .inc_by(report.accepted);
            for (reason, n) in &report.rejected {
                metrics::ITEMS
                    .with_label_values(&["rejected", reason.as_str()])
                    .inc_by(*n);
            }
        }
        if let Err(error) = delivery.settler.settle(disposition).await {
            warn!(%error, "settling the delivery failed; the broker will redeliver it");
        }
        metrics::SHARDS.with_label_values(&[outcome]).inc();
        metrics::SHARD_DURATION
            .with_label_values(&[outcome])
            .observe(started.elapsed().as_secs_f64());
        metrics::SHARDS_IN_PROGRESS.dec();
        events.emit(event).await;
    }
    .instrument(span)
    .await
}
