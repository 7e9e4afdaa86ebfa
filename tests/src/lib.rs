//! Harness for Weir's integration tests: everything talks over real sockets on 127.0.0.1.
//!
//! - [`Weir`]: a real `weir proxy` process on free ports, ready before it is handed out,
//!   killed on drop, its output printed when a test panics.
//! - [`WeirControl`]: a real `weir control` process (xDS server + control API), killed on
//!   drop, restartable on the same xDS port.
//! - [`Backend`]: a revision stand-in (hyper, HTTP/1.1 keep-alive) that echoes what it
//!   received as JSON and counts requests and concurrency.
//! - [`client`]: requests with an explicit `Host`, a raw HTTP/1.1 client for headers a
//!   normal client would not send.
//! - [`admin`]: the control API, `/v1/stats` and `/metrics` from a test, and polling.
//! - [`browser`]: headless Chromium over the DevTools protocol, for a page left open.
//! - [`tls`]: a test CA issuing certificates, a TLS client that shows what it negotiated,
//!   and HTTP/1.1 or HTTP/2 (TLS or h2c) connections.

pub mod admin;
pub mod autoscaler;
pub mod backend;
pub mod browser;
pub mod client;
pub mod control;
pub mod kourier;
pub mod metrics;
pub mod process;
pub mod protocols;
pub mod scripted_ads;
pub mod tls;
pub mod weir;

pub use admin::{eventually, find_sample, put_json};
pub use backend::Backend;
pub use client::{
    dead_endpoint, dead_port, get, new_client, raw_request, send, try_send, Response,
};
pub use control::WeirControl;
pub use metrics::{parse_metrics, Sample};
pub use weir::{free_port, Signal, Weir, WeirBuilder};

/// Path of the `weir` binary built from this crate (`weir-under-test`).
///
/// A macro because Cargo sets `CARGO_BIN_EXE_*` only when it compiles an integration test,
/// not when it compiles this library.
#[macro_export]
macro_rules! weir_bin {
    () => {
        env!("CARGO_BIN_EXE_weir-under-test")
    };
}

/// Starts a `weir proxy` with `config` (a [`serde_json::Value`]), on free ports, and waits
/// until it is ready. Panics (with the process output) when it does not get ready.
#[macro_export]
macro_rules! start_weir {
    ($config:expr) => {
        $crate::Weir::start($crate::weir_bin!(), &$config)
    };
}
