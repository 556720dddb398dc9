//! The fleet: the coordinator service and the worker process over RabbitMQ, Redis and S3.
//!
//! This module wires the shared pieces (planner, processor, pool, merge) to the real services;
//! the logic itself is the same code `principia run` uses with in-process implementations.

pub mod api;
pub mod client;
pub mod keys;
pub mod progress;
pub mod records;
pub mod review;
mod review_api;
pub mod service;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;
use worker::amqp::{AmqpAdmin, AmqpConfig, AmqpConsumer, AmqpPublisher};
use worker::limits::RedisTokenBudget;
use worker::pool::{PoolConfig, run_pool};
use worker::process::{Generators, ShardProcessor};
use worker::s3::{S3Config, S3Store};
use worker::store::{LocalStore, Metered, ObjectStore};

use self::api::ApiConfig;
use self::keys::{KeyRing, KeyStore};
use self::progress::{FleetEvents, RedisProgress};
use self::service::Coordinator;

/// Where the fleet's services are. Every flag has an environment variable.
#[derive(Debug, Clone, Args)]
pub struct FleetArgs {
    /// RabbitMQ URL (the vhost is the path, `%2f` for `/`).
    #[arg(
        long,
        env = "PRINCIPIA_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,
    /// Name of the shard queue (the exchange, dead-letter exchange and queue are named after it).
    #[arg(long, env = "PRINCIPIA_QUEUE", default_value = worker::amqp::DEFAULT_QUEUE)]
    pub queue: String,
    /// Deliveries of a shard before the broker dead-letters it.
    #[arg(long, env = "PRINCIPIA_DELIVERY_LIMIT", default_value_t = 5)]
    pub delivery_limit: u32,
    /// Redis URL.
    #[arg(
        long,
        env = "PRINCIPIA_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,
    /// Prefix of every Redis key.
    #[arg(long, env = "PRINCIPIA_REDIS_NAMESPACE", default_value = "principia")]
    pub redis_namespace: String,
    #[command(flatten)]
    pub storage: StoreArgs,
}

/// Where files, parts, datasets and key records are stored. Every flag has an environment variable.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// S3 bucket of files, parts and datasets (credentials from the standard AWS chain).
    #[arg(long, env = "PRINCIPIA_S3_BUCKET")]
    pub s3_bucket: Option<String>,
    /// S3-compatible endpoint (MinIO, ...); path-style addressing is used with it.
    #[arg(long, env = "PRINCIPIA_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region (else AWS_REGION / the profile, else us-east-1).
    #[arg(long, env = "PRINCIPIA_S3_REGION")]
    pub s3_region: Option<String>,
    /// Key prefix inside the bucket.
    #[arg(long, env = "PRINCIPIA_S3_PREFIX")]
    pub s3_prefix: Option<String>,
    /// Without a bucket: a directory shared by every process of a one-machine fleet.
    #[arg(long, env = "PRINCIPIA_DATA_DIR", conflicts_with = "s3_bucket")]
    pub data_dir: Option<PathBuf>,
}

impl FleetArgs {
    pub fn amqp(&self) -> AmqpConfig {
        let mut config = AmqpConfig::new(self.amqp_url.clone());
        config.queue = self.queue.clone();
        config.delivery_limit = self.delivery_limit;
        config
    }

    pub async fn store(&self) -> anyhow::Result<Arc<dyn ObjectStore>> {
        self.storage.store().await
    }

    pub async fn progress(&self) -> anyhow::Result<RedisProgress> {
        let connection = worker::limits::connect_redis(&self.redis_url, Duration::from_secs(10))
            .await
            .context("connecting to Redis")?;
        Ok(RedisProgress::new(connection, self.redis_namespace.clone()))
    }
}

impl StoreArgs {
    pub async fn store(&self) -> anyhow::Result<Arc<dyn ObjectStore>> {
        // An empty variable counts as unset (as charts and compose files leave them).
        let set = |value: &Option<String>| value.clone().filter(|v| !v.trim().is_empty());
        match (set(&self.s3_bucket), &self.data_dir) {
            (Some(bucket), _) => {
                let endpoint = set(&self.s3_endpoint);
                let store = S3Store::new(S3Config {
                    bucket,
                    force_path_style: endpoint.is_some(),
                    endpoint,
                    region: set(&self.s3_region),
                    prefix: set(&self.s3_prefix),
                })
                .await
                .context("configuring S3")?;
                Ok(Arc::new(Metered::new(store)))
            }
            (None, Some(dir)) => Ok(Arc::new(Metered::new(LocalStore::new(dir)))),
            (None, None) => anyhow::bail!(
                "no storage configured: set PRINCIPIA_S3_BUCKET (or --s3-bucket), or --data-dir for a one-machine fleet"
            ),
        }
    }
}

/// How the coordinator serves its API.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub api: ApiConfig,
    /// Largest upload accepted.
    pub max_upload_bytes: usize,
    /// How often the API keys are reloaded from the store (the delay before a revocation holds).
    pub key_refresh: Duration,
}

/// Serve the API and run the job monitor until cancelled.
///
/// With no API key in the store the API is open, which is allowed only on a loopback address:
/// on any other address the coordinator refuses to start.
pub async fn run_coordinator(
    fleet: &FleetArgs,
    serve: ServeConfig,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let store = fleet.store().await?;
    let loopback = serve.listen.ip().is_loopback();
    let keys = KeyRing::load(KeyStore::new(store.clone()), serve.key_refresh, loopback)
        .await
        .context("loading API keys from storage")?;
    if keys.is_empty() {
        if !loopback {
            anyhow::bail!(
                "refusing to serve on {} without API keys: create one with `principia keys create --tenant NAME` (same storage settings), or listen on a loopback address",
                serve.listen
            );
        }
        tracing::warn!(
            listen = %serve.listen,
            "NO API KEYS EXIST: the API is served WITHOUT AUTHENTICATION to anyone who can reach {} (loopback only). Create a key with `principia keys create --tenant NAME` to require keys.",
            serve.listen
        );
    } else {
        tracing::info!(
            keys = keys.len(),
            "API keys loaded; every API request needs one"
        );
    }
    let progress = fleet.progress().await?;
    let publisher = AmqpPublisher::connect(fleet.amqp())
        .await
        .context("connecting to RabbitMQ")?;
    let coordinator = Coordinator::start(
        store,
        Arc::new(publisher),
        Some(progress),
        serve.max_upload_bytes,
    )
    .await
    .context("loading jobs from storage")?;
    tokio::spawn(drain_dead_letters(
        coordinator.clone(),
        fleet.amqp(),
        cancel.clone(),
    ));
    tokio::spawn(
        coordinator
            .clone()
            .run_monitor(Duration::from_millis(200), cancel.clone()),
    );
    let listen = serve.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    tracing::info!(%listen, "coordinator serving the API");
    axum::serve(
        listener,
        api::router(coordinator, Arc::new(keys), serve.api),
    )
    .with_graceful_shutdown(async move { cancel.cancelled().await })
    .await
    .context("serving the API")
}

/// Record every dead-lettered shard on its job (the broker dead-letters shards that crashed their
/// workers too often without any worker recording why), then remove it from the dead-letter queue.
async fn drain_dead_letters(
    coordinator: Arc<Coordinator>,
    amqp: AmqpConfig,
    cancel: CancellationToken,
) {
    let mut admin: Option<AmqpAdmin> = None;
    let mut interval = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = interval.tick() => {}
        }
        if admin.is_none() {
            match AmqpAdmin::connect(amqp.clone()).await {
                Ok(connected) => admin = Some(connected),
                Err(error) => {
                    tracing::warn!(%error, "connecting to read dead letters failed");
                    continue;
                }
            }
        }
        let Some(current) = admin.as_ref() else {
            continue;
        };
        let taken = current
            .take_dead_letters(100, |letter| {
                let coordinator = coordinator.clone();
                async move {
                    let reason = letter.reason.as_deref().unwrap_or("unknown");
                    match coordinator.record_dead_letter(&letter.body, reason).await {
                        Ok(()) => true,
                        Err(error) => {
                            tracing::warn!(%error, "recording a dead letter failed; keeping it");
                            false
                        }
                    }
                }
            })
            .await;
        match taken {
            Ok(0) => {}
            Ok(taken) => tracing::info!(taken, "dead letters recorded on their jobs"),
            Err(error) => {
                tracing::warn!(%error, "reading dead letters failed; reconnecting");
                admin = None;
            }
        }
    }
}

/// Consume shards until cancelled, then drain within the grace period.
pub async fn run_worker(
    fleet: &FleetArgs,
    concurrency: usize,
    metrics_listen: Option<SocketAddr>,
    generators: Generators,
    grace: Duration,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let store = fleet.store().await?;
    let progress = fleet.progress().await?;
    let mut amqp = fleet.amqp();
    amqp.prefetch = u16::try_from(concurrency.max(1)).unwrap_or(u16::MAX);
    let consumer_cancel = CancellationToken::new();
    let consumer = AmqpConsumer::connect(amqp, consumer_cancel.clone())
        .await
        .context("connecting to RabbitMQ")?;
    if let Some(addr) = metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        let app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(|| async { worker::metrics::render() }),
            )
            .route("/healthz", axum::routing::get(|| async { "ok" }));
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "metrics server stopped");
            }
        });
        tracing::info!(%addr, "worker metrics served");
    }
    let events = Arc::new(FleetEvents {
        progress: progress.clone(),
        store: store.clone(),
    });
    let connection = worker::limits::connect_redis(&fleet.redis_url, Duration::from_secs(10))
        .await
        .context("connecting to Redis")?;
    let budget = Arc::new(RedisTokenBudget::new(
        connection,
        fleet.redis_namespace.clone(),
    ));
    let processor = ShardProcessor::new(store, generators, budget).with_gate(Arc::new(progress));
    tracing::info!(concurrency, "worker consuming shards");
    let stop = cancel.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        consumer_cancel.cancel();
    });
    run_pool(
        consumer,
        processor,
        events,
        PoolConfig { concurrency, grace },
        cancel,
    )
    .await;
    tracing::info!("worker stopped");
    Ok(())
}
