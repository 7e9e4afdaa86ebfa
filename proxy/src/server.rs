//! Process wiring for `weir proxy`: the admin runtime (admin API, signals), the pingora
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
use pingora::listeners::{ConnectionLimit, L4BufferSettings, ListenerConfig};
use pingora::proxy::http_proxy;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{ExecutionPhase, Server};
use pingora::services::listening::Service;
use weir_config::{Config, Format, Listener};

use crate::admin::{self, Admin};
use crate::metrics::Metrics;
use crate::route::{Active, WeirApp, WeirProxy};
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
    /// Take the listening sockets over from a running `weir proxy` (`--upgrade`).
    pub upgrade: bool,
    /// Where listening sockets are handed over in a binary upgrade (`--upgrade-sock`).
    pub upgrade_sock: PathBuf,
    /// Plain HTTP/1 requests in Weir's own loop (the default; off with `--no-fast-path`;
    /// `route::WeirApp`).
    pub fast_path: bool,
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
        let lim = &self.config.limits;
        out.push_str(&format!(
            "  limits: header_read_timeout {}, idle_timeout {}, max_connections {}\n",
            lim.header_read_timeout.as_str(),
            lim.idle_timeout.as_str(),
            lim.max_connections.map_or_else(
                || "3/4 of the open-file limit".to_string(),
                |n| n.to_string()
            ),
        ));
        if self.fast_path {
            out.push_str("  fast path: plain HTTP/1 requests in Weir's own loop\n");
        } else {
            out.push_str("  fast path: off, every request through pingora's proxy\n");
        }
        if self.upgrade {
            out.push_str(&format!(
                "  upgrade: take the listeners over through {}\n",
                self.upgrade_sock.display()
            ));
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
pub fn admin_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("weir-admin")
        .enable_all()
        .build()
}

/// What `weir proxy --check-args` checks beyond `weir check`: the config applies as the
/// start would apply it (certificates load, endpoint names resolve).
pub fn check_start(opts: &ProxyOptions) -> Result<(), Vec<String>> {
    let state = new_state();
    state.set_config_dir(opts.config_dir.clone());
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
    state.set_config_dir(opts.config_dir.clone());
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

    let max_connections = max_connections(&opts.config.limits);
    if !opts.upgrade {
        // pingora binds when it starts its services; check first so a busy port is a clean
        // exit 1. (In an upgrade the running process holds them, and hands them over.)
        for (_, addr) in l.all() {
            if let Err(e) = std::net::TcpListener::bind(addr) {
                eprintln!("error: cannot listen on {addr}: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let admin_listener = match std::net::TcpListener::bind(opts.admin) {
        Ok(l) => Some(l),
        // The process being replaced still has it: take it once that one has exited.
        Err(e) if opts.upgrade && e.kind() == std::io::ErrorKind::AddrInUse => None,
        Err(e) => {
            eprintln!("error: cannot listen on admin address {}: {e}", opts.admin);
            return ExitCode::from(1);
        }
    };
    let active = Arc::new(Active::default());
    let admin = Arc::new(Admin {
        api: state.clone(),
        token: opts.admin_token.clone(),
    });
    {
        let _enter = rt.enter();
        match admin_listener {
            Some(l) => {
                let listener = match l
                    .set_nonblocking(true)
                    .and_then(|()| tokio::net::TcpListener::from_std(l))
                {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("error: admin listener: {e}");
                        return ExitCode::from(1);
                    }
                };
                rt.spawn(admin::serve(listener, admin));
            }
            None => {
                rt.spawn(admin::serve_when_free(opts.admin, admin));
            }
        }
        if let Some(url) = &reporter.url {
            let _ = state.status.autoscaler_url.set(url.clone());
        }
        if let Some(x) = &opts.xds {
            let _ = state.status.xds_url.set(x.url.clone());
        }
        rt.spawn(crate::status::sample(state.clone()));
        rt.spawn(crate::autoscaler::run(state.clone(), reporter));
        rt.spawn(crate::state::refresh_dns(state.clone()));
        let sink = opts
            .xds
            .as_ref()
            .map(|_| Arc::new(crate::xds::StateSink::new(state.clone())));
        rt.spawn(reopen_on_sigusr1(state.clone()));
        if let Some(path) = opts.config_path.clone() {
            rt.spawn(reload_on_sighup(path, state.clone(), sink.clone()));
        }
        if let (Some(xds), Some(sink)) = (opts.xds.clone(), sink) {
            rt.spawn(weir_control::xds::run_client(xds, sink));
        }
    }

    if let Some(dir) = opts.upgrade_sock.parent() {
        // Private: whoever can write the socket can hand this process listening sockets.
        if let Err(e) = create_private_dir(dir) {
            eprintln!("error: upgrade socket directory {}: {e}", dir.display());
            return ExitCode::from(1);
        }
    }
    let conf = ServerConf {
        threads: opts.threads.max(1),
        grace_period_seconds: Some(drain.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: 1024,
        // Idle upstream connections swept every second rather than watched by a task each:
        // no task, channel or allocation per request for the pool (vendor/pingora-core).
        upstream_keepalive_sweep_ms: Some(1000),
        upgrade_sock: opts.upgrade_sock.to_string_lossy().into_owned(),
        // One single-threaded tokio runtime per worker thread, a connection placed on one at
        // random when accepted and served there to its end (as Envoy's workers, nginx's
        // worker processes): without work stealing a wake-up costs no cross-thread queue
        // and no scheduler bookkeeping, ~1,100 instructions per request (docs/performance.md,
        // "Allocator calls, per-thread runtimes, fewer lookups"). pingora's shutdown waits
        // for these runtimes no longer than for a work-stealing one (vendor/pingora-core).
        work_stealing: false,
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: opts.upgrade,
        ..Opt::default()
    };
    // Nothing in Weir reads how long a stream's reads and writes waited: two clock reads per
    // wait saved (vendor/pingora-core/PATCHED.md).
    pingora::protocols::l4::stream::set_pending_time_tracking(false);
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    // In an upgrade this waits (about 6 s at most) for the running process's sockets.
    server.bootstrap();
    {
        // The drain follows pingora's shutdown (SIGTERM, or SIGQUIT once the sockets are
        // handed over), not the signals themselves.
        let _enter = rt.enter();
        rt.spawn(drain_on_shutdown(
            server.watch_execution_phase(),
            state.clone(),
            active.clone(),
            drain,
        ));
    }
    let limit = ConnectionLimit::new(max_connections);
    let _ = state.edge.connections.set(limit.clone());
    let _ = state.metrics.edge.set(crate::metrics::EdgeGauges {
        connections: limit.clone(),
        held_memory: state.edge.held_memory.clone(),
    });
    log::info!("max_connections {max_connections}");
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
            reporting,
        };
        let mut http = http_proxy(&server.configuration, proxy.clone());
        let mut options = HttpServerOptions::default();
        // h2c (HTTP/2 with prior knowledge) beside HTTP/1.1 on plain listeners.
        options.h2c = certs.is_none();
        options.header_read_timeout = state.edge.header_read_timeout.clone();
        options.idle_timeout = state.edge.idle_timeout.clone();
        http.server_options = Some(options);
        let mut listeners = pingora::listeners::Listeners::new();
        for addr in addrs.iter() {
            // pingora reads each connection through a 64 KiB buffer by default, kept for the
            // connection's life: ~64 KiB per idle or held client. Header and body reads bring
            // their own buffers (larger reads bypass this one), so 4 KiB of read-ahead is
            // plenty and makes 10,000 held requests ~600 MB lighter.
            let mut endpoint = ListenerConfig::tcp(addr.to_string())
                .l4_buffer(L4BufferSettings::default().read(L4_READ_BUFFER))
                .connection_limit(limit.clone());
            if let Some(store) = certs {
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
                endpoint = endpoint.tls(settings);
            }
            listeners.add_listener(endpoint);
        }
        listeners.set_pre_tls_callback(proxy_header.clone());
        let name = name.to_string();
        if opts.fast_path {
            let app = WeirApp::new(http, proxy, &server.configuration);
            server.add_service(Service::with_listeners(name, listeners, app));
        } else {
            server.add_service(Service::with_listeners(name, listeners, http));
        }
    }
    let addrs: Vec<String> = l.all().map(|(k, a)| format!("{k} {a}")).collect();
    log::info!("weir proxy: {}, admin {}", addrs.join(", "), opts.admin);
    server.run_forever()
}

/// When pingora shuts down (SIGTERM; or SIGQUIT, once the listening sockets are handed to
/// the new process of a binary upgrade and its 5 s of accepting beside it are over), it stops
/// accepting, closes idle connections and waits its grace period; this exits as soon as no
/// request is in flight instead (the drain timeout, pingora's grace period, is the upper
/// bound). The proxy reports not ready from the first signal on.
async fn drain_on_shutdown(
    mut phases: tokio::sync::broadcast::Receiver<ExecutionPhase>,
    state: Arc<State>,
    active: Arc<Active>,
    drain: Duration,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match phases.recv().await {
            Ok(ExecutionPhase::GracefulTerminate) => {
                log::info!("SIGTERM: stopping");
                state.set_draining();
            }
            Ok(ExecutionPhase::GracefulUpgradeTransferringFds) => {
                log::info!("SIGQUIT: handing the listening sockets to the new process");
                state.set_draining();
            }
            Ok(ExecutionPhase::ShutdownStarted) => break,
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
    log::info!(
        "draining {} in-flight request(s), up to {drain:?}",
        active.get()
    );
    let deadline = Instant::now() + drain;
    // Quiet for a while, so a request accepted just before the listener closed (pingora
    // waits up to 500 ms for a request on its way once shutting down) has had time to show
    // up as active.
    let mut quiet = 0;
    while Instant::now() < deadline {
        if active.get() == 0 {
            quiet += 1;
            if quiet >= 12 {
                log::info!("drained; exiting");
                state.access_log.flush(Duration::from_secs(1));
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
    state.access_log.flush(Duration::from_secs(1));
    std::process::exit(0);
}

/// `limits.max_connections`, or 3/4 of the open-file limit, after raising that limit's soft
/// value to its hard one (the rest stays for upstream connections, listeners and files).
pub fn max_connections(limits: &weir_config::model::Limits) -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let soft = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(_) => soft,
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    };
    match limits.max_connections {
        Some(n) => n as usize,
        None => (soft.min(1 << 24) as usize * 3 / 4).max(1),
    }
}

/// `<temp dir>/weir-<uid>/upgrade.sock`: one per user, in a directory only they can use.
pub fn default_upgrade_sock() -> PathBuf {
    std::env::temp_dir()
        .join(format!("weir-{}", nix::unistd::getuid()))
        .join("upgrade.sock")
}

/// Creates `dir` (and its parents) with mode 0700 if it does not exist.
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Reopens the access log file on every SIGUSR1 (log rotation: the file was renamed, the
/// next line goes to a new one at the configured path).
async fn reopen_on_sigusr1(state: Arc<State>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
        log::warn!("cannot watch SIGUSR1: the access log will not be reopened on it");
        return;
    };
    while usr1.recv().await.is_some() {
        log::info!("SIGUSR1: reopening the access log");
        state.access_log.reopen();
    }
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
            // Parsed here, checked once by the apply.
            let cfg = weir_config::parse(&text, format).map_err(|errs| {
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
