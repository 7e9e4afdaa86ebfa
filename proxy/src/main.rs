//! The `weir` binary; everything lives in the `weir_proxy` library.

fn main() -> std::process::ExitCode {
    weir_proxy::cli::main()
}
