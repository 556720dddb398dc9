//! The RabbitMQ queue against the local broker: settlement, dead-lettering, the delivery limit,
//! unroutable publishes and recovery after the broker drops the consumer.

use std::time::{Duration, Instant};

use lapin::options::QueueDeleteOptions;
use lapin::types::FieldTable;
use proto::{JobSpec, ShardMessage, ShardSection};
use tokio_util::sync::CancellationToken;
use worker::amqp::{AmqpAdmin, AmqpConfig, AmqpConsumer, AmqpPublisher, ROUTING_KEY};
use worker::queue::{Delivery, Disposition, QueueError, ShardConsumer, ShardPublisher};

const STEP: Duration = Duration::from_secs(10);

fn config(delivery_limit: u32) -> AmqpConfig {
    let mut config = AmqpConfig::new(tests::moto::rabbitmq_url());
    config.queue = tests::moto::unique_name("principia-test");
    config.delivery_limit = delivery_limit;
    config.connect_timeout = Duration::from_secs(5);
    config.confirm_timeout = Duration::from_secs(5);
    config
}

fn shard(text: &str) -> ShardMessage {
    let spec = JobSpec {
        shard_token_budget: 1000,
        max_items_per_section: 2,
        ..JobSpec::extractive("test")
    };
    let section = ShardSection {
        node_id: "n-1".into(),
        citation: "§1".into(),
        section_path: vec!["Root".into()],
        text: text.into(),
    };
    ShardMessage::new("al-test".into(), spec, vec![section])
}

/// The next delivery, which must come within [`STEP`] and without an error.
async fn next(consumer: &mut AmqpConsumer) -> Delivery {
    tokio::time::timeout(STEP, consumer.next())
        .await
        .expect("a delivery within the step timeout")
        .expect("the consumer is open")
        .expect("a delivery, not an error")
}

/// Whatever `next` yields within `wait`: `None` when nothing came.
async fn poll(
    consumer: &mut AmqpConsumer,
    wait: Duration,
) -> Option<Option<Result<Delivery, QueueError>>> {
    tokio::time::timeout(wait, consumer.next()).await.ok()
}

/// Poll `probe` until it returns `want` or [`STEP`] passes; returns the last value.
async fn eventually(want: u32, mut probe: impl AsyncFnMut() -> u32) -> u32 {
    let deadline = Instant::now() + STEP;
    loop {
        let value = probe().await;
        if value == want || Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Setup {
    config: AmqpConfig,
    admin: AmqpAdmin,
    publisher: AmqpPublisher,
    consumer: AmqpConsumer,
    cancel: CancellationToken,
}

async fn setup(delivery_limit: u32) -> Setup {
    let config = config(delivery_limit);
    let publisher = AmqpPublisher::connect(config.clone()).await.unwrap();
    let cancel = CancellationToken::new();
    let consumer = AmqpConsumer::connect(config.clone(), cancel.clone())
        .await
        .unwrap();
    let admin = AmqpAdmin::connect(config.clone()).await.unwrap();
    Setup {
        config,
        admin,
        publisher,
        consumer,
        cancel,
    }
}

impl Setup {
    async fn teardown(mut self) {
        self.consumer.close().await;
        self.publisher.close().await;
        self.admin.delete_topology().await.unwrap();
        self.admin.close().await;
    }
}

#[tokio::test]
async fn published_shard_is_delivered_and_ack_removes_it() {
    let mut s = setup(5).await;
    let message = shard("acked");
    s.publisher.publish(&message).await.unwrap();

    let delivery = next(&mut s.consumer).await;
    assert_eq!(
        delivery.message_id.as_deref(),
        Some(message.shard_id.as_str())
    );
    assert!(!delivery.redelivered);
    assert_eq!(ShardMessage::from_json(&delivery.body).unwrap(), message);
    let published = delivery.published_at_ms.expect("a timestamp");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(now.abs_diff(published) < 60_000, "{published} vs {now}");
    delivery.settler.settle(Disposition::Ack).await.unwrap();
    // Settling twice is refused, not sent to the broker (which would close the channel).
    assert!(matches!(
        delivery.settler.settle(Disposition::Ack).await,
        Err(QueueError::Settle(_))
    ));

    // Cancelling ends the stream.
    s.cancel.cancel();
    assert!(matches!(poll(&mut s.consumer, STEP).await, Some(None)));
    // A fresh consumer gets nothing: an unacked message would have come back when the first
    // consumer's connection closed (on dropping it and its last delivery).
    let fresh = AmqpConsumer::connect(s.config.clone(), CancellationToken::new())
        .await
        .unwrap();
    drop(std::mem::replace(&mut s.consumer, fresh));
    drop(delivery);
    assert!(
        poll(&mut s.consumer, Duration::from_millis(500))
            .await
            .is_none()
    );
    assert_eq!(s.admin.queue_depth().await.unwrap(), 0);
    assert_eq!(s.admin.dead_letter_depth().await.unwrap(), 0);
    s.teardown().await;
}

#[tokio::test]
async fn requeued_delivery_comes_back_flagged_redelivered() {
    let mut s = setup(5).await;
    let message = shard("requeued");
    s.publisher.publish(&message).await.unwrap();

    let first = next(&mut s.consumer).await;
    assert!(!first.redelivered);
    first
        .settler
        .settle(Disposition::Requeue("retry".into()))
        .await
        .unwrap();
    let second = next(&mut s.consumer).await;
    assert!(second.redelivered);
    assert_eq!(second.message_id, first.message_id);
    // Release hands it back as well.
    second.settler.settle(Disposition::Release).await.unwrap();
    let third = next(&mut s.consumer).await;
    assert!(third.redelivered);
    third.settler.settle(Disposition::Ack).await.unwrap();
    assert_eq!(s.admin.dead_letter_depth().await.unwrap(), 0);
    s.teardown().await;
}

#[tokio::test]
async fn dead_lettered_delivery_lands_in_the_dead_letter_queue() {
    let mut s = setup(5).await;
    let message = shard("poison");
    s.publisher.publish(&message).await.unwrap();

    let delivery = next(&mut s.consumer).await;
    delivery
        .settler
        .settle(Disposition::DeadLetter("cannot parse".into()))
        .await
        .unwrap();
    let admin = &s.admin;
    assert_eq!(
        eventually(1, async || admin.dead_letter_depth().await.unwrap()).await,
        1
    );
    assert_eq!(s.admin.queue_depth().await.unwrap(), 0);
    let letters = s.admin.peek_dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].message_id.as_deref(),
        Some(message.shard_id.as_str())
    );
    assert_eq!(letters[0].reason.as_deref(), Some("rejected"));
    assert_eq!(ShardMessage::from_json(&letters[0].body).unwrap(), message);
    // Peeking leaves it there.
    assert_eq!(
        eventually(1, async || admin.dead_letter_depth().await.unwrap()).await,
        1
    );
    assert!(
        poll(&mut s.consumer, Duration::from_millis(300))
            .await
            .is_none()
    );
    s.teardown().await;
}

#[tokio::test]
async fn delivery_limit_dead_letters_a_message_requeued_too_often() {
    let limit = 2;
    let mut s = setup(limit).await;
    let message = shard("flaky");
    s.publisher.publish(&message).await.unwrap();

    let mut deliveries = 0;
    while let Some(Some(Ok(delivery))) = poll(&mut s.consumer, Duration::from_secs(1)).await {
        deliveries += 1;
        assert!(deliveries <= 10, "the delivery limit never took effect");
        delivery
            .settler
            .settle(Disposition::Requeue("retry".into()))
            .await
            .unwrap();
    }
    // The broker returns a message `limit` times, then dead-letters it on the next return.
    assert_eq!(deliveries, limit + 1);
    let admin = &s.admin;
    assert_eq!(
        eventually(1, async || admin.dead_letter_depth().await.unwrap()).await,
        1
    );
    let letters = s.admin.peek_dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].message_id.as_deref(),
        Some(message.shard_id.as_str())
    );
    assert_eq!(letters[0].reason.as_deref(), Some("delivery_limit"));
    s.teardown().await;
}

#[tokio::test]
async fn unroutable_publish_is_an_error() {
    let s = setup(5).await;
    s.publisher.publish(&shard("routed")).await.unwrap();

    // Remove the only binding of the exchange: the broker acks the publish but returns it.
    let connection = lapin::Connection::connect(&s.config.url, Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_unbind(
            s.config.queue.as_str().into(),
            s.config.exchange().into(),
            ROUTING_KEY.into(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let message = shard("unroutable");
    match s.publisher.publish(&message).await {
        Err(QueueError::NotConfirmed { message_id, reason }) => {
            assert_eq!(message_id, message.shard_id);
            assert!(reason.contains("312"), "{reason}");
        }
        other => panic!("expected NotConfirmed, got {other:?}"),
    }
    // The publisher's channel survives a returned message.
    assert!(matches!(
        s.publisher.publish(&message).await,
        Err(QueueError::NotConfirmed { .. })
    ));
    let _ = connection.close(200, "OK".into()).await;
    s.teardown().await;
}

/// The pid of the broker connection whose client-provided name contains `name`.
fn connection_pid(name: &str) -> Option<String> {
    let output = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "-q",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl runs (RabbitMQ's CLI must be installed)");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find(|line| line.contains(name))
        .and_then(|line| line.split_whitespace().next())
        .map(str::to_string)
}

#[tokio::test]
async fn consumer_recovers_when_the_broker_closes_its_connection() {
    let mut s = setup(5).await;
    s.publisher.publish(&shard("before")).await.unwrap();
    let held = next(&mut s.consumer).await;

    let name = format!("principia-consumer:{}", s.config.queue);
    let pid = connection_pid(&name).expect("the consumer's connection is listed");
    let status = std::process::Command::new("rabbitmqctl")
        .args(["close_connection", &pid, "closed by a test"])
        .output()
        .unwrap()
        .status;
    assert!(status.success());

    // The break is reported once, then the consumer reconnects by itself.
    let mut errors = 0;
    let redelivered = loop {
        match poll(&mut s.consumer, STEP).await {
            Some(Some(Ok(delivery))) => break delivery,
            Some(Some(Err(QueueError::Connection(_)))) => errors += 1,
            other => panic!("unexpected {:?}", other.map(|o| o.map(|r| r.err()))),
        }
        assert!(errors <= 3, "the consumer did not reconnect");
    };
    assert!(errors >= 1, "the broken connection was not reported");
    // The delivery held across the break came back; settling the old one is an error.
    assert!(redelivered.redelivered);
    assert_eq!(redelivered.message_id, held.message_id);
    assert!(matches!(
        held.settler.settle(Disposition::Ack).await,
        Err(QueueError::Settle(_))
    ));
    redelivered.settler.settle(Disposition::Ack).await.unwrap();

    s.publisher.publish(&shard("after")).await.unwrap();
    let after = next(&mut s.consumer).await;
    assert_eq!(after.message_id, Some(shard("after").shard_id));
    after.settler.settle(Disposition::Ack).await.unwrap();
    s.teardown().await;
}

#[tokio::test]
async fn consumer_subscribes_again_when_the_server_cancels_it() {
    let mut s = setup(5).await;
    // Deleting the queue makes the broker cancel the subscription.
    let connection = lapin::Connection::connect(&s.config.url, Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_delete(
            s.config.queue.as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    assert!(matches!(
        poll(&mut s.consumer, STEP).await,
        Some(Some(Err(QueueError::Connection(_))))
    ));
    // The next call declares the queue again and subscribes.
    assert!(
        poll(&mut s.consumer, Duration::from_millis(1500))
            .await
            .is_none()
    );
    s.publisher.publish(&shard("again")).await.unwrap();
    let delivery = next(&mut s.consumer).await;
    delivery.settler.settle(Disposition::Ack).await.unwrap();
    let _ = connection.close(200, "OK".into()).await;
    s.teardown().await;
}
