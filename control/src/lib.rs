//! Weir's side of the control plane protocols.
//!
//! - [`translate`]: Weir config <-> Envoy xDS resources (both directions).
//! - [`xds::delta_client`] and [`xds::client`]: the sans-io ADS client state machines of
//!   `weir proxy --xds` (delta, and state of the world), and [`xds::task`], the tonic task
//!   that drives them (delta first, state of the world where the server has no delta) and
//!   feeds an [`xds::XdsSink`].
//! - [`store`]: the config store of `weir control` (versions and a change feed), and
//!   [`xds::server`], its ADS server (both protocols).
//!
//! This crate does not know the proxy: the proxy implements the sink and source traits.

pub mod certs;
pub mod store;
pub mod translate;
pub mod xds;

/// The generated Envoy types and the tonic this crate is built with, for tests and tools
/// that speak xDS to Weir (one tonic in the build).
pub use {tonic, xds_api};
