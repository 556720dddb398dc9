//! Prometheus metrics of the worker and the coordinator (one registry per process).
//!
//! Names follow Prometheus conventions: a `principia_` prefix, base units, `_total` counters,
//! histograms whose buckets reach minutes for shards and LLM calls, and no job or shard ids as
//! labels (those go into tracing spans).

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder, exponential_buckets,
};

pub static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let registry = Registry::new();
    let build = IntCounterVec::new(
        Opts::new("principia_build_info", "Build information (always 1)."),
        &["version"],
    )
    .expect("metric");
    build.with_label_values(&[env!("CARGO_PKG_VERSION")]).inc();
    registry.register(Box::new(build)).expect("register");
    registry
});

fn register<T: prometheus::core::Collector + Clone + 'static>(metric: T) -> T {
    REGISTRY
        .register(Box::new(metric.clone()))
        .expect("metric registers once");
    metric
}

/// 0.5 s to about 34 min.
fn long_buckets() -> Vec<f64> {
    exponential_buckets(0.5, 2.0, 13).expect("buckets")
}

pub static SHARDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let counter = register(
        IntCounterVec::new(
            Opts::new(
                "principia_worker_shards_total",
                "Shard attempts by outcome (success, duplicate, cancelled, retry, dead_letter, released).",
            ),
            &["outcome"],
        )
        .expect("metric"),
    );
    for outcome in [
        "success",
        "duplicate",
        "cancelled",
        "retry",
        "dead_letter",
        "released",
    ] {
        counter.with_label_values(&[outcome]);
    }
    counter
});

pub static SHARD_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "principia_worker_shard_duration_seconds",
                "Time to process one shard, by outcome.",
            )
            .buckets(long_buckets()),
            &["outcome"],
        )
        .expect("metric"),
    )
});

pub static QUEUE_WAIT: LazyLock<Histogram> = LazyLock::new(|| {
    register(
        Histogram::with_opts(
            HistogramOpts::new(
                "principia_worker_queue_wait_seconds",
                "Time from a shard's publication to the start of its processing.",
            )
            .buckets(long_buckets()),
        )
        .expect("metric"),
    )
});

pub static SHARDS_IN_PROGRESS: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "principia_worker_shards_in_progress",
            "Shards being processed by this worker.",
        )
        .expect("metric"),
    )
});

pub static DELIVERIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "principia_worker_deliveries_total",
                "Shard deliveries received.",
            ),
            &["redelivered"],
        )
        .expect("metric"),
    )
});

pub static ITEMS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "principia_items_total",
                "Generated items by result (accepted, or rejected with its reason).",
            ),
            &["result", "reason"],
        )
        .expect("metric"),
    )
});

pub static LLM_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "principia_llm_requests_total",
                "LLM HTTP requests by status class (2xx, 4xx, 429, 5xx, timeout, error).",
            ),
            &["status_class"],
        )
        .expect("metric"),
    )
});

pub static LLM_CONCURRENCY_LIMIT: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "principia_llm_concurrency_limit",
            "LLM requests this process keeps in flight at most now (adaptive concurrency).",
        )
        .expect("metric"),
    )
});

pub static LLM_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    register(
        Histogram::with_opts(
            HistogramOpts::new(
                "principia_llm_request_duration_seconds",
                "Latency of one LLM HTTP request.",
            )
            .buckets(exponential_buckets(0.05, 2.0, 16).expect("buckets")),
        )
        .expect("metric"),
    )
});

pub static LLM_TOKENS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "principia_llm_tokens_total",
                "LLM tokens by kind (prompt, completion).",
            ),
            &["kind"],
        )
        .expect("metric"),
    )
});

pub static SHARDS_PUBLISHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "principia_coordinator_shards_published_total",
                "Shards published by the coordinator, by result (ok, error).",
            ),
            &["result"],
        )
        .expect("metric"),
    )
});

/// The registry in Prometheus' text format.
pub fn render() -> String {
    let mut buffer = Vec::new();
    TextEncoder::new()
        .encode(&REGISTRY.gather(), &mut buffer)
        .expect("text encoding");
    String::from_utf8(buffer).expect("metrics are UTF-8")
}

pub static LLM_CACHE_HITS: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "principia_llm_cache_hits_total",
            "LLM requests answered from the response cache instead of the server.",
        )
        .expect("metric"),
    )
});

pub static LLM_RATE_LIMIT_WAIT: LazyLock<Histogram> = LazyLock::new(|| {
    register(
        Histogram::with_opts(
            HistogramOpts::new(
                "principia_llm_rate_limit_wait_seconds",
                "Time a request waited for the (fleet-wide) rate limit before being sent.",
            )
            .buckets(exponential_buckets(0.01, 2.0, 16).expect("buckets")),
        )
        .expect("metric"),
    )
});

pub static STORE_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "principia_store_requests_total",
                "Object-store (S3) operations by operation and result (ok, created, exists, missing, error).",
            ),
            &["op", "result"],
        )
        .expect("metric"),
    )
});

pub static STORE_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "principia_store_request_duration_seconds",
                "Latency of one object-store operation.",
            )
            .buckets(exponential_buckets(0.001, 2.0, 16).expect("buckets")),
            &["op"],
        )
        .expect("metric"),
    )
});
