//! Listeners -> what Weir takes from them: TLS certificates by SNI (Kourier sends them inline
//! in the filter chains, there is no SDS), PROXY protocol, and the HTTP connection manager's
//! client-address and timeout settings.
//!
//! Weir binds its listeners from its own flags; it never opens a listener because a Listener
//! arrived. A Listener is matched to Weir's listeners by its port (PROXY protocol) or by the
//! visibility of the routes it serves (certificates: `internal_*` routes are cluster-local,
//! everything else external; timeouts and `X-Forwarded-*`: the external plain listener).

use std::time::Duration;

use prost::Message;
use weir_config::model::{TlsEntry, Visibility};
use xds_api::pb::envoy::config::core::v3::{address, data_source, socket_address, DataSource};
use xds_api::pb::envoy::config::listener::v3::{filter, listener_filter, FilterChain, Listener};
use xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager,
};
use xds_api::pb::envoy::extensions::transport_sockets::tls::v3::TlsCertificate;
use xds_api::pb::google::protobuf::Any;

use super::clusters::EXT_AUTHZ_REFUSED;
use super::{ferr, FieldError};
use crate::translate::{TranslateError, INTERNAL_ROUTES, INTERNAL_TLS_ROUTES};

/// A translated Listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerSpec {
    /// The port of its address (how it is matched to a Weir listener).
    pub port: Option<u16>,
    /// The RouteConfiguration its connection manager reads over RDS.
    pub routes: String,
    pub visibility: Visibility,
    /// Its certificates: one entry per TLS filter chain, with the chain's server names; a
    /// chain without server names is the default certificate.
    pub tls: Vec<TlsEntry>,
    /// A `proxy_protocol` listener filter: connections start with a PROXY header.
    pub proxy_protocol: bool,
    /// `use_remote_address` (Envoy's default: false).
    pub use_remote_address: bool,
    pub trusted_hops: u32,
    /// `request_headers_timeout`, when set and not 0.
    pub request_headers_timeout: Option<Duration>,
    /// `common_http_protocol_options.idle_timeout`, when set (0 turns it off).
    pub idle_timeout: Option<Duration>,
}

/// Envoy's names of the filters Weir reads or refuses.
const HCM: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const HCM_NAME: &str = "envoy.filters.network.http_connection_manager";
const TLS_CONTEXT: &str = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const PROXY_PROTOCOL: &str = "envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol";
const PROXY_PROTOCOL_NAME: &str = "envoy.filters.listener.proxy_protocol";
const EXT_AUTHZ: &str = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
const EXT_AUTHZ_NAME: &str = "envoy.filters.http.ext_authz";

/// The parts of envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext Weir reads
/// (xds-api does not ship that type); field numbers are Envoy's.
mod tls_context {
    use xds_api::pb::envoy::extensions::transport_sockets::tls::v3::{
        SdsSecretConfig, TlsCertificate,
    };
    use xds_api::pb::google::protobuf::BoolValue;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DownstreamTlsContext {
        #[prost(message, optional, tag = "1")]
        pub common_tls_context: Option<CommonTlsContext>,
        #[prost(message, optional, tag = "2")]
        pub require_client_certificate: Option<BoolValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CommonTlsContext {
        #[prost(message, repeated, tag = "2")]
        pub tls_certificates: Vec<TlsCertificate>,
        #[prost(string, repeated, tag = "4")]
        pub alpn_protocols: Vec<String>,
        #[prost(message, repeated, tag = "6")]
        pub tls_certificate_sds_secret_configs: Vec<SdsSecretConfig>,
    }
}

pub use tls_context::{CommonTlsContext, DownstreamTlsContext};

pub(super) fn listener_label(name: &str) -> String {
    format!("Listener {name:?}")
}

/// `type.googleapis.com/<name>` (or any other prefix) ends with `name`.
fn is_type(any: &Any, name: &str) -> bool {
    any.type_url.rsplit('/').next() == Some(name)
}

/// Translates one Listener.
pub fn listener_spec(l: &Listener) -> Result<ListenerSpec, TranslateError> {
    spec(l).map_err(|(f, m)| TranslateError::new(listener_label(&l.name), f, m))
}

fn spec(l: &Listener) -> Result<ListenerSpec, FieldError> {
    let port = match l.address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(sa)) => match sa.port_specifier {
            Some(socket_address::PortSpecifier::PortValue(p)) => u16::try_from(p).ok(),
            _ => None,
        },
        _ => None,
    };
    let proxy_protocol = l.listener_filters.iter().any(|f| {
        f.name == PROXY_PROTOCOL_NAME
            || matches!(&f.config_type, Some(listener_filter::ConfigType::TypedConfig(a)) if is_type(a, PROXY_PROTOCOL))
    });
    let mut out = ListenerSpec {
        port,
        routes: String::new(),
        visibility: Visibility::External,
        tls: Vec::new(),
        proxy_protocol,
        use_remote_address: false,
        trusted_hops: 0,
        request_headers_timeout: None,
        idle_timeout: None,
    };
    let chains = l
        .filter_chains
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("filter_chains[{i}]"), c))
        .chain(
            l.default_filter_chain
                .as_ref()
                .map(|c| ("default_filter_chain".to_string(), c)),
        );
    let mut hcm_seen = false;
    for (at, chain) in chains {
        if let Some(hcm) = connection_manager(chain, &at)? {
            // Every chain of a Kourier listener has the same connection manager; the first
            // one says what the listener does.
            if !hcm_seen {
                hcm_seen = true;
                out.routes = hcm.0.clone();
                out.use_remote_address = hcm.1;
                out.trusted_hops = hcm.2;
                out.request_headers_timeout = hcm.3;
                out.idle_timeout = hcm.4;
            }
        }
        if let Some(entry) = chain_certificate(chain, &at)? {
            out.tls.push(entry);
        }
    }
    if out.routes == INTERNAL_ROUTES || out.routes == INTERNAL_TLS_ROUTES {
        out.visibility = Visibility::ClusterLocal;
    }
    for t in &mut out.tls {
        t.visibility = out.visibility;
    }
    Ok(out)
}

/// (RDS name, use_remote_address, xff_num_trusted_hops, request_headers_timeout,
/// idle_timeout) of a chain's HTTP connection manager.
type HcmSettings = (String, bool, u32, Option<Duration>, Option<Duration>);

fn connection_manager(chain: &FilterChain, at: &str) -> Result<Option<HcmSettings>, FieldError> {
    for (f, filt) in chain.filters.iter().enumerate() {
        let fat = format!("{at}.filters[{f}]");
        let any = match &filt.config_type {
            Some(filter::ConfigType::TypedConfig(a)) if is_type(a, HCM) => a,
            _ if filt.name == HCM_NAME => {
                return Err(ferr(
                    fat,
                    "an HTTP connection manager needs its typed_config",
                ))
            }
            _ => continue,
        };
        let hcm = HttpConnectionManager::decode(any.value.as_slice())
            .map_err(|e| ferr(format!("{fat}.typed_config"), format!("cannot decode: {e}")))?;
        for (h, hf) in hcm.http_filters.iter().enumerate() {
            let ext_authz = hf.name == EXT_AUTHZ_NAME
                || matches!(&hf.config_type, Some(http_filter::ConfigType::TypedConfig(a)) if is_type(a, EXT_AUTHZ));
            if ext_authz && !hf.disabled {
                return Err(ferr(
                    format!("{fat}.typed_config.http_filters[{h}]"),
                    EXT_AUTHZ_REFUSED,
                ));
            }
        }
        let routes = match &hcm.route_specifier {
            Some(http_connection_manager::RouteSpecifier::Rds(rds)) => {
                rds.route_config_name.clone()
            }
            Some(http_connection_manager::RouteSpecifier::RouteConfig(_)) => {
                return Err(ferr(
                    format!("{fat}.typed_config.route_config"),
                    "inline route configurations are not supported; send them over RDS",
                ))
            }
            Some(_) => {
                return Err(ferr(
                    format!("{fat}.typed_config.scoped_routes"),
                    "scoped routes are not supported; send routes over RDS",
                ))
            }
            None => String::new(),
        };
        let duration = |d: &Option<xds_api::pb::google::protobuf::Duration>| {
            d.as_ref().map(|d| {
                Duration::from_secs(d.seconds.max(0) as u64)
                    + Duration::from_nanos(d.nanos.max(0) as u64)
            })
        };
        let headers_timeout = duration(&hcm.request_headers_timeout).filter(|d| !d.is_zero());
        let idle = hcm
            .common_http_protocol_options
            .as_ref()
            .and_then(|o| duration(&o.idle_timeout));
        return Ok(Some((
            routes,
            hcm.use_remote_address.as_ref().is_some_and(|b| b.value),
            hcm.xff_num_trusted_hops,
            headers_timeout,
            idle,
        )));
    }
    Ok(None)
}

/// The certificate of a chain's TLS transport socket, checked; `None` for a plain chain.
fn chain_certificate(chain: &FilterChain, at: &str) -> Result<Option<TlsEntry>, FieldError> {
    let Some(ts) = &chain.transport_socket else {
        return Ok(None);
    };
    let tat = format!("{at}.transport_socket");
    let any = match &ts.config_type {
        Some(xds_api::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
            a,
        )) if is_type(a, TLS_CONTEXT) => a,
        _ => {
            return Err(ferr(
                tat,
                "only TLS transport sockets (DownstreamTlsContext) are supported",
            ))
        }
    };
    let ctx = DownstreamTlsContext::decode(any.value.as_slice())
        .map_err(|e| ferr(format!("{tat}.typed_config"), format!("cannot decode: {e}")))?;
    let cat = format!("{tat}.typed_config");
    if ctx.require_client_certificate.is_some_and(|b| b.value) {
        return Err(ferr(
            format!("{cat}.require_client_certificate"),
            "client certificates (mutual TLS) are not supported",
        ));
    }
    let common = ctx.common_tls_context.unwrap_or_default();
    let cat = format!("{cat}.common_tls_context");
    if !common.tls_certificate_sds_secret_configs.is_empty() {
        return Err(ferr(
            format!("{cat}.tls_certificate_sds_secret_configs"),
            "SDS is not supported; send certificates inline",
        ));
    }
    let cert = match common.tls_certificates.as_slice() {
        [one] => one,
        [] => {
            return Err(ferr(
                format!("{cat}.tls_certificates"),
                "a TLS filter chain needs a certificate",
            ))
        }
        _ => {
            return Err(ferr(
                format!("{cat}.tls_certificates"),
                "one certificate per filter chain is supported",
            ))
        }
    };
    let cert_at = format!("{cat}.tls_certificates[0]");
    let (cert_pem, key_pem) = pem_pair(cert, &cert_at)?;
    let names = chain
        .filter_chain_match
        .as_ref()
        .map(|m| m.server_names.clone())
        .unwrap_or_default();
    let origin = (
        format!("{cert_at}.certificate_chain"),
        format!("{cert_at}.private_key"),
    );
    crate::certs::certified_key(
        cert_pem.as_bytes(),
        key_pem.as_bytes(),
        (&origin.0, &origin.1),
    )
    .map_err(|e| {
        let field = if e.field == "cert" {
            "certificate_chain"
        } else {
            "private_key"
        };
        ferr(format!("{cert_at}.{field}"), e.message)
    })?;
    Ok(Some(TlsEntry {
        default: names.is_empty(),
        hosts: names
            .iter()
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
            .collect(),
        cert: None,
        key: None,
        cert_pem: Some(cert_pem),
        key_pem: Some(key_pem),
        visibility: Visibility::External,
        unknown: Default::default(),
    }))
}

fn pem_pair(cert: &TlsCertificate, at: &str) -> Result<(String, String), FieldError> {
    let text = |d: &Option<DataSource>, field: &str| -> Result<String, FieldError> {
        match d.as_ref().and_then(|d| d.specifier.as_ref()) {
            Some(data_source::Specifier::InlineBytes(b)) => String::from_utf8(b.clone())
                .map_err(|_| ferr(format!("{at}.{field}"), "PEM must be UTF-8 text")),
            Some(data_source::Specifier::InlineString(s)) => Ok(s.clone()),
            Some(data_source::Specifier::Filename(_)) => Err(ferr(
                format!("{at}.{field}.filename"),
                "certificate files on the gateway are not supported; send the PEM inline",
            )),
            Some(_) => Err(ferr(
                format!("{at}.{field}"),
                "only inline PEM (inline_bytes or inline_string) is supported",
            )),
            None => Err(ferr(format!("{at}.{field}"), "missing")),
        }
    };
    if cert.private_key_provider.is_some() {
        return Err(ferr(
            format!("{at}.private_key_provider"),
            "private key providers are not supported; send the key inline",
        ));
    }
    Ok((
        text(&cert.certificate_chain, "certificate_chain")?,
        text(&cert.private_key, "private_key")?,
    ))
}

/// What the Listeners held say, together: the certificates of every TLS listener (by
/// visibility), the ports that expect PROXY headers, and the connection manager settings of
/// the main external listener (the plain one serving `external_services` with the lowest
/// port: Kourier gives every listener the same ones).
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerSettings {
    pub tls: Vec<TlsEntry>,
    pub proxy_protocol: Vec<u16>,
    pub forwarded: weir_config::model::Forwarded,
    pub request_headers_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
}

/// Joins the held Listeners (by name); `None` when there is none, so the config file's
/// settings stay. Two different default certificates for the same listeners are an error
/// naming both Listeners.
pub fn listener_settings<'a>(
    listeners: impl IntoIterator<Item = (&'a String, &'a ListenerSpec)>,
) -> Result<Option<ListenerSettings>, TranslateError> {
    let listeners: Vec<(&String, &ListenerSpec)> = listeners.into_iter().collect();
    if listeners.is_empty() {
        return Ok(None);
    }
    let mut tls: Vec<TlsEntry> = Vec::new();
    let mut default_of: [Option<&str>; 2] = [None, None];
    for (name, l) in &listeners {
        for entry in &l.tls {
            if tls.contains(entry) {
                continue; // Kourier repeats its chains on the probe listener (9443)
            }
            if entry.default {
                let slot = &mut default_of[usize::from(!entry.visibility.is_external())];
                if let Some(prev) = slot {
                    return Err(TranslateError::new(
                        listener_label(name),
                        "filter_chains",
                        format!(
                            "a second default certificate (a chain without server_names) for \
                             the same listeners; Listener {prev:?} has another one"
                        ),
                    ));
                }
                *slot = Some(name.as_str());
            }
            tls.push(entry.clone());
        }
    }
    let mut proxy_protocol: Vec<u16> = listeners
        .iter()
        .filter(|(_, l)| l.proxy_protocol)
        .filter_map(|(_, l)| l.port)
        .collect();
    proxy_protocol.sort_unstable();
    proxy_protocol.dedup();
    let main = listeners
        .iter()
        .filter(|(_, l)| l.tls.is_empty() && l.routes == crate::translate::EXTERNAL_ROUTES)
        .min_by_key(|(_, l)| l.port)
        .or_else(|| listeners.first())
        .map(|(_, l)| *l)
        .expect("listeners is not empty");
    Ok(Some(ListenerSettings {
        tls,
        proxy_protocol,
        forwarded: weir_config::model::Forwarded {
            use_remote_address: main.use_remote_address,
            trusted_hops: main.trusted_hops,
            unknown: Default::default(),
        },
        request_headers_timeout: main.request_headers_timeout,
        idle_timeout: main.idle_timeout,
    }))
}
