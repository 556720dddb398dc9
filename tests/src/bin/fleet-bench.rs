//! Fleet throughput benchmark: one job (eCFR Title 1, 292 sections, from ../shared/corpora) with
//! the LLM test server at a fixed latency and capacity, for 1, 2, 4 and 8 workers; compares items
//! per second with the ideal that the server's latency and the fleet's LLM concurrency allow
//! (`calls x latency / min(server capacity, workers x per-worker LLM concurrency)`), and measures
//! the fleet's own overhead per shard with the model-free generator. Prints a markdown table for
//! BENCHMARKS.md.
//!
//! `cargo build --release -p coordinator -p tests && target/release/fleet-bench`

use std::time::{Duration, Instant};

use clap::Parser;
use tests::fleet::Fleet;
use tests::{ServerConfig, principia, spawn};

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
    /// Requests the LLM server serves at once (its capacity).
    #[arg(long, default_value_t = 16)]
    server_capacity: usize,
    /// Source tokens per shard.
    #[arg(long, default_value_t = 1500)]
    shard_tokens: usize,
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
        "| workers | shards | LLM calls | items | wall time | items/s | ideal items/s | ratio to ideal |"
    )?;
    writeln!(
        out,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
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
        fleet.worker_env.insert("RUST_LOG".into(), "warn".into());
        fleet.start_coordinator();
        for _ in 0..workers {
            fleet.start_worker(args.concurrency);
        }
        std::thread::sleep(Duration::from_secs(1));
        let started = Instant::now();
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
        let wall = started.elapsed().as_secs_f64();
        anyhow::ensure!(
            status["status"] == "completed",
            "job did not complete: {status}"
        );
        let shards = status["principia"]["shards_total"].as_u64().unwrap_or(0);
        let items = status["principia"]["accepted"].as_u64().unwrap_or(0);
        let calls = llm.requests();
        // At most this many requests are in flight at any time, however the shards are cut.
        let in_flight = (workers * args.llm_concurrency).min(args.server_capacity) as f64;
        let ideal_wall = calls as f64 * args.latency_ms as f64 / 1000.0 / in_flight;
        let ideal_rate = items as f64 / ideal_wall;
        let rate = items as f64 / wall;
        writeln!(
            out,
            "| {workers} | {shards} | {calls} | {items} | {wall:.2} s | {rate:.1} | {ideal_rate:.1} | {:.2} |",
            rate / ideal_rate
        )?;
        drop(fleet);
        runtime.block_on(llm.shutdown())?;
    }

    // Overhead: the model-free generator with one worker processing one shard at a time.
    let mut fleet = Fleet::new("overhead");
    fleet.start_coordinator();
    fleet.start_worker(1);
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
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
    let wall = started.elapsed().as_secs_f64();
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
