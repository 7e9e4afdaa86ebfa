//! The `weir` binary; everything lives in the `weir_proxy` library.

/// mimalloc (through `weir-alloc`, which calls it the cheaper way): about 10% less CPU per
/// request than glibc malloc for pingora on these machines (docs/performance.md). Set here,
/// in the binary, so that programs linking the library (benches, probes) choose their own.
/// The `system-alloc` feature keeps the system allocator instead, for heap profilers that
/// see only malloc (DHAT, in benches/request_cost.py).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: weir_alloc::Mimalloc = weir_alloc::Mimalloc;

fn main() -> std::process::ExitCode {
    weir_proxy::cli::main()
}
