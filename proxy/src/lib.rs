//! Weir's data plane: a pingora proxy that routes by Host, tag and path to weighted revisions,
//! holds requests for revisions scaled to zero, and is updated live through its admin API.
//!
//! - [`route`]: the request path (pingora `ProxyHttp`).
//! - [`revision`]: endpoints, the per-endpoint concurrency breaker and the hold queue.
//! - [`state`]: the config snapshot behind one `ArcSwap`, and config/endpoint updates.
//! - [`admin`]: health, metrics and the control API; [`status`]: the live status page.
//! - [`server`], [`cli`], [`demo`]: process wiring and the `weir` command line.
//! - [`xds`]: the state as xDS sink (`weir proxy --xds`) and source (`weir control`).

pub mod access_log;
pub mod admin;
pub mod autoscaler;
pub mod cli;
pub mod control_plane;
pub mod demo;
pub mod logging;
pub mod metrics;
pub mod proxy_protocol;
pub mod revision;
pub mod route;
pub mod server;
pub mod state;
pub mod stats;
pub mod status;
pub mod tls;
pub mod xds;
