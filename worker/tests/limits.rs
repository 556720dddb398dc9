//! Fleet-wide limits against the local Redis: two limiter instances (two processes) share one
//! requests-per-window limit, and token budgets stop at their limit.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tests::moto::{redis_url, unique_name};
use worker::limits::{
    MemoryRateLimiter, MemoryTokenBudget, RateLimiter, RateLimits, RedisRateLimiter,
    RedisTokenBudget, TokenBudget, connect_redis,
};

const WINDOW: Duration = Duration::from_millis(1000);

async fn connection() -> ConnectionManager {
    connect_redis(redis_url(), Duration::from_secs(5))
        .await
        .unwrap()
}

async fn delete_namespace(connection: &mut ConnectionManager, namespace: &str) {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{namespace}:*"))
        .query_async(connection)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(connection)
            .await
            .unwrap();
    }
}

/// Sleep until shortly after the start of a window on the Redis server's clock, so that a burst
/// of requests falls within one window.
async fn align_to_window(connection: &mut ConnectionManager) {
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(connection).await.unwrap();
    let now_ms = seconds * 1000 + micros / 1000;
    let window_ms = WINDOW.as_millis() as u64;
    let to_next = window_ms - now_ms % window_ms;
    tokio::time::sleep(Duration::from_millis(to_next + 20)).await;
}

/// 15 concurrent acquisitions against a limit of 10 per window: exactly 10 go through at once and
/// 5 wait for the next window.
async fn burst(limiters: [Arc<dyn RateLimiter>; 2], limits: RateLimits) -> Vec<Duration> {
    let mut tasks = Vec::new();
    for i in 0..15 {
        let limiter = limiters[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            limiter.acquire("llm-a", limits, 10).await.unwrap()
        }));
    }
    let mut waited = Vec::new();
    for task in tasks {
        waited.push(task.await.unwrap());
    }
    waited.sort();
    waited
}

fn assert_ten_then_wait(waited: &[Duration]) {
    let half = WINDOW / 2;
    let immediate = waited.iter().filter(|w| **w < half).count();
    assert_eq!(immediate, 10, "{waited:?}");
    assert!(waited.iter().all(|w| *w < WINDOW * 2), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_the_request_limit() {
    let namespace = unique_name("principia-test");
    let mut admin = connection().await;
    // Two connections stand for two worker processes.
    let limiters: [Arc<dyn RateLimiter>; 2] = [
        Arc::new(RedisRateLimiter::new(connection().await, &namespace).with_window(WINDOW)),
        Arc::new(RedisRateLimiter::new(connection().await, &namespace).with_window(WINDOW)),
    ];
    let limits = RateLimits {
        requests_per_minute: Some(10),
        tokens_per_minute: None,
    };
    align_to_window(&mut admin).await;
    let waited = burst(limiters, limits).await;
    assert_ten_then_wait(&waited);
    delete_namespace(&mut admin, &namespace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_limit_makes_requests_wait() {
    let namespace = unique_name("principia-test");
    let mut admin = connection().await;
    let limiter = RedisRateLimiter::new(connection().await, &namespace).with_window(WINDOW);
    let limits = RateLimits {
        requests_per_minute: None,
        tokens_per_minute: Some(100),
    };
    align_to_window(&mut admin).await;
    let mut waited = Vec::new();
    for _ in 0..3 {
        waited.push(limiter.acquire("llm-b", limits, 40).await.unwrap());
    }
    assert!(
        waited[0] < WINDOW / 2 && waited[1] < WINDOW / 2,
        "{waited:?}"
    );
    assert!(waited[2] >= WINDOW / 2, "{waited:?}");
    // A request larger than the limit still goes through, alone in its window.
    let big = limiter.acquire("llm-b", limits, 500).await.unwrap();
    assert!(big >= WINDOW / 2, "{big:?}");
    delete_namespace(&mut admin, &namespace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limiter_holds_the_request_limit() {
    let limiter: Arc<dyn RateLimiter> = Arc::new(MemoryRateLimiter::with_window(WINDOW));
    let limits = RateLimits {
        requests_per_minute: Some(10),
        tokens_per_minute: None,
    };
    // Windows start when the limiter is made: the burst begins right at the start of one.
    let waited = burst([limiter.clone(), limiter], limits).await;
    assert_ten_then_wait(&waited);
}

async fn check_budget(first: &dyn TokenBudget, second: &dyn TokenBudget, job: &str) {
    let budget = Some(100);
    let a = first.spend(job, 40, budget).await.unwrap();
    assert_eq!((a.spent, a.exhausted), (40, false));
    let b = second.spend(job, 40, budget).await.unwrap();
    assert_eq!((b.spent, b.exhausted), (80, false));
    let c = first.spend(job, 40, budget).await.unwrap();
    assert_eq!((c.spent, c.exhausted), (120, true));
    assert_eq!(second.spent(job).await.unwrap(), 120);
    // Without a budget nothing is ever exhausted; other jobs are separate.
    assert!(!second.spend(job, 1, None).await.unwrap().exhausted);
    assert_eq!(first.spent("other-job").await.unwrap(), 0);
}

#[tokio::test]
async fn token_budget_stops_at_the_limit() {
    let namespace = unique_name("principia-test");
    let mut admin = connection().await;
    let first = RedisTokenBudget::new(connection().await, &namespace);
    let second = RedisTokenBudget::new(connection().await, &namespace);
    check_budget(&first, &second, "al-1").await;
    delete_namespace(&mut admin, &namespace).await;

    let memory = MemoryTokenBudget::new();
    check_budget(&memory, &memory, "al-1").await;
}
