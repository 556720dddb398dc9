//! Running the `principia` binary from cross-process tests.
//!
//! `cargo test --workspace` (and nextest) build every binary of the workspace before running any
//! test, so the binary sits beside the test executable's `deps/` directory (and beside the
//! benchmark binaries of this crate).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Path of the built `principia` binary.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current executable");
    let name = format!("principia{}", std::env::consts::EXE_SUFFIX);
    let dir = exe.parent().expect("executables live in a directory");
    let binary = [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join(&name))
        .find(|p| p.exists())
        .unwrap_or_else(|| dir.join(&name));
    assert!(
        binary.exists(),
        "{} not found: build it first (`cargo build -p coordinator`), or run the suite with `cargo test --workspace`",
        binary.display()
    );
    binary
}

/// A `principia` command with a quiet, plain log format.
pub fn command() -> Command {
    let mut command = Command::new(binary());
    command
        .env("RUST_LOG", "warn")
        .env_remove("PRINCIPIA_LLM_URL")
        .env_remove("OPENAI_BASE_URL");
    command
}

/// Run and return the output, with stderr shown on failure to ease debugging.
pub fn run(command: &mut Command) -> Output {
    command.output().expect("principia runs")
}

/// The workspace root (for `examples/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate sits in the workspace")
        .to_path_buf()
}

/// The shared corpora directory, if present (`PRINCIPIA_CORPORA` overrides).
pub fn corpora() -> Option<PathBuf> {
    let dir = std::env::var_os("PRINCIPIA_CORPORA")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/corpora"));
    dir.is_dir().then_some(dir)
}
