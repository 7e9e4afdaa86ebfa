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
use weir_control::xds::{ChangeFeed, SnapshotSource, SourceChange, XdsSink};

use crate::admin::{self, Admin};
use crate::server;
use crate::state::{Change, EndpointsError, State};

// === impl StateSink ===

/// Applies xDS updates to the state: routes and revisions come from xDS, everything else
/// (listeners, hold, domain, TLS...) from the config file, as last loaded or reloaded.
pub struct StateSink {
    pub state: Arc<State>,
}

/// `base` with its services, ingresses and revisions replaced by those of `routes`.
pub fn with_routes(base: &Config, routes: Config) -> Config {
    let mut cfg = base.clone();
    cfg.services = routes.services;
    cfg.ingresses = routes.ingresses;
    cfg.revisions = routes.revisions;
    cfg
}

impl XdsSink for StateSink {
    fn apply(&self, routes: Config) -> Result<u64, String> {
        let cfg = with_routes(&self.state.snapshot().config, routes);
        self.state
            .apply(cfg, "xds")
            .map_err(|errs| errs.to_string())
    }

    fn set_endpoints(
        &self,
        namespace: &str,
        name: &str,
        endpoints: &[String],
    ) -> Result<u64, String> {
        self.state
            .set_endpoints(namespace, name, endpoints, "xds")
            .map_err(|e| match e {
                EndpointsError::UnknownRevision => {
                    format!("revision {namespace}/{name} is not in the config")
                }
                EndpointsError::BadAddress(errs) => errs.to_string(),
            })
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
            false,
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
