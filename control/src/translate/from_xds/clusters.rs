//! Clusters and ClusterLoadAssignments -> revisions and their endpoints.

use weir_config::model::{Protocol, Revision, TextDuration};
use xds_api::pb::envoy::config::cluster::v3::{cluster, Cluster};
use xds_api::pb::envoy::config::core::v3::{address, socket_address};
use xds_api::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use xds_api::pb::google::protobuf::value;

use super::{ferr, FieldError};
use crate::translate::{split_cluster_name, TranslateError, METADATA_KEY};

/// A translated Cluster: the revision it stands for.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSpec {
    /// Endpoints are filled from the cluster's own `load_assignment` (STATIC and DNS types)
    /// or, for EDS clusters, at `compose` time.
    pub revision: Revision,
    /// The ClusterLoadAssignment name of an EDS cluster (`service_name`, or the cluster name).
    pub eds_name: Option<String>,
}

/// The part of envoy.extensions.upstreams.http.v3.HttpProtocolOptions that says "HTTP/2"
/// (how Kourier marks h2c clusters); xds-api does not ship that type.
mod http_options {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HttpProtocolOptions {
        #[prost(oneof = "Upstream", tags = "3, 4, 5")]
        pub upstream: Option<Upstream>,
    }
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Upstream {
        #[prost(message, tag = "3")]
        Explicit(Explicit),
        #[prost(message, tag = "4")]
        UseDownstream(Empty),
        #[prost(message, tag = "5")]
        Auto(Empty),
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Explicit {
        #[prost(oneof = "Version", tags = "1, 2, 3")]
        pub version: Option<Version>,
    }
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Version {
        #[prost(message, tag = "1")]
        Http1(Empty),
        #[prost(message, tag = "2")]
        Http2(Empty),
        #[prost(message, tag = "3")]
        Http3(Empty),
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Empty {}

    pub const KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
}

pub(super) fn cluster_label(name: &str) -> String {
    format!("Cluster {name:?}")
}

/// Kourier's cluster of the external authorization service (`extauthz-host` in
/// `config-kourier`).
pub const EXT_AUTHZ_CLUSTER: &str = "extAuthz";

/// Translates one Cluster: `None` for a cluster that is not a revision (not named
/// `namespace/revision`, e.g. Kourier's `otel-collector`), which no route can name and
/// which is therefore ignored. Kourier's ext-authz cluster is refused: Weir does not
/// enforce external authorization, and serving without it would open what it guards.
pub fn cluster_spec(c: &Cluster) -> Result<Option<ClusterSpec>, TranslateError> {
    let res = cluster_label(&c.name);
    let err = |field: &str, msg: String| TranslateError::new(&res, field, msg);
    if c.name == EXT_AUTHZ_CLUSTER {
        return Err(err("name", EXT_AUTHZ_REFUSED.into()));
    }
    let Some((ns, name)) = split_cluster_name(&c.name) else {
        log::debug!("xDS: {res} is not a revision (not namespace/revision); ignored");
        return Ok(None);
    };
    if c.transport_socket.is_some() {
        return Err(err(
            "transport_socket",
            "upstream TLS is not supported".into(),
        ));
    }
    use cluster::DiscoveryType as T;
    let eds = match &c.cluster_discovery_type {
        None => false,
        Some(cluster::ClusterDiscoveryType::Type(t)) => match T::try_from(*t) {
            Ok(T::Static | T::StrictDns | T::LogicalDns) => false,
            Ok(T::Eds) => true,
            Ok(T::OriginalDst) => {
                return Err(err(
                    "type",
                    "ORIGINAL_DST clusters are not supported".into(),
                ))
            }
            Err(_) => return Err(err("type", format!("unknown discovery type {t}"))),
        },
        Some(cluster::ClusterDiscoveryType::ClusterType(_)) => {
            return Err(err(
                "cluster_type",
                "custom cluster types are not supported".into(),
            ))
        }
    };
    let mut revision = Revision {
        name: name.into(),
        namespace: ns.into(),
        container_concurrency: 0,
        timeout: None,
        protocol: Protocol::Http1,
        endpoints: Vec::new(),
        unknown: Default::default(),
    };
    // Kourier's way of saying h2c; the `weir` metadata below wins when it says otherwise.
    #[allow(deprecated)] // the pre-1.20 field, still sent by some control planes
    let h2 = c.http2_protocol_options.is_some()
        || c.typed_extension_protocol_options
            .get(http_options::KEY)
            .and_then(|any| {
                <http_options::HttpProtocolOptions as prost::Message>::decode(any.value.as_slice())
                    .ok()
            })
            .is_some_and(|o| {
                matches!(
                    o.upstream,
                    Some(http_options::Upstream::Explicit(http_options::Explicit {
                        version: Some(http_options::Version::Http2(_))
                    }))
                )
            });
    if h2 {
        revision.protocol = Protocol::H2c;
    }
    if let Some(md) = c
        .metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get(METADATA_KEY))
    {
        for (k, v) in &md.fields {
            let field = format!("metadata.filter_metadata.{METADATA_KEY}.{k}");
            match (k.as_str(), &v.kind) {
                ("container_concurrency", Some(value::Kind::NumberValue(n))) => {
                    if n.fract() != 0.0 || *n < 0.0 || *n > f64::from(u32::MAX) {
                        return Err(err(
                            &field,
                            format!("{n} is not a whole number from 0 (unlimited) up"),
                        ));
                    }
                    revision.container_concurrency = *n as u32;
                }
                ("timeout", Some(value::Kind::StringValue(s))) => {
                    let d = TextDuration::parse(s);
                    if d.get().is_none() {
                        return Err(err(&field, format!("{s:?} is not a duration; write a number with a unit: 300ms, 5s, 10m")));
                    }
                    revision.timeout = Some(d);
                }
                ("protocol", Some(value::Kind::StringValue(s))) => {
                    revision.protocol = match s.as_str() {
                        "http1" => Protocol::Http1,
                        "h2c" => Protocol::H2c,
                        _ => {
                            return Err(err(
                                &field,
                                format!("{s:?}: expected \"http1\" or \"h2c\""),
                            ))
                        }
                    };
                }
                ("container_concurrency", _) => return Err(err(&field, "must be a number".into())),
                ("timeout" | "protocol", _) => return Err(err(&field, "must be a string".into())),
                _ => {
                    return Err(err(
                        &field,
                        "unknown field; expected one of: container_concurrency, timeout, protocol"
                            .into(),
                    ))
                }
            }
        }
    }
    let eds_name = if eds {
        let service = c
            .eds_cluster_config
            .as_ref()
            .map(|e| e.service_name.as_str())
            .unwrap_or("");
        Some(if service.is_empty() {
            c.name.clone()
        } else {
            service.to_string()
        })
    } else {
        if let Some(cla) = &c.load_assignment {
            revision.endpoints =
                lb_endpoints(cla).map_err(|(f, m)| err(&format!("load_assignment.{f}"), m))?;
        }
        None
    };
    Ok(Some(ClusterSpec { revision, eds_name }))
}

/// Why an ext-authz setup is NACKed.
pub const EXT_AUTHZ_REFUSED: &str = "external authorization (ext_authz) is configured, \
     but Weir does not enforce it; refusing the config rather than serving requests \
     unchecked (turn ext-authz off for Weir gateways)";

/// Translates one ClusterLoadAssignment into `IP:port` / `host:port` endpoints.
pub fn endpoints(cla: &ClusterLoadAssignment) -> Result<Vec<String>, TranslateError> {
    lb_endpoints(cla).map_err(|(f, m)| {
        TranslateError::new(
            format!("ClusterLoadAssignment {:?}", cla.cluster_name),
            f,
            m,
        )
    })
}

fn lb_endpoints(cla: &ClusterLoadAssignment) -> Result<Vec<String>, FieldError> {
    let mut out: Vec<String> = Vec::new();
    for (l, locality) in cla.endpoints.iter().enumerate() {
        for (e, lb) in locality.lb_endpoints.iter().enumerate() {
            let at = format!("endpoints[{l}].lb_endpoints[{e}]");
            // UNHEALTHY, DRAINING and TIMEOUT endpoints take no traffic in Envoy either.
            if matches!(lb.health_status, 2..=4) {
                continue;
            }
            let ep = match &lb.host_identifier {
                Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => ep,
                Some(lb_endpoint::HostIdentifier::EndpointName(_)) => {
                    return Err(ferr(
                        format!("{at}.endpoint_name"),
                        "named endpoints are not supported",
                    ))
                }
                None => return Err(ferr(at, "an lb endpoint needs an endpoint")),
            };
            let sa = match ep.address.as_ref().and_then(|a| a.address.as_ref()) {
                Some(address::Address::SocketAddress(sa)) => sa,
                Some(_) => {
                    return Err(ferr(
                        format!("{at}.endpoint.address"),
                        "only socket addresses are supported (not pipes or internal addresses)",
                    ))
                }
                None => return Err(ferr(format!("{at}.endpoint.address"), "missing")),
            };
            let port = match sa.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(p)) if (1..=65535).contains(&p) => p,
                Some(socket_address::PortSpecifier::PortValue(p)) => {
                    return Err(ferr(
                        format!("{at}.endpoint.address.socket_address.port_value"),
                        format!("{p} is not a port from 1 to 65535"),
                    ))
                }
                _ => {
                    return Err(ferr(
                        format!("{at}.endpoint.address.socket_address"),
                        "needs a port_value (named ports are not supported)",
                    ))
                }
            };
            let text = if sa.address.contains(':') {
                format!("[{}]:{port}", sa.address)
            } else {
                format!("{}:{port}", sa.address)
            };
            weir_config::parse_endpoint(&text).map_err(|why| {
                ferr(
                    format!("{at}.endpoint.address.socket_address.address"),
                    format!("{text:?}: {why}"),
                )
            })?;
            if !out.contains(&text) {
                out.push(text);
            }
        }
    }
    Ok(out)
}
