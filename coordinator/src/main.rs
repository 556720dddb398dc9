//! The `principia` binary. All logic lives in the `coordinator` library.

fn main() -> std::process::ExitCode {
    coordinator::cli::main()
}
