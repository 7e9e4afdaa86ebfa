//! The proxy's side of xDS (the protocol itself lives in `weir-control`): [`StateSink`],
//! through which `weir proxy --xds` applies what the ADS client hands out to its state.

use std::sync::Arc;

use weir_config::Config;
use weir_control::xds::{XdsConfig, XdsSink};

use weir_config::Update;

use crate::state::{ApplyOptions, Dns, EndpointsError, State};

// === impl StateSink ===

/// Applies xDS updates to the state: routes and revisions come from xDS, everything else
/// (listeners, hold, domain...) from the config file, as last loaded or reloaded, and
/// certificates from the config file until xDS Listeners carry some.
///
/// An update that says what changed since the last one is applied as those changes (each
/// changed object checked and compiled alone), as long as nothing else changed the state
/// meanwhile (a SIGHUP, the admin API) and the settings xDS gives (readiness hosts,
/// listener settings) are the same; otherwise the whole config is applied (and compared
/// with the one in force object by object).
pub struct StateSink {
    state: Arc<State>,
    last: std::sync::Mutex<Last>,
}

#[derive(Default)]
struct Last {
    /// What xDS said last (endpoint updates included), to apply again over a reloaded file.
    config: Option<XdsConfig>,
    /// The state's generation right after the sink's last update.
    generation: u64,
}

impl StateSink {
    pub fn new(state: Arc<State>) -> StateSink {
        StateSink {
            state,
            last: std::sync::Mutex::new(Last::default()),
        }
    }

    /// Applies the config file (as [`State::file_config`] now has it) with what xDS said
    /// last: a SIGHUP in `--xds` mode. Before the first sync, the file alone.
    pub fn reapply(&self, source: &'static str) -> Result<u64, weir_config::ConfigErrors> {
        let last = self.lock().config.clone();
        let base = self.state.file_config();
        match last {
            Some(x) => self
                .state
                .apply_with(with_xds(&base, &x), source, Dns::BestEffort),
            None => self.state.apply((*base).clone(), source),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Last> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `base` (the config file) with what xDS says: ingresses and revisions from `x` (and its
/// status routes' hosts added to `readiness`); certificates, PROXY protocol ports and
/// `X-Forwarded-*` handling from the Listeners, when any is held.
pub fn with_xds(base: &Config, x: &XdsConfig) -> Config {
    x.objects.to_config(&xds_settings(base, x))
}

/// The settings of [`with_xds`]: `base`'s, with the readiness hosts and listener settings
/// xDS gives; no services, ingresses or revisions.
fn xds_settings(base: &Config, x: &XdsConfig) -> Config {
    let mut cfg = base.clone();
    cfg.services = Vec::new();
    cfg.ingresses = Vec::new();
    cfg.revisions = Vec::new();
    if !x.readiness.hosts.is_empty() {
        cfg.readiness.path = x.readiness.path.clone();
    }
    for h in &x.readiness.hosts {
        if !cfg.readiness.hosts.contains(h) {
            cfg.readiness.hosts.push(h.clone());
        }
    }
    if let Some(l) = &x.listeners {
        cfg.tls = l.tls.clone();
        cfg.listen.proxy_protocol = l.proxy_protocol.clone();
        cfg.forwarded = l.forwarded.clone();
        // The connection manager's timeouts, where it sets them (Kourier sets neither).
        if let Some(t) = l.request_headers_timeout {
            cfg.limits.header_read_timeout = weir_config::model::TextDuration::from_std(t);
        }
        if let Some(t) = l.idle_timeout {
            cfg.limits.idle_timeout = weir_config::model::TextDuration::from_std(t);
        }
    }
    cfg
}

impl XdsSink for StateSink {
    fn apply(&self, x: XdsConfig) -> Result<u64, String> {
        let mut last = self.lock();
        let incremental = match (&x.changes, &last.config) {
            (Some(changes), Some(prev)) => (self.state.generation() == last.generation
                && prev.readiness == x.readiness
                && prev.listeners == x.listeners)
                .then_some(changes),
            _ => None,
        };
        let opts = ApplyOptions::new("xds").dns(Dns::BestEffort);
        let g = match incremental {
            Some(changes) => self.state.update(Update::Changes(changes.clone()), opts),
            None => {
                // Settings from the file and xDS, objects as the client built them (shared).
                let base = self.state.file_config();
                let settings = xds_settings(&base, &x);
                let objects = weir_config::Objects {
                    services: Default::default(),
                    ingresses: x.objects.ingresses.clone(),
                    revisions: x.objects.revisions.clone(),
                };
                let update = Update::Objects {
                    settings: Box::new(settings),
                    objects,
                };
                self.state.update(update, opts)
            }
        }
        .map_err(|errs| errs.to_string())?;
        *last = Last {
            config: Some(x),
            generation: g,
        };
        Ok(g)
    }

    fn set_endpoints(
        &self,
        namespace: &str,
        name: &str,
        endpoints: &[String],
    ) -> Result<u64, String> {
        let mut last = self.lock();
        let g = self
            .state
            .set_endpoints(namespace, name, endpoints, "xds")
            .map_err(|e| match e {
                EndpointsError::UnknownRevision => {
                    format!("revision {namespace}/{name} is not in the config")
                }
                EndpointsError::BadAddress(errs) => errs.to_string(),
            })?;
        if let Some(x) = last.config.as_mut() {
            let key = weir_config::Key::new(namespace, name);
            if let Some(r) = x.objects.revisions.get(&key) {
                let mut r = (**r).clone();
                r.endpoints = endpoints.to_vec();
                x.objects.revisions.insert(key, Arc::new(r));
            }
        }
        if last.generation + 1 == g {
            last.generation = g;
        }
        Ok(g)
    }

    fn connected(&self, up: bool) {
        self.state.metrics.xds_connected.set(i64::from(up));
    }
}
