//! API keys across processes: `principia keys` on the coordinator's storage (S3, moto), the
//! coordinator honouring them, the CLI sending `PRINCIPIA_API_KEY`, and the refusal to serve
//! without keys on a non-loopback address.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tests::fleet::Fleet;
use tests::principia;
use worker::amqp::{AmqpAdmin, AmqpConfig};

const INSTRUCTIONS: &str = "I want a chatbot that specializes in Harbor's lending policy";

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

/// Stop the fleet and remove the queues its coordinator declared.
async fn tear_down(fleet: Fleet) {
    let mut config = AmqpConfig::new(tests::moto::AMQP_URL);
    config.queue = fleet.queue.clone();
    drop(fleet);
    if let Ok(admin) = AmqpAdmin::connect(config).await {
        let _ = admin.delete_topology().await;
        admin.close().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_made_with_the_cli_are_required_scoped_to_their_tenant_and_revocable() {
    let mut fleet = Fleet::new("keys");
    let acme = fleet.create_key("acme");
    let globex = fleet.create_key("globex");
    assert_ne!(acme, globex);
    let listed = fleet.cli(&["keys", "list"]);
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert!(lines.iter().any(|l| l.contains("\tacme\t")), "{listed}");
    assert!(
        !listed.contains(&acme) && !listed.contains(&globex),
        "keys list never shows a key"
    );
    let bad = fleet.try_cli(&["keys", "create", "--tenant", "no/slashes"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("not acceptable"), "{}", stderr(&bad));

    fleet
        .coordinator_env
        .insert("PRINCIPIA_KEY_REFRESH_SECS".into(), "1".into());
    fleet.start_coordinator();

    // Without a key: 401.
    let refused = fleet.try_cli(&["jobs"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("401") && stderr(&refused).contains("API key is required"),
        "{}",
        stderr(&refused)
    );

    // With acme's key: a job of acme's, invisible to globex.
    fleet.api_key = Some(acme.clone());
    let example = principia::workspace_root().join("examples/harbor-lending-policy.md");
    let job = fleet.submit(&[&example], &["--instructions", INSTRUCTIONS]);
    assert!(fleet.cli(&["jobs"]).contains(&job));
    // A wrong-type upload is refused before anything is stored, with the reason.
    let dir = tempfile::tempdir().unwrap();
    let tool = dir.path().join("tool.exe");
    std::fs::write(&tool, b"MZ").unwrap();
    let wrong = fleet.try_cli(&[
        "submit",
        tool.to_str().unwrap(),
        "--instructions",
        INSTRUCTIONS,
    ]);
    assert!(!wrong.status.success());
    assert!(
        stderr(&wrong).contains("400") && stderr(&wrong).contains("file type \"exe\""),
        "{}",
        stderr(&wrong)
    );

    fleet.api_key = Some(globex);
    let hidden = fleet.try_cli(&["status", &job]);
    assert!(!hidden.status.success());
    assert!(stderr(&hidden).contains("404"), "{}", stderr(&hidden));
    assert!(!fleet.cli(&["jobs"]).contains(&job));

    // Revoked by its listed prefix: refused within the refresh interval.
    let prefix = acme[..11].to_string();
    let revoked = fleet.cli(&["keys", "revoke", &prefix]);
    assert!(revoked.contains("acme"), "{revoked}");
    assert_eq!(fleet.cli(&["keys", "list"]).lines().count(), 1);
    fleet.api_key = Some(acme);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = fleet.try_cli(&["jobs"]);
        if !answer.status.success() {
            assert!(stderr(&answer).contains("401"), "{}", stderr(&answer));
            break;
        }
        assert!(Instant::now() < deadline, "the revoked key still works");
        std::thread::sleep(Duration::from_millis(200));
    }
    let unknown = fleet.try_cli(&["keys", "revoke", &prefix]);
    assert!(!unknown.status.success());
    assert!(stderr(&unknown).contains("no API key matches"));
    // No key ever reached the logs.
    assert!(!fleet.logs().contains("pk-"), "{}", fleet.logs());
    tear_down(fleet).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_keys_the_coordinator_refuses_a_non_loopback_address_and_warns_on_loopback() {
    let mut fleet = Fleet::new("nokeys");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = fleet
        .principia()
        .args(["coordinator", "--listen", &format!("0.0.0.0:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the coordinator kept running on 0.0.0.0 without keys");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = child.wait_with_output().unwrap();
    assert!(!status.success());
    let message = stderr(&output);
    assert!(
        message.contains("refusing to serve on 0.0.0.0") && message.contains("keys create"),
        "{message}"
    );

    // On loopback it serves, open, and says so.
    fleet.start_coordinator();
    assert!(fleet.cli(&["jobs"]).is_empty());
    assert!(
        fleet.logs().contains("WITHOUT AUTHENTICATION"),
        "{}",
        fleet.logs()
    );
    tear_down(fleet).await;
}
