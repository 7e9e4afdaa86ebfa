//! Checks behind the `xds` fuzz target: bytes from an xDS server, as each resource type Weir
//! reads and as whole discovery responses fed to the ADS clients (`weir_control`). Shared
//! with `control/tests/fuzz_regressions.rs`, which includes this file by path.

use prost::Message;
use weir_control::translate::from_xds::{cluster_spec, endpoints, listener_spec, route_set};
use weir_control::xds::{DeltaClient, SotwClient};
use weir_control::xds_api::pb::envoy::config::cluster::v3::Cluster;
use weir_control::xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use weir_control::xds_api::pb::envoy::config::listener::v3::Listener;
use weir_control::xds_api::pb::envoy::config::route::v3::RouteConfiguration;
use weir_control::xds_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryResponse,
};

/// Never panics: every message that decodes translates or is refused with a message naming
/// its resource; a response is ACKed or NACKed (one request), never dropped.
pub fn check_xds(data: &[u8]) {
    if let Ok(rc) = RouteConfiguration::decode(data) {
        if let Err(e) = route_set(&rc) {
            assert!(e.resource.starts_with("RouteConfiguration"), "{e}");
        }
    }
    if let Ok(c) = Cluster::decode(data) {
        if let Err(e) = cluster_spec(&c) {
            assert!(e.resource.starts_with("Cluster"), "{e}");
        }
    }
    if let Ok(cla) = ClusterLoadAssignment::decode(data) {
        let _ = endpoints(&cla);
    }
    if let Ok(l) = Listener::decode(data) {
        if let Err(e) = listener_spec(&l) {
            assert!(e.resource.starts_with("Listener"), "{e}");
        }
    }
    if let Ok(resp) = DiscoveryResponse::decode(data) {
        let out = SotwClient::new("fuzz").on_response(resp);
        assert_eq!(out.requests.len(), 1, "one ACK or NACK");
    }
    if let Ok(resp) = DeltaDiscoveryResponse::decode(data) {
        let out = DeltaClient::new("fuzz").on_response(resp);
        assert_eq!(out.requests.len(), 1, "one ACK or NACK");
    }
}
