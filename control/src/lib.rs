//! Weir's side of the control plane protocols.
//!
//! - [`translate`]: Weir config <-> Envoy xDS resources (both directions).
//! - [`xds::client`]: the sans-io ADS client state machine of `weir proxy --xds`, and
//!   [`xds::task`], the tonic task that drives it and feeds an [`xds::XdsSink`].
//! - [`xds::server`]: the ADS server of `weir control`, fed by an [`xds::server::SnapshotSource`].
//!
//! This crate does not know the proxy: the proxy implements the sink and source traits.

pub mod translate;
pub mod xds;

/// The generated Envoy types and the tonic this crate is built with, for tests and tools
/// that speak xDS to Weir (one tonic in the build).
pub use {tonic, xds_api};
