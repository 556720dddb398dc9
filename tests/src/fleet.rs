//! A fleet of `principia` processes for cross-process tests: one coordinator and any number of
//! workers, on their own queue, Redis namespace and S3 bucket (moto), so that tests never see each
//! other's messages. Every process is killed when the fleet is dropped.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::moto::{MotoServer, rabbitmq_url, redis_url, unique_name};
use crate::principia;

pub struct Fleet {
    pub queue: String,
    pub namespace: String,
    pub moto: MotoServer,
    pub coordinator_url: String,
    listen: String,
    coordinator: Option<Child>,
    workers: Vec<Option<Child>>,
    /// Extra environment of every worker started from now on.
    pub worker_env: BTreeMap<String, String>,
    /// Extra environment of the coordinator started from now on.
    pub coordinator_env: BTreeMap<String, String>,
    /// The API key `cli` sends (`PRINCIPIA_API_KEY`), if any.
    pub api_key: Option<String>,
    log_dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Fleet {
    /// Services checked, moto started, nothing of Principia running yet.
    pub fn new(name: &str) -> Fleet {
        rabbitmq_url();
        redis_url();
        let queue = unique_name(&format!("principia-test-{name}"));
        let moto = MotoServer::start(&unique_name("principia")).expect("moto starts");
        let port = free_port();
        Fleet {
            namespace: queue.clone(),
            queue,
            moto,
            coordinator_url: format!("http://127.0.0.1:{port}"),
            listen: format!("127.0.0.1:{port}"),
            coordinator: None,
            workers: Vec::new(),
            worker_env: BTreeMap::new(),
            coordinator_env: BTreeMap::new(),
            api_key: None,
            log_dir: tempfile::tempdir().expect("log directory"),
        }
    }

    /// `principia` with this fleet's services and storage in its environment.
    pub fn principia(&self) -> Command {
        let mut command = principia::command();
        command
            .env("PRINCIPIA_AMQP_URL", crate::moto::AMQP_URL)
            .env("PRINCIPIA_QUEUE", &self.queue)
            .env("PRINCIPIA_REDIS_URL", crate::moto::REDIS_URL)
            .env("PRINCIPIA_REDIS_NAMESPACE", &self.namespace)
            .env("PRINCIPIA_S3_BUCKET", self.moto.bucket())
            .env("PRINCIPIA_S3_ENDPOINT", self.moto.endpoint())
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("PRINCIPIA_COORDINATOR_URL", &self.coordinator_url)
            .env_remove("AWS_PROFILE")
            .env_remove("PRINCIPIA_API_KEY");
        command
    }

    fn command(&self, log_name: &str) -> Command {
        let mut command = self.principia();
        let log = std::fs::File::create(self.log_dir.path().join(log_name)).expect("log file");
        command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        command
    }

    /// Give every worker started from now on this OpenAI-compatible endpoint and model.
    pub fn use_llm(&mut self, url: &str, model: &str) {
        self.worker_env
            .insert("PRINCIPIA_LLM_URL".into(), url.to_string());
        self.worker_env
            .insert("PRINCIPIA_LLM_MODEL".into(), model.to_string());
    }

    /// Start (or restart) the coordinator and wait until it serves.
    pub fn start_coordinator(&mut self) {
        let n = self
            .log_dir
            .path()
            .read_dir()
            .map(|d| d.count())
            .unwrap_or(0);
        let child = self
            .command(&format!("coordinator-{n}.log"))
            .args(["coordinator", "--listen", &self.listen])
            .envs(&self.coordinator_env)
            .spawn()
            .expect("coordinator starts");
        self.coordinator = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&self.listen).is_err() {
            if let Some(Some(status)) = self
                .coordinator
                .as_mut()
                .map(|c| c.try_wait().ok().flatten())
            {
                panic!("coordinator exited with {status}:\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "coordinator did not listen:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `GET path` on the coordinator: the status code and the body.
    pub fn http_get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&self.listen).expect("coordinator listens");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.listen
        )
        .expect("request sent");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("response read");
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map_or("", |(_, body)| body)
            .to_string();
        (status, body)
    }

    pub fn kill_coordinator(&mut self) {
        if let Some(mut child) = self.coordinator.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start a worker running `concurrency` shards at once; returns its index.
    pub fn start_worker(&mut self, concurrency: usize) -> usize {
        self.spawn_worker(&["--concurrency", &concurrency.to_string()])
    }

    /// Start a worker with the default settings; returns its index.
    pub fn start_default_worker(&mut self) -> usize {
        self.spawn_worker(&[])
    }

    fn spawn_worker(&mut self, args: &[&str]) -> usize {
        let index = self.workers.len();
        let mut command = self.command(&format!("worker-{index}.log"));
        command
            .arg("worker")
            .args(args)
            .args(["--grace-secs", "30"]);
        for (key, value) in &self.worker_env {
            command.env(key, value);
        }
        self.workers
            .push(Some(command.spawn().expect("worker starts")));
        index
    }

    pub fn worker_pid(&self, index: usize) -> u32 {
        self.workers[index].as_ref().expect("worker running").id()
    }

    /// Send a signal (`KILL`, `TERM`) to a worker and wait for it to exit; returns its exit code.
    pub fn signal_worker(&mut self, index: usize, signal: &str) -> Option<i32> {
        let mut child = self.workers[index].take().expect("worker running");
        let status = Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        child.wait().expect("worker exits").code()
    }

    /// `principia ARGS...` against this fleet, with `api_key` if set, whatever its outcome.
    pub fn try_cli(&self, args: &[&str]) -> Output {
        let mut command = self.principia();
        if let Some(key) = &self.api_key {
            command.env("PRINCIPIA_API_KEY", key);
        }
        command.args(args).output().expect("principia runs")
    }

    /// `principia ARGS...` against this fleet; stdout on success, panic with logs otherwise.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = self.try_cli(args);
        assert!(
            output.status.success(),
            "principia {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// A new API key for `tenant` (`principia keys create` on this fleet's storage).
    pub fn create_key(&self, tenant: &str) -> String {
        let key = self.cli(&["keys", "create", "--tenant", tenant]);
        assert!(key.starts_with("pk-"), "{key}");
        key
    }

    /// Submit documents; returns the job id.
    pub fn submit(&self, inputs: &[&Path], extra: &[&str]) -> String {
        let mut args = vec!["submit".to_string()];
        args.extend(inputs.iter().map(|p| p.display().to_string()));
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cli(&args)
    }

    pub fn status(&self, job: &str) -> Value {
        serde_json::from_str(&self.cli(&["status", job])).expect("status is JSON")
    }

    /// Poll until `done(status)` holds; panic with the logs after `timeout`.
    pub fn wait_for(&self, job: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status(job);
            if done(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "job {job} did not get there in {timeout:?}: {status:#}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Wait for a terminal status.
    pub fn wait_finished(&self, job: &str, timeout: Duration) -> Value {
        self.wait_for(job, timeout, |s| {
            matches!(
                s["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            )
        })
    }

    /// Every process's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        let mut entries: Vec<_> = self
            .log_dir
            .path()
            .read_dir()
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        entries.sort();
        for path in entries {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            all.push_str(&format!("--- {} (last lines)\n", path.display()));
            for line in tail.into_iter().rev() {
                all.push_str(line);
                all.push('\n');
            }
        }
        all
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in self.workers.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.kill_coordinator();
    }
}
