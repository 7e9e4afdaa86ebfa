//! The `weir` binary under another name, so that this crate's tests can locate it with
//! `env!("CARGO_BIN_EXE_weir-under-test")` and `cargo test` builds it first.

fn main() -> std::process::ExitCode {
    weir_proxy::cli::main()
}
