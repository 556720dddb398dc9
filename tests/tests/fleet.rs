//! The fleet end to end: a coordinator and workers as separate processes over the real RabbitMQ and
//! Redis of the machine and S3 (moto), against the LLM test server where a model is needed.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use proto::Record;
use tests::fleet::Fleet;
use tests::principia;
use tests::{ServerConfig, spawn};
use worker::amqp::{AmqpAdmin, AmqpConfig};

const INSTRUCTIONS: &str = "I want a chatbot that specializes in Harbor's lending policy";

fn example() -> PathBuf {
    principia::workspace_root().join("examples/harbor-lending-policy.md")
}

fn read_records(path: &std::path::Path) -> Vec<Record> {
    proto::dataset::decode_parquet(Bytes::from(std::fs::read(path).unwrap()))
        .unwrap()
        .0
}

/// Remove the test's queues and exchanges.
async fn delete_topology(queue: &str) {
    let mut config = AmqpConfig::new(tests::moto::AMQP_URL);
    config.queue = queue.to_string();
    if let Ok(admin) = AmqpAdmin::connect(config).await {
        let _ = admin.delete_topology().await;
        admin.close().await;
    }
}

/// Submit the example for the openai generator with the test model.
fn submit_openai(fleet: &Fleet, extra: &[&str]) -> String {
    let mut args = vec![
        "--instructions",
        INSTRUCTIONS,
        "--generator",
        "openai",
        "--model",
        "test-model",
    ];
    args.extend_from_slice(extra);
    fleet.submit(&[&example()], &args)
}

/// Stop the fleet, remove its queues, stop the LLM test server.
async fn tear_down(fleet: Fleet, llm: tests::RunningServer) {
    let queue = fleet.queue.clone();
    drop(fleet);
    delete_topology(&queue).await;
    llm.shutdown().await.unwrap();
}

fn download(fleet: &Fleet, job: &str, dir: &std::path::Path) -> Vec<Record> {
    let path = dir.join(format!("{job}.parquet"));
    fleet.cli(&["download", job, "-o", path.to_str().unwrap()]);
    read_records(&path)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_over_two_workers_equals_the_embedded_run_row_for_row() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::new("complete");
    fleet.start_coordinator();
    fleet.start_worker(2);
    fleet.start_worker(2);
    let job = fleet.submit(
        &[&example()],
        &["--instructions", INSTRUCTIONS, "--shard-tokens", "300"],
    );
    assert!(job.starts_with("al-"), "{job}");
    let status = fleet.wait_finished(&job, Duration::from_secs(60));
    assert_eq!(status["status"], "completed", "{status:#}");
    assert_eq!(status["progress"], 100.0);
    let output = &status["output_files"][0];
    assert_eq!(output["purpose"], "fine-tune");
    assert_eq!(output["file_type"], "parquet");
    let fleet_records = download(&fleet, &job, dir.path());

    let run = principia::run(
        principia::command()
            .arg("run")
            .arg(example())
            .args([
                "--instructions",
                INSTRUCTIONS,
                "--shard-tokens",
                "300",
                "--out",
            ])
            .arg(dir.path().join("embedded")),
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let embedded = read_records(&dir.path().join("embedded/dataset.parquet"));
    let ids = |records: &[Record]| {
        records
            .iter()
            .map(|r| r.record_id.clone())
            .collect::<Vec<_>>()
    };
    assert!(!embedded.is_empty());
    assert_eq!(
        ids(&fleet_records),
        ids(&embedded),
        "same rows, same order, same ids"
    );

    let listed = fleet.cli(&["jobs"]);
    assert!(
        listed.contains(&job) && listed.contains("completed"),
        "{listed}"
    );
    let queue = fleet.queue.clone();
    drop(fleet);
    delete_topology(&queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_shard_loses_nothing_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let llm = spawn(ServerConfig {
        latency: Duration::from_millis(400),
        ..ServerConfig::default()
    })
    .await;
    let mut fleet = Fleet::new("sigkill");
    fleet.use_llm(&llm.url, "test-model");
    fleet.start_coordinator();
    let victim = fleet.start_worker(2);
    fleet.start_worker(2);
    let job = submit_openai(&fleet, &["--shard-tokens", "250"]);
    // Kill one worker as soon as the first shards are done, while it holds others.
    fleet.wait_for(&job, Duration::from_secs(60), |s| {
        s["principia"]["shards_done"].as_u64().unwrap_or(0) >= 1
    });
    fleet.signal_worker(victim, "KILL");
    let status = fleet.wait_finished(&job, Duration::from_secs(120));
    assert_eq!(status["status"], "completed", "{status:#}");
    let records = download(&fleet, &job, dir.path());
    let ids: HashSet<_> = records.iter().map(|r| r.record_id.clone()).collect();
    assert_eq!(ids.len(), records.len(), "no duplicate record ids");
    let shards: HashSet<_> = records.iter().map(|r| r.shard_id.clone()).collect();
    let total = status["principia"]["shards_total"].as_u64().unwrap();
    assert!(total >= 3, "the job has several shards ({total})");
    assert_eq!(shards.len() as u64, total, "every shard contributed rows");
    tear_down(fleet, llm).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_the_shards_in_progress_and_exits_cleanly() {
    let llm = spawn(ServerConfig {
        latency: Duration::from_millis(600),
        ..ServerConfig::default()
    })
    .await;
    let mut fleet = Fleet::new("sigterm");
    fleet.use_llm(&llm.url, "test-model");
    fleet.start_coordinator();
    let draining = fleet.start_worker(2);
    let job = submit_openai(&fleet, &["--shard-tokens", "250"]);
    // Wait until the worker is busy with LLM calls, then ask it to stop.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while llm.requests() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no LLM request arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = fleet.status(&job)["principia"]["shards_done"]
        .as_u64()
        .unwrap_or(0);
    let code = fleet.signal_worker(draining, "TERM");
    assert_eq!(code, Some(0), "a draining worker exits 0\n{}", fleet.logs());
    // The shards it held were finished (their parts written) before it exited.
    fleet.wait_for(&job, Duration::from_secs(5), |s| {
        s["principia"]["shards_done"].as_u64().unwrap_or(0) > before
    });
    // The rest goes back to the queue: a new worker finishes the job.
    fleet.start_worker(2);
    let status = fleet.wait_finished(&job, Duration::from_secs(120));
    assert_eq!(status["status"], "completed", "{status:#}");
    tear_down(fleet, llm).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shard_no_worker_can_process_is_dead_lettered_and_the_job_says_why() {
    let mut fleet = Fleet::new("poison");
    fleet.start_coordinator();
    // Workers without any LLM configured cannot run an openai job.
    fleet.start_worker(1);
    let job = fleet.submit(
        &[&example()],
        &[
            "--instructions",
            INSTRUCTIONS,
            "--generator",
            "openai",
            "--model",
            "absent-model",
        ],
    );
    let status = fleet.wait_finished(&job, Duration::from_secs(60));
    assert_eq!(status["status"], "failed", "{status:#}");
    let message = status["status_message"].as_str().unwrap();
    assert!(message.contains("no `openai` generator"), "{message}");
    let mut config = AmqpConfig::new(tests::moto::AMQP_URL);
    config.queue = fleet.queue.clone();
    let admin = AmqpAdmin::connect(config).await.unwrap();
    // The shard went through the dead-letter queue; the coordinator takes dead letters out once
    // they are recorded on their job.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while admin.dead_letter_depth().await.unwrap() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the dead-letter queue was not drained"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = admin.delete_topology().await;
    admin.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shard_that_keeps_failing_is_dead_lettered_with_its_last_error() {
    // The LLM server answers every request with 500, and workers do not retry within a shard:
    // the shard is requeued until the broker's delivery limit dead-letters it.
    let llm = spawn(ServerConfig {
        fail_first_500: u32::MAX,
        ..ServerConfig::default()
    })
    .await;
    let mut fleet = Fleet::new("last-error");
    fleet.use_llm(&llm.url, "test-model");
    fleet
        .worker_env
        .insert("PRINCIPIA_LLM_MAX_RETRIES".into(), "0".into());
    fleet.start_coordinator();
    fleet.start_worker(1);
    let job = submit_openai(&fleet, &["--shard-tokens", "100000"]);
    let status = fleet.wait_finished(&job, Duration::from_secs(120));
    assert_eq!(status["status"], "failed", "{status:#}");
    let message = status["status_message"].as_str().unwrap();
    assert!(message.contains("dead-lettered by the broker"), "{message}");
    assert!(message.contains("last error"), "{message}");
    assert!(message.contains("HTTP 500"), "{message}");
    tear_down(fleet, llm).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_and_server_errors_from_the_llm_are_retried_through() {
    let dir = tempfile::tempdir().unwrap();
    let llm = spawn(ServerConfig {
        fail_first_429: 3,
        retry_after: Some("1".into()),
        fail_first_500: 2,
        ..ServerConfig::default()
    })
    .await;
    let mut fleet = Fleet::new("faults");
    fleet.use_llm(&llm.url, "test-model");
    fleet.start_coordinator();
    fleet.start_worker(2);
    let job = submit_openai(&fleet, &[]);
    let status = fleet.wait_finished(&job, Duration::from_secs(120));
    assert_eq!(status["status"], "completed", "{status:#}");
    let records = download(&fleet, &job, dir.path());
    assert!(!records.is_empty());
    assert!(
        records
            .iter()
            .all(|r| r.model.as_deref() == Some("test-model"))
    );
    assert!(llm.requests() > 5, "the failed requests were retried");
    // The job's status names the server and the errors got past, with their counts.
    let found = &status["principia"];
    assert_eq!(
        found["llm_server"]["endpoint"],
        llm.url.as_str(),
        "{status:#}"
    );
    assert_eq!(found["llm_server"]["structured_output"], "json_schema");
    assert_eq!(found["model"], "test-model");
    let count = |needle: &str| {
        found["server_errors"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["message"].as_str().unwrap().contains(needle))
            .map(|e| e["count"].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(count("HTTP 429"), 3, "{status:#}");
    assert_eq!(count("HTTP 500"), 2, "{status:#}");
    tear_down(fleet, llm).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_restarted_mid_job_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let llm = spawn(ServerConfig {
        latency: Duration::from_millis(300),
        ..ServerConfig::default()
    })
    .await;
    let mut fleet = Fleet::new("restart");
    fleet.use_llm(&llm.url, "test-model");
    fleet.start_coordinator();
    fleet.start_worker(2);
    let job = submit_openai(&fleet, &["--shard-tokens", "250"]);
    fleet.wait_for(&job, Duration::from_secs(60), |s| s["status"] == "running");
    fleet.kill_coordinator();
    tokio::time::sleep(Duration::from_millis(500)).await;
    fleet.start_coordinator();
    let status = fleet.wait_finished(&job, Duration::from_secs(120));
    assert_eq!(status["status"], "completed", "{status:#}");
    let records = download(&fleet, &job, dir.path());
    let ids: HashSet<_> = records.iter().map(|r| r.record_id.clone()).collect();
    assert_eq!(ids.len(), records.len());
    tear_down(fleet, llm).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_llm_rate_limit_holds_across_workers() {
    let llm = spawn(ServerConfig::default()).await;
    let mut fleet = Fleet::new("ratelimit");
    fleet.use_llm(&llm.url, "test-model");
    // 5 requests per 1-second window for the whole fleet.
    fleet
        .worker_env
        .insert("PRINCIPIA_LLM_RPM".into(), "5".into());
    fleet
        .worker_env
        .insert("PRINCIPIA_LLM_RATE_WINDOW_MS".into(), "1000".into());
    fleet.start_coordinator();
    fleet.start_worker(4);
    fleet.start_worker(4);
    let started = std::time::Instant::now();
    let job = submit_openai(&fleet, &["--shard-tokens", "250"]);
    let status = fleet.wait_finished(&job, Duration::from_secs(120));
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(status["status"], "completed", "{status:#}");
    let calls = llm.requests();
    assert!(calls >= 20, "{calls} calls");
    // Two workers with 8 shards in flight would send every call within a second or so; the
    // shared limit spreads them over ceil(calls/5) windows. Fixed windows let the first and
    // the last window be partly used, so the calls span at least that many windows less two.
    let windows = (calls as f64 / 5.0).ceil() - 2.0;
    assert!(
        elapsed >= windows,
        "{calls} calls in {elapsed:.1} s: the fleet exceeded 5 requests per second"
    );
    tear_down(fleet, llm).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_job_stops_spending_and_keeps_what_is_done() {
    let llm = spawn(ServerConfig {
        latency: Duration::from_millis(300),
        ..ServerConfig::default()
    })
    .await;
    let mut fleet = Fleet::new("cancel");
    fleet.use_llm(&llm.url, "test-model");
    fleet.start_coordinator();
    fleet.start_worker(1);
    let job = submit_openai(&fleet, &["--shard-tokens", "250"]);
    fleet.wait_for(&job, Duration::from_secs(60), |s| {
        s["principia"]["shards_done"].as_u64().unwrap_or(0) >= 1
    });
    let answer = fleet.cli(&["cancel", &job]);
    assert!(answer.contains("cancelled with"), "{answer}");
    // The shard in progress may finish; after that no LLM call is made for this job.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let settled = llm.requests();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        llm.requests(),
        settled,
        "workers kept calling the LLM for a cancelled job"
    );
    let status = fleet.status(&job);
    assert_eq!(status["status"], "cancelled");
    let total = status["principia"]["shards_total"].as_u64().unwrap();
    let done = status["principia"]["shards_done"].as_u64().unwrap();
    assert!(done >= 1 && done < total, "{done} of {total} shards kept");
    tear_down(fleet, llm).await;
}

#[test]
fn readiness_follows_the_object_store() {
    let mut fleet = Fleet::new("readyz");
    fleet.start_coordinator();
    let (status, body) = fleet.http_get("/readyz");
    assert_eq!((status, body.as_str()), (200, "ok"));
    fleet.moto.stop();
    let (status, body) = fleet.http_get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("object store"), "{body}");
    let (status, _) = fleet.http_get("/healthz");
    assert_eq!(status, 200, "alive while not ready");
}
