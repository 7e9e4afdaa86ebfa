//! Weir config <-> Envoy xDS resources (the mapping table is in control/README.md; the stream in docs/api.md#xds).
//!
//! - [`to_resources`]: a valid `weir_config::Config` as the RouteConfigurations, Clusters and
//!   ClusterLoadAssignments that `weir control` serves.
//! - [`from_resources`]: resources from any ADS server back into a config (ingresses and
//!   revisions only: the general form expresses everything). The ADS client uses the same
//!   steps one resource type at a time ([`from_xds`]) so that it can NACK the response that
//!   carried a bad resource.
//!
//! Anything that cannot be mapped is an error naming the resource and the field; the fields
//! that are ignored on purpose are listed in README.md.

use std::fmt;

use xds_api::pb::envoy::config::cluster::v3::Cluster;
use xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_api::pb::envoy::config::route::v3::RouteConfiguration;

pub mod from_xds;
pub mod to_xds;

#[cfg(test)]
mod tests;

pub use from_xds::{from_resources, ClusterSpec, RouteSet};
pub use to_xds::{
    ingress_routes, load_assignment, object_routes_name, revision_resources, service_routes,
    to_resources,
};

/// RouteConfiguration of hosts served on both listeners (Kourier's name).
pub const EXTERNAL_ROUTES: &str = "external_services";
/// RouteConfiguration of cluster-local hosts, served on the internal listener only.
pub const INTERNAL_ROUTES: &str = "internal_services";
/// Kourier's routes of the cluster-local TLS listener.
pub const INTERNAL_TLS_ROUTES: &str = "internal_tls_services";
/// Filter-metadata key of a Cluster that carries the revision's settings.
pub const METADATA_KEY: &str = "weir";
/// The header a tag host sets upstream.
pub const TAG_HEADER: &str = "Knative-Serving-Tag";

/// The xDS form of one config.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub routes: Vec<RouteConfiguration>,
    pub clusters: Vec<Cluster>,
    pub endpoints: Vec<ClusterLoadAssignment>,
}

/// What could not be mapped, and where: `RouteConfiguration "external_services":
/// virtual_hosts[0] ("default/hello").routes[1].match.safe_regex: regex path matches are
/// not supported; use a prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateError {
    /// The resource, as `Type "name"`.
    pub resource: String,
    /// The field path inside it (may be empty).
    pub field: String,
    pub message: String,
}

impl TranslateError {
    pub fn new(
        resource: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        TranslateError {
            resource: resource.into(),
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for TranslateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.resource, self.message)
        } else {
            write!(f, "{}: {}: {}", self.resource, self.field, self.message)
        }
    }
}

impl std::error::Error for TranslateError {}

/// `namespace/name`: the cluster (and ClusterLoadAssignment) name of a revision.
pub fn cluster_name(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Splits a cluster name into (namespace, revision name).
pub fn split_cluster_name(cluster: &str) -> Option<(&str, &str)> {
    let (ns, name) = cluster.split_once('/')?;
    if ns.is_empty() || name.is_empty() || name.contains('/') {
        return None;
    }
    Some((ns, name))
}
