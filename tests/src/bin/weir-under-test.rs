//! The `weir` binary under another name, so that this crate's tests can locate it with
//! `env!("CARGO_BIN_EXE_weir-under-test")` and `cargo test` builds it first.

/// The allocator `weir` has (`proxy/src/main.rs`), so that what the tests measure is `weir`.
#[global_allocator]
static GLOBAL: weir_alloc::Mimalloc = weir_alloc::Mimalloc;

fn main() -> std::process::ExitCode {
    weir_proxy::cli::main()
}
