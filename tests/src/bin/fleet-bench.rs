//! Fleet throughput benchmark: one job (eCFR Title 1, 292 sections, from ../shared/corpora) with
//! the LLM test server at a fixed latency and capacity, for 1, 2, 4 and 8 workers; compares items
//! per second with the ideal that the server's latency and the fleet's LLM concurrency allow
//! (`calls x latency / min(server capacity, workers x per-worker LLM concurrency)`), and measures
//! the fleet's own overhead per shard with the model-free generator. Prints a markdown table for
//! BENCHMARKS.md.
//!
//! Wall time runs from `principia submit` to the job's own `completed_at` (millisecond precision,
//! same machine clock); the harness's status poll, every 200 ms through the CLI, sees it later,
//! and that time is printed too.
//!
//! The LLM server's request count is sampled every few milliseconds, which gives each request's
//! arrival time: the table splits the wall time into the fixed cost (submit to the first call,
//! the last reply to `completed`) and the packing of calls into the fleet's LLM slots between
//! the first call and the last reply. `--timeline` also prints, per second, the requests in
//! flight (to stderr), to show where slots idle.
//!
//! `cargo build --release -p coordinator -p tests && target/release/fleet-bench`

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use tests::fleet::Fleet;
use tests::{RunningServer, ServerConfig, principia, spawn};

#[derive(Parser)]
struct Args {
    /// Latency of every LLM request, in milliseconds.
    #[arg(long, default_value_t = 200)]
    latency_ms: u64,
    /// Worker counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    workers: Vec<usize>,
    /// Shards each worker processes at once.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// LLM requests each worker keeps in flight at most (PRINCIPIA_LLM_CONCURRENCY).
    #[arg(long, default_value_t = 2)]
    llm_concurrency: usize,
    /// `fixed`: always --llm-concurrency requests in flight (as the recorded tables ran);
    /// `adaptive`: learned from 1 (PRINCIPIA_LLM_CONCURRENCY_MODE).
    #[arg(long, default_value = "fixed")]
    llm_concurrency_mode: String,
    /// Requests the LLM server serves at once (its capacity).
    #[arg(long, default_value_t = 16)]
    server_capacity: usize,
    /// Source tokens per shard.
    #[arg(long, default_value_t = 1500)]
    shard_tokens: usize,
    /// Print the requests in flight per second of each run to stderr.
    #[arg(long)]
    timeline: bool,
}

/// Seconds from `submitted` to the job's `completed_at`.
fn seconds_to_completed(status: &serde_json::Value, submitted: SystemTime) -> anyhow::Result<f64> {
    let completed_at = status["completed_at"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("job status has no completed_at: {status}"))?;
    let completed = humantime::parse_rfc3339(completed_at)?;
    Ok(completed.duration_since(submitted)?.as_secs_f64())
}

/// Arrival times (seconds after `since`) of the server's requests, sampled until `done` is set.
fn sample_arrivals(llm: &RunningServer, since: Instant, done: &AtomicBool) -> Vec<f64> {
    let mut arrivals = Vec::new();
    let mut seen = llm.requests();
    while !done.load(Ordering::Relaxed) {
        let now = llm.requests();
        let at = since.elapsed().as_secs_f64();
        arrivals.extend(std::iter::repeat_n(at, (now - seen) as usize));
        seen = now;
        std::thread::sleep(Duration::from_millis(2));
    }
    arrivals
}

/// Requests in flight, averaged over each second from `since`, given arrivals and a fixed latency.
fn in_flight_per_second(arrivals: &[f64], latency: f64, until: f64) -> Vec<f64> {
    (0..until.ceil() as usize)
        .map(|second| {
            let (from, to) = (second as f64, second as f64 + 1.0);
            arrivals
                .iter()
                .map(|&at| ((at + latency).min(to) - at.max(from)).max(0.0))
                .sum()
        })
        .collect()
}

const INSTRUCTIONS: &str =
    "I want a chatbot that specializes in the general provisions of federal regulations";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    let example = principia::workspace_root().join("examples/harbor-lending-policy.md");
    let corpus = principia::corpora()
        .map(|dir| dir.join("cfr-format-dev/title-1.xml"))
        .ok_or_else(|| anyhow::anyhow!("../shared/corpora is needed for the throughput job"))?;
    let mut out = std::io::stdout().lock();
    use std::io::Write;
    writeln!(
        out,
        "| workers | shards | LLM calls | items | wall time | items/s | ideal items/s | ratio to ideal | first call | last reply | slots busy from first call to last reply | status poll saw completed |"
    )?;
    writeln!(
        out,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )?;
    for &workers in &args.workers {
        let llm = runtime.block_on(spawn(ServerConfig {
            latency: Duration::from_millis(args.latency_ms),
            max_concurrent: Some(args.server_capacity),
            ..ServerConfig::default()
        }));
        let mut fleet = Fleet::new("bench");
        fleet.use_llm(&llm.url, "bench-model");
        fleet.worker_env.insert(
            "PRINCIPIA_LLM_CONCURRENCY".into(),
            args.llm_concurrency.to_string(),
        );
        fleet.worker_env.insert(
            "PRINCIPIA_LLM_CONCURRENCY_MODE".into(),
            args.llm_concurrency_mode.clone(),
        );
        fleet.worker_env.insert("RUST_LOG".into(), "warn".into());
        fleet.start_coordinator();
        for _ in 0..workers {
            fleet.start_worker(args.concurrency);
        }
        std::thread::sleep(Duration::from_secs(1));
        let started = Instant::now();
        let submitted = SystemTime::now();
        let done = AtomicBool::new(false);
        let (status, seen, arrivals) = std::thread::scope(|scope| {
            let sampler = scope.spawn(|| sample_arrivals(&llm, started, &done));
            let job = fleet.submit(
                &[&corpus],
                &[
                    "--instructions",
                    INSTRUCTIONS,
                    "--generator",
                    "openai",
                    "--model",
                    "bench-model",
                    "--shard-tokens",
                    &args.shard_tokens.to_string(),
                ],
            );
            let status = fleet.wait_finished(&job, Duration::from_secs(600));
            let seen = started.elapsed().as_secs_f64();
            done.store(true, Ordering::Relaxed);
            (status, seen, sampler.join().expect("sampler thread"))
        });
        anyhow::ensure!(
            status["status"] == "completed",
            "job did not complete: {status}"
        );
        let wall = seconds_to_completed(&status, submitted)?;
        let shards = status["principia"]["shards_total"].as_u64().unwrap_or(0);
        let items = status["principia"]["accepted"].as_u64().unwrap_or(0);
        let calls = llm.requests();
        // At most this many requests are in flight at any time, however the shards are cut.
        let in_flight = (workers * args.llm_concurrency).min(args.server_capacity) as f64;
        let ideal_wall = calls as f64 * args.latency_ms as f64 / 1000.0 / in_flight;
        let ideal_rate = items as f64 / ideal_wall;
        let rate = items as f64 / wall;
        let latency = args.latency_ms as f64 / 1000.0;
        let first_call = arrivals.first().copied().unwrap_or(0.0);
        let last_reply = arrivals.last().map_or(0.0, |at| at + latency);
        let slots_busy = ideal_wall / (last_reply - first_call);
        writeln!(
            out,
            "| {workers} | {shards} | {calls} | {items} | {wall:.2} s | {rate:.1} | {ideal_rate:.1} | {:.3} | {first_call:.2} s | {last_reply:.2} s | {slots_busy:.3} | {seen:.2} s |",
            rate / ideal_rate
        )?;
        if args.timeline {
            let seconds = in_flight_per_second(&arrivals, latency, wall)
                .iter()
                .map(|n| format!("{n:.1}"))
                .collect::<Vec<_>>()
                .join(" ");
            eprintln!("{workers} workers, requests in flight per second: {seconds}");
        }
        drop(fleet);
        runtime.block_on(llm.shutdown())?;
    }

    // Overhead: the model-free generator with one worker processing one shard at a time.
    let mut fleet = Fleet::new("overhead");
    fleet.start_coordinator();
    fleet.start_worker(1);
    std::thread::sleep(Duration::from_secs(1));
    let submitted = SystemTime::now();
    let job = fleet.submit(
        &[&example],
        &[
            "--instructions",
            INSTRUCTIONS,
            "--generator",
            "extractive",
            "--shard-tokens",
            "60",
        ],
    );
    let status = fleet.wait_finished(&job, Duration::from_secs(600));
    let wall = seconds_to_completed(&status, submitted)?;
    let shards = status["principia"]["shards_total"]
        .as_u64()
        .unwrap_or(1)
        .max(1);
    writeln!(out)?;
    writeln!(
        out,
        "Fleet overhead (extractive, 1 worker, concurrency 1): {shards} shards in {wall:.2} s = {:.0} ms per shard, submit to completed (upload, plan, publish, queue, S3 part write, Redis, merge)",
        wall * 1000.0 / shards as f64
    )?;
    Ok(())
}
