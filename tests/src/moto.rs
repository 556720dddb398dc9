//! Test services: a throwaway S3 (moto) and checks for the RabbitMQ and Redis the tests expect.
//!
//! [`MotoServer::start`] makes sure `<workspace>/.venv` holds `moto[server]` (creating the
//! virtualenv and running pip only when it is missing), starts `moto_server` on a free loopback
//! port, waits until it answers, creates a bucket and kills the server when dropped.
//! [`rabbitmq_url`] and [`redis_url`] check that the broker and Redis answer and panic with what to
//! start if they do not. [`unique_name`] gives each test its own queues, key prefixes and buckets.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

use crate::principia::workspace_root;

/// The pip requirement installed into the virtualenv.
const MOTO_REQUIREMENT: &str = "moto[server]>=5,<6";
/// How long a first-time `pip install` may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);
/// How long moto may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The RabbitMQ the tests use (default vhost, guest user).
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The Redis the tests use.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/";

/// A running `moto_server` with one bucket; killed on drop.
pub struct MotoServer {
    child: Child,
    endpoint: String,
    bucket: String,
}

impl MotoServer {
    /// Install moto if needed, start it on a free loopback port and create `bucket`.
    pub fn start(bucket: &str) -> anyhow::Result<MotoServer> {
        let venv = ensure_moto_venv()?;
        let port = free_port()?;
        let log_path = std::env::temp_dir().join(format!("principia-moto-{port}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let child = Command::new(venv.join("bin/python"))
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting moto_server")?;
        let mut server = MotoServer {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: bucket.to_string(),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = server.child.try_wait()? {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!("moto_server exited with {status} before answering:\n{log}");
            }
            if http_status(addr, "GET", "/").is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "moto_server did not answer on {addr} within {START_TIMEOUT:?}; log in {}",
                    log_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let status = http_status(addr, "PUT", &format!("/{bucket}"))?;
        if status != 200 {
            bail!("creating bucket {bucket} on moto answered HTTP {status}");
        }
        Ok(server)
    }

    /// The endpoint URL, e.g. `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Stop the server (an S3 outage); it is not restarted.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Make sure `<workspace>/.venv` has moto installed; returns the virtualenv's path.
///
/// Concurrent test processes serialize on a lock directory (`mkdir` is atomic); a lock older than
/// the install timeout is taken to be left by a dead process and removed.
fn ensure_moto_venv() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let venv = root.join(".venv");
    let installed = |venv: &Path| venv.join("bin/moto_server").exists();
    if installed(&venv) {
        return Ok(venv);
    }
    let lock = root.join(".venv.lock");
    let deadline = Instant::now() + INSTALL_TIMEOUT;
    loop {
        match std::fs::create_dir(&lock) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let stale = std::fs::metadata(&lock)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > INSTALL_TIMEOUT);
                if stale {
                    let _ = std::fs::remove_dir(&lock);
                } else if Instant::now() > deadline {
                    bail!("timed out waiting for {} to be released", lock.display());
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => return Err(e).context(format!("creating {}", lock.display())),
        }
    }
    let result = install_moto(&venv);
    let _ = std::fs::remove_dir(&lock);
    result?;
    if !installed(&venv) {
        bail!("pip finished but {} has no moto_server", venv.display());
    }
    Ok(venv)
}

fn install_moto(venv: &Path) -> anyhow::Result<()> {
    if venv.join("bin/moto_server").exists() {
        return Ok(()); // installed by the process that held the lock before us
    }
    if !venv.join("bin/python").exists() {
        run(Command::new("python3").arg("-m").arg("venv").arg(venv))
            .context("creating the virtualenv (is python3 with the venv module installed?)")?;
    }
    run(Command::new(venv.join("bin/python")).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        MOTO_REQUIREMENT,
    ]))
    .with_context(|| format!("pip install {MOTO_REQUIREMENT}"))
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} exited with {}:\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// One bodiless HTTP/1.1 request; returns the response's status code.
fn http_status(addr: SocketAddr, method: &str, path: &str) -> anyhow::Result<u16> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let head = String::from_utf8_lossy(&response);
    head.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("unexpected HTTP response from {addr}: {head:.200}"))
}

/// Panic with `hint` unless something accepts TCP connections on `addr` within two seconds.
fn require_service(name: &str, addr: &str, hint: &str) {
    let socket: SocketAddr = addr.parse().expect("service addresses are literal");
    if let Err(e) = TcpStream::connect_timeout(&socket, Duration::from_secs(2)) {
        panic!("{name} is not answering on {addr} ({e}); start it with: {hint}");
    }
}

/// [`AMQP_URL`], after checking that RabbitMQ answers.
pub fn rabbitmq_url() -> &'static str {
    require_service("RabbitMQ", "127.0.0.1:5672", "rabbitmq-server -detached");
    AMQP_URL
}

/// [`REDIS_URL`], after checking that Redis answers.
pub fn redis_url() -> &'static str {
    require_service(
        "Redis",
        "127.0.0.1:6379",
        "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no",
    );
    REDIS_URL
}

/// A name no other test (or test process) uses: `prefix-<pid>-<time>-<n>`, lowercase, for queues,
/// key prefixes and buckets.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{nanos:x}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
