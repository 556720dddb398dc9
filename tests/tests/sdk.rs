//! SeekrFlow's own Python SDK (`seekrai` 0.35, installed into `.venv` by `tests/run`) against a
//! coordinator and one worker with the extractive generator: `tests/sdk/check_seekrai.py` calls
//! every `files` and `alignment` method the SDK has for these resources, with API keys of two
//! tenants, and prints a JSON summary that this test checks.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use tests::fleet::Fleet;
use tests::principia::workspace_root;
use worker::amqp::{AmqpAdmin, AmqpConfig};

fn python() -> PathBuf {
    let python = workspace_root().join(".venv/bin/python");
    let ready = Command::new(&python)
        .args(["-c", "import seekrai"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ready,
        "{} cannot import seekrai: run tests/run, which installs SeekrFlow's SDK into .venv",
        python.display()
    );
    python
}

/// Run one phase of the SDK script; its last stdout line is the JSON summary.
fn run_phase(fleet: &Fleet, phase: &str, env: &[(&str, &str)]) -> Value {
    let work = tempfile::tempdir().unwrap();
    let output = Command::new(python())
        .arg(workspace_root().join("tests/sdk/check_seekrai.py"))
        .arg(phase)
        .env("PRINCIPIA_URL", &fleet.coordinator_url)
        .env(
            "EXAMPLE",
            workspace_root().join("examples/harbor-lending-policy.md"),
        )
        .env("WORK", work.path())
        .env("SEEKR_DISABLE_TQDM", "1")
        .env_remove("SEEKR_API_KEY")
        .env_remove("SEEKR_BASE_URL")
        .envs(env.iter().copied())
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the SDK's {phase} phase failed:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        fleet.logs()
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn seekrflows_sdk_drives_files_and_alignment_jobs_unchanged() {
    let mut fleet = Fleet::new("sdk");
    let key = fleet.create_key("acme");
    let other = fleet.create_key("globex");
    fleet.start_coordinator();
    let keys = [("SDK_KEY", key.as_str()), ("SDK_OTHER_KEY", other.as_str())];

    // No worker yet: the job is published and waits; the SDK cancels it there.
    let cancel = run_phase(&fleet, "cancel", &keys);
    assert_eq!(cancel["status_before"], "running", "{cancel:#}");
    assert_eq!(cancel["status"], "cancelled", "{cancel:#}");
    let cancelled = cancel["job_id"].as_str().unwrap().to_string();

    fleet.start_worker(1);
    let mut env = keys.to_vec();
    env.push(("CANCELLED_JOB", &cancelled));
    let done = run_phase(&fleet, "complete", &env);
    assert_eq!(done["status"], "completed", "{done:#}");
    let dataset = &done["dataset"];
    assert_eq!(dataset["purpose"], "fine-tune");
    assert_eq!(dataset["file_type"], "parquet");
    assert!(dataset["rows"].as_u64().unwrap() > 0, "{done:#}");
    assert!(dataset["bytes"].as_u64().unwrap() > 0);
    let job = done["job_id"].as_str().unwrap();
    assert_eq!(done["jobs"][job], "completed");
    assert_eq!(done["jobs"][cancelled.as_str()], "cancelled");
    assert!(
        done["validation_error"]
            .as_str()
            .unwrap()
            .contains("\"exe\" is not accepted"),
        "{done:#}"
    );
    assert_eq!(done["wrong_key_status"], 401);
    let cross = done["cross_tenant_status"].as_object().unwrap();
    assert_eq!(cross.len(), 5, "{done:#}");
    assert!(cross.values().all(|status| status == 404), "{done:#}");
    assert_eq!(done["deleted_job_status"], 404);
    assert_eq!(done["file_deleted"], true);

    // The coordinator agrees: the cancelled job stayed cancelled after the worker came.
    fleet.api_key = Some(key);
    assert_eq!(fleet.status(&cancelled)["status"], "cancelled");

    let mut config = AmqpConfig::new(tests::moto::AMQP_URL);
    config.queue = fleet.queue.clone();
    drop(fleet);
    if let Ok(admin) = AmqpAdmin::connect(config).await {
        let _ = admin.delete_topology().await;
        admin.close().await;
    }
}
