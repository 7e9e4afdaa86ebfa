//! The `weir` binary; everything lives in the `weir_proxy` library.

/// mimalloc: about 10% less CPU per request than glibc malloc for pingora on these machines
/// (docs/performance.md). Set here, in the binary, so that programs linking the library
/// (benches, probes) choose their own.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    weir_proxy::cli::main()
}
