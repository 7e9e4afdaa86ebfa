//! xDS over ADS (envoy.service.discovery.v3, state of the world and delta): the resource
//! kinds Weir speaks, the sans-io clients ([`client::SotwClient`] for state of the world,
//! [`delta_client::DeltaClient`] for delta, both over the shared `state`), their I/O
//! [`task`], and the [`server`] of `weir control`.

pub mod client;
pub mod delta_client;
pub mod server;
mod state;
pub mod task;

pub use client::{Output, SotwClient, Update};
pub use delta_client::{DeltaClient, DeltaOutput};
pub use state::XdsConfig;
pub use task::{run_client, ClientOptions, XdsSink};

/// The resource types of a Weir ADS stream, in the order a server pushes them: clusters
/// (and their endpoints) before the listeners and routes that use them, Envoy's
/// make-before-break order (go-control-plane's ADS order too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Cluster,
    Endpoints,
    Listener,
    Routes,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Cluster, Kind::Endpoints, Kind::Listener, Kind::Routes];

    pub fn type_url(self) -> &'static str {
        match self {
            Kind::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Kind::Endpoints => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            Kind::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            Kind::Routes => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        }
    }

    pub fn from_type_url(url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == url)
    }

    /// The Envoy message name, as error messages name resources.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Cluster => "Cluster",
            Kind::Endpoints => "ClusterLoadAssignment",
            Kind::Listener => "Listener",
            Kind::Routes => "RouteConfiguration",
        }
    }
}

/// google.rpc.Code INVALID_ARGUMENT: the code of every NACK.
pub const INVALID_ARGUMENT: i32 = 3;

#[cfg(test)]
mod tests {
    use super::Kind;
    use prost::Name;
    use xds_api::pb::envoy::config::{
        cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
        route::v3::RouteConfiguration,
    };

    #[test]
    fn type_urls_are_the_generated_ones() {
        assert_eq!(Kind::Cluster.type_url(), Cluster::type_url());
        assert_eq!(
            Kind::Endpoints.type_url(),
            ClusterLoadAssignment::type_url()
        );
        assert_eq!(Kind::Routes.type_url(), RouteConfiguration::type_url());
        assert_eq!(Kind::Listener.type_url(), Listener::type_url());
    }
}
