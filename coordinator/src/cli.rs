//! The `principia` command line: argument parsing and the mapping of results to exit codes.
//! Every subcommand is a thin call into the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use proto::job::{
    DEFAULT_MAX_ITEMS_PER_SECTION, DEFAULT_MIN_ITEMS_PER_SECTION, DEFAULT_NEAR_DUPLICATE_THRESHOLD,
    DEFAULT_SHARD_TOKEN_BUDGET,
};
use proto::{GeneratorKind, GeneratorSpec, Grounding, JobSpec};
use tokio_util::sync::CancellationToken;
use worker::cache::ResponseCache;
use worker::generate::extractive::ExtractiveGenerator;
use worker::generate::openai::OpenAiGenerator;
use worker::limits::{MemoryRateLimiter, RateLimiter, RateLimits, RedisRateLimiter};
use worker::llm::{LlmClient, LlmConfig, ToolMode};
use worker::process::Generators;
use worker::store::{LocalStore, ObjectStore};
use worker::structured_output::StructuredOutput;

use crate::combine;
use crate::embedded::{self, RunError, RunOptions};
use crate::estimate;
use crate::fleet::api::{ApiConfig, DEFAULT_MAX_JSON_BYTES, JobDefaults};
use crate::fleet::client::Client;
use crate::fleet::keys::KeyStore;
use crate::fleet::records::iso;
use crate::fleet::service::DEFAULT_MAX_UPLOAD_BYTES;
use crate::fleet::{FleetArgs, ServeConfig, StoreArgs, run_coordinator, run_worker};
use crate::ingest::{self, Format};
use crate::progress::{Progress, Totals};
use crate::telemetry::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "principia",
    version,
    about = "Align language models to your principles: documents in, grounded fine-tuning data out."
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PRINCIPIA_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Convert documents into a principle tree in SeekrFlow's JSON tree format.
    Convert(ConvertArgs),
    /// Run a whole alignment job in this process: documents in, DIR/dataset.parquet out.
    Run(RunArgs),
    /// Estimate a job's LLM calls, tokens, cost and time without calling any model.
    Estimate(EstimateArgs),
    /// Merge generated datasets with your own training data, deduplicated, optionally split.
    Combine(CombineArgs),
    /// Serve the job API and /metrics, publish shards, track progress, merge.
    Coordinator(CoordinatorArgs),
    /// Consume shards from the queue and write their parts (start as many as you like).
    Worker(WorkerArgs),
    /// Upload documents to a coordinator and start an alignment job.
    Submit(SubmitArgs),
    /// Show a job's state and progress.
    Status(StatusArgs),
    /// Download a finished job's dataset.
    Download(DownloadArgs),
    /// Cancel a job: publishing stops, queued shards are dropped, finished shards are kept.
    Cancel(StatusArgs),
    /// List jobs.
    Jobs(ClientArgs),
    /// Print a finished job's report readably (from report.json, or from DIR/report.json).
    Report(ReportArgs),
    /// Create, list and revoke API keys (directly on the coordinator's storage).
    Keys(KeysArgs),
}

#[derive(Debug, Args)]
struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
    #[command(flatten)]
    storage: StoreArgs,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key for a tenant and print it (it is shown only this once).
    Create {
        /// The tenant the key acts for (letters, digits, '.', '_', '-').
        #[arg(long)]
        tenant: String,
    },
    /// List the keys: prefix, tenant, creation time.
    List,
    /// Revoke a key, given whole or by its listed prefix.
    Revoke {
        /// The key or its prefix (`pk-` and at least 4 more characters, naming one key).
        key: String,
    },
}

#[derive(Debug, Args)]
struct ReportArgs {
    /// A report.json, a dataset.parquet with its report.json beside it, or an output directory.
    path: PathBuf,
    /// Print the JSON instead.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct CoordinatorArgs {
    /// Address of the API and /metrics.
    #[arg(long, env = "PRINCIPIA_LISTEN", default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    #[command(flatten)]
    fleet: FleetArgs,
    /// Generator model of jobs that name none (jobs then default to the openai generator).
    #[arg(long, env = "PRINCIPIA_LLM_MODEL")]
    model: Option<String>,
    /// Judge model of jobs that name none.
    #[arg(long, env = "PRINCIPIA_LLM_JUDGE_MODEL")]
    judge_model: Option<String>,
    #[command(flatten)]
    sizes: SizeArgs,
    /// Largest file accepted by an upload, in bytes (larger uploads get 413).
    #[arg(long, env = "PRINCIPIA_MAX_UPLOAD_BYTES", default_value_t = DEFAULT_MAX_UPLOAD_BYTES)]
    max_upload_bytes: usize,
    /// Largest body of any other request, in bytes (larger requests get 413).
    #[arg(long, env = "PRINCIPIA_MAX_REQUEST_BYTES", default_value_t = DEFAULT_MAX_JSON_BYTES)]
    max_request_bytes: usize,
    /// Seconds between reloads of the API keys from storage: a revoked key stops working within this.
    #[arg(long, env = "PRINCIPIA_KEY_REFRESH_SECS", default_value_t = 5)]
    key_refresh_secs: u64,
}

/// How a job is cut into shards and how many items each section gets.
#[derive(Debug, Args)]
struct SizeArgs {
    /// Source tokens per shard at most (a larger section is a shard of its own).
    #[arg(long, default_value_t = DEFAULT_SHARD_TOKEN_BUDGET)]
    shard_tokens: usize,
    /// Accepted items wanted per section at least (fewer is reported as uncovered).
    #[arg(long, default_value_t = DEFAULT_MIN_ITEMS_PER_SECTION)]
    min_items: u32,
    /// Items kept per section at most.
    #[arg(long, default_value_t = DEFAULT_MAX_ITEMS_PER_SECTION)]
    max_items: u32,
    /// Word-set similarity (0.5–1) from which a question is a near duplicate of an earlier one.
    #[arg(long, default_value_t = DEFAULT_NEAR_DUPLICATE_THRESHOLD, value_parser = near_duplicate_threshold)]
    near_duplicate_threshold: f64,
}

fn tool_mode(value: &str) -> Result<ToolMode, String> {
    value
        .parse()
        .map_err(|()| format!("{value:?} is not one of auto, plain, off"))
}

fn structured_output(value: &str) -> Result<StructuredOutput, String> {
    value
        .parse()
        .map_err(|()| format!("{value:?} is not one of auto, json_schema, json_object, prompt"))
}

fn near_duplicate_threshold(value: &str) -> Result<f64, String> {
    let threshold: f64 = value.parse().map_err(|e| format!("{e}"))?;
    if (0.5..=1.0).contains(&threshold) {
        Ok(threshold)
    } else {
        Err(format!("{threshold} is not between 0.5 and 1"))
    }
}

#[derive(Debug, Args)]
struct WorkerArgs {
    /// Shards processed at once (also the queue prefetch).
    #[arg(long, env = "PRINCIPIA_WORKER_CONCURRENCY", default_value_t = 4)]
    concurrency: usize,
    /// Address of this worker's /metrics (none when unset).
    #[arg(long, env = "PRINCIPIA_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// On SIGTERM, how long shards in progress may take to finish.
    #[arg(long, env = "PRINCIPIA_GRACE_SECS", default_value_t = 600)]
    grace_secs: u64,
    #[command(flatten)]
    fleet: FleetArgs,
    #[command(flatten)]
    llm: LlmArgs,
}

#[derive(Debug, Args)]
struct ClientArgs {
    /// The coordinator's URL.
    #[arg(
        long,
        env = "PRINCIPIA_COORDINATOR_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    coordinator_url: String,
    /// API key, when the coordinator requires one.
    #[arg(long, env = "PRINCIPIA_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

impl ClientArgs {
    fn client(&self) -> anyhow::Result<Client> {
        Client::new(&self.coordinator_url, self.api_key.clone())
    }
}

#[derive(Debug, Args)]
struct SubmitArgs {
    /// Principle documents.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// What the aligned model should be.
    #[arg(long)]
    instructions: String,
    #[arg(long)]
    system_prompt: Option<String>,
    #[arg(long, value_enum)]
    generator: Option<GeneratorChoice>,
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    judge_model: Option<String>,
    #[arg(long)]
    shard_tokens: Option<usize>,
    #[arg(long)]
    min_items: Option<u32>,
    #[arg(long)]
    max_items: Option<u32>,
    /// LLM tokens the job may spend.
    #[arg(long)]
    token_budget: Option<u64>,
    /// Wait for the job to finish, showing progress.
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
struct StatusArgs {
    job: String,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
struct DownloadArgs {
    job: String,
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
struct ConvertArgs {
    /// Markdown, SeekrFlow JSON tree, eCFR XML, US Code USLM XML, HTML, DOCX, PDF or plain-text
    /// files (several become one tree).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Output file (`-` for standard output).
    #[arg(short, long, default_value = "-")]
    output: PathBuf,
    /// Input format; detected from the bytes and the file name when absent.
    #[arg(long, value_enum)]
    format: Option<Format>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum GeneratorChoice {
    Extractive,
    Openai,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ConcurrencyMode {
    Adaptive,
    Fixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum GroundingChoice {
    Sentences,
    Quotes,
}

/// Job settings shared by every command that starts a job.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// What the aligned model should be ("I want a chatbot that specializes in ...").
    #[arg(long)]
    instructions: String,
    /// System message written into every generated conversation.
    #[arg(long)]
    system_prompt: Option<String>,
    /// Generator: `openai` by default when an LLM URL is configured, else `extractive`.
    #[arg(long, value_enum)]
    generator: Option<GeneratorChoice>,
    #[command(flatten)]
    sizes: SizeArgs,
    /// Sampling temperature of the generator model.
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    /// How generated items cite their evidence: `sentences` (the model names numbered sentences
    /// of the section; works with small models) or `quotes` (the model copies exact quotes).
    #[arg(long, value_enum, default_value_t = GroundingChoice::Sentences)]
    grounding: GroundingChoice,
    /// LLM tokens the job may spend; past it, remaining sections are reported uncovered.
    #[arg(long)]
    token_budget: Option<u64>,
    #[command(flatten)]
    llm: LlmArgs,
}

/// OpenAI-compatible endpoint settings.
#[derive(Debug, Args)]
pub struct LlmArgs {
    /// Base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1 (falls back to OPENAI_BASE_URL).
    #[arg(long, env = "PRINCIPIA_LLM_URL")]
    llm_url: Option<String>,
    /// Generator model name.
    #[arg(long, env = "PRINCIPIA_LLM_MODEL")]
    model: Option<String>,
    /// Judge model name (defaults to the generator model).
    #[arg(long, env = "PRINCIPIA_LLM_JUDGE_MODEL")]
    judge_model: Option<String>,
    /// API key (falls back to OPENAI_API_KEY).
    #[arg(long, env = "PRINCIPIA_LLM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Concurrent LLM requests per process at most.
    #[arg(long, default_value_t = 8, env = "PRINCIPIA_LLM_CONCURRENCY")]
    llm_concurrency: usize,
    /// `adaptive`: the requests in flight are learned from the server (from 1, while throughput
    /// grows, halved on 429/503/timeouts), up to --llm-concurrency; `fixed`: always that many.
    #[arg(long, value_enum, default_value_t = ConcurrencyMode::Adaptive, env = "PRINCIPIA_LLM_CONCURRENCY_MODE")]
    llm_concurrency_mode: ConcurrencyMode,
    /// Timeout of one LLM request, in seconds.
    #[arg(long, default_value_t = 120, env = "PRINCIPIA_LLM_TIMEOUT_SECS")]
    llm_timeout_secs: u64,
    /// Retries of a failed LLM request (429, 5xx, timeouts).
    #[arg(long, default_value_t = 5, env = "PRINCIPIA_LLM_MAX_RETRIES")]
    llm_max_retries: u32,
    /// Lookups of cross-references, definitions and the tree: `auto` (the section's own looked up
    /// into its prompt, tools for anything else; `plain` when the server refuses tools), `plain`
    /// (the prompt part only) or `off`.
    #[arg(long, default_value = "auto", env = "PRINCIPIA_LLM_TOOLS", value_parser = tool_mode)]
    llm_tools: ToolMode,
    /// How replies' JSON is asked for: `auto` (json_schema, stepping down to json_object, then to
    /// the schema in the prompt, as the server refuses them), `json_schema`, `json_object` or
    /// `prompt`.
    #[arg(long, default_value = "auto", env = "PRINCIPIA_LLM_STRUCTURED_OUTPUT", value_parser = structured_output)]
    structured_output: StructuredOutput,
    /// Requests per minute to the LLM endpoint, shared by every worker of the fleet (unlimited).
    #[arg(long, env = "PRINCIPIA_LLM_RPM")]
    llm_requests_per_minute: Option<u64>,
    /// Tokens per minute to the LLM endpoint, shared by every worker of the fleet (unlimited).
    #[arg(long, env = "PRINCIPIA_LLM_TPM")]
    llm_tokens_per_minute: Option<u64>,
    /// Length of the rate-limit window in milliseconds (a minute; shorter only for tests).
    #[arg(
        long,
        env = "PRINCIPIA_LLM_RATE_WINDOW_MS",
        default_value_t = 60_000,
        hide = true
    )]
    llm_rate_window_ms: u64,
    /// Do not answer repeated LLM requests from the response cache (`cache/llm/` in the output
    /// directory or bucket).
    #[arg(long, env = "PRINCIPIA_LLM_NO_CACHE")]
    no_llm_cache: bool,
}

#[derive(Debug, Args)]
struct EstimateArgs {
    /// Principle documents.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Input format; detected from the bytes and the file name when absent.
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// The job's instructions: they are part of every prompt (none when absent).
    #[arg(long, default_value = "")]
    instructions: String,
    /// Generator to estimate (`extractive` makes no LLM call).
    #[arg(long, value_enum, default_value = "openai")]
    generator: GeneratorChoice,
    /// Generator model (shown with the estimate; token counts do not depend on it).
    #[arg(long, env = "PRINCIPIA_LLM_MODEL")]
    model: Option<String>,
    #[command(flatten)]
    sizes: SizeArgs,
    /// Price of a million prompt tokens.
    #[arg(long, value_parser = non_negative)]
    price_in: Option<f64>,
    /// Price of a million completion tokens.
    #[arg(long, value_parser = non_negative)]
    price_out: Option<f64>,
    /// Mean seconds one LLM call takes (for the time estimate).
    #[arg(long, default_value_t = 10.0, value_parser = non_negative)]
    latency_secs: f64,
    /// Concurrent LLM requests (for the time estimate).
    #[arg(long, default_value_t = 8, env = "PRINCIPIA_LLM_CONCURRENCY")]
    llm_concurrency: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn non_negative(value: &str) -> Result<f64, String> {
    let number: f64 = value.parse().map_err(|e| format!("{e}"))?;
    if number.is_finite() && number >= 0.0 {
        Ok(number)
    } else {
        Err(format!("{value} is not a number of at least 0"))
    }
}

#[derive(Debug, Args)]
struct CombineArgs {
    /// Generated datasets and your own data (.parquet, .jsonl); earlier inputs win duplicates.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Source name of the inputs, in order, one per `--source` (default: the file stem).
    #[arg(long = "source", value_name = "NAME")]
    sources: Vec<String>,
    /// Output prefix: OUT.parquet and OUT.jsonl (OUT.eval.* with --eval-fraction).
    #[arg(short, long)]
    out: PathBuf,
    /// Share of rows held out for evaluation, stratified by section (0 < F < 1).
    #[arg(long)]
    eval_fraction: Option<f64>,
    /// Seed of the evaluation split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Word-set similarity (0.5–1) from which a question is a near duplicate of an earlier one.
    #[arg(long, default_value_t = DEFAULT_NEAR_DUPLICATE_THRESHOLD, value_parser = near_duplicate_threshold)]
    near_duplicate_threshold: f64,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Principle documents.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Output directory: dataset.parquet, report.json, and the job's working files.
    #[arg(long, short, default_value = "out")]
    out: PathBuf,
    /// Input format; detected from the bytes and the file name when absent.
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Shards processed at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    #[command(flatten)]
    job: JobArgs,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let _logs = telemetry::init(cli.log_format);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Convert(args) => convert(args),
            Command::Run(args) => run(args).await,
            Command::Estimate(args) => estimate(args),
            Command::Combine(args) => combine(args),
            Command::Coordinator(args) => coordinator(args).await,
            Command::Worker(args) => worker(args).await,
            Command::Submit(args) => submit(args).await,
            Command::Status(args) => status(args).await,
            Command::Download(args) => download(args).await,
            Command::Cancel(args) => cancel(args).await,
            Command::Jobs(args) => jobs(args).await,
            Command::Report(args) => report(args),
            Command::Keys(args) => keys(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn convert(args: ConvertArgs) -> anyhow::Result<ExitCode> {
    let ingested = ingest::read_files(&args.inputs, args.format)?;
    for warning in &ingested.warnings {
        tracing::warn!("{warning}");
    }
    let json = serde_json::to_string_pretty(&ingest::to_seekr_json(&ingested.tree))?;
    if args.output.as_os_str() == "-" {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{json}")?;
    } else {
        std::fs::write(&args.output, json + "\n")
            .with_context(|| format!("writing {}", args.output.display()))?;
        tracing::info!(
            output = %args.output.display(),
            nodes = ingested.tree.nodes().len(),
            sections = ingested.tree.generation_units().len(),
            "principle tree written"
        );
    }
    Ok(ExitCode::SUCCESS)
}

impl LlmArgs {
    /// The endpoint configuration, if an LLM URL is set by flag or environment.
    fn config(&self) -> anyhow::Result<Option<LlmConfig>> {
        let Some(url) = self
            .llm_url
            .clone()
            .or_else(|| std::env::var("OPENAI_BASE_URL").ok())
            .filter(|url| !url.trim().is_empty())
        else {
            return Ok(None);
        };
        let Some(model) = self.model.clone().filter(|m| !m.trim().is_empty()) else {
            bail!(
                "an LLM URL is configured ({url}) but no model: set --model or PRINCIPIA_LLM_MODEL"
            );
        };
        let mut config = LlmConfig::new(url, model);
        config.api_key = self
            .api_key
            .clone()
            .or_else(|| std::env::var("OPENAI_API_KEY").ok())
            .filter(|k| !k.trim().is_empty());
        config.judge_model = self.judge_model.clone().filter(|m| !m.trim().is_empty());
        config.timeout = Duration::from_secs(self.llm_timeout_secs.max(1));
        config.max_retries = self.llm_max_retries;
        config.concurrency = self.llm_concurrency.max(1);
        config.adaptive_concurrency = self.llm_concurrency_mode == ConcurrencyMode::Adaptive;
        config.tools = self.llm_tools;
        config.structured_output = self.structured_output;
        Ok(Some(config))
    }

    fn limits(&self) -> RateLimits {
        RateLimits {
            requests_per_minute: self.llm_requests_per_minute,
            tokens_per_minute: self.llm_tokens_per_minute,
        }
    }

    fn rate_window(&self) -> Duration {
        Duration::from_millis(self.llm_rate_window_ms.max(1))
    }

    /// The generators this process can run; LLM requests go through `limiter` when limits are set,
    /// and are answered from a response cache on `store` unless `--no-llm-cache`.
    pub fn generators(
        &self,
        limiter: Option<Arc<dyn RateLimiter>>,
        store: Arc<dyn ObjectStore>,
    ) -> anyhow::Result<Generators> {
        let openai = match self.config()? {
            Some(config) => {
                let mut client = LlmClient::new(config).context("configuring the LLM client")?;
                if !self.no_llm_cache {
                    client = client.with_cache(ResponseCache::new(store.clone()));
                }
                let limits = self.limits();
                if limits != RateLimits::default()
                    && let Some(limiter) = limiter
                {
                    client = client.with_rate_limiter(limiter, limits);
                }
                Some(Arc::new(OpenAiGenerator::new(Arc::new(client)).with_lookups(store)) as _)
            }
            None => None,
        };
        Ok(Generators {
            extractive: Arc::new(ExtractiveGenerator::new()),
            openai,
        })
    }
}

impl JobArgs {
    pub fn spec(&self) -> anyhow::Result<JobSpec> {
        if self.instructions.trim().is_empty() {
            bail!("--instructions must not be empty");
        }
        let sizes = &self.sizes;
        if sizes.min_items > sizes.max_items {
            bail!(
                "--min-items ({}) exceeds --max-items ({})",
                sizes.min_items,
                sizes.max_items
            );
        }
        let config = self.llm.config()?;
        let kind = match (self.generator, &config) {
            (Some(GeneratorChoice::Extractive), _) | (None, None) => GeneratorKind::Extractive,
            (Some(GeneratorChoice::Openai), None) => {
                bail!(
                    "--generator openai needs an LLM URL: set --llm-url or PRINCIPIA_LLM_URL (or OPENAI_BASE_URL)"
                )
            }
            (Some(GeneratorChoice::Openai), Some(_)) | (None, Some(_)) => GeneratorKind::Openai,
        };
        let (model, judge_model) = match (kind, config) {
            (GeneratorKind::Openai, Some(config)) => (Some(config.model), config.judge_model),
            _ => (None, None),
        };
        Ok(JobSpec {
            instructions: self.instructions.trim().to_string(),
            system_prompt: self.system_prompt.clone(),
            generator: GeneratorSpec {
                kind,
                model,
                judge_model,
                temperature: if kind == GeneratorKind::Openai {
                    self.temperature
                } else {
                    0.0
                },
                grounding: match self.grounding {
                    GroundingChoice::Sentences => Grounding::Sentences,
                    GroundingChoice::Quotes => Grounding::Quotes,
                },
            },
            shard_token_budget: sizes.shard_tokens,
            min_items_per_section: sizes.min_items,
            max_items_per_section: sizes.max_items,
            token_budget: self.token_budget,
            near_duplicate_threshold: sizes.near_duplicate_threshold,
        })
    }
}

/// Cancel on Ctrl-C or SIGTERM.
fn cancel_on_signal() -> CancellationToken {
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::warn!("stopping: finishing the shards in progress (press Ctrl-C again to abort)");
        token.cancel();
        let _ = tokio::signal::ctrl_c().await;
        std::process::exit(130);
    });
    cancel
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let spec = args.job.spec()?;
    let limiter = MemoryRateLimiter::with_window(args.job.llm.rate_window());
    let store = Arc::new(LocalStore::new(&args.out));
    let generators = args.job.llm.generators(Some(Arc::new(limiter)), store)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let options = RunOptions {
        inputs: args.inputs,
        format: args.format,
        spec,
        out_dir: args.out,
        concurrency: args.concurrency,
        generators,
    };
    match embedded::run(options, cancel_on_signal()).await {
        Ok(output) => {
            let report = &output.report;
            let mut stdout = std::io::stdout().lock();
            writeln!(
                stdout,
                "job {}: {} items from {}/{} sections ({} rejected) with the {} generator\ndataset: {}\nreport:  {}",
                output.job_id,
                report.items.accepted,
                report.coverage.covered,
                report.coverage.total,
                report.items.rejected,
                report.generator,
                output.dataset.display(),
                output.report_path.display(),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Err(error @ RunError::Interrupted { .. }) => {
            let mut stderr = std::io::stderr().lock();
            writeln!(stderr, "{error}")?;
            Ok(ExitCode::from(130))
        }
        Err(error) => Err(error.into()),
    }
}

fn combine(args: CombineArgs) -> anyhow::Result<ExitCode> {
    if args.sources.len() > args.inputs.len() {
        bail!(
            "{} --source names for {} inputs",
            args.sources.len(),
            args.inputs.len()
        );
    }
    let mut names = args.sources.into_iter();
    let inputs = args
        .inputs
        .into_iter()
        .map(|path| combine::CombineInput {
            path,
            source: names.next(),
        })
        .collect();
    let summary = combine::combine_files(&combine::CombineOptions {
        inputs,
        out: args.out,
        settings: combine::CombineSettings {
            eval_fraction: args.eval_fraction,
            seed: args.seed,
            near_duplicate_threshold: args.near_duplicate_threshold,
        },
    })?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&summary)?)?;
    } else {
        write!(stdout, "{}", combine::render(&summary))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn estimate(args: EstimateArgs) -> anyhow::Result<ExitCode> {
    let sizes = &args.sizes;
    if sizes.min_items > sizes.max_items {
        bail!(
            "--min-items ({}) exceeds --max-items ({})",
            sizes.min_items,
            sizes.max_items
        );
    }
    let mut spec = JobSpec::extractive(args.instructions.trim());
    if args.generator == GeneratorChoice::Openai {
        spec.generator.kind = GeneratorKind::Openai;
        spec.generator.model = args.model.clone().filter(|m| !m.trim().is_empty());
    }
    spec.shard_token_budget = sizes.shard_tokens;
    spec.min_items_per_section = sizes.min_items;
    spec.max_items_per_section = sizes.max_items;
    spec.near_duplicate_threshold = sizes.near_duplicate_threshold;
    let usage = estimate::estimate_files(&args.inputs, args.format, &spec)?;
    let priced = estimate::price(
        usage,
        estimate::Pricing {
            price_in: args.price_in,
            price_out: args.price_out,
            latency_secs: args.latency_secs,
            concurrency: args.llm_concurrency,
        },
    );
    let mut stdout = std::io::stdout().lock();
    if args.json {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&priced)?)?;
    } else {
        write!(stdout, "{}", estimate::render(&priced))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn coordinator(args: CoordinatorArgs) -> anyhow::Result<ExitCode> {
    let defaults = JobDefaults {
        model: args.model.filter(|m| !m.trim().is_empty()),
        judge_model: args.judge_model.filter(|m| !m.trim().is_empty()),
        shard_token_budget: args.sizes.shard_tokens,
        min_items_per_section: args.sizes.min_items,
        max_items_per_section: args.sizes.max_items,
        near_duplicate_threshold: args.sizes.near_duplicate_threshold,
    };
    let serve = ServeConfig {
        listen: args.listen,
        api: ApiConfig {
            defaults,
            max_json_bytes: args.max_request_bytes,
        },
        max_upload_bytes: args.max_upload_bytes,
        key_refresh: Duration::from_secs(args.key_refresh_secs.max(1)),
    };
    run_coordinator(&args.fleet, serve, cancel_on_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn keys(args: KeysArgs) -> anyhow::Result<ExitCode> {
    let keys = KeyStore::new(args.storage.store().await?);
    let mut stdout = std::io::stdout().lock();
    match args.command {
        KeysCommand::Create { tenant } => {
            let new = keys.create(&tenant).await?;
            writeln!(stdout, "{}", new.key)?;
            tracing::info!(
                prefix = %new.record.prefix,
                tenant = %new.record.tenant,
                "API key created; it is shown only once"
            );
        }
        KeysCommand::List => {
            for (_, record) in keys.list().await? {
                writeln!(
                    stdout,
                    "{}\t{}\t{}",
                    record.prefix,
                    record.tenant,
                    iso(record.created_at_ms)
                )?;
            }
        }
        KeysCommand::Revoke { key } => {
            let record = keys.revoke(&key).await?;
            writeln!(
                stdout,
                "revoked {} (tenant {})",
                record.prefix, record.tenant
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let connection = worker::limits::connect_redis(&args.fleet.redis_url, Duration::from_secs(10))
        .await
        .context("connecting to Redis")?;
    let limiter = RedisRateLimiter::new(connection, args.fleet.redis_namespace.clone())
        .with_window(args.llm.rate_window());
    let generators = args
        .llm
        .generators(Some(Arc::new(limiter)), args.fleet.store().await?)?;
    run_worker(
        &args.fleet,
        args.concurrency,
        args.metrics_listen,
        generators,
        Duration::from_secs(args.grace_secs),
        cancel_on_signal(),
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let mut files = Vec::new();
    for input in &args.inputs {
        files.push(client.upload(input).await?);
    }
    let body = serde_json::json!({
        "instructions": args.instructions,
        "files": files,
        "type": "principle",
        "system_prompt": args.system_prompt,
        "generator": args.generator.map(|g| match g {
            GeneratorChoice::Extractive => "extractive",
            GeneratorChoice::Openai => "openai",
        }),
        "model": args.model,
        "judge_model": args.judge_model,
        "shard_tokens": args.shard_tokens,
        "min_items": args.min_items,
        "max_items": args.max_items,
        "token_budget": args.token_budget,
    });
    let job = client.generate(body).await?;
    let id = job["id"].as_str().unwrap_or_default().to_string();
    writeln!(std::io::stdout().lock(), "{id}")?;
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    let mut progress: Option<Progress> = None;
    loop {
        let job = client.job(&id).await?;
        let extra = &job["principia"];
        let count = |key: &str| extra[key].as_u64().unwrap_or(0);
        let totals = Totals {
            shards_done: count("shards_done"),
            shards_total: count("shards_total"),
            accepted: count("accepted"),
            rejected: count("rejected"),
            tokens: count("tokens"),
            failed: count("shards_failed"),
        };
        if totals.shards_total > 0 {
            progress
                .get_or_insert_with(|| Progress::new(totals.shards_total, 0))
                .set(totals);
        }
        match job["status"].as_str().unwrap_or_default() {
            "completed" => {
                if let Some(progress) = progress {
                    progress.finish();
                }
                return Ok(ExitCode::SUCCESS);
            }
            "failed" | "cancelled" | "stopped" => {
                if let Some(progress) = progress {
                    progress.finish();
                }
                bail!(
                    "job {id} {}: {}",
                    job["status"].as_str().unwrap_or_default(),
                    job["status_message"].as_str().unwrap_or("")
                );
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let job = args.client.client()?.job(&args.job).await?;
    writeln!(
        std::io::stdout().lock(),
        "{}",
        serde_json::to_string_pretty(&job)?
    )?;
    Ok(ExitCode::SUCCESS)
}

async fn cancel(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let job = args.client.client()?.cancel(&args.job).await?;
    writeln!(
        std::io::stdout().lock(),
        "{}: {}",
        job["id"].as_str().unwrap_or_default(),
        job["status_message"].as_str().unwrap_or_default()
    )?;
    Ok(ExitCode::SUCCESS)
}

async fn download(args: DownloadArgs) -> anyhow::Result<ExitCode> {
    let bytes = args
        .client
        .client()?
        .download(&args.job, &args.output)
        .await?;
    tracing::info!(bytes, output = %args.output.display(), "dataset downloaded");
    Ok(ExitCode::SUCCESS)
}

async fn jobs(args: ClientArgs) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    for job in args.client()?.jobs().await? {
        writeln!(
            stdout,
            "{}\t{}\t{:.0}%\t{}",
            job["id"].as_str().unwrap_or_default(),
            job["status"].as_str().unwrap_or_default(),
            job["progress"].as_f64().unwrap_or(0.0),
            job["created_at"].as_str().unwrap_or_default(),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn report(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let path = if args.path.is_dir() {
        args.path.join("report.json")
    } else if args.path.extension().is_some_and(|e| e == "parquet") {
        args.path.with_file_name("report.json")
    } else {
        args.path.clone()
    };
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let report: crate::report::JobReport = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a Principia job report", path.display()))?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write!(stdout, "{}", crate::report::render(&report))?;
    }
    Ok(ExitCode::SUCCESS)
}
