//! The file/API form of Weir's config: serde types; the format is documented in docs/config.md.
//!
//! These types accept anything shaped roughly right and keep what they cannot judge yet
//! (unknown fields, durations as written) so that [`crate::validate()`] can report every
//! problem at once with its path, instead of serde stopping at the first one.

use std::collections::BTreeMap;
use std::fmt;
use std::time;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Fields a struct did not expect. Collected (rather than denied by serde) so that every
/// unknown field is reported together with the other errors, each with its path.
pub type Unknown = BTreeMap<String, serde_json::Value>;

/// The whole config of a proxy or control plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    #[serde(default, skip_serializing_if = "Listen::is_empty")]
    pub listen: Listen,
    #[serde(default = "defaults::domain")]
    pub domain: String,
    #[serde(default = "defaults::domain_template")]
    pub domain_template: String,
    #[serde(default = "defaults::tag_template")]
    pub tag_template: String,
    #[serde(default = "defaults::cluster_domain")]
    pub cluster_domain: String,
    #[serde(default)]
    pub tag_header_routing: bool,
    /// How long SIGTERM waits for in-flight requests before the process exits.
    #[serde(default = "defaults::drain_timeout")]
    pub drain_timeout: TextDuration,
    /// Worker threads of each data-plane listener (the `--threads` flag wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Identity reported to control planes and the autoscaler (the `--node-id` flag wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    #[serde(default)]
    pub hold: Hold,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<Autoscaler>,
    #[serde(default)]
    pub services: Vec<Service>,
    #[serde(default)]
    pub ingresses: Vec<Ingress>,
    #[serde(default)]
    pub revisions: Vec<Revision>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<TlsEntry>,
    /// Hosts on which Weir answers a readiness path itself (a load balancer's or kubelet's
    /// probe of the gateway, e.g. Kourier's `internalkourier`).
    #[serde(default, skip_serializing_if = "Readiness::is_empty")]
    pub readiness: Readiness,
    /// How `X-Forwarded-For` and `X-Forwarded-Proto` are treated.
    #[serde(default, skip_serializing_if = "Forwarded::is_default")]
    pub forwarded: Forwarded,
    /// What a client may take: timeouts, connections, header sizes, held-request memory.
    #[serde(default)]
    pub limits: Limits,
    /// One line per request; `access_log: off` turns it off.
    #[serde(default)]
    pub access_log: AccessLog,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

/// Listener addresses; each kind is replaced by the matching command-line flags. Each takes
/// one address or a list (`http: ["0.0.0.0:8080", "0.0.0.0:8090"]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Listen {
    #[serde(default, skip_serializing_if = "Addrs::is_empty")]
    pub http: Addrs,
    #[serde(default, skip_serializing_if = "Addrs::is_empty")]
    pub internal: Addrs,
    #[serde(default, skip_serializing_if = "Addrs::is_empty")]
    pub https: Addrs,
    /// Cluster-local TLS listeners (Kourier's 8444).
    #[serde(default, skip_serializing_if = "Addrs::is_empty")]
    pub internal_https: Addrs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// Ports whose listeners expect a PROXY protocol (v1 or v2) header before anything else.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_protocol: Vec<u16>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

impl Listen {
    fn is_empty(&self) -> bool {
        self.http.is_empty()
            && self.internal.is_empty()
            && self.https.is_empty()
            && self.internal_https.is_empty()
            && self.admin.is_none()
            && self.proxy_protocol.is_empty()
    }
}

/// One listener address or several, as written (`"0.0.0.0:8080"` or a list of them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addrs(pub Vec<String>);

impl Addrs {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Addrs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => s.serialize_str(one),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Addrs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        match OneOrMany::deserialize(d) {
            Ok(OneOrMany::One(a)) => Ok(Addrs(vec![a])),
            Ok(OneOrMany::Many(v)) => Ok(Addrs(v)),
            Err(_) => Err(serde::de::Error::custom(
                "expected an address (\"0.0.0.0:8080\") or a list of addresses",
            )),
        }
    }
}

/// The edge's limits (nginx's `client_header_timeout`, `keepalive_timeout`,
/// `worker_connections`; Envoy's `request_headers_timeout`, `idle_timeout`, overload manager).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// A request head must arrive whole within this: from accept for a connection's first
    /// request, from its first byte for the next ones; then 408 and close. `0s`: no limit.
    #[serde(default = "defaults::header_read_timeout")]
    pub header_read_timeout: TextDuration,
    /// A client connection with no request in flight is closed after this (HTTP/2: GOAWAY).
    /// `0s`: never. Requests that reached a backend are never timed out.
    #[serde(default = "defaults::idle_timeout")]
    pub idle_timeout: TextDuration,
    /// Client connections open at once; beyond it Weir stops accepting (the kernel's listen
    /// backlog holds the rest). Default: 3/4 of the open-file limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Largest request header section (names and values), else 431.
    #[serde(default = "defaults::max_request_headers_size")]
    pub max_request_headers_size: ByteSize,
    /// Most request header fields, else 431.
    #[serde(default = "defaults::max_request_headers")]
    pub max_request_headers: u32,
    /// Memory the requests held for one revision may take (then 503, like a full queue).
    #[serde(default = "defaults::held_memory_per_revision")]
    pub held_memory_per_revision: ByteSize,
    /// Memory all held requests may take together; past it new requests that would wait
    /// get 503 with `Retry-After` (overload).
    #[serde(default = "defaults::held_memory")]
    pub held_memory: ByteSize,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: defaults::header_read_timeout(),
            idle_timeout: defaults::idle_timeout(),
            max_connections: None,
            max_request_headers_size: defaults::max_request_headers_size(),
            max_request_headers: defaults::max_request_headers(),
            held_memory_per_revision: defaults::held_memory_per_revision(),
            held_memory: defaults::held_memory(),
            unknown: Unknown::new(),
        }
    }
}

/// Weir's own answer to readiness probes of the gateway itself: `GET <path>` with one of
/// `hosts` is answered 200 once a config is in force and 503 before, on every listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Readiness {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default = "defaults::readiness_path")]
    pub path: String,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            hosts: Vec::new(),
            path: defaults::readiness_path(),
            unknown: Unknown::new(),
        }
    }
}

impl Readiness {
    fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.path == defaults::readiness_path()
    }
}

/// How the client address and scheme reach the backend (Envoy's `use_remote_address` and
/// `xff_num_trusted_hops`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forwarded {
    /// Append the client's address to `X-Forwarded-For` (otherwise pass it on unchanged).
    #[serde(default = "defaults::yes")]
    pub use_remote_address: bool,
    /// Proxies in front of Weir whose `X-Forwarded-Proto` is believed: with 1 or more, a
    /// request that carries `X-Forwarded-Proto` keeps it (a TLS-terminating load balancer's
    /// `https` reaches the app); with 0 it is set to the listener's scheme.
    #[serde(default)]
    pub trusted_hops: u32,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

impl Default for Forwarded {
    fn default() -> Self {
        Forwarded {
            use_remote_address: true,
            trusted_hops: 0,
            unknown: Unknown::new(),
        }
    }
}

impl Forwarded {
    fn is_default(&self) -> bool {
        self.use_remote_address && self.trusted_hops == 0
    }
}

/// The access log (docs/config.md#access_log): one line per request, JSON by default, to
/// stdout. Written as `off`, or as a map of the fields below.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLog {
    /// `false` when written `off`.
    pub enabled: bool,
    /// `json` or `text`.
    pub format: String,
    /// The share of requests logged, from 0 to 1.
    pub sample: f64,
    /// `stdout`, `stderr` or a file (appended to; reopened on SIGUSR1).
    pub to: String,
    /// Lines waiting to be written, at most; beyond it lines are dropped and counted.
    pub buffer: ByteSize,
    pub unknown: Unknown,
    /// What was written when it was neither `off` nor a map (reported by validation).
    pub invalid: Option<String>,
}

/// The map form of [`AccessLog`], as serde sees it.
#[derive(Serialize, Deserialize)]
struct AccessLogFields {
    #[serde(default = "defaults::access_log_format")]
    format: String,
    #[serde(default = "defaults::one")]
    sample: f64,
    #[serde(default = "defaults::stdout")]
    to: String,
    #[serde(default = "defaults::access_log_buffer")]
    buffer: ByteSize,
    #[serde(flatten, skip_serializing)]
    unknown: Unknown,
}

impl Default for AccessLog {
    fn default() -> Self {
        AccessLog {
            enabled: true,
            format: defaults::access_log_format(),
            sample: 1.0,
            to: defaults::stdout(),
            buffer: defaults::access_log_buffer(),
            unknown: Unknown::new(),
            invalid: None,
        }
    }
}

impl AccessLog {
    /// The access log turned off.
    pub fn off() -> AccessLog {
        AccessLog {
            enabled: false,
            ..AccessLog::default()
        }
    }
}

impl Serialize for AccessLog {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !self.enabled {
            return s.serialize_str("off");
        }
        AccessLogFields {
            format: self.format.clone(),
            sample: self.sample,
            to: self.to.clone(),
            buffer: self.buffer.clone(),
            unknown: Unknown::new(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for AccessLog {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Anything is accepted here; validation reports what is not `off` or a map.
        let v = serde_json::Value::deserialize(d)?;
        match v {
            serde_json::Value::String(s) if s == "off" => Ok(AccessLog::off()),
            serde_json::Value::Bool(false) => Ok(AccessLog::off()),
            serde_json::Value::Object(_) => {
                let f: AccessLogFields =
                    serde_json::from_value(v).map_err(serde::de::Error::custom)?;
                Ok(AccessLog {
                    enabled: true,
                    format: f.format,
                    sample: f.sample,
                    to: f.to,
                    buffer: f.buffer,
                    unknown: f.unknown,
                    invalid: None,
                })
            }
            other => Ok(AccessLog {
                invalid: Some(other.to_string()),
                ..AccessLog::default()
            }),
        }
    }
}

/// A service's or ingress's own hold settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteHold {
    /// A page for browsers while the revision starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placeholder: Option<Placeholder>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

/// A page answered to a browser (a request that accepts `text/html`) still held after
/// `after`: 503 with `Retry-After` and a refresh, instead of a blank wait. API clients are
/// never answered with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placeholder {
    #[serde(default = "defaults::placeholder_after")]
    pub after: TextDuration,
    /// An HTML file, relative to the config file's directory; read on every config load.
    pub html: String,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

/// Scale-from-zero defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    /// Held requests per revision, at most.
    #[serde(default = "defaults::queue_depth")]
    pub queue_depth: u32,
    /// How long a request may wait for a revision that sets no `timeout` of its own.
    #[serde(default = "defaults::hold_timeout")]
    pub timeout: TextDuration,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

impl Default for Hold {
    fn default() -> Self {
        Hold {
            queue_depth: defaults::queue_depth(),
            timeout: defaults::hold_timeout(),
            unknown: Unknown::new(),
        }
    }
}

/// Where and how often concurrency is reported (Knative's stat protocol).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Autoscaler {
    pub url: String,
    #[serde(default = "defaults::report_interval")]
    pub interval: TextDuration,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Visibility {
    #[default]
    External,
    ClusterLocal,
}

impl Visibility {
    pub fn is_external(&self) -> bool {
        *self == Visibility::External
    }
}

/// The friendly form: one Knative Route with its traffic block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    #[serde(default = "defaults::namespace")]
    pub namespace: String,
    #[serde(default)]
    pub visibility: Visibility,
    /// Extra exact hosts, served beside the generated ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    // Lists default to empty (validation says "list at least one") so that a misspelt key is
    // reported as an unknown field together with every other error, not alone as "missing".
    #[serde(default)]
    pub traffic: Vec<TrafficTarget>,
    /// Keeps a user on one revision across the weighted split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// `redirect`: plain-HTTP requests get a 301 to https (Knative's `httpOption: Redirected`).
    #[serde(default, skip_serializing_if = "HttpOption::is_enabled")]
    pub http_option: HttpOption,
    /// While a revision of this service starts (`placeholder`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<RouteHold>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

/// What plain HTTP does for a host that also has TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpOption {
    /// Served on plain HTTP too.
    #[default]
    Enabled,
    /// Answered with a 301 to the same URL on https.
    Redirect,
}

impl HttpOption {
    fn is_enabled(&self) -> bool {
        *self == HttpOption::Enabled
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrafficTarget {
    pub revision: String,
    pub percent: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

/// The general form: Knative's KIngress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ingress {
    pub name: String,
    #[serde(default = "defaults::namespace")]
    pub namespace: String,
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// While a revision this ingress sends to starts (`placeholder`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<RouteHold>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub visibility: Visibility,
    /// `redirect`: plain-HTTP requests get a 301 to https.
    #[serde(default, skip_serializing_if = "HttpOption::is_enabled")]
    pub http_option: HttpOption,
    /// Shared: a rule built from an xDS virtual host shares its paths with it.
    #[serde(default)]
    pub paths: std::sync::Arc<[PathRule]>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathRule {
    /// A plain prefix of the request path; "" and "/" match everything.
    #[serde(default)]
    pub path: String,
    /// Exact header matches; all must hold.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Set on the upstream request, replacing a client's header of the same name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub append_headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite_host: Option<String>,
    #[serde(default)]
    pub splits: Vec<SplitTarget>,
    /// Keeps a user on one revision across the weighted split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

/// Revision stickiness for a split: by a request header (a pure function of its value and the
/// weights, the same on every replica) or by a cookie the proxy sets. Exactly one of `header`
/// and `cookie`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Affinity {
    /// Header whose value keys the choice, e.g. `x-user-id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Cookie that remembers the revision, e.g. `weir-rev`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// Cookie lifetime (`Max-Age`); default 24h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<TextDuration>,
    /// With `cookie`: also stay on the same endpoint while it exists and has a free slot.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub instance_affinity: bool,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitTarget {
    pub revision: String,
    /// The revision's namespace; defaults to the ingress's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub percent: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub append_headers: BTreeMap<String, String>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http1,
    H2c,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    pub name: String,
    #[serde(default = "defaults::namespace")]
    pub namespace: String,
    /// Requests one endpoint may have in flight; 0 = unlimited.
    #[serde(default)]
    pub container_concurrency: u32,
    /// How long a request may be held for this revision; default `hold.timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<TextDuration>,
    #[serde(default)]
    pub protocol: Protocol,
    /// `IP:port` or `host:port`; empty = scaled to zero.
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

/// A certificate and the server names (SNI) it is presented for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TlsEntry {
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Path of the PEM chain (relative to the config file); or `cert_pem`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// Path of the PEM key; or `key_pem`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The PEM chain itself (as xDS delivers it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pem: Option<String>,
    /// Presented when the client sends no server name or one no entry lists.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
    /// Which TLS listeners serve it: `external` (`https`) or `cluster-local`
    /// (`internal_https`).
    #[serde(default, skip_serializing_if = "Visibility::is_external")]
    pub visibility: Visibility,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

// === impl TextDuration ===

/// A duration as written in the config (`300ms`, `5s`, `10m`, `1h`).
///
/// Deserialising never fails: a bad string is kept and reported by validation with its path,
/// together with every other error.
#[derive(Clone, PartialEq, Eq)]
pub struct TextDuration {
    raw: String,
    value: Option<time::Duration>,
}

impl TextDuration {
    pub fn parse(raw: &str) -> TextDuration {
        TextDuration {
            raw: raw.to_owned(),
            value: parse_duration(raw),
        }
    }

    pub fn from_std(d: time::Duration) -> TextDuration {
        let raw = if d.subsec_nanos() == 0 {
            format!("{}s", d.as_secs())
        } else {
            format!("{}ms", d.as_millis())
        };
        TextDuration {
            raw,
            value: Some(d),
        }
    }

    /// The parsed value; `None` when the text was not a valid duration.
    pub fn get(&self) -> Option<time::Duration> {
        self.value
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl fmt::Debug for TextDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.raw)
    }
}

impl Serialize for TextDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for TextDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Accept any scalar so that `timeout: 30` is reported as "needs a unit" by
        // validation rather than as a type error that hides every other problem.
        let v = serde_json::Value::deserialize(d)?;
        let raw = match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        Ok(TextDuration::parse(&raw))
    }
}

// === impl ByteSize ===

/// A size as written in the config: a number of bytes, or a number with a unit `KiB`, `MiB`
/// or `GiB` (`64KiB`, `512MiB`). Like [`TextDuration`], a bad value is kept and reported by
/// validation with its path.
#[derive(Clone, PartialEq, Eq)]
pub struct ByteSize {
    raw: String,
    value: Option<u64>,
}

impl ByteSize {
    pub fn parse(raw: &str) -> ByteSize {
        ByteSize {
            raw: raw.to_owned(),
            value: parse_size(raw),
        }
    }

    pub fn get(&self) -> Option<u64> {
        self.value
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl fmt::Debug for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.raw)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        let raw = match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        Ok(ByteSize::parse(&raw))
    }
}

/// Parses a byte count: digits, optionally followed by `KiB`, `MiB` or `GiB`.
pub fn parse_size(raw: &str) -> Option<u64> {
    let s = raw.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Parses `<number><unit>` with unit `ms`, `s`, `m` or `h`; the number may have a fraction.
pub fn parse_duration(raw: &str) -> Option<time::Duration> {
    let s = raw.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    if !secs.is_finite() || secs > 1e9 {
        return None;
    }
    Some(time::Duration::from_secs_f64(secs))
}

mod defaults {
    use super::{ByteSize, TextDuration};

    pub fn domain() -> String {
        "example.com".into()
    }
    pub fn domain_template() -> String {
        "{name}.{namespace}.{domain}".into()
    }
    pub fn tag_template() -> String {
        "{tag}-{name}".into()
    }
    pub fn cluster_domain() -> String {
        "cluster.local".into()
    }
    pub fn namespace() -> String {
        "default".into()
    }
    pub fn queue_depth() -> u32 {
        10_000
    }
    pub fn hold_timeout() -> TextDuration {
        TextDuration::parse("300s")
    }
    pub fn drain_timeout() -> TextDuration {
        TextDuration::parse("30s")
    }
    pub fn report_interval() -> TextDuration {
        TextDuration::parse("1s")
    }
    pub fn readiness_path() -> String {
        "/ready".into()
    }
    pub fn header_read_timeout() -> TextDuration {
        TextDuration::parse("10s")
    }
    pub fn idle_timeout() -> TextDuration {
        TextDuration::parse("60s")
    }
    pub fn max_request_headers_size() -> ByteSize {
        ByteSize::parse("64KiB")
    }
    pub fn max_request_headers() -> u32 {
        100
    }
    pub fn held_memory_per_revision() -> ByteSize {
        ByteSize::parse("256MiB")
    }
    pub fn held_memory() -> ByteSize {
        ByteSize::parse("1GiB")
    }
    pub fn yes() -> bool {
        true
    }
    pub fn one() -> f64 {
        1.0
    }
    pub fn stdout() -> String {
        "stdout".into()
    }
    pub fn access_log_format() -> String {
        "json".into()
    }
    pub fn access_log_buffer() -> ByteSize {
        ByteSize::parse("1MiB")
    }
    pub fn placeholder_after() -> TextDuration {
        TextDuration::parse("2s")
    }
}

impl Config {
    /// A config with every default and nothing routed.
    pub fn empty() -> Config {
        serde_json::from_str("{}").expect("the empty config parses")
    }

    /// How long a request may be held for revision `r`: its `timeout`, else `hold.timeout`
    /// (values validation accepted).
    pub fn revision_timeout(&self, r: &Revision) -> std::time::Duration {
        r.timeout
            .as_ref()
            .and_then(|t| t.get())
            .or_else(|| self.hold.timeout.get())
            .unwrap_or(std::time::Duration::from_secs(300))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("300ms"),
            Some(time::Duration::from_millis(300))
        );
        assert_eq!(parse_duration("5s"), Some(time::Duration::from_secs(5)));
        assert_eq!(parse_duration("10m"), Some(time::Duration::from_secs(600)));
        assert_eq!(
            parse_duration("1.5s"),
            Some(time::Duration::from_millis(1500))
        );
        assert_eq!(parse_duration("1h"), Some(time::Duration::from_secs(3600)));
        for bad in ["", "5", "s", "5x", "-5s", "5 s", "1e3s", "5sec"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn empty_config_has_knative_defaults() {
        let c = Config::empty();
        assert_eq!(c.domain_template, "{name}.{namespace}.{domain}");
        assert_eq!(c.tag_template, "{tag}-{name}");
        assert_eq!(c.hold.queue_depth, 10_000);
        assert_eq!(c.hold.timeout.get(), Some(time::Duration::from_secs(300)));
    }
}
