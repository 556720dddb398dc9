//! Logging and tracing setup for the binary: human-readable or JSON lines on stderr, filtered by
//! `RUST_LOG` (default `info`). Text is coloured only on a terminal and without `NO_COLOR`; a
//! warning or error that repeats is logged once and then counted ([`Repeats`]).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// How long a repeated warning stays counted before its count is logged.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Install the global subscriber. Keep the guard until the end of `main`: dropping it logs the
/// repeats counted but not reported yet.
pub fn init(format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let repeats = Repeats::new(REPEAT_WINDOW);
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(repeats.clone());
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            let ansi = colour(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR"),
            );
            registry
                .with(layer.with_target(false).with_ansi(ansi))
                .init();
        }
        LogFormat::Json => registry
            .with(layer.json().flatten_event(true).with_ansi(false))
            .init(),
    }
    repeats.report_periodically();
    LogGuard(repeats)
}

/// Logs the repeats not reported yet when dropped.
#[must_use = "dropping the guard reports the repeats counted so far"]
pub struct LogGuard(Repeats);

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.0.report_all();
    }
}

/// Whether text logs are coloured: on a terminal, unless `NO_COLOR` is set to a non-empty value
/// (<https://no-color.org>).
fn colour(terminal: bool, no_color: Option<OsString>) -> bool {
    terminal && no_color.is_none_or(|value| value.is_empty())
}

/// A layer that lets the first of identical warnings or errors (same level, target and message;
/// the other fields aside) through, counts the ones that follow within a window, and then logs
/// one line, `<message> (repeated N times in the last Ts)`, at the same level with the original
/// target in `origin`. A message that goes on repeating gives one such line per window; a window
/// without repeats ends silently and the next occurrence is logged in full again. Other levels
/// pass untouched.
///
/// Hand-written: `tracing-throttle` (the crate for this, 0.4) is 11,000 lines with `dashmap` and
/// `ahash`, went from 0.1 to 0.4 in its first weeks, and reports its counts from a tokio task
/// that its builder spawns (so it panics outside a runtime; the binary sets logging up before its
/// runtime) and that drops the counts still pending at shutdown. Here the counts are reported
/// from a plain thread and, at exit, by [`LogGuard`]; never from inside the dispatch of another
/// event, where tracing would drop the nested event under a scoped subscriber.
#[derive(Clone)]
pub struct Repeats {
    window: Duration,
    seen: Arc<Mutex<HashMap<Key, Seen>>>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    level: Level,
    target: &'static str,
    message: String,
}

struct Seen {
    since: Instant,
    repeats: u64,
}

/// One line to log: a message repeated `repeats` times over `over`.
struct Report {
    key: Key,
    repeats: u64,
    over: Duration,
}

impl Repeats {
    pub fn new(window: Duration) -> Repeats {
        Repeats {
            window,
            seen: Arc::default(),
        }
    }

    /// Count one occurrence; true when it is the first of its window and is to be logged.
    fn observe(&self, key: Key, now: Instant) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        match seen.get_mut(&key) {
            Some(entry) => {
                entry.repeats += 1;
                false
            }
            None => {
                seen.insert(
                    key,
                    Seen {
                        since: now,
                        repeats: 0,
                    },
                );
                true
            }
        }
    }

    /// End the windows that began at least a window before `now`: log the count of each that
    /// saw repeats and start it over; forget the others.
    pub fn report_due(&self, now: Instant) {
        let mut due = Vec::new();
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            seen.retain(|key, entry| {
                let over = now.saturating_duration_since(entry.since);
                if over < self.window {
                    return true;
                }
                if entry.repeats == 0 {
                    return false;
                }
                due.push(Report {
                    key: key.clone(),
                    repeats: entry.repeats,
                    over,
                });
                *entry = Seen {
                    since: now,
                    repeats: 0,
                };
                true
            });
        }
        log(due);
    }

    /// Log every count not reported yet and forget everything.
    pub fn report_all(&self) {
        let now = Instant::now();
        let seen = std::mem::take(&mut *self.seen.lock().unwrap_or_else(PoisonError::into_inner));
        let due = seen
            .into_iter()
            .filter(|(_, entry)| entry.repeats > 0)
            .map(|(key, entry)| Report {
                key,
                repeats: entry.repeats,
                over: now.saturating_duration_since(entry.since),
            })
            .collect();
        log(due);
    }

    /// Report due counts from a background thread, five times a window.
    fn report_periodically(&self) {
        let repeats = self.clone();
        let spawned = std::thread::Builder::new()
            .name("log-repeats".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(repeats.window / 5);
                    repeats.report_due(Instant::now());
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start the thread that reports repeated log lines");
        }
    }
}

/// Log the reports, oldest window first.
fn log(mut due: Vec<Report>) {
    due.sort_by_key(|report| std::cmp::Reverse(report.over));
    for Report { key, repeats, over } in due {
        let times = if repeats == 1 { "time" } else { "times" };
        let secs = (over.as_secs_f64().round() as u64).max(1);
        let (origin, message) = (key.target, key.message);
        if key.level == Level::ERROR {
            tracing::error!(origin = %origin, "{message} (repeated {repeats} {times} in the last {secs}s)");
        } else {
            tracing::warn!(origin = %origin, "{message} (repeated {repeats} {times} in the last {secs}s)");
        }
    }
}

impl<S: Subscriber> Layer<S> for Repeats {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        let metadata = event.metadata();
        // More verbose than WARN passes, and so do this module's own reports.
        if *metadata.level() > Level::WARN || metadata.target() == module_path!() {
            return true;
        }
        let mut message = Message::default();
        event.record(&mut message);
        let key = Key {
            level: *metadata.level(),
            target: metadata.target(),
            message: message.0,
        };
        self.observe(key, Instant::now())
    }
}

/// An event's `message` field as text.
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::fmt::MakeWriter;

    /// Log lines written to memory.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Lines {
        fn take(&self) -> Vec<String> {
            let bytes = std::mem::take(&mut *self.0.lock().unwrap());
            String::from_utf8(bytes)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect()
        }
    }

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;

        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    #[test]
    fn repeated_warnings_are_one_line_with_a_count() {
        let window = Duration::from_secs(60);
        let repeats = Repeats::new(window);
        let lines = Lines::default();
        let subscriber = tracing_subscriber::registry().with(repeats.clone()).with(
            tracing_subscriber::fmt::layer()
                .with_writer(lines.clone())
                .with_ansi(false)
                .with_target(false)
                .without_time(),
        );
        tracing::subscriber::with_default(subscriber, || {
            for attempt in 0..50 {
                tracing::warn!(attempt, "the cache is unavailable");
            }
            tracing::warn!("another warning");
            tracing::error!("the cache is unavailable"); // another level: its own count
            tracing::info!("progress");
            tracing::info!("progress");
            repeats.report_due(Instant::now() + window / 2);
            assert_eq!(
                lines.take(),
                [
                    " WARN the cache is unavailable attempt=0",
                    " WARN another warning",
                    "ERROR the cache is unavailable",
                    " INFO progress",
                    " INFO progress",
                ]
            );

            // The window ends: one line with the count, at the warning's level.
            let end = Instant::now() + window;
            repeats.report_due(end);
            assert_eq!(
                lines.take(),
                [
                    " WARN the cache is unavailable (repeated 49 times in the last 60s) \
                     origin=coordinator::telemetry::tests"
                ]
            );

            // It goes on repeating: counted in a new window, reported at its end.
            tracing::warn!(attempt = 50, "the cache is unavailable");
            repeats.report_due(end + window);
            assert_eq!(
                lines.take(),
                [
                    " WARN the cache is unavailable (repeated 1 time in the last 60s) \
                     origin=coordinator::telemetry::tests"
                ]
            );

            // A quiet window is forgotten: the next occurrence is logged in full.
            repeats.report_due(end + 2 * window);
            assert!(lines.take().is_empty());
            tracing::warn!(attempt = 51, "the cache is unavailable");
            tracing::warn!(attempt = 52, "the cache is unavailable");
            assert_eq!(lines.take(), [" WARN the cache is unavailable attempt=51"]);

            // At exit every pending count is logged, however young its window.
            repeats.report_all();
            let last = lines.take();
            assert_eq!(last.len(), 1, "{last:?}");
            assert!(
                last[0].starts_with(" WARN the cache is unavailable (repeated 1 time in the last "),
                "{last:?}"
            );
        });
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some(OsString::new())));
        assert!(!colour(true, Some(OsString::from("1"))));
        assert!(!colour(false, None));
    }
}
