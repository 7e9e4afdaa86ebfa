//! The proxy's side of xDS (the protocol itself lives in `weir-control`): [`StateSink`],
//! through which `weir proxy --xds` applies what the ADS client hands out to its state.

use std::sync::Arc;

use weir_config::Config;
use weir_control::xds::{XdsConfig, XdsSink};

use crate::state::{Dns, EndpointsError, State};

// === impl StateSink ===

/// Applies xDS updates to the state: routes and revisions come from xDS, everything else
/// (listeners, hold, domain...) from the config file, as last loaded or reloaded, and
/// certificates from the config file until xDS Listeners carry some.
pub struct StateSink {
    state: Arc<State>,
    /// What xDS said last (endpoint updates included), to apply again over a reloaded file.
    last: std::sync::Mutex<Option<XdsConfig>>,
}

impl StateSink {
    pub fn new(state: Arc<State>) -> StateSink {
        StateSink {
            state,
            last: std::sync::Mutex::new(None),
        }
    }

    /// Applies the config file (as [`State::file_config`] now has it) with what xDS said
    /// last: a SIGHUP in `--xds` mode. Before the first sync, the file alone.
    pub fn reapply(&self, source: &'static str) -> Result<u64, weir_config::ConfigErrors> {
        let last = self.lock().clone();
        let base = self.state.file_config();
        match last {
            Some(x) => self
                .state
                .apply_with(with_xds(&base, x), source, Dns::BestEffort),
            None => self.state.apply((*base).clone(), source),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<XdsConfig>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `base` (the config file) with what xDS says: services, ingresses and revisions from
/// `x.routes` (and its status routes' hosts added to `readiness`); certificates, PROXY
/// protocol ports and `X-Forwarded-*` handling from the Listeners, when any is held.
pub fn with_xds(base: &Config, x: XdsConfig) -> Config {
    let mut cfg = base.clone();
    let routes = x.routes;
    cfg.services = routes.services;
    cfg.ingresses = routes.ingresses;
    cfg.revisions = routes.revisions;
    if !routes.readiness.hosts.is_empty() {
        cfg.readiness.path = routes.readiness.path;
    }
    for h in routes.readiness.hosts {
        if !cfg.readiness.hosts.contains(&h) {
            cfg.readiness.hosts.push(h);
        }
    }
    if let Some(l) = x.listeners {
        cfg.tls = l.tls;
        cfg.listen.proxy_protocol = l.proxy_protocol;
        cfg.forwarded = l.forwarded;
        // The connection manager's timeouts, where it sets them (Kourier sets neither).
        if let Some(t) = l.request_headers_timeout {
            cfg.limits.header_read_timeout = weir_config::model::Duration::from_std(t);
        }
        if let Some(t) = l.idle_timeout {
            cfg.limits.idle_timeout = weir_config::model::Duration::from_std(t);
        }
    }
    cfg
}

impl XdsSink for StateSink {
    fn apply(&self, x: XdsConfig) -> Result<u64, String> {
        let base = self.state.file_config();
        let cfg = with_xds(&base, x.clone());
        let g = self
            .state
            .apply_with(cfg, "xds", Dns::BestEffort)
            .map_err(|errs| errs.to_string())?;
        *self.lock() = Some(x);
        Ok(g)
    }

    fn set_endpoints(
        &self,
        namespace: &str,
        name: &str,
        endpoints: &[String],
    ) -> Result<u64, String> {
        let g = self
            .state
            .set_endpoints(namespace, name, endpoints, "xds")
            .map_err(|e| match e {
                EndpointsError::UnknownRevision => {
                    format!("revision {namespace}/{name} is not in the config")
                }
                EndpointsError::BadAddress(errs) => errs.to_string(),
            })?;
        if let Some(x) = self.lock().as_mut() {
            for r in x.routes.revisions.iter_mut() {
                if r.namespace == namespace && r.name == name {
                    r.endpoints = endpoints.to_vec();
                }
            }
        }
        Ok(g)
    }

    fn connected(&self, up: bool) {
        self.state.metrics.xds_connected.set(i64::from(up));
    }
}
