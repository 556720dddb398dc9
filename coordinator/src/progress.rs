//! Live progress of a job: a bar on a terminal (shards done/total, items accepted/rejected, tokens,
//! ETA), plain log lines elsewhere.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use proto::ShardEvent;

/// Running totals shown to the user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub shards_done: u64,
    pub shards_total: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub tokens: u64,
    pub failed: u64,
}

impl Totals {
    /// Fold one event into the totals.
    pub fn apply(&mut self, event: &ShardEvent) {
        match event {
            ShardEvent::Completed { report, .. } => {
                self.shards_done += 1;
                self.accepted += report.accepted;
                self.rejected += report.rejected_total();
                self.tokens += report.usage.total();
            }
            ShardEvent::Duplicate { .. } => self.shards_done += 1,
            ShardEvent::Failed {
                requeued: false, ..
            } => self.failed += 1,
            ShardEvent::Failed { requeued: true, .. } | ShardEvent::Cancelled { .. } => {}
        }
    }

    fn summary(&self) -> String {
        let mut text = format!(
            "accepted {} · rejected {} · tokens {}",
            self.accepted, self.rejected, self.tokens
        );
        if self.failed > 0 {
            text.push_str(&format!(" · failed shards {}", self.failed));
        }
        text
    }
}

pub struct Progress {
    bar: Option<ProgressBar>,
    totals: Totals,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    /// `already_done` shards count as done from the start (a resumed run).
    pub fn new(shards_total: u64, already_done: u64) -> Self {
        let totals = Totals {
            shards_total,
            shards_done: already_done,
            ..Totals::default()
        };
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(
                Some(shards_total),
                ProgressDrawTarget::stderr_with_hz(4),
            );
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} shards · {msg} · ETA {eta}",
                )
                .expect("valid progress template"),
            );
            bar.set_position(already_done);
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        let progress = Progress {
            bar,
            totals,
            started: Instant::now(),
            last_line: Instant::now(),
        };
        if progress.bar.is_none() {
            progress.log_line();
        }
        progress
    }

    /// Replace the totals (the fleet's progress comes as totals, not events).
    pub fn set(&mut self, totals: Totals) {
        self.totals = totals;
        self.refresh();
    }

    pub fn observe(&mut self, event: &ShardEvent) {
        self.totals.apply(event);
        self.refresh();
    }

    fn refresh(&mut self) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(self.totals.shards_total);
                bar.set_position(self.totals.shards_done);
                bar.set_message(self.totals.summary());
            }
            None => {
                let finished = self.totals.shards_done >= self.totals.shards_total;
                if finished || self.last_line.elapsed() >= Duration::from_secs(2) {
                    self.last_line = Instant::now();
                    self.log_line();
                }
            }
        }
    }

    fn log_line(&self) {
        tracing::info!(
            shards_done = self.totals.shards_done,
            shards_total = self.totals.shards_total,
            accepted = self.totals.accepted,
            rejected = self.totals.rejected,
            tokens = self.totals.tokens,
            failed = self.totals.failed,
            elapsed_secs = self.started.elapsed().as_secs(),
            "progress"
        );
    }

    pub fn finish(self) {
        match self.bar {
            Some(bar) => bar.finish_with_message(self.totals.summary()),
            None => self.log_line(),
        }
    }
}
