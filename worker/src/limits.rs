//! Fleet-wide limits: LLM endpoint rate limits and per-job token budgets.
//!
//! In memory for embedded mode, in Redis for a fleet. The rate limiter counts requests and
//! estimated tokens in fixed windows (one minute by default) aligned to the Redis server's clock,
//! so every process sharing a namespace shares the counts; a request that does not fit waits for
//! the next window. A fixed window admits up to twice the limit across a window boundary; the
//! endpoint's own limiter (HTTP 429) covers that edge. Redis keys are
//! `<namespace>:rate:<endpoint>:<window>` and `<namespace>:budget:<job>`, updated by Lua scripts
//! so that check and increment are atomic.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

/// The window of the requests-per-minute and tokens-per-minute limits.
pub const MINUTE: Duration = Duration::from_secs(60);
/// How long a spent-token counter is kept after the job's last spend.
pub const BUDGET_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("limit store (Redis): {0}")]
    Redis(#[from] redis::RedisError),
}

/// An endpoint's limits per window; `None` (or 0) is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimits {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
}

#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Wait until one request of `tokens` estimated tokens may go to `endpoint` under `limits`,
    /// and count it. Returns how long it waited. A request larger than the token limit is let
    /// through alone in an otherwise unused window.
    async fn acquire(
        &self,
        endpoint: &str,
        limits: RateLimits,
        tokens: u64,
    ) -> Result<Duration, LimitError>;
}

/// The state of a job's token budget after a spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetStatus {
    /// Tokens spent by the job so far, this spend included.
    pub spent: u64,
    /// Whether the budget is used up (never, without a budget): start no further requests.
    pub exhausted: bool,
}

impl BudgetStatus {
    fn new(spent: u64, budget: Option<u64>) -> Self {
        BudgetStatus {
            spent,
            exhausted: budget.is_some_and(|budget| spent >= budget),
        }
    }
}

#[async_trait]
pub trait TokenBudget: Send + Sync {
    /// Record `tokens` spent by `job` and tell whether `budget` allows more.
    async fn spend(
        &self,
        job: &str,
        tokens: u64,
        budget: Option<u64>,
    ) -> Result<BudgetStatus, LimitError>;

    /// Tokens spent by `job` so far.
    async fn spent(&self, job: &str) -> Result<u64, LimitError>;
}

/// Whether one more request of `tokens` fits a window that has seen `requests` and `used`.
fn fits(limits: RateLimits, requests: u64, used: u64, tokens: u64) -> bool {
    let requests_ok = limits
        .requests_per_minute
        .is_none_or(|limit| limit == 0 || requests < limit);
    let tokens_ok = limits
        .tokens_per_minute
        .is_none_or(|limit| limit == 0 || used == 0 || used.saturating_add(tokens) <= limit);
    requests_ok && tokens_ok
}

/// The rate limiter of one process.
pub struct MemoryRateLimiter {
    window: Duration,
    start: Instant,
    /// Per endpoint: (window index, requests, tokens).
    counts: Mutex<HashMap<String, (u128, u64, u64)>>,
}

impl MemoryRateLimiter {
    /// Windows of one minute.
    pub fn new() -> Self {
        Self::with_window(MINUTE)
    }

    /// Windows of `window` (tests use a short one); the limits then apply per `window`.
    pub fn with_window(window: Duration) -> Self {
        MemoryRateLimiter {
            window: window.max(Duration::from_millis(1)),
            start: Instant::now(),
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Count the request if it fits; otherwise how long until the next window.
    fn try_acquire(&self, endpoint: &str, limits: RateLimits, tokens: u64) -> Option<Duration> {
        let elapsed = self.start.elapsed();
        let window_ms = self.window.as_millis();
        let index = elapsed.as_millis() / window_ms;
        let mut counts = self.counts.lock().expect("rate limiter lock");
        let entry = counts.entry(endpoint.to_string()).or_insert((index, 0, 0));
        if entry.0 != index {
            *entry = (index, 0, 0);
        }
        if fits(limits, entry.1, entry.2, tokens) {
            entry.1 += 1;
            entry.2 = entry.2.saturating_add(tokens);
            return None;
        }
        let next =
            Duration::from_millis(u64::try_from((index + 1) * window_ms).unwrap_or(u64::MAX));
        Some(next.saturating_sub(elapsed))
    }
}

impl Default for MemoryRateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn acquire(
        &self,
        endpoint: &str,
        limits: RateLimits,
        tokens: u64,
    ) -> Result<Duration, LimitError> {
        let started = Instant::now();
        while let Some(wait) = self.try_acquire(endpoint, limits, tokens) {
            tokio::time::sleep(wait).await;
        }
        Ok(started.elapsed())
    }
}

/// Token budgets of one process.
#[derive(Default)]
pub struct MemoryTokenBudget {
    spent: Mutex<HashMap<String, u64>>,
}

impl MemoryTokenBudget {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl TokenBudget for MemoryTokenBudget {
    async fn spend(
        &self,
        job: &str,
        tokens: u64,
        budget: Option<u64>,
    ) -> Result<BudgetStatus, LimitError> {
        let mut spent = self.spent.lock().expect("budget lock");
        let total = spent.entry(job.to_string()).or_insert(0);
        *total = total.saturating_add(tokens);
        Ok(BudgetStatus::new(*total, budget))
    }

    async fn spent(&self, job: &str) -> Result<u64, LimitError> {
        Ok(self
            .spent
            .lock()
            .expect("budget lock")
            .get(job)
            .copied()
            .unwrap_or(0))
    }
}

/// Connect to Redis with bounded connection and response times; the manager reconnects by itself
/// after a failure (the command that saw the failure gets the error).
pub async fn connect_redis(url: &str, timeout: Duration) -> Result<ConnectionManager, LimitError> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    Ok(client.get_connection_manager_with_config(config).await?)
}

/// Counts a request in the current window if it fits. Limits of 0 mean unlimited. Returns 0 when
/// counted, else the milliseconds until the window ends.
const ACQUIRE_SCRIPT: &str = r"
local request_limit = tonumber(ARGV[1])
local token_limit = tonumber(ARGV[2])
local tokens = tonumber(ARGV[3])
local window_ms = tonumber(ARGV[4])
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local window = math.floor(now_ms / window_ms)
local key = KEYS[1] .. ':' .. window
local counts = redis.call('HMGET', key, 'requests', 'tokens')
local requests = tonumber(counts[1]) or 0
local used = tonumber(counts[2]) or 0
local wait = (window + 1) * window_ms - now_ms
if request_limit > 0 and requests >= request_limit then
  return wait
end
if token_limit > 0 and used > 0 and used + tokens > token_limit then
  return wait
end
redis.call('HINCRBY', key, 'requests', 1)
redis.call('HINCRBY', key, 'tokens', tokens)
redis.call('PEXPIRE', key, window_ms * 2)
return 0
";

/// The rate limiter shared by every process using the same Redis and namespace.
pub struct RedisRateLimiter {
    connection: ConnectionManager,
    namespace: String,
    window: Duration,
    script: Script,
}

impl RedisRateLimiter {
    /// Windows of one minute, keys under `namespace`.
    pub fn new(connection: ConnectionManager, namespace: impl Into<String>) -> Self {
        RedisRateLimiter {
            connection,
            namespace: namespace.into(),
            window: MINUTE,
            script: Script::new(ACQUIRE_SCRIPT),
        }
    }

    /// Windows of `window` (tests use a short one); the limits then apply per `window`.
    pub fn with_window(mut self, window: Duration) -> Self {
        self.window = window.max(Duration::from_millis(1));
        self
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn acquire(
        &self,
        endpoint: &str,
        limits: RateLimits,
        tokens: u64,
    ) -> Result<Duration, LimitError> {
        let started = Instant::now();
        let key = format!("{}:rate:{endpoint}", self.namespace);
        let window_ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        let mut connection = self.connection.clone();
        loop {
            let wait_ms: u64 = self
                .script
                .key(&key)
                .arg(limits.requests_per_minute.unwrap_or(0))
                .arg(limits.tokens_per_minute.unwrap_or(0))
                .arg(tokens)
                .arg(window_ms)
                .invoke_async(&mut connection)
                .await?;
            if wait_ms == 0 {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        }
    }
}

/// Adds to a job's spent tokens and refreshes the counter's expiry; returns the new total.
const SPEND_SCRIPT: &str = r"
local spent = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return spent
";

/// Token budgets shared by every process using the same Redis and namespace.
pub struct RedisTokenBudget {
    connection: ConnectionManager,
    namespace: String,
    script: Script,
}

impl RedisTokenBudget {
    /// Counters under `namespace`, kept for [`BUDGET_TTL`] after a job's last spend.
    pub fn new(connection: ConnectionManager, namespace: impl Into<String>) -> Self {
        RedisTokenBudget {
            connection,
            namespace: namespace.into(),
            script: Script::new(SPEND_SCRIPT),
        }
    }

    fn key(&self, job: &str) -> String {
        format!("{}:budget:{job}", self.namespace)
    }
}

#[async_trait]
impl TokenBudget for RedisTokenBudget {
    async fn spend(
        &self,
        job: &str,
        tokens: u64,
        budget: Option<u64>,
    ) -> Result<BudgetStatus, LimitError> {
        let ttl_ms = u64::try_from(BUDGET_TTL.as_millis()).unwrap_or(u64::MAX);
        let spent: u64 = self
            .script
            .key(self.key(job))
            .arg(tokens)
            .arg(ttl_ms)
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(BudgetStatus::new(spent, budget))
    }

    async fn spent(&self, job: &str) -> Result<u64, LimitError> {
        let spent: Option<u64> = redis::cmd("GET")
            .arg(self.key(job))
            .query_async(&mut self.connection.clone())
            .await?;
        Ok(spent.unwrap_or(0))
    }
}
