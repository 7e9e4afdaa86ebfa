//! The proxy's side of xDS (the protocol itself lives in `weir-control`):
//! - [`StateSink`]: `weir proxy --xds` applies what the ADS client hands out to the state.
//! - `impl SnapshotSource for State`: `weir control` serves the state over ADS.
//! - [`run_control`]: the `weir control` command (a state, its admin API and the ADS server;
//!   no data plane).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use weir_config::Config;
use weir_control::xds::{ChangeFeed, SnapshotSource, SourceChange, XdsConfig, XdsSink};

use crate::admin::{self, Admin};
use crate::server;
use crate::state::{Change, Dns, EndpointsError, State};

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
    pub fn reapply(&self, source: &str) -> Result<u64, weir_config::ConfigErrors> {
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

// === impl SnapshotSource for State ===

impl SnapshotSource for State {
    fn current(&self) -> (u64, Config) {
        self.config_view()
    }

    fn endpoints(&self, namespace: &str, name: &str) -> Option<(u64, Vec<String>)> {
        let generation = self.generation();
        let snap = self.snapshot();
        let rev = snap
            .revisions
            .iter()
            .find(|r| &*r.namespace == namespace && &*r.name == name)?;
        let eps = rev
            .endpoints()
            .endpoints
            .iter()
            .map(|e| e.addr.to_string())
            .collect();
        Some((generation, eps))
    }

    fn subscribe(&self) -> Box<dyn ChangeFeed> {
        Box::new(StateFeed(State::subscribe(self)))
    }
}

struct StateFeed(broadcast::Receiver<Change>);

fn source_change(c: Change) -> SourceChange {
    match c {
        Change::Config { .. } => SourceChange::Config,
        Change::Endpoints {
            namespace, name, ..
        } => SourceChange::Endpoints {
            namespace: namespace.to_string(),
            name: name.to_string(),
        },
    }
}

#[async_trait::async_trait]
impl ChangeFeed for StateFeed {
    async fn next(&mut self) -> Option<SourceChange> {
        match self.0.recv().await {
            Ok(c) => Some(source_change(c)),
            Err(RecvError::Lagged(_)) => Some(SourceChange::Lagged),
            Err(RecvError::Closed) => None,
        }
    }

    fn try_next(&mut self) -> Option<SourceChange> {
        match self.0.try_recv() {
            Ok(c) => Some(source_change(c)),
            Err(TryRecvError::Lagged(_)) => Some(SourceChange::Lagged),
            Err(TryRecvError::Empty | TryRecvError::Closed) => None,
        }
    }
}

// === weir control ===

/// Everything `weir control` needs to start.
pub struct ControlOptions {
    /// Re-read on SIGHUP.
    pub config_path: PathBuf,
    pub config: Config,
    pub xds_listen: SocketAddr,
    /// Serve delta xDS too (`--no-delta` turns it off).
    pub delta: bool,
    pub admin: SocketAddr,
    pub admin_token: Option<String>,
}

/// Runs the control plane until SIGTERM or SIGINT (exit 0); 1 on a failed start.
pub fn run_control(opts: ControlOptions) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .thread_name("weir-control")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let state = server::new_state();
    if let Err(errs) = state.apply(opts.config, "file") {
        for e in &errs.0 {
            eprintln!("{e}");
        }
        eprintln!("error: invalid config, not starting");
        return ExitCode::from(1);
    }
    if let Err(why) = admin::check_bind(&opts.admin, opts.admin_token.as_deref()) {
        eprintln!("error: {why}");
        return ExitCode::from(1);
    }
    rt.block_on(async move {
        let admin_listener = match tokio::net::TcpListener::bind(opts.admin).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on admin address {}: {e}", opts.admin);
                return ExitCode::from(1);
            }
        };
        let xds_listener = match tokio::net::TcpListener::bind(opts.xds_listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "error: cannot listen on xDS address {}: {e}",
                    opts.xds_listen
                );
                return ExitCode::from(1);
            }
        };
        tokio::spawn(admin::serve(
            admin_listener,
            Arc::new(Admin {
                state: state.clone(),
                token: opts.admin_token,
            }),
        ));
        tokio::spawn(server::reload_on_sighup(
            opts.config_path,
            state.clone(),
            None,
        ));
        let source: Arc<dyn SnapshotSource> = state.clone();
        let serve = weir_control::xds::server::ServeOptions { delta: opts.delta };
        tokio::spawn(async move {
            if let Err(e) = weir_control::xds::server::serve_with(xds_listener, source, serve).await
            {
                log::error!("xDS server stopped: {e}");
            }
        });
        log::info!(
            "weir control: xDS (ADS{}) on {}, admin on {}",
            if opts.delta {
                ", delta too"
            } else {
                ", no delta"
            },
            opts.xds_listen,
            opts.admin
        );
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            eprintln!("error: cannot install signal handlers");
            return ExitCode::from(1);
        };
        tokio::select! {
            _ = term.recv() => log::info!("SIGTERM: stopping"),
            _ = int.recv() => log::info!("SIGINT: stopping"),
        }
        ExitCode::SUCCESS
    })
}
