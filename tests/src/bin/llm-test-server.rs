//! `llm-test-server`: the OpenAI-compatible test server as a process, for cross-process tests and
//! benchmarks. Prints its base URL (`http://127.0.0.1:PORT/v1`) on the first line of stdout and
//! serves until interrupted (Ctrl-C or SIGTERM).

use std::io::Write;
use std::time::Duration;

use clap::Parser;
use tests::{ServerConfig, try_spawn};

#[derive(Debug, Parser)]
#[command(about = "OpenAI-compatible chat-completions test server on 127.0.0.1")]
struct Args {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Latency added to every request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Answer the first K requests with 429.
    #[arg(long, default_value_t = 0)]
    fail_first_429: u32,
    /// `Retry-After` value sent with 429s.
    #[arg(long)]
    retry_after: Option<String>,
    /// Answer the next K requests with 500.
    #[arg(long, default_value_t = 0)]
    fail_first_500: u32,
    /// Make the first K generation/judge replies malformed JSON.
    #[arg(long, default_value_t = 0)]
    malformed_first: u32,
    /// Make every N-th generation/judge reply malformed JSON (0: never).
    #[arg(long, default_value_t = 0)]
    malformed_every: u32,
    /// Give the first item of every generation reply a fabricated quote.
    #[arg(long)]
    fabricate_evidence: bool,
    /// Reject every candidate in judge replies.
    #[arg(long)]
    judge_reject: bool,
    /// Items per generation reply at most.
    #[arg(long, default_value_t = 3)]
    items_per_reply: usize,
    /// Requests processed at once at most; excess requests wait.
    #[arg(long)]
    max_concurrent: Option<usize>,
    /// Require this bearer token.
    #[arg(long)]
    api_key: Option<String>,
    /// Known models (repeatable); others get 404. Any model when none is given.
    #[arg(long = "model")]
    models: Vec<String>,
    /// Leave `usage` out of replies.
    #[arg(long)]
    omit_usage: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = ServerConfig {
        port: args.port,
        latency: Duration::from_millis(args.latency_ms),
        fail_first_429: args.fail_first_429,
        retry_after: args.retry_after,
        fail_first_500: args.fail_first_500,
        malformed_first: args.malformed_first,
        malformed_every: args.malformed_every,
        fabricate_evidence: args.fabricate_evidence,
        judge_reject: args.judge_reject,
        items_per_reply: args.items_per_reply,
        max_concurrent: args.max_concurrent,
        api_key: args.api_key,
        models: args.models,
        omit_usage: args.omit_usage,
        ..ServerConfig::default()
    };
    let server = try_spawn(config).await?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{}", server.url)?;
        stdout.flush()?;
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    writeln!(std::io::stderr(), "{:?}", server.stats())?;
    server.shutdown().await?;
    Ok(())
}
