//! The shard queue on RabbitMQ (lapin 4): a confirming publisher, a self-healing consumer and a
//! few operator helpers.
//!
//! Topology, declared idempotently by every side with the same arguments (declaring an existing
//! queue with different arguments is a channel error, `PRECONDITION_FAILED`):
//!
//! - exchange `<queue>.x`, direct, durable, bound to `<queue>` with routing key [`ROUTING_KEY`];
//! - queue `<queue>`: quorum (`x-queue-type`), `x-delivery-limit`, `x-dead-letter-exchange`;
//! - exchange `<queue>.dlx`, fanout, durable, bound to the durable classic queue `<queue>.dlq`.
//!
//! These are queue arguments rather than policies so that the queue works without an operator
//! step (RabbitMQ's docs prefer policies, which can change without redeclaring; a queue argument
//! takes precedence over a policy for the same key). The dead-letter queue is classic so that
//! inspecting it (get, then requeue) never runs into a quorum queue's delivery limit, which on
//! RabbitMQ 4 defaults to 20 and would drop dead letters.
//!
//! Reconnection is manual, not lapin's auto-recovery: every connect is bounded by
//! `connect_timeout`; a consumer whose connection, channel or subscription ends reports one error
//! and reconnects with backoff on the next call; a publisher reconnects on the next publish.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    Acker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use proto::ShardMessage;
use tokio_util::sync::CancellationToken;

use crate::queue::{Delivery, Disposition, QueueError, Settle, ShardConsumer, ShardPublisher};

/// The default queue name; the exchanges and the dead-letter queue are named after it.
pub const DEFAULT_QUEUE: &str = "principia.shards";
/// The routing key binding the main exchange to the queue.
pub const ROUTING_KEY: &str = "shard";
/// Message header carrying [`ShardMessage::version`].
pub const VERSION_HEADER: &str = "x-principia-version";

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A link that stayed up this long resets the consumer's backoff.
const HEALTHY_LINK: Duration = Duration::from_secs(60);
/// How long a stopping consumer waits for deliveries still buffered in lapin, to release them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// `amqp://user:pass@host:port/vhost` (`%2f` is the default vhost).
    pub url: String,
    /// The work queue's name; see the module docs for the objects named after it.
    pub queue: String,
    /// Unacknowledged deliveries per consumer; keep it close to the worker's concurrency.
    pub prefetch: u16,
    /// `x-delivery-limit`: how many times a message may be returned (requeued, or released by a
    /// dying consumer) before the broker dead-letters it instead.
    pub delivery_limit: u32,
    /// Bound on connecting and declaring the topology.
    pub connect_timeout: Duration,
    /// Bound on waiting for the broker's publisher confirm.
    pub confirm_timeout: Duration,
}

impl AmqpConfig {
    /// Defaults: queue [`DEFAULT_QUEUE`], prefetch 1, delivery limit 5, 10 s to connect, 30 s for
    /// a confirm.
    pub fn new(url: impl Into<String>) -> Self {
        AmqpConfig {
            url: url.into(),
            queue: DEFAULT_QUEUE.to_string(),
            prefetch: 1,
            delivery_limit: 5,
            connect_timeout: Duration::from_secs(10),
            confirm_timeout: Duration::from_secs(30),
        }
    }

    pub fn exchange(&self) -> String {
        format!("{}.x", self.queue)
    }

    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.queue)
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dlq", self.queue)
    }
}

/// The topology's names, checked once to fit AMQP short strings.
#[derive(Debug, Clone)]
struct Topology {
    queue: ShortString,
    exchange: ShortString,
    dlx: ShortString,
    dlq: ShortString,
    delivery_limit: u32,
}

impl Topology {
    fn new(config: &AmqpConfig) -> Result<Self, QueueError> {
        let short = |name: String| {
            ShortString::try_new(name)
                .map_err(|e| QueueError::Connection(format!("invalid queue name: {e}")))
        };
        if config.queue.is_empty() {
            return Err(QueueError::Connection("the queue name is empty".into()));
        }
        Ok(Topology {
            queue: short(config.queue.clone())?,
            exchange: short(config.exchange())?,
            dlx: short(config.dead_letter_exchange())?,
            dlq: short(config.dead_letter_queue())?,
            delivery_limit: config.delivery_limit,
        })
    }

    async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.dlx.clone(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(
                self.dlq.clone(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                self.dlq.clone(),
                self.dlx.clone(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.exchange.clone(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
        let mut arguments = FieldTable::default();
        arguments.insert("x-queue-type".into(), long_string("quorum"));
        arguments.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(i32::try_from(self.delivery_limit).unwrap_or(i32::MAX)),
        );
        arguments.insert(
            "x-dead-letter-exchange".into(),
            long_string(self.dlx.as_str()),
        );
        channel
            .queue_declare(
                self.queue.clone(),
                QueueDeclareOptions::durable(),
                arguments,
            )
            .await?;
        channel
            .queue_bind(
                self.queue.clone(),
                self.exchange.clone(),
                ROUTING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

fn connection_error(what: &str) -> impl FnOnce(lapin::Error) -> QueueError + '_ {
    move |e| QueueError::Connection(format!("{what}: {e}"))
}

/// Run `setup` on a fresh connection and channel, all within `config.connect_timeout`.
async fn open<T>(
    config: &AmqpConfig,
    role: &str,
    setup: impl AsyncFnOnce(&Channel) -> lapin::Result<T>,
) -> Result<(Connection, Channel, T), QueueError> {
    // The name shows in `rabbitmqctl list_connections client_properties` and the management UI.
    let name = format!("principia-{role}:{}", config.queue);
    let properties =
        ConnectionProperties::default().with_connection_name(LongString::from(name.into_bytes()));
    let attempt = async {
        let connection = Connection::connect(&config.url, properties)
            .await
            .map_err(connection_error("connecting to RabbitMQ"))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(connection_error("opening a channel"))?;
        let value = setup(&channel)
            .await
            .map_err(connection_error("setting up the channel"))?;
        Ok((connection, channel, value))
    };
    tokio::time::timeout(config.connect_timeout, attempt)
        .await
        .map_err(|_| {
            QueueError::Connection(format!(
                "connecting to RabbitMQ timed out after {:?}",
                config.connect_timeout
            ))
        })?
}

/// An open connection with its one channel. Unless closed explicitly, the connection closes once
/// it and every clone of the channel are dropped (lapin closes on the last drop).
struct Link {
    connection: Connection,
    channel: Channel,
}

impl Link {
    fn usable(&self) -> bool {
        self.channel.status().connected()
    }
}

/// Publishes shards with publisher confirms; reconnects on the next publish after a failure.
pub struct AmqpPublisher {
    config: AmqpConfig,
    topology: Topology,
    link: tokio::sync::Mutex<Option<Link>>,
}

impl AmqpPublisher {
    /// Connect, declare the topology and enable confirms.
    pub async fn connect(config: AmqpConfig) -> Result<Self, QueueError> {
        let topology = Topology::new(&config)?;
        let publisher = AmqpPublisher {
            config,
            topology,
            link: tokio::sync::Mutex::new(None),
        };
        publisher.channel().await?;
        Ok(publisher)
    }

    /// The current channel, reconnecting first if it is gone.
    async fn channel(&self) -> Result<Channel, QueueError> {
        let mut link = self.link.lock().await;
        if let Some(current) = link.as_ref().filter(|l| l.usable()) {
            return Ok(current.channel.clone());
        }
        if link.take().is_some() {
            tracing::info!(queue = %self.topology.queue, "publisher reconnecting to RabbitMQ");
        }
        let topology = &self.topology;
        let (connection, channel, ()) = open(&self.config, "publisher", async |channel| {
            topology.declare(channel).await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
        })
        .await?;
        *link = Some(Link {
            connection,
            channel: channel.clone(),
        });
        Ok(channel)
    }

    /// Forget the connection so that the next publish opens a new one.
    async fn reset(&self) {
        *self.link.lock().await = None;
    }

    /// Close the connection (the next publish would open a new one).
    pub async fn close(&self) {
        if let Some(link) = self.link.lock().await.take() {
            let _ = tokio::time::timeout(
                self.config.connect_timeout,
                link.connection.close(200, "OK".into()),
            )
            .await;
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[async_trait]
impl ShardPublisher for AmqpPublisher {
    async fn publish(&self, shard: &ShardMessage) -> Result<(), QueueError> {
        let not_confirmed = |reason: String| QueueError::NotConfirmed {
            message_id: shard.shard_id.clone(),
            reason,
        };
        let message_id = ShortString::try_new(shard.shard_id.clone())
            .map_err(|e| not_confirmed(format!("invalid shard id: {e}")))?;
        let mut headers = FieldTable::default();
        headers.insert(
            VERSION_HEADER.into(),
            AMQPValue::LongLongInt(i64::from(shard.version)),
        );
        let properties = BasicProperties::default()
            .with_message_id(message_id)
            .with_timestamp(now_ms() / 1000)
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_headers(headers);
        let body = shard.to_json();
        let channel = self.channel().await?;
        let confirm = channel
            .basic_publish(
                self.topology.exchange.clone(),
                ROUTING_KEY.into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &body,
                properties,
            )
            .await
            .map_err(connection_error("publishing"))?;
        let confirmation = match tokio::time::timeout(self.config.confirm_timeout, confirm).await {
            Ok(Ok(confirmation)) => confirmation,
            Ok(Err(e)) => return Err(not_confirmed(format!("channel failed: {e}"))),
            Err(_) => {
                self.reset().await;
                return Err(not_confirmed(format!(
                    "no confirm within {:?}",
                    self.config.confirm_timeout
                )));
            }
        };
        match confirmation {
            // An unroutable mandatory message is returned *and* acked: check for the return.
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                Err(not_confirmed(format!(
                    "returned by the broker: {} {}",
                    returned.reply_code, returned.reply_text
                )))
            }
            Confirmation::Nack(None) => Err(not_confirmed("nacked by the broker".into())),
            Confirmation::NotRequested => Err(not_confirmed(
                "publisher confirms are not enabled on the channel".into(),
            )),
        }
    }
}

/// A subscription on an open link.
struct Subscription {
    link: Link,
    consumer: lapin::Consumer,
    opened: Instant,
}

/// Consumes shards with manual acknowledgement. A broken connection, channel or subscription
/// (including a cancel by the server) is reported once as `Some(Err(_))`; the next call reconnects
/// with backoff and subscribes again. `None` comes only after [`ShardConsumer::close`] or after
/// the cancellation token fires.
pub struct AmqpConsumer {
    config: AmqpConfig,
    topology: Topology,
    cancel: CancellationToken,
    subscription: Option<Subscription>,
    failures: u32,
    closed: bool,
}

impl AmqpConsumer {
    /// Connect, declare the topology and subscribe. `cancel` stops the consumer like
    /// [`ShardConsumer::close`].
    pub async fn connect(
        config: AmqpConfig,
        cancel: CancellationToken,
    ) -> Result<Self, QueueError> {
        let topology = Topology::new(&config)?;
        let subscription = subscribe(&config, &topology).await?;
        Ok(AmqpConsumer {
            config,
            topology,
            cancel,
            subscription: Some(subscription),
            failures: 0,
            closed: false,
        })
    }

    fn backoff(&self) -> Duration {
        let exponent = self.failures.saturating_sub(1).min(16);
        FIRST_BACKOFF
            .saturating_mul(1_u32 << exponent)
            .min(MAX_BACKOFF)
    }

    fn broken(&mut self, message: String) -> Option<Result<Delivery, QueueError>> {
        let healthy = self
            .subscription
            .take()
            .is_some_and(|s| s.opened.elapsed() > HEALTHY_LINK);
        self.failures = if healthy { 1 } else { self.failures + 1 };
        tracing::warn!(queue = %self.topology.queue, "{message}");
        Some(Err(QueueError::Connection(message)))
    }
}

async fn subscribe(config: &AmqpConfig, topology: &Topology) -> Result<Subscription, QueueError> {
    let (connection, channel, consumer) = open(config, "consumer", async |channel| {
        topology.declare(channel).await?;
        channel
            .basic_qos(config.prefetch, BasicQosOptions { global: false })
            .await?;
        channel
            .basic_consume(
                topology.queue.clone(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
    })
    .await?;
    Ok(Subscription {
        link: Link {
            connection,
            channel,
        },
        consumer,
        opened: Instant::now(),
    })
}

#[async_trait]
impl ShardConsumer for AmqpConsumer {
    async fn next(&mut self) -> Option<Result<Delivery, QueueError>> {
        loop {
            if self.closed {
                return None;
            }
            if self.cancel.is_cancelled() {
                self.close().await;
                return None;
            }
            let Some(subscription) = self.subscription.as_mut() else {
                if self.failures > 0 {
                    let delay = self.backoff();
                    tokio::select! {
                        () = self.cancel.cancelled() => continue,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                let opened = tokio::select! {
                    () = self.cancel.cancelled() => continue,
                    opened = subscribe(&self.config, &self.topology) => opened,
                };
                match opened {
                    Ok(subscription) => {
                        tracing::info!(queue = %self.topology.queue, "consumer subscribed again");
                        self.subscription = Some(subscription);
                        continue;
                    }
                    Err(e) => {
                        self.failures += 1;
                        return Some(Err(e));
                    }
                }
            };
            let item = tokio::select! {
                () = self.cancel.cancelled() => continue,
                item = subscription.consumer.next() => item,
            };
            return match item {
                Some(Ok(delivery)) => {
                    let channel = subscription.link.channel.clone();
                    Some(Ok(to_delivery(delivery, channel)))
                }
                Some(Err(e)) => self.broken(format!(
                    "consumer on {} failed: {e}; reconnecting",
                    self.topology.queue
                )),
                None => self.broken(format!(
                    "the broker ended the subscription on {} (queue deleted, consumer timeout or \
                     node shutdown); subscribing again",
                    self.topology.queue
                )),
            };
        }
    }

    /// Stop taking deliveries: cancel the subscription and release (nack with requeue) deliveries
    /// that lapin buffered but `next` has not handed out. Deliveries already handed out can still
    /// be settled; the connection closes once they are settled or dropped. Later calls to `next`
    /// return `None`.
    async fn close(&mut self) {
        self.closed = true;
        let Some(mut subscription) = self.subscription.take() else {
            return;
        };
        let channel = subscription.link.channel.clone();
        let tag = subscription.consumer.tag();
        let drain = async {
            if channel
                .basic_cancel(tag, BasicCancelOptions::default())
                .await
                .is_err()
            {
                return; // the channel is gone, and with it every unsettled delivery
            }
            // After cancel-ok the stream yields what it buffered, then ends.
            while let Some(Ok(delivery)) = subscription.consumer.next().await {
                let _ = delivery
                    .acker
                    .nack(BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    })
                    .await;
            }
        };
        if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
            tracing::warn!(queue = %self.topology.queue, "timed out releasing buffered deliveries");
        }
    }
}

fn to_delivery(delivery: lapin::message::Delivery, channel: Channel) -> Delivery {
    let properties = &delivery.properties;
    Delivery {
        message_id: properties.message_id().as_ref().map(ToString::to_string),
        published_at_ms: properties.timestamp().map(|s| s.saturating_mul(1000)),
        redelivered: delivery.redelivered,
        body: Bytes::from(delivery.data),
        settler: Box::new(AmqpSettler {
            acker: delivery.acker,
            _channel: channel,
        }),
    }
}

/// Settles one delivery on the channel it came from (kept open until the delivery is settled).
struct AmqpSettler {
    acker: Acker,
    _channel: Channel,
}

#[async_trait]
impl Settle for AmqpSettler {
    async fn settle(&self, disposition: Disposition) -> Result<(), QueueError> {
        let result = match disposition {
            Disposition::Ack => self.acker.ack(Default::default()).await,
            // The broker counts it toward the queue's delivery limit; the reason is logged.
            Disposition::Requeue(_) => {
                self.acker
                    .reject(BasicRejectOptions { requeue: true })
                    .await
            }
            // The broker routes it to the dead-letter exchange; the caller records the reason.
            Disposition::DeadLetter(_) => {
                self.acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await
            }
            Disposition::Release => {
                self.acker
                    .nack(BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    })
                    .await
            }
        };
        match result {
            Ok(true) => Ok(()),
            // lapin answers `false` without sending anything when the acker is spent or poisoned.
            Ok(false) if self.acker.poisoned() => Err(QueueError::Settle(
                "the delivery's channel closed before it was settled; the broker will redeliver it"
                    .into(),
            )),
            Ok(false) => Err(QueueError::Settle("delivery already settled".into())),
            Err(e) => Err(QueueError::Settle(e.to_string())),
        }
    }
}

/// A message in the dead-letter queue.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub message_id: Option<String>,
    /// Why the broker dead-lettered it: `rejected` or `delivery_limit` (from `x-first-death-reason`
    /// or the first `x-death` entry).
    pub reason: Option<String>,
    pub body: Bytes,
}

/// Operator and test helpers: declare or delete the topology, queue depths, dead letters. Each
/// call uses its own channel, so a failed passive declare does not affect the others.
pub struct AmqpAdmin {
    config: AmqpConfig,
    topology: Topology,
    connection: Connection,
}

impl AmqpAdmin {
    /// Connect without declaring anything.
    pub async fn connect(config: AmqpConfig) -> Result<Self, QueueError> {
        let topology = Topology::new(&config)?;
        let (connection, channel, ()) = open(&config, "admin", async |_| Ok(())).await?;
        let _ = channel.close(200, "OK".into()).await;
        Ok(AmqpAdmin {
            config,
            topology,
            connection,
        })
    }

    async fn with_channel<T>(
        &self,
        what: &str,
        op: impl AsyncFnOnce(&Channel) -> lapin::Result<T>,
    ) -> Result<T, QueueError> {
        let attempt = async {
            let channel = self
                .connection
                .create_channel()
                .await
                .map_err(connection_error("opening a channel"))?;
            let value = op(&channel).await.map_err(connection_error(what))?;
            if channel.status().connected() {
                let _ = channel.close(200, "OK".into()).await;
            }
            Ok(value)
        };
        tokio::time::timeout(self.config.connect_timeout, attempt)
            .await
            .map_err(|_| QueueError::Connection(format!("{what}: timed out")))?
    }

    /// Declare the topology (what publishers and consumers do on connect).
    pub async fn declare(&self) -> Result<(), QueueError> {
        self.with_channel("declaring the topology", async |channel| {
            self.topology.declare(channel).await
        })
        .await
    }

    /// Messages ready for delivery in the work queue (not counting unacknowledged ones).
    pub async fn queue_depth(&self) -> Result<u32, QueueError> {
        self.depth(self.topology.queue.clone()).await
    }

    /// Messages in the dead-letter queue.
    pub async fn dead_letter_depth(&self) -> Result<u32, QueueError> {
        self.depth(self.topology.dlq.clone()).await
    }

    async fn depth(&self, queue: ShortString) -> Result<u32, QueueError> {
        self.with_channel("reading the queue depth", async |channel| {
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            let queue = channel
                .queue_declare(queue, passive, FieldTable::default())
                .await?;
            Ok(queue.message_count())
        })
        .await
    }

    /// Read up to `max` dead letters without removing them: they are fetched unacknowledged and
    /// return to the queue when the channel closes.
    pub async fn peek_dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let queue = self.topology.dlq.clone();
        self.with_channel("reading dead letters", async |channel| {
            let mut letters = Vec::new();
            while letters.len() < max {
                let Some(message) = channel
                    .basic_get(queue.clone(), BasicGetOptions { no_ack: false })
                    .await?
                else {
                    break;
                };
                let delivery = message.delivery;
                letters.push(DeadLetter {
                    message_id: delivery
                        .properties
                        .message_id()
                        .as_ref()
                        .map(ToString::to_string),
                    reason: death_reason(&delivery.properties),
                    body: Bytes::from(delivery.data),
                });
            }
            Ok(letters)
        })
        .await
    }

    /// Take up to `max` dead letters: each is handed to `record` and removed from the queue only
    /// when `record` returns true (it stays, and taking stops, otherwise). Returns how many were
    /// taken.
    pub async fn take_dead_letters<F>(
        &self,
        max: usize,
        record: impl Fn(DeadLetter) -> F + Send + Sync,
    ) -> Result<usize, QueueError>
    where
        F: std::future::Future<Output = bool> + Send + 'static,
    {
        let queue = self.topology.dlq.clone();
        self.with_channel("taking dead letters", async |channel| {
            let mut taken = 0;
            while taken < max {
                let Some(message) = channel
                    .basic_get(queue.clone(), BasicGetOptions { no_ack: false })
                    .await?
                else {
                    break;
                };
                let properties = &message.delivery.properties;
                let letter = DeadLetter {
                    message_id: properties.message_id().as_ref().map(ToString::to_string),
                    reason: death_reason(properties),
                    body: Bytes::from(message.delivery.data.clone()),
                };
                if !record(letter).await {
                    break; // unacknowledged: back to the queue when the channel closes
                }
                message
                    .delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await?;
                taken += 1;
            }
            Ok(taken)
        })
        .await
    }

    /// Delete the queues and exchanges (tests and teardown).
    pub async fn delete_topology(&self) -> Result<(), QueueError> {
        let topology = &self.topology;
        self.with_channel("deleting the topology", async |channel| {
            for queue in [&topology.queue, &topology.dlq] {
                channel
                    .queue_delete(queue.clone(), QueueDeleteOptions::default())
                    .await?;
            }
            for exchange in [&topology.exchange, &topology.dlx] {
                channel
                    .exchange_delete(exchange.clone(), ExchangeDeleteOptions::default())
                    .await?;
            }
            Ok(())
        })
        .await
    }

    pub async fn close(self) {
        let _ = tokio::time::timeout(
            self.config.connect_timeout,
            self.connection.close(200, "OK".into()),
        )
        .await;
    }
}

fn amqp_string(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn death_reason(properties: &BasicProperties) -> Option<String> {
    let headers = properties.headers().as_ref()?.inner();
    if let Some(reason) = headers.get("x-first-death-reason").and_then(amqp_string) {
        return Some(reason);
    }
    let Some(AMQPValue::FieldArray(deaths)) = headers.get("x-death") else {
        return None;
    };
    deaths.as_slice().iter().find_map(|death| match death {
        AMQPValue::FieldTable(table) => table.inner().get("reason").and_then(amqp_string),
        _ => None,
    })
}
