//! A Kourier-shaped control plane for Weir's tests: what net-kourier sends its gateways and
//! how it decides that a KIngress is ready, rebuilt from the behaviour of net-kourier and
//! Knative networking (written fresh; none of their code):
//!
//! - [`KIngress`] and friends: the part of Knative's `Ingress` spec the gateway sees, with
//!   the probe paths Kourier inserts ([`KIngress::with_probes`]) and the spec hash.
//! - [`resources`]: a snapshot as net-kourier builds it: STATIC (or LOGICAL_DNS) clusters
//!   named `namespace/service` with inline endpoints, the four RouteConfigurations with the
//!   `internalkourier` status virtual host, https redirects and TLS routes, and the
//!   Listeners with their certificates inline.
//! - [`ads`]: an ADS server that behaves like go-control-plane 0.14's snapshot cache as
//!   Kourier configures it (node-keyed snapshot, a random version per snapshot, responses in
//!   the order Cluster, Listener, Route, legacy wildcard, nothing resent after a NACK until a
//!   new snapshot, no answer for a type the snapshot lacks).
//! - [`prober`]: the status prober of networking's `pkg/status` as Kourier runs it against
//!   each gateway pod.
//!
//! Results of tests built on this are "Kourier-shaped replay", not Kourier conformance: no
//! real net-kourier, Envoy or Kubernetes is involved.

pub mod ads;
pub mod prober;
pub mod resources;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Serialize;

/// The node id every Kourier gateway replica announces.
pub const NODE_ID: &str = "3scale-kourier-gateway";
/// The host of Kourier's status virtual host (kubelet probes `GET :8081/ready` with it).
pub const STATUS_HOST: &str = "internalkourier";

/// `spec.rules[].visibility`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Visibility {
    ExternalIP,
    ClusterLocal,
}

/// `spec.httpOption`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum HttpOption {
    #[default]
    Enabled,
    Redirected,
}

/// A KIngress: `metadata.{namespace,name}` and the spec the gateway sees.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KIngress {
    #[serde(skip)]
    pub namespace: String,
    #[serde(skip)]
    pub name: String,
    pub rules: Vec<Rule>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<IngressTls>,
    pub http_option: HttpOption,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub hosts: Vec<String>,
    pub visibility: Visibility,
    pub paths: Vec<Path>,
}

#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Path {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// Exact matches (`headers: {name: {exact: value}}`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    pub splits: Vec<Split>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub append_headers: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite_host: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Split {
    pub service_namespace: String,
    pub service_name: String,
    pub service_port: u16,
    pub percent: u32,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub append_headers: BTreeMap<String, String>,
}

/// `spec.tls[]`: hosts served with a Secret's certificate.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressTls {
    pub hosts: Vec<String>,
    pub secret_name: String,
}

/// The header the probe path matches and sets.
pub const HASH_HEADER: &str = "K-Network-Hash";

impl KIngress {
    /// An ingress with one rule of `hosts` whose single path splits over `splits`
    /// (service names in the ingress's namespace, port 80) with Knative Serving's
    /// per-split headers.
    pub fn simple(namespace: &str, name: &str, hosts: &[&str], splits: &[(&str, u32)]) -> KIngress {
        KIngress {
            namespace: namespace.into(),
            name: name.into(),
            rules: vec![Rule {
                hosts: hosts.iter().map(|h| h.to_string()).collect(),
                visibility: Visibility::ExternalIP,
                paths: vec![Path {
                    splits: splits
                        .iter()
                        .map(|(s, p)| split(namespace, s, *p))
                        .collect(),
                    ..Default::default()
                }],
            }],
            tls: Vec::new(),
            http_option: HttpOption::Enabled,
        }
    }

    /// The hash Kourier gives this spec: hex(sha256(json(spec) + namespace + name)), as
    /// networking's `ComputeHash` (the JSON here is this crate's, not Go's: the gateway only
    /// carries the value, so any stable hash the prober expects does the job).
    pub fn hash(&self) -> String {
        let mut bytes = serde_json::to_vec(self).expect("a KIngress serialises");
        bytes.extend_from_slice(self.namespace.as_bytes());
        bytes.extend_from_slice(self.name.as_bytes());
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The spec as Kourier translates it: every rule's paths preceded by their probe copies
    /// (networking's `InsertProbe`: match `K-Network-Hash: override`, set it to the hash).
    pub fn with_probes(&self) -> (KIngress, String) {
        let hash = self.hash();
        let mut out = self.clone();
        for rule in &mut out.rules {
            let probes: Vec<Path> = rule
                .paths
                .iter()
                .map(|p| {
                    let mut probe = p.clone();
                    probe.headers.insert(HASH_HEADER.into(), "override".into());
                    probe
                        .append_headers
                        .insert(HASH_HEADER.into(), hash.clone());
                    probe
                })
                .collect();
            let originals = std::mem::take(&mut rule.paths);
            rule.paths = probes.into_iter().chain(originals).collect();
        }
        (out, hash)
    }
}

/// A split to `namespace/service` on port 80 with Serving's `Knative-Serving-*` headers.
pub fn split(namespace: &str, service: &str, percent: u32) -> Split {
    Split {
        service_namespace: namespace.into(),
        service_name: service.into(),
        service_port: 80,
        percent,
        append_headers: [
            (
                "Knative-Serving-Namespace".to_string(),
                namespace.to_string(),
            ),
            ("Knative-Serving-Revision".to_string(), service.to_string()),
        ]
        .into(),
    }
}

/// What a Kubernetes Service of a split resolves to.
#[derive(Debug, Clone)]
pub enum Backend {
    /// Ready addresses of its EndpointSlices; `h2c` when its port is named `h2c`/`http2`.
    Pods { addrs: Vec<SocketAddr>, h2c: bool },
    /// An ExternalName Service: `host:port` (Kourier: a LOGICAL_DNS cluster).
    ExternalName { host: String, port: u16 },
}

/// A Secret named by `spec.tls`: PEM certificate chain and key.
#[derive(Debug, Clone)]
pub struct Secret {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The ports of one gateway pod, as Kourier's Listeners name them (Weir binds the same).
#[derive(Debug, Clone, Copy)]
pub struct GatewayPorts {
    /// 8080: external routes.
    pub http: SocketAddr,
    /// 8090: the probe listener, external routes.
    pub probe: SocketAddr,
    /// 8081: internal routes (and the status host).
    pub internal: SocketAddr,
    /// 8443: external TLS routes.
    pub https: SocketAddr,
    /// 9443: the TLS probe listener, external routes.
    pub probe_https: SocketAddr,
    /// 8444: cluster-local TLS routes.
    pub internal_https: SocketAddr,
}

impl GatewayPorts {
    /// Six free addresses on 127.0.0.1.
    pub fn free() -> GatewayPorts {
        let listeners: Vec<std::net::TcpListener> = (0..6)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
            .collect();
        let a: Vec<SocketAddr> = listeners
            .iter()
            .map(|l| l.local_addr().expect("local_addr"))
            .collect();
        GatewayPorts {
            http: a[0],
            probe: a[1],
            internal: a[2],
            https: a[3],
            probe_https: a[4],
            internal_https: a[5],
        }
    }

    /// `weir proxy` flags binding these ports as Kourier's gateway does.
    pub fn args(&self) -> Vec<String> {
        [
            ("--http", self.http),
            ("--http", self.probe),
            ("--internal", self.internal),
            ("--https", self.https),
            ("--https", self.probe_https),
            ("--internal-https", self.internal_https),
        ]
        .iter()
        .map(|(flag, addr)| format!("{flag}={addr}"))
        .collect()
    }
}
