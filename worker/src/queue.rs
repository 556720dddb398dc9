//! The shard queue: RabbitMQ in the fleet, an in-process queue in embedded mode.
//!
//! Both give at-least-once delivery with explicit settlement: a delivery is acked after its part is
//! durably written, requeued after a transient failure, dead-lettered after a permanent one. A
//! delivery that is never settled (the process died) comes back.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use proto::ShardMessage;
use tokio::sync::Notify;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue connection: {0}")]
    Connection(String),
    #[error("publish of {message_id} was not confirmed: {reason}")]
    NotConfirmed { message_id: String, reason: String },
    #[error("settling a delivery failed: {0}")]
    Settle(String),
}

/// How a delivery is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Done (or already done): remove it from the queue.
    Ack,
    /// Try again later, possibly elsewhere; counts toward the delivery limit. The reason is the
    /// failure's, kept where the queue records why a message was given up on.
    Requeue(String),
    /// Retrying cannot help: move to the dead-letter queue, with the reason.
    DeadLetter(String),
    /// Not started (shutting down): hand back without counting as a failure.
    Release,
}

#[async_trait]
pub trait ShardPublisher: Send + Sync {
    /// Publish a shard; returns once the broker has durably accepted and routed it.
    async fn publish(&self, shard: &ShardMessage) -> Result<(), QueueError>;
}

/// Settles one delivery.
#[async_trait]
pub trait Settle: Send + Sync {
    async fn settle(&self, disposition: Disposition) -> Result<(), QueueError>;
}

pub struct Delivery {
    pub body: Bytes,
    pub message_id: Option<String>,
    pub redelivered: bool,
    /// When the shard was published, in milliseconds since the epoch, if known.
    pub published_at_ms: Option<u64>,
    pub settler: Box<dyn Settle>,
}

#[async_trait]
pub trait ShardConsumer: Send {
    /// The next delivery; `None` once the consumer has been closed. A stream that ends without a
    /// close is an error for the implementation to report, not a silent `None`.
    async fn next(&mut self) -> Option<Result<Delivery, QueueError>>;

    /// Stop taking deliveries and hand back the ones received but not yet handed out. Deliveries
    /// already handed out can still be settled.
    async fn close(&mut self) {}
}

/// An in-process queue with the same settlement semantics as the broker: a delivery limit after
/// which a requeued message is dead-lettered, and a dead-letter list with reasons.
#[derive(Clone)]
pub struct MemoryQueue {
    inner: Arc<MemoryInner>,
}

struct MemoryInner {
    state: Mutex<MemoryState>,
    notify: Notify,
    delivery_limit: u32,
}

#[derive(Default)]
struct MemoryState {
    ready: VecDeque<(Bytes, String, u32)>,
    unsettled: usize,
    dead: Vec<(String, String)>,
    closed: bool,
}

impl MemoryQueue {
    pub fn new(delivery_limit: u32) -> Self {
        MemoryQueue {
            inner: Arc::new(MemoryInner {
                state: Mutex::new(MemoryState::default()),
                notify: Notify::new(),
                delivery_limit,
            }),
        }
    }

    /// Stop handing out deliveries once the queue is empty; consumers then see `None`.
    pub fn close(&self) {
        self.inner.state.lock().expect("queue lock").closed = true;
        self.inner.notify.notify_waiters();
    }

    /// Messages waiting or held by a consumer.
    pub fn outstanding(&self) -> usize {
        let state = self.inner.state.lock().expect("queue lock");
        state.ready.len() + state.unsettled
    }

    /// Dead-lettered message ids with their reasons.
    pub fn dead_letters(&self) -> Vec<(String, String)> {
        self.inner.state.lock().expect("queue lock").dead.clone()
    }

    pub fn consumer(&self) -> MemoryConsumer {
        MemoryConsumer {
            queue: self.clone(),
        }
    }

    fn push(&self, body: Bytes, id: String, deliveries: u32) {
        self.inner
            .state
            .lock()
            .expect("queue lock")
            .ready
            .push_back((body, id, deliveries));
        self.inner.notify.notify_one();
    }
}

#[async_trait]
impl ShardPublisher for MemoryQueue {
    async fn publish(&self, shard: &ShardMessage) -> Result<(), QueueError> {
        self.push(Bytes::from(shard.to_json()), shard.shard_id.clone(), 0);
        Ok(())
    }
}

pub struct MemoryConsumer {
    queue: MemoryQueue,
}

#[async_trait]
impl ShardConsumer for MemoryConsumer {
    async fn next(&mut self) -> Option<Result<Delivery, QueueError>> {
        loop {
            let notified = self.queue.inner.notify.notified();
            {
                let mut state = self.queue.inner.state.lock().expect("queue lock");
                if let Some((body, id, deliveries)) = state.ready.pop_front() {
                    state.unsettled += 1;
                    return Some(Ok(Delivery {
                        body: body.clone(),
                        message_id: Some(id.clone()),
                        redelivered: deliveries > 0,
                        published_at_ms: None,
                        settler: Box::new(MemorySettler {
                            queue: self.queue.clone(),
                            message: Mutex::new(Some((body, id, deliveries + 1))),
                        }),
                    }));
                }
                if state.closed {
                    return None;
                }
            }
            notified.await;
        }
    }
}

struct MemorySettler {
    queue: MemoryQueue,
    message: Mutex<Option<(Bytes, String, u32)>>,
}

#[async_trait]
impl Settle for MemorySettler {
    async fn settle(&self, disposition: Disposition) -> Result<(), QueueError> {
        let Some((body, id, deliveries)) = self.message.lock().expect("settle lock").take() else {
            return Err(QueueError::Settle("delivery already settled".into()));
        };
        let queue = &self.queue;
        // Like RabbitMQ's `x-delivery-limit`: a message may be returned `limit` times, so it is
        // delivered at most `limit + 1` times.
        let over_limit = deliveries > queue.inner.delivery_limit;
        {
            let mut state = queue.inner.state.lock().expect("queue lock");
            state.unsettled -= 1;
            match &disposition {
                Disposition::Ack => {}
                Disposition::DeadLetter(reason) => state.dead.push((id.clone(), reason.clone())),
                Disposition::Requeue(reason) if over_limit => state.dead.push((
                    id.clone(),
                    format!(
                        "delivery limit of {} reached; last error: {reason}",
                        queue.inner.delivery_limit
                    ),
                )),
                Disposition::Requeue(_) | Disposition::Release => {}
            }
        }
        match disposition {
            Disposition::Requeue(_) if !over_limit => queue.push(body, id, deliveries),
            Disposition::Release => queue.push(body, id, deliveries - 1),
            _ => queue.inner.notify.notify_waiters(),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proto::{JobSpec, ShardSection};

    use super::*;

    fn shard() -> ShardMessage {
        let spec = JobSpec {
            shard_token_budget: 100,
            max_items_per_section: 2,
            ..JobSpec::extractive("test")
        };
        let section = ShardSection {
            node_id: "n".into(),
            citation: "c".into(),
            section_path: vec!["c".into()],
            text: "text".into(),
        };
        ShardMessage::new("al-1".into(), spec, vec![section])
    }

    #[tokio::test]
    async fn requeues_stop_at_the_delivery_limit_like_the_broker() {
        let queue = MemoryQueue::new(2);
        queue.publish(&shard()).await.unwrap();
        let mut consumer = queue.consumer();
        let mut deliveries = 0;
        while queue.outstanding() > 0 {
            let delivery = consumer.next().await.unwrap().unwrap();
            assert_eq!(delivery.redelivered, deliveries > 0);
            deliveries += 1;
            delivery
                .settler
                .settle(Disposition::Requeue("HTTP 503: busy".into()))
                .await
                .unwrap();
        }
        assert_eq!(
            deliveries, 3,
            "limit 2 allows 3 deliveries, as x-delivery-limit does"
        );
        let dead = queue.dead_letters();
        assert_eq!(dead.len(), 1);
        assert!(dead[0].1.contains("delivery limit"));
        assert!(
            dead[0].1.ends_with("last error: HTTP 503: busy"),
            "{}",
            dead[0].1
        );
    }

    #[tokio::test]
    async fn released_deliveries_do_not_count_and_acks_remove() {
        let queue = MemoryQueue::new(1);
        queue.publish(&shard()).await.unwrap();
        let mut consumer = queue.consumer();
        for _ in 0..5 {
            let delivery = consumer.next().await.unwrap().unwrap();
            delivery.settler.settle(Disposition::Release).await.unwrap();
        }
        let delivery = consumer.next().await.unwrap().unwrap();
        delivery.settler.settle(Disposition::Ack).await.unwrap();
        assert!(
            delivery.settler.settle(Disposition::Ack).await.is_err(),
            "settled twice"
        );
        assert_eq!(queue.outstanding(), 0);
        assert!(queue.dead_letters().is_empty());
        queue.close();
        assert!(consumer.next().await.is_none());
    }
}
