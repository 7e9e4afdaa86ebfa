//! Process wiring for `weir proxy`: the control runtime (admin API, signals), the pingora
//! server with one proxy service per listener, and the SIGTERM drain.
//!
//! pingora owns the process once `run_forever` is called: it handles SIGTERM (graceful: stop
//! accepting, then wait its grace period), SIGINT (stop at once) and exits. Its grace period
//! is a fixed sleep, so the drain watcher here exits as soon as no request is in flight.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::proxy::http_proxy_service_with_name;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use weir_config::{Config, Format, Listener};

use crate::admin::{self, Admin};
use crate::metrics::Metrics;
use crate::route::{Active, WeirProxy};
use crate::state::State;
use crate::tls::CertStore;

/// Everything `weir proxy` (or `weir demo`) needs to start.
pub struct ProxyOptions {
    /// Re-read on SIGHUP.
    pub config_path: Option<PathBuf>,
    pub config: Config,
    pub http: SocketAddr,
    pub internal: Option<SocketAddr>,
    /// TLS listener: certificates from the config's `tls` entries, chosen by SNI.
    pub https: Option<SocketAddr>,
    /// What relative certificate paths are relative to (the config file's directory).
    pub config_dir: PathBuf,
    pub admin: SocketAddr,
    pub admin_token: Option<String>,
    pub threads: usize,
    /// Autoscaler URL (flag or config) and node id; the interval comes from the config.
    pub autoscaler_url: Option<String>,
    pub node_id: String,
}

/// Read-ahead buffer of a plain-listener connection (pingora's default is 64 KiB).
const L4_READ_BUFFER: usize = 4 * 1024;

/// The runtime of everything that is not the data plane: admin API, signals, demo backends.
pub fn control_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("weir-control")
        .enable_all()
        .build()
}

/// Starts the proxy; returns only on a failed start (pingora exits the process itself).
pub fn run(opts: ProxyOptions, rt: &tokio::runtime::Runtime, state: Arc<State>) -> ExitCode {
    run_with_xds(opts, rt, state, None)
}

/// [`run`], with routes and revisions from the ADS server at `xds` (`weir proxy --xds`):
/// not ready until its first complete sync; the config file still gives everything else.
pub fn run_with_xds(
    opts: ProxyOptions,
    rt: &tokio::runtime::Runtime,
    state: Arc<State>,
    xds: Option<String>,
) -> ExitCode {
    let drain = opts
        .config
        .drain_timeout
        .get()
        .unwrap_or(Duration::from_secs(30));
    let reporter = crate::autoscaler::ReporterConfig {
        url: opts
            .autoscaler_url
            .clone()
            .or_else(|| opts.config.autoscaler.as_ref().map(|a| a.url.clone())),
        node_id: opts.node_id.clone(),
        interval: opts
            .config
            .autoscaler
            .as_ref()
            .and_then(|a| a.interval.get())
            .unwrap_or(Duration::from_secs(1)),
    };
    let certs = opts.https.map(|_| {
        let store = Arc::new(CertStore::default());
        state.enable_tls(store.clone(), opts.config_dir.clone());
        store
    });
    if let Err(errs) = state.apply(opts.config, "file") {
        for e in &errs.0 {
            eprintln!("{e}");
        }
        eprintln!("error: invalid config, not starting");
        return ExitCode::from(1);
    }
    if xds.is_some() {
        // Ready again on the first config the xDS stream completes (State::apply sets it).
        state.set_ready(false);
    }

    if let Err(why) = admin::check_bind(&opts.admin, opts.admin_token.as_deref()) {
        eprintln!("error: {why}");
        return ExitCode::from(1);
    }
    let admin_listener = match std::net::TcpListener::bind(opts.admin) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on admin address {}: {e}", opts.admin);
            return ExitCode::from(1);
        }
    };
    // pingora binds when it starts its services; check first so a busy port is a clean exit 1.
    for addr in std::iter::once(opts.http)
        .chain(opts.internal)
        .chain(opts.https)
    {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            eprintln!("error: cannot listen on {addr}: {e}");
            return ExitCode::from(1);
        }
    }
    let active = Arc::new(Active::default());
    {
        let _enter = rt.enter();
        if let Err(e) = admin_listener.set_nonblocking(true) {
            eprintln!("error: admin listener: {e}");
            return ExitCode::from(1);
        }
        let listener = match tokio::net::TcpListener::from_std(admin_listener) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: admin listener: {e}");
                return ExitCode::from(1);
            }
        };
        rt.spawn(admin::serve(
            listener,
            Arc::new(Admin {
                state: state.clone(),
                token: opts.admin_token.clone(),
            }),
        ));
        rt.spawn(drain_on_sigterm(active.clone(), drain));
        rt.spawn(crate::autoscaler::run(state.clone(), reporter));
        if let Some(path) = opts.config_path.clone() {
            rt.spawn(reload_on_sighup(path, state.clone(), xds.is_some()));
        }
        if let Some(url) = xds.clone() {
            let sink = Arc::new(crate::xds::StateSink {
                state: state.clone(),
            });
            rt.spawn(weir_control::xds::run_client(
                url,
                opts.node_id.clone(),
                sink,
            ));
        }
    }

    let conf = ServerConf {
        threads: opts.threads.max(1),
        grace_period_seconds: Some(drain.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: 1024,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let listeners = [
        Some((opts.http, Listener::External, "weir-http")),
        opts.internal
            .map(|a| (a, Listener::Internal, "weir-internal")),
        opts.https.map(|a| (a, Listener::External, "weir-https")),
    ];
    for (addr, listener, name) in listeners.into_iter().flatten() {
        let tls = name == "weir-https";
        let proxy = WeirProxy {
            state: state.clone(),
            listener,
            scheme: HeaderValue::from_static(if tls { "https" } else { "http" }),
            active: active.clone(),
            stats: std::env::var("WEIR_STATS").map_or(true, |v| v != "off"),
        };
        let mut svc = http_proxy_service_with_name(&server.configuration, proxy, name);
        match (&certs, tls) {
            (Some(store), true) => {
                let mut settings = match TlsSettings::intermediate("", "") {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("error: TLS listener: {e}");
                        return ExitCode::from(1);
                    }
                };
                settings.set_cert_resolver(store.clone());
                // ALPN h2 and http/1.1; TLS 1.2 and 1.3 only (pingora's rustls defaults).
                settings.enable_h2();
                svc.add_tls_with_settings(&addr.to_string(), None, settings);
            }
            _ => {
                // h2c (HTTP/2 with prior knowledge) beside HTTP/1.1 on plain listeners.
                if let Some(app) = svc.app_logic_mut() {
                    let mut options = HttpServerOptions::default();
                    options.h2c = true;
                    app.server_options = Some(options);
                }
                // pingora reads each connection through a 64 KiB buffer by default, kept for
                // the connection's life: ~64 KiB per idle or held client. Header and body
                // reads bring their own buffers (larger reads bypass this one), so 4 KiB of
                // read-ahead is plenty and makes 10,000 held requests ~600 MB lighter.
                svc.add_listener(
                    ListenerConfig::tcp(addr.to_string())
                        .l4_buffer(L4BufferSettings::default().read(L4_READ_BUFFER)),
                );
            }
        }
        server.add_service(svc);
    }
    log::info!(
        "weir proxy: http {}{}, admin {}",
        opts.http,
        opts.internal
            .map(|a| format!(", internal {a}"))
            .unwrap_or_default(),
        opts.admin
    );
    server.run_forever()
}

/// On SIGTERM pingora stops accepting; this exits as soon as in-flight requests are done
/// (pingora's own grace period, set to the drain timeout, is the upper bound).
async fn drain_on_sigterm(active: Arc<Active>, drain: Duration) {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return;
    };
    term.recv().await;
    log::info!(
        "SIGTERM: draining {} in-flight request(s), up to {drain:?}",
        active.get()
    );
    let deadline = Instant::now() + drain;
    // Quiet for a few checks in a row, so a request accepted just before the listener closed
    // has had time to show up as active.
    let mut quiet = 0;
    while Instant::now() < deadline {
        if active.get() == 0 {
            quiet += 1;
            if quiet >= 4 {
                log::info!("drained; exiting");
                std::process::exit(0);
            }
        } else {
            quiet = 0;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    log::warn!(
        "drain timeout: exiting with {} request(s) in flight",
        active.get()
    );
    std::process::exit(0);
}

/// Re-reads the config file on every SIGHUP; a bad file is logged and changes nothing.
/// With `keep_routes` (routes come from xDS) only the file's other settings are taken.
pub(crate) async fn reload_on_sighup(path: PathBuf, state: Arc<State>, keep_routes: bool) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        let path = path.clone();
        let state = state.clone();
        let res = tokio::task::spawn_blocking(move || {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("SIGHUP: cannot read {}: {e}", path.display()))?;
            let format = Format::from_path(&path.to_string_lossy());
            let cfg = weir_config::load(&text, format).map_err(|errs| {
                state.metrics.config_update("sighup", false);
                format!(
                    "SIGHUP: {} is invalid, keeping the running config:\n{errs}",
                    path.display()
                )
            })?;
            let cfg = if keep_routes {
                crate::xds::with_routes(&cfg, state.config_view().1)
            } else {
                cfg
            };
            state.apply(cfg, "sighup").map_err(|errs| {
                format!("SIGHUP: config rejected, keeping the running config:\n{errs}")
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

/// The shared state and metrics of one proxy process.
pub fn new_state() -> Arc<State> {
    State::new(Arc::new(Metrics::new()))
}
