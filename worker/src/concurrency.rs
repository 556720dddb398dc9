//! Adaptive concurrency: how many requests one LLM client keeps in flight, learned from the
//! server.
//!
//! A server's capacity is unknown and costly to get wrong: a laptop's llama.cpp has one slot, a
//! vLLM server hundreds. Too few requests leave it idle; too many queue inside it, where they time
//! out while it keeps computing them, and their retries queue behind them. So the limit starts at
//! 1 and climbs while throughput follows (hill climbing on completed calls per second, the one
//! signal that holds both for a one-slot server, whose latency grows with every request queued,
//! and for a batching server, whose latency grows a little while its throughput grows a lot):
//!
//! - **Slow start**: while a round's mean latency stays within [`INFLATION`] of the lowest of any
//!   call (requests do not queue yet), the limit doubles after every `max(limit, 2)` calls, about a
//!   round trip each. The first round whose latency inflates ends it; the rounds after that
//!   compare throughput.
//! - An **epoch** measures the current limit: it ends once `max(2 × limit, 4)` calls completed
//!   since it began; its rate is Little's law's, `limit / mean latency` of those calls (calls
//!   completed over the epoch's duration would count a server's bursts of completions: a
//!   four-slot server completes in fours, and an epoch's edges fall anywhere between them). It
//!   counts only when the client was busy: most of its calls had to take the last free permit
//!   (otherwise the demand, not the server, set the rate, and the limit stays). Only calls sent
//!   in the epoch count: one sent under the limit before met another queue.
//! - **Growing**: a limit whose rate beats the best one so far by a [`GAIN_SHARE`] of the
//!   proportional gain is kept and the limit doubles (up to the ceiling); one that does not falls back to the best limit, which then
//!   holds (**steady**). Every [`PROBE_EVERY`] steady epochs the limit probes a quarter higher.
//! - **Overload** (a 429, a 503, a timeout) halves the limit at once, at most once an epoch, and
//!   holds it.
//!
//! The ceiling is `PRINCIPIA_LLM_CONCURRENCY`; with adaptation off the limit is the ceiling.
//! Lowering the limit never cancels a request in flight: permits above the new limit are retired
//! as they come back.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{AcquireError, Semaphore, SemaphorePermit};

/// Share of its proportional gain a higher limit must bring to be kept: doubling the limit must
/// raise throughput by a quarter, a quarter more by a sixteenth. Below it, the gain is within
/// what a change of limit biases the measure by (calls sent just after it meet the old queue).
pub const GAIN_SHARE: f64 = 0.25;
/// Steady epochs between probes of a higher limit.
pub const PROBE_EVERY: u32 = 8;
/// Calls an epoch takes at least.
const MIN_EPOCH_CALLS: u32 = 4;
/// Mean latency over the lowest seen up to which a round counts as uncongested (slow start).
pub const INFLATION: f64 = 1.25;

/// The in-flight limit of one client; see the module docs.
#[derive(Debug)]
pub struct AdaptiveLimit {
    semaphore: Semaphore,
    ceiling: usize,
    adaptive: bool,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    limit: usize,
    /// Permits to retire as they come back (the limit was lowered while they were out).
    debt: usize,
    growing: bool,
    /// Doubling every round while latency does not inflate; see the module docs.
    slow_start: bool,
    /// The lowest latency of a call, in seconds: the server's time without a queue.
    lowest_latency: Option<f64>,
    /// The best limit measured while growing, and its rate (calls per second).
    best: Option<(usize, f64)>,
    steady_epochs: u32,
    epoch: Epoch,
}

#[derive(Debug)]
struct Epoch {
    /// Which epoch this is; a call carries the one it was sent in.
    number: u64,
    completed: u32,
    /// Summed latency of the completed calls.
    latency: Duration,
    acquired: u32,
    /// Acquisitions that took the last free permit.
    saturated: u32,
    /// Whether the limit was already halved in this epoch.
    decreased: bool,
}

impl State {
    /// Calls a round at the current limit takes.
    fn epoch_calls(&self) -> u32 {
        if self.slow_start {
            (self.limit as u32).max(2)
        } else {
            (2 * self.limit as u32).max(MIN_EPOCH_CALLS)
        }
    }
}

impl Epoch {
    fn after(number: u64) -> Self {
        Epoch {
            number: number + 1,
            completed: 0,
            latency: Duration::ZERO,
            acquired: 0,
            saturated: 0,
            decreased: false,
        }
    }
}

/// A slot in flight; returned (or retired, when the limit was lowered) on drop.
pub struct Permit<'a> {
    permit: Option<SemaphorePermit<'a>>,
    limit: &'a AdaptiveLimit,
    epoch: u64,
}

impl Permit<'_> {
    /// The epoch the call was sent in, for [`AdaptiveLimit::on_success`].
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        let mut state = self.limit.lock();
        if state.debt > 0 {
            state.debt -= 1;
            permit.forget();
        }
    }
}

impl AdaptiveLimit {
    /// Adapting between 1 and `ceiling`, from 1; or fixed at `ceiling`.
    pub fn new(ceiling: usize, adaptive: bool) -> Self {
        let ceiling = ceiling.max(1);
        let limit = if adaptive { 1 } else { ceiling };
        AdaptiveLimit {
            semaphore: Semaphore::new(limit),
            ceiling,
            adaptive,
            state: Mutex::new(State {
                limit,
                debt: 0,
                growing: true,
                slow_start: true,
                lowest_latency: None,
                best: None,
                steady_epochs: 0,
                epoch: Epoch::after(0),
            }),
        }
    }

    /// The limit now.
    pub fn current(&self) -> usize {
        self.lock().limit
    }

    /// Wait for a slot under the current limit.
    pub async fn acquire(&self) -> Result<Permit<'_>, AcquireError> {
        let permit = self.semaphore.acquire().await?;
        let saturated = self.semaphore.available_permits() == 0;
        let mut state = self.lock();
        state.epoch.acquired += 1;
        state.epoch.saturated += u32::from(saturated);
        Ok(Permit {
            permit: Some(permit),
            limit: self,
            epoch: state.epoch.number,
        })
    }

    /// A call sent in `epoch` ([`Permit::epoch`]) completed with a reply after `latency` (from
    /// sending it to its reply).
    pub fn on_success(&self, epoch: u64, latency: Duration) {
        if !self.adaptive {
            return;
        }
        let mut state = self.lock();
        if epoch != state.epoch.number {
            return;
        }
        state.epoch.completed += 1;
        state.epoch.latency += latency;
        let seconds = latency.as_secs_f64();
        state.lowest_latency = Some(state.lowest_latency.map_or(seconds, |low| low.min(seconds)));
        if state.epoch.completed < state.epoch_calls() {
            return;
        }
        let busy = 2 * state.epoch.saturated >= state.epoch.acquired;
        let mean = state.epoch.latency.as_secs_f64() / f64::from(state.epoch.completed);
        let rate = state.limit as f64 / mean.max(1e-6);
        state.epoch = Epoch::after(state.epoch.number);
        if !busy {
            return;
        }
        let uncongested = state
            .lowest_latency
            .is_none_or(|low| mean <= low * INFLATION);
        let next = if state.growing && state.slow_start {
            if !uncongested {
                // Queueing has begun: this limit is measured again over a full round (a short
                // round just after a change of limit meets less queue than the next ones).
                state.slow_start = false;
                return;
            }
            state.best = Some((state.limit, rate));
            if state.limit >= self.ceiling {
                state.growing = false;
                state.slow_start = false;
            }
            (state.limit * 2).min(self.ceiling)
        } else if state.growing {
            match state.best {
                Some((best_limit, best_rate))
                    if rate
                        < best_rate
                            * (1.0
                                + GAIN_SHARE * (state.limit as f64 / best_limit as f64 - 1.0)) =>
                {
                    state.growing = false;
                    state.steady_epochs = 0;
                    best_limit
                }
                _ => {
                    state.best = Some((state.limit, rate));
                    if state.limit >= self.ceiling {
                        state.growing = false;
                    }
                    (state.limit * 2).min(self.ceiling)
                }
            }
        } else {
            state.steady_epochs += 1;
            if state.steady_epochs < PROBE_EVERY || state.limit >= self.ceiling {
                return;
            }
            state.growing = true;
            state.steady_epochs = 0;
            state.best = Some((state.limit, rate));
            (state.limit + state.limit.div_ceil(4)).min(self.ceiling)
        };
        self.set(&mut state, next);
    }

    /// The server said it is overloaded (429, 503) or a request timed out.
    pub fn on_overload(&self) {
        if !self.adaptive {
            return;
        }
        let mut state = self.lock();
        if state.epoch.decreased {
            return;
        }
        let next = (state.limit / 2).max(1);
        state.growing = false;
        state.slow_start = false;
        state.best = None;
        state.steady_epochs = 0;
        state.epoch = Epoch::after(state.epoch.number);
        state.epoch.decreased = true;
        self.set(&mut state, next);
    }

    fn set(&self, state: &mut State, next: usize) {
        if next > state.limit {
            let mut add = next - state.limit;
            let repaid = add.min(state.debt);
            state.debt -= repaid;
            add -= repaid;
            self.semaphore.add_permits(add);
        } else if next < state.limit {
            let remove = state.limit - next;
            let forgotten = self.semaphore.forget_permits(remove);
            state.debt += remove - forgotten;
        }
        if next != state.limit {
            tracing::debug!(from = state.limit, to = next, "LLM concurrency limit");
            crate::metrics::LLM_CONCURRENCY_LIMIT.set(next as i64);
        }
        state.limit = next;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Complete one epoch at the current limit with the client busy (every permit taken again as
    /// soon as it comes back), at `rate` calls a second (each call taking `limit / rate`).
    async fn busy_epoch(limit: &AdaptiveLimit, rate: f64) {
        let n = limit.current();
        let calls = limit.lock().epoch_calls();
        let mut out = std::collections::VecDeque::new();
        for _ in 0..n {
            out.push_back(limit.acquire().await.unwrap());
        }
        let epoch = out[0].epoch();
        for _ in 0..calls {
            out.pop_front();
            out.push_back(limit.acquire().await.unwrap());
        }
        drop(out);
        let latency = Duration::from_secs_f64(n as f64 / rate);
        for _ in 0..calls {
            limit.on_success(epoch, latency);
        }
    }

    #[tokio::test]
    async fn the_limit_doubles_while_throughput_follows_and_settles_on_the_best() {
        let limit = AdaptiveLimit::new(64, true);
        assert_eq!(limit.current(), 1);
        // A server with 4 slots: throughput grows up to 4 in flight, then stays. Slow start
        // doubles while latency does not inflate.
        for expected in [2, 4, 8] {
            let rate = limit.current().min(4) as f64 * 5.0;
            busy_epoch(&limit, rate).await;
            assert_eq!(limit.current(), expected);
        }
        // At 8 requests queue: slow start ends, and 8 is measured again over a full round.
        busy_epoch(&limit, 20.0).await;
        assert_eq!(limit.current(), 8);
        busy_epoch(&limit, 20.0).await;
        assert_eq!(limit.current(), 4, "no gain at 8: back to the best");
        assert_eq!(limit.semaphore.available_permits(), 4);
        // Steady until the probe, which tries a quarter more.
        for _ in 1..PROBE_EVERY {
            busy_epoch(&limit, 20.0).await;
            assert_eq!(limit.current(), 4);
        }
        busy_epoch(&limit, 20.0).await;
        assert_eq!(limit.current(), 5);
        busy_epoch(&limit, 20.0).await;
        assert_eq!(limit.current(), 4);
    }

    #[tokio::test]
    async fn a_one_slot_server_stays_at_one() {
        let limit = AdaptiveLimit::new(64, true);
        busy_epoch(&limit, 0.1).await;
        assert_eq!(limit.current(), 2);
        // Twice the latency: queueing; measured again, no gain: back to 1.
        busy_epoch(&limit, 0.1).await;
        assert_eq!(limit.current(), 2);
        busy_epoch(&limit, 0.1).await;
        assert_eq!(limit.current(), 1);
    }

    #[tokio::test]
    async fn overload_halves_once_an_epoch_and_permits_out_are_retired() {
        let limit = AdaptiveLimit::new(64, true);
        for rate in [5.0, 10.0, 20.0, 40.0] {
            busy_epoch(&limit, rate).await;
        }
        assert_eq!(limit.current(), 16);
        let out: Vec<Permit<'_>> = futures_util::future::join_all(
            (0..16).map(|_| async { limit.acquire().await.unwrap() }),
        )
        .await;
        limit.on_overload();
        limit.on_overload();
        assert_eq!(limit.current(), 8, "halved once");
        drop(out);
        assert_eq!(limit.semaphore.available_permits(), 8);
        assert_eq!(limit.lock().debt, 0);
    }

    #[tokio::test]
    async fn an_idle_client_learns_nothing_and_a_fixed_limit_never_moves() {
        // Demand-limited epochs (a permit always free) do not move the limit.
        let limit_of_two = AdaptiveLimit::new(64, true);
        busy_epoch(&limit_of_two, 5.0).await;
        assert_eq!(limit_of_two.current(), 2);
        for _ in 0..4 {
            let permit = limit_of_two.acquire().await.unwrap();
            let epoch = permit.epoch();
            drop(permit);
            limit_of_two.on_success(epoch, Duration::from_millis(100));
        }
        assert_eq!(limit_of_two.current(), 2);

        let fixed = AdaptiveLimit::new(8, false);
        assert_eq!(fixed.current(), 8);
        fixed.on_overload();
        for _ in 0..100 {
            fixed.on_success(1, Duration::from_millis(100));
        }
        assert_eq!(fixed.current(), 8);
    }
}
