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
use crate::state::{State, TlsStores};

/// The listeners of `weir proxy`, by kind; each kind may bind several addresses (Kourier's
/// gateway serves its external routes on 8080 and on the probe port 8090).
#[derive(Debug, Clone, Default)]
pub struct Listeners {
    pub http: Vec<SocketAddr>,
    pub internal: Vec<SocketAddr>,
    pub https: Vec<SocketAddr>,
    pub internal_https: Vec<SocketAddr>,
}

impl Listeners {
    /// Every address with the name of its kind (as its flag is spelt).
    pub fn all(&self) -> impl Iterator<Item = (&'static str, SocketAddr)> + '_ {
        fn kind<'a>(
            name: &'static str,
            v: &'a [SocketAddr],
        ) -> impl Iterator<Item = (&'static str, SocketAddr)> + 'a {
            v.iter().map(move |a| (name, *a))
        }
        kind("http", &self.http)
            .chain(kind("internal", &self.internal))
            .chain(kind("https", &self.https))
            .chain(kind("internal-https", &self.internal_https))
    }

    /// Every address once.
    pub fn check(&self) -> Result<(), String> {
        let mut seen: Vec<(&str, SocketAddr)> = Vec::new();
        for (kind, addr) in self.all() {
            if let Some((prev, _)) = seen.iter().find(|(_, a)| *a == addr) {
                return Err(format!("{addr} is given twice (--{prev} and --{kind})"));
            }
            seen.push((kind, addr));
        }
        Ok(())
    }
}

/// Everything `weir proxy` (or `weir demo`) needs to start.
pub struct ProxyOptions {
    /// Re-read on SIGHUP.
    pub config_path: Option<PathBuf>,
    pub config: Config,
    pub listeners: Listeners,
    /// What relative certificate paths are relative to (the config file's directory).
    pub config_dir: PathBuf,
    pub admin: SocketAddr,
    pub admin_token: Option<String>,
    pub threads: usize,
    /// Autoscaler URL (flag or config); the interval comes from the config.
    pub autoscaler_url: Option<String>,
    /// This replica's name in autoscaler reports.
    pub pod_name: String,
    /// Routes, revisions and certificates from this ADS server (`--xds`).
    pub xds: Option<weir_control::xds::ClientOptions>,
}

impl ProxyOptions {
    fn autoscaler(&self) -> Option<String> {
        self.autoscaler_url
            .clone()
            .or_else(|| self.config.autoscaler.as_ref().map(|a| a.url.clone()))
    }

    /// What would run, for `--check-args`: one line per item.
    pub fn describe(&self) -> String {
        let mut out = String::from("ok: weir proxy would start with\n");
        for (kind, addr) in self.listeners.all() {
            let pp = if self.config.listen.proxy_protocol.contains(&addr.port()) {
                " (PROXY protocol)"
            } else {
                ""
            };
            out.push_str(&format!("  listener {kind} {addr}{pp}\n"));
        }
        out.push_str(&format!("  admin {}\n", self.admin));
        match &self.xds {
            Some(x) => out.push_str(&format!(
                "  xds {} as node {:?} ({})\n",
                x.url,
                x.node_id,
                if x.sotw_only {
                    "state of the world"
                } else {
                    "delta, or state of the world"
                }
            )),
            None => out.push_str("  xds off\n"),
        }
        match self.autoscaler() {
            Some(url) => out.push_str(&format!("  autoscaler {url} as pod {:?}\n", self.pod_name)),
            None => out.push_str("  autoscaler off\n"),
        }
        out.push_str(&format!(
            "  config: {} services, {} ingresses, {} revisions, {} certificates; threads {}",
            self.config.services.len(),
            self.config.ingresses.len(),
            self.config.revisions.len(),
            self.config.tls.len(),
            self.threads
        ));
        out
    }
}

/// Read-ahead buffer of a plain-listener connection (pingora's default is 64 KiB).
const L4_READ_BUFFER: usize = 4 * 1024;
/// How long a new connection may take to send its PROXY protocol header.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The runtime of everything that is not the data plane: admin API, signals, demo backends.
pub fn control_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("weir-control")
        .enable_all()
        .build()
}

/// What `weir proxy --check-args` checks beyond `weir check`: the config applies as the
/// start would apply it (certificates load, endpoint names resolve).
pub fn check_start(opts: &ProxyOptions) -> Result<(), Vec<String>> {
    let state = new_state();
    if !(opts.listeners.https.is_empty() && opts.listeners.internal_https.is_empty()) {
        state.enable_tls(TlsStores::default(), opts.config_dir.clone());
    }
    state
        .apply(opts.config.clone(), "check")
        .map(|_| ())
        .map_err(|errs| errs.0.iter().map(ToString::to_string).collect())
}

/// Starts the proxy; returns only on a failed start (pingora exits the process itself).
/// With `opts.xds`, routes and revisions come from the ADS server and the proxy is not ready
/// until its first complete sync; the config file still gives everything else.
pub fn run(opts: ProxyOptions, rt: &tokio::runtime::Runtime, state: Arc<State>) -> ExitCode {
    let drain = opts
        .config
        .drain_timeout
        .get()
        .unwrap_or(Duration::from_secs(30));
    let reporter = crate::autoscaler::ReporterConfig {
        url: opts.autoscaler(),
        node_id: opts.pod_name.clone(),
        interval: opts
            .config
            .autoscaler
            .as_ref()
            .and_then(|a| a.interval.get())
            .unwrap_or(Duration::from_secs(1)),
    };
    let reporting = reporter.url.is_some();
    let l = &opts.listeners;
    let stores = TlsStores::default();
    if !(l.https.is_empty() && l.internal_https.is_empty()) {
        state.enable_tls(stores.clone(), opts.config_dir.clone());
    }
    if opts.xds.is_some() {
        // Not ready until the first config the xDS stream completes is in force.
        state.await_xds();
    }
    state.set_file_config(opts.config.clone());
    if let Err(errs) = state.apply(opts.config.clone(), "file") {
        for e in &errs.0 {
            eprintln!("{e}");
        }
        eprintln!("error: invalid config, not starting");
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
    for (_, addr) in l.all() {
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
        rt.spawn(crate::state::refresh_dns(state.clone()));
        let sink = opts
            .xds
            .as_ref()
            .map(|_| Arc::new(crate::xds::StateSink::new(state.clone())));
        if let Some(path) = opts.config_path.clone() {
            rt.spawn(reload_on_sighup(path, state.clone(), sink.clone()));
        }
        if let (Some(xds), Some(sink)) = (opts.xds.clone(), sink) {
            rt.spawn(weir_control::xds::run_client(xds, sink));
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
    let proxy_header = Arc::new(crate::proxy_protocol::Reader {
        state: state.clone(),
        timeout: PROXY_HEADER_TIMEOUT,
    });
    let kinds = [
        ("weir-http", &l.http, Listener::External, None),
        ("weir-internal", &l.internal, Listener::Internal, None),
        (
            "weir-https",
            &l.https,
            Listener::External,
            Some(&stores.external),
        ),
        (
            "weir-internal-https",
            &l.internal_https,
            Listener::Internal,
            Some(&stores.internal),
        ),
    ];
    for (name, addrs, listener, certs) in kinds {
        if addrs.is_empty() {
            continue;
        }
        let proxy = WeirProxy {
            state: state.clone(),
            listener,
            scheme: HeaderValue::from_static(if certs.is_some() { "https" } else { "http" }),
            active: active.clone(),
            stats: std::env::var("WEIR_STATS").map_or(true, |v| v != "off"),
            reporting,
        };
        let mut svc = http_proxy_service_with_name(&server.configuration, proxy, name);
        for addr in addrs.iter() {
            match certs {
                Some(store) => {
                    let mut settings = match TlsSettings::intermediate("", "") {
                        Ok(s) => s,
                        Err(e) => {
                            eprintln!("error: TLS listener: {e}");
                            return ExitCode::from(1);
                        }
                    };
                    settings.set_cert_resolver((*store).clone());
                    // ALPN h2 and http/1.1; TLS 1.2 and 1.3 only (pingora's rustls defaults).
                    settings.enable_h2();
                    svc.add_tls_with_settings(&addr.to_string(), None, settings);
                }
                None => {
                    // pingora reads each connection through a 64 KiB buffer by default, kept
                    // for the connection's life: ~64 KiB per idle or held client. Header and
                    // body reads bring their own buffers (larger reads bypass this one), so
                    // 4 KiB of read-ahead is plenty and makes 10,000 held requests ~600 MB
                    // lighter.
                    svc.add_listener(
                        ListenerConfig::tcp(addr.to_string())
                            .l4_buffer(L4BufferSettings::default().read(L4_READ_BUFFER)),
                    );
                }
            }
        }
        if certs.is_none() {
            // h2c (HTTP/2 with prior knowledge) beside HTTP/1.1 on plain listeners.
            if let Some(app) = svc.app_logic_mut() {
                let mut options = HttpServerOptions::default();
                options.h2c = true;
                app.server_options = Some(options);
            }
        }
        svc.endpoints().set_pre_tls_callback(proxy_header.clone());
        server.add_service(svc);
    }
    let addrs: Vec<String> = l.all().map(|(k, a)| format!("{k} {a}")).collect();
    log::info!("weir proxy: {}, admin {}", addrs.join(", "), opts.admin);
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
/// With `xds` (routes come from xDS) the file is applied under what xDS said last.
pub(crate) async fn reload_on_sighup(
    path: PathBuf,
    state: Arc<State>,
    xds: Option<Arc<crate::xds::StateSink>>,
) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        let path = path.clone();
        let state = state.clone();
        let xds = xds.clone();
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
            let previous = state.file_config();
            state.set_file_config(cfg.clone());
            let applied = match &xds {
                Some(sink) => sink.reapply("sighup"),
                None => state.apply(cfg, "sighup"),
            };
            applied.map_err(|errs| {
                state.set_file_config((*previous).clone());
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
