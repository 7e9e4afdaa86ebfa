//! `weir control`: the control plane as its own small service. A config store (versions and
//! a change feed, `weir_control::store`), its ADS server, the admin API over the store, and
//! SIGHUP reloads of the config file. No data plane: nothing here holds requests, resolves
//! endpoint names or reads certificates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use weir_config::{Config, ConfigErrors, Format, Key, Kind, Update};
use weir_control::store::ConfigStore;

use crate::admin::{self, object_json, Admin, ConfigApi};
use crate::metrics::Metrics;
use crate::state::EndpointsError;

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

/// The admin API of `weir control`: its store, and the config-update metrics.
pub struct ControlApi {
    pub store: Arc<ConfigStore>,
    pub metrics: Arc<Metrics>,
}

impl ControlApi {
    fn applied(&self, source: &str, result: &Result<u64, ConfigErrors>) {
        self.metrics.config_update(source, result.is_ok());
        if let Ok(g) = result {
            self.metrics.config_generation.set(*g as i64);
        }
    }
}

impl ConfigApi for ControlApi {
    fn generation(&self) -> u64 {
        self.store.current().generation
    }
    fn config(&self) -> (u64, Config) {
        let g = self.store.current();
        (g.generation, g.config.config())
    }
    fn object(&self, kind: Kind, key: &Key) -> Option<(u64, serde_json::Value)> {
        let g = self.store.current();
        Some((g.generation, object_json(&g.config.objects, kind, key)?))
    }
    fn update(&self, update: Update, dry_run: bool) -> Result<u64, ConfigErrors> {
        let result = self.store.apply(update, dry_run);
        if !dry_run {
            self.applied("api", &result);
        }
        result
    }
    fn set_endpoints(&self, key: &Key, endpoints: Vec<String>) -> Result<u64, EndpointsError> {
        let result = self
            .store
            .set_endpoints(key, endpoints, false)
            .ok_or(EndpointsError::UnknownRevision)?;
        self.applied("endpoints", &result);
        result.map_err(|errs| EndpointsError::BadAddress(relative_to(key, errs)))
    }
    fn refused(&self) {
        self.metrics.config_update("api", false);
    }
    fn is_ready(&self) -> bool {
        true
    }
    fn metrics(&self) -> Vec<u8> {
        self.metrics.render()
    }
}

/// Error paths of one revision's endpoints relative to the body: `endpoints[0]`.
pub fn relative_to(key: &Key, errs: ConfigErrors) -> ConfigErrors {
    let prefix = format!("revisions[{key}].");
    ConfigErrors(
        errs.0
            .into_iter()
            .map(|mut e| {
                if let Some(rest) = e.path.strip_prefix(&prefix) {
                    e.path = rest.to_owned();
                }
                e
            })
            .collect(),
    )
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
    let api = Arc::new(ControlApi {
        store: ConfigStore::new(),
        metrics: Arc::new(Metrics::new()),
    });
    let first = api.store.apply(Update::whole(opts.config), false);
    api.applied("file", &first);
    if let Err(errs) = first {
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
                api: api.clone(),
                token: opts.admin_token,
            }),
        ));
        tokio::spawn(reload_on_sighup(opts.config_path, api.clone()));
        let serve = weir_control::xds::server::ServeOptions { delta: opts.delta };
        let store = api.store.clone();
        tokio::spawn(async move {
            if let Err(e) = weir_control::xds::server::serve_with(xds_listener, store, serve).await
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

/// Re-reads the config file on every SIGHUP; a bad file is logged and changes nothing.
async fn reload_on_sighup(path: PathBuf, api: Arc<ControlApi>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        let path = path.clone();
        let api = api.clone();
        let res = tokio::task::spawn_blocking(move || {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("SIGHUP: cannot read {}: {e}", path.display()))?;
            let format = Format::from_path(&path.to_string_lossy());
            let result = weir_config::parse(&text, format)
                .and_then(|cfg| api.store.apply(Update::whole(cfg), false));
            api.applied("sighup", &result);
            result.map_err(|errs| {
                format!(
                    "SIGHUP: {} is invalid, keeping the running config:\n{errs}",
                    path.display()
                )
            })
        })
        .await;
        match res {
            Ok(Ok(g)) => log::info!("SIGHUP: generation {g} in force"),
            Ok(Err(msg)) => log::error!("{msg}"),
            Err(e) => log::error!("SIGHUP reload failed: {e}"),
        }
    }
}
