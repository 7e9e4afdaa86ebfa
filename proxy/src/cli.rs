//! The `weir` command line: `proxy`, `control`, `check` and `demo` (docs/api.md#commands).
//! Exit codes: 0 clean stop, 1 invalid config or failed start, 2 bad usage.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use weir_config::{Config, ConfigError, Format};

use crate::server::{self, ProxyOptions};

#[derive(Parser, Debug)]
#[command(
    name = "weir",
    version,
    about = "Weir: one-hop ingress data plane for serverless platforms"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the data plane.
    Proxy(ProxyArgs),
    /// Run the control plane: serve the config over xDS (ADS) to any number of proxies and
    /// accept the control API, so that every connected proxy is updated.
    Control(ControlArgs),
    /// Validate a config file: `ok: ...` and exit 0, or every error with its path and exit 1.
    Check {
        /// The config file (YAML, or JSON when it ends in .json).
        file: PathBuf,
        /// Do not look endpoint names up in DNS (the output says so); everything else is
        /// checked as an apply checks it.
        #[arg(long)]
        no_resolve: bool,
    },
    /// Run a proxy with built-in sample revisions on loopback and print curl commands to try.
    Demo(DemoArgs),
}

#[derive(Args, Debug)]
struct ProxyArgs {
    /// Config file (YAML or JSON); re-read on SIGHUP. Optional with --xds, which then
    /// supplies routes and revisions while the file supplies everything else.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// ADS server to take routes and revisions from, e.g. http://127.0.0.1:18000 (delta
    /// xDS, or state of the world where the server has no delta).
    #[arg(long, value_name = "URL")]
    xds: Option<String>,
    /// Speak state-of-the-world ADS only, never delta (Kourier acts on state-of-the-world
    /// NACKs only).
    #[arg(long, requires = "xds")]
    xds_sotw: bool,
    /// Public listener; repeat for several (e.g. Kourier's 8080 and 8090)
    /// [default: listen.http or 0.0.0.0:8080].
    #[arg(long, value_name = "ADDR")]
    http: Vec<SocketAddr>,
    /// Cluster-local listener; repeatable [default: listen.internal, or none].
    #[arg(long, value_name = "ADDR")]
    internal: Vec<SocketAddr>,
    /// TLS listener, certificates by SNI from the config's `tls` (or xDS Listeners);
    /// repeatable [default: listen.https, or none].
    #[arg(long, value_name = "ADDR")]
    https: Vec<SocketAddr>,
    /// Cluster-local TLS listener (Kourier's 8444); repeatable
    /// [default: listen.internal_https, or none].
    #[arg(long, value_name = "ADDR")]
    internal_https: Vec<SocketAddr>,
    /// Admin and control API listener [default: listen.admin or 127.0.0.1:9901].
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// File holding the bearer token the admin API requires.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// Node id sent to the xDS server (Kourier: 3scale-kourier-gateway on every replica)
    /// [default: node_id or the hostname].
    #[arg(long, value_name = "ID")]
    node_id: Option<String>,
    /// This replica's name in autoscaler reports [default: $POD_NAME, or the node id].
    #[arg(long, value_name = "NAME")]
    pod_name: Option<String>,
    /// Knative autoscaler to report concurrency to, e.g. ws://127.0.0.1:8090
    /// [default: autoscaler.url, or none].
    #[arg(long, value_name = "URL")]
    autoscaler: Option<String>,
    /// Worker threads per listener [default: threads, or the number of CPUs].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Log filter, e.g. `info` or `weir_proxy=debug` [default: RUST_LOG, or info].
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Process log lines as text or JSON objects (the access log has its own format).
    #[arg(long, value_name = "FORMAT", value_enum, default_value = "text")]
    log_format: crate::logging::LogFormat,
    /// Check the arguments and the config (as `weir check` does) and print what would run,
    /// without binding anything; exit 0 when it would start.
    #[arg(long)]
    check_args: bool,
    /// Take the listening sockets over from the `weir proxy` running with the same
    /// --upgrade-sock and listeners: start this, then send the old one SIGQUIT.
    #[arg(long)]
    upgrade: bool,
    /// Where a binary upgrade hands the listening sockets over (default: a private
    /// directory under the temp dir, weir-UID/upgrade.sock).
    #[arg(long, value_name = "PATH")]
    upgrade_sock: Option<PathBuf>,
    /// Serve plain HTTP/1 requests (no body or a Content-Length one up to 64 KiB, not an
    /// upgrade, a free endpoint, no cookie affinity) in Weir's own request loop instead of
    /// pingora's proxy state machine. The default; the flag is kept for command lines that
    /// name it.
    #[arg(long, overrides_with = "no_fast_path")]
    fast_path: bool,
    /// Serve every request through pingora's proxy state machine (no fast path).
    #[arg(long, overrides_with = "fast_path")]
    no_fast_path: bool,
}

#[derive(Args, Debug)]
struct ControlArgs {
    /// Config file (YAML or JSON) to serve; re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Where proxies connect for xDS (ADS: delta, and state of the world).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:18000")]
    xds_listen: SocketAddr,
    /// Serve state-of-the-world ADS only: delta streams are answered UNIMPLEMENTED, and
    /// proxies fall back to state of the world.
    #[arg(long)]
    no_delta: bool,
    /// Admin and control API listener.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9902")]
    admin: SocketAddr,
    /// File holding the bearer token the admin API requires.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// Log filter, e.g. `info` or `weir_control=debug` [default: RUST_LOG, or info].
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Process log lines as text or JSON objects (the access log has its own format).
    #[arg(long, value_name = "FORMAT", value_enum, default_value = "text")]
    log_format: crate::logging::LogFormat,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Public listener of the demo proxy.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// Admin listener of the demo proxy.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9901")]
    admin: SocketAddr,
    /// Worker threads of the demo proxy.
    #[arg(long, value_name = "N", default_value_t = 1)]
    threads: usize,
    /// Log filter.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Process log lines as text or JSON objects (the access log has its own format).
    #[arg(long, value_name = "FORMAT", value_enum, default_value = "text")]
    log_format: crate::logging::LogFormat,
}

/// Entry point of the `weir` binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.cmd {
        Cmd::Check { file, no_resolve } => check(&file, no_resolve),
        Cmd::Proxy(args) => proxy(args),
        Cmd::Control(args) => control(args),
        Cmd::Demo(args) => {
            crate::logging::init(args.log_level.as_deref(), args.log_format);
            crate::demo::run(args.http, args.admin, args.threads)
        }
    }
}

/// Reads and validates a config file; every error is a line `path: message`.
fn load_file(path: &Path) -> Result<Config, Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
    let cfg = weir_config::load(&text, Format::from_path(&path.to_string_lossy()))
        .map_err(|errs| errs.0.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    let file_errors = check_files(&cfg, path.parent().unwrap_or(Path::new(".")));
    if file_errors.is_empty() {
        Ok(cfg)
    } else {
        Err(file_errors.iter().map(ToString::to_string).collect())
    }
}

/// The certificates and keys the config names must load (and match).
fn check_files(cfg: &Config, base: &Path) -> Vec<ConfigError> {
    match crate::tls::load(cfg, base) {
        Ok(_) => Vec::new(),
        Err(errs) => errs.0,
    }
}

/// `weir check`: the config goes through the proxy's own update pipeline (validation,
/// compile, endpoint names resolved, certificates read, as a proxy with TLS listeners would),
/// applied to a state of its own, so it accepts exactly what an apply accepts.
fn check(file: &Path, no_resolve: bool) -> ExitCode {
    let fail = |lines: Vec<String>| {
        for l in lines {
            eprintln!("{l}");
        }
        ExitCode::from(1)
    };
    let cfg = match std::fs::read_to_string(file)
        .map_err(|e| vec![format!("{}: cannot read: {e}", file.display())])
        .and_then(|text| {
            weir_config::parse(&text, Format::from_path(&file.to_string_lossy()))
                .map_err(|errs| errs.0.iter().map(ToString::to_string).collect())
        }) {
        Ok(c) => c,
        Err(lines) => return fail(lines),
    };
    let state = server::new_state();
    state.set_config_dir(file.parent().unwrap_or(Path::new(".")).to_path_buf());
    state.enable_tls(
        crate::state::TlsStores::default(),
        file.parent().unwrap_or(Path::new(".")).to_path_buf(),
    );
    let dns = if no_resolve {
        crate::state::Dns::Skip
    } else {
        crate::state::Dns::Required
    };
    let opts = crate::state::ApplyOptions::new("check").dns(dns);
    match state.update(weir_config::Update::whole(cfg), opts) {
        Ok(_) => {
            println!("ok: {}", state.snapshot().config.summary());
            if no_resolve {
                println!("note: endpoint names were not resolved (--no-resolve)");
            }
            ExitCode::SUCCESS
        }
        Err(errs) => fail(errs.0.iter().map(ToString::to_string).collect()),
    }
}

fn proxy(args: ProxyArgs) -> ExitCode {
    crate::logging::init(args.log_level.as_deref(), args.log_format);
    if args.config.is_none() && args.xds.is_none() {
        eprintln!(
            "error: give --config FILE, --xds URL, or both\n\n\
             Usage: weir proxy --config FILE [--xds URL --node-id ID] [OPTIONS]\n\
             \x20      weir proxy --xds URL [--node-id ID] [OPTIONS]\n\n\
             For more information, try 'weir proxy --help'."
        );
        return ExitCode::from(2);
    }
    if let Some(url) = &args.xds {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            eprintln!("error: --xds {url:?} must be an http:// URL, e.g. http://127.0.0.1:18000");
            return ExitCode::from(2);
        }
    }
    let cfg = match &args.config {
        None => Config::empty(),
        Some(path) => match load_file(path) {
            Ok(c) => c,
            Err(lines) => {
                for l in lines {
                    eprintln!("{l}");
                }
                eprintln!("error: invalid config {}, not starting", path.display());
                return ExitCode::from(1);
            }
        },
    };
    // A kind of listener given by flag replaces the config file's list of that kind.
    let listen = |flags: Vec<SocketAddr>, conf: &weir_config::model::Addrs| -> Vec<SocketAddr> {
        if !flags.is_empty() {
            return flags;
        }
        conf.0.iter().filter_map(|a| a.parse().ok()).collect()
    };
    let mut listeners = server::Listeners {
        http: listen(args.http, &cfg.listen.http),
        internal: listen(args.internal, &cfg.listen.internal),
        https: listen(args.https, &cfg.listen.https),
        internal_https: listen(args.internal_https, &cfg.listen.internal_https),
    };
    if listeners.http.is_empty() {
        listeners.http.push(SocketAddr::from(([0, 0, 0, 0], 8080)));
    }
    let config_dir = args
        .config
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let admin = args
        .admin
        .or_else(|| cfg.listen.admin.as_deref().and_then(|a| a.parse().ok()))
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9901)));
    let admin_token = match read_token(args.admin_token_file.as_deref()) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let threads = args
        .threads
        .or(cfg.threads)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let node_id = args
        .node_id
        .or_else(|| cfg.node_id.clone())
        .unwrap_or_else(crate::autoscaler::hostname);
    let pod_name = args
        .pod_name
        .or_else(|| std::env::var("POD_NAME").ok().filter(|p| !p.is_empty()))
        .unwrap_or_else(|| node_id.clone());
    if let Some(url) = &args.autoscaler {
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            eprintln!("error: --autoscaler {url:?} must be a ws:// or wss:// URL");
            return ExitCode::from(2);
        }
    }
    if let Err(why) = listeners.check() {
        eprintln!("error: {why}");
        return ExitCode::from(2);
    }
    if let Err(why) = crate::admin::check_bind(&admin, admin_token.as_deref()) {
        eprintln!("error: {why}");
        return ExitCode::from(1);
    }
    let xds = args.xds.map(|url| weir_control::xds::ClientOptions {
        url,
        node_id: node_id.clone(),
        sotw_only: args.xds_sotw,
    });
    let opts = ProxyOptions {
        config_path: args.config,
        config: cfg,
        listeners,
        config_dir,
        admin,
        admin_token,
        threads,
        autoscaler_url: args.autoscaler,
        pod_name,
        xds,
        upgrade: args.upgrade,
        fast_path: !args.no_fast_path,
        upgrade_sock: args
            .upgrade_sock
            .unwrap_or_else(server::default_upgrade_sock),
    };
    if args.check_args {
        // What `weir check` checks (done above, in load_file), and the start-up checks
        // that need no socket: certificates load, names resolve.
        if let Err(lines) = server::check_start(&opts) {
            for l in lines {
                eprintln!("{l}");
            }
            return ExitCode::from(1);
        }
        println!("{}", opts.describe());
        return ExitCode::SUCCESS;
    }
    let rt = match server::admin_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the admin runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let state = server::new_state();
    server::run(opts, &rt, state)
}

/// The admin token from `--admin-token-file`, if given; exit 1 when it cannot be read.
fn read_token(file: Option<&Path>) -> Result<Option<String>, ExitCode> {
    let Some(p) = file else { return Ok(None) };
    match std::fs::read_to_string(p) {
        Ok(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_owned())),
        Ok(_) => {
            eprintln!("error: admin token file {} is empty", p.display());
            Err(ExitCode::from(1))
        }
        Err(e) => {
            eprintln!("error: cannot read admin token file {}: {e}", p.display());
            Err(ExitCode::from(1))
        }
    }
}

fn control(args: ControlArgs) -> ExitCode {
    crate::logging::init(args.log_level.as_deref(), args.log_format);
    let cfg = match load_file(&args.config) {
        Ok(c) => c,
        Err(lines) => {
            for l in lines {
                eprintln!("{l}");
            }
            eprintln!(
                "error: invalid config {}, not starting",
                args.config.display()
            );
            return ExitCode::from(1);
        }
    };
    let admin_token = match read_token(args.admin_token_file.as_deref()) {
        Ok(t) => t,
        Err(code) => return code,
    };
    crate::control_plane::run_control(crate::control_plane::ControlOptions {
        config_path: args.config,
        config: cfg,
        xds_listen: args.xds_listen,
        delta: !args.no_delta,
        admin: args.admin,
        admin_token,
    })
}
