//! The `principia` binary's text logs: no ANSI colour codes when stderr is not a terminal or
//! `NO_COLOR` is set, colour on a terminal otherwise.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use tests::principia;

/// `principia convert` of a text file without headings: an INFO-level run that logs a warning
/// (each paragraph block became a section).
fn convert_args(dir: &Path) -> Vec<String> {
    let input = dir.join("notes.txt");
    std::fs::write(
        &input,
        "Members must keep their cards safe.\n\nLost cards must be reported within two days.\n",
    )
    .unwrap();
    let output = dir.join("tree.json");
    vec![
        "convert".into(),
        input.display().to_string(),
        "-o".into(),
        output.display().to_string(),
    ]
}

fn assert_logged_a_warning(output: &Output, log: &str) {
    assert!(output.status.success(), "{output:?}");
    assert!(log.contains("WARN"), "no warning logged: {log:?}");
}

#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let output = principia::run(
        principia::command()
            .args(convert_args(dir.path()))
            .env("RUST_LOG", "info")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_logged_a_warning(&output, &stderr);
    assert!(!stderr.contains("\x1b["), "colour codes in {stderr:?}");
}

/// Run `principia ARGS` on a pseudo-terminal (util-linux's `script`); returns what it printed.
fn on_a_terminal(args: &[String], no_color: Option<&str>) -> (Output, String) {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let line = std::iter::once(principia::binary().display().to_string())
        .chain(args.iter().cloned())
        .map(|arg| quote(&arg))
        .collect::<Vec<_>>()
        .join(" ");
    let mut command = Command::new("script");
    command
        .args(["--quiet", "--return", "--command", &line, "/dev/null"])
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null());
    if let Some(value) = no_color {
        command.env("NO_COLOR", value);
    }
    let output = command.output().unwrap_or_else(|e| {
        panic!(
            "running script ({e}); it is util-linux's, Debian's bsdutils: apt-get install bsdutils"
        )
    });
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    (output, printed)
}

#[test]
fn logs_on_a_terminal_are_coloured_unless_no_color_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let args = convert_args(dir.path());

    let (output, printed) = on_a_terminal(&args, None);
    assert_logged_a_warning(&output, &printed);
    assert!(
        printed.contains("\x1b["),
        "no colour on a terminal: {printed:?}"
    );

    let (output, printed) = on_a_terminal(&args, Some("1"));
    assert_logged_a_warning(&output, &printed);
    assert!(
        !printed.contains("\x1b["),
        "colour despite NO_COLOR: {printed:?}"
    );

    // An empty NO_COLOR is as if unset (no-color.org).
    let (output, printed) = on_a_terminal(&args, Some(""));
    assert_logged_a_warning(&output, &printed);
    assert!(printed.contains("\x1b["), "{printed:?}");
}
