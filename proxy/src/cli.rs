//! The `weir` command line: `proxy`, `control`, `check` and `demo` (CONTRACT.md section 1).
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
    /// Public listener [default: listen.http or 0.0.0.0:8080].
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Cluster-local listener [default: listen.internal, or off].
    #[arg(long, value_name = "ADDR")]
    internal: Option<SocketAddr>,
    /// TLS listener, certificates by SNI from the config's `tls` [default: listen.https, or off].
    #[arg(long, value_name = "ADDR")]
    https: Option<SocketAddr>,
    /// Admin and control API listener [default: listen.admin or 127.0.0.1:9901].
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// File holding the bearer token the admin API requires.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// Identity reported to control planes [default: node_id or the hostname].
    #[arg(long, value_name = "ID")]
    node_id: Option<String>,
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
        Cmd::Check { file } => check(&file),
        Cmd::Proxy(args) => proxy(args),
        Cmd::Control(args) => control(args),
        Cmd::Demo(args) => {
            init_logging(args.log_level.as_deref());
            crate::demo::run(args.http, args.admin, args.threads)
        }
    }
}

fn init_logging(level: Option<&str>) {
    let filter = level
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "warn,weir_proxy=info,weir_control=info".into());
    let _ = env_logger::Builder::new()
        .parse_filters(&filter)
        .format_timestamp_millis()
        .try_init();
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

/// Files the config points at (TLS certificates and keys) must be readable.
fn check_files(cfg: &Config, base: &Path) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for (i, t) in cfg.tls.iter().enumerate() {
        for (field, file) in [("cert", &t.cert), ("key", &t.key)] {
            let p = base.join(file);
            if let Err(e) = std::fs::metadata(&p) {
                errors.push(ConfigError::new(
                    format!("tls[{i}].{field}"),
                    format!("cannot read {}: {e}", p.display()),
                ));
            }
        }
    }
    errors
}

fn check(file: &Path) -> ExitCode {
    match load_file(file) {
        Ok(cfg) => match weir_config::compile(&cfg) {
            Ok(table) => {
                println!("ok: {}", weir_config::summary(&cfg, &table));
                ExitCode::SUCCESS
            }
            Err(errs) => {
                for e in &errs.0 {
                    eprintln!("{e}");
                }
                ExitCode::from(1)
            }
        },
        Err(lines) => {
            for l in lines {
                eprintln!("{l}");
            }
            ExitCode::from(1)
        }
    }
}

fn proxy(args: ProxyArgs) -> ExitCode {
    init_logging(args.log_level.as_deref());
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
    let listen = |flag: Option<SocketAddr>, conf: &Option<String>, default: Option<&str>| {
        flag.or_else(|| conf.as_deref().and_then(|a| a.parse().ok()))
            .or_else(|| default.and_then(|d| d.parse().ok()))
    };
    let http = listen(args.http, &cfg.listen.http, Some("0.0.0.0:8080"))
        .expect("the default address parses");
    let internal = listen(args.internal, &cfg.listen.internal, None);
    let https = listen(args.https, &cfg.listen.https, None);
    let config_dir = args
        .config
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let admin = listen(args.admin, &cfg.listen.admin, Some("127.0.0.1:9901"))
        .expect("the default address parses");
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
    if let Some(url) = &args.autoscaler {
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            eprintln!("error: --autoscaler {url:?} must be a ws:// or wss:// URL");
            return ExitCode::from(2);
        }
    }
    let rt = match server::control_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the control runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let state = server::new_state();
    server::run_with_xds(
        ProxyOptions {
            config_path: args.config,
            config: cfg,
            http,
            internal,
            https,
            config_dir,
            admin,
            admin_token,
            threads,
            autoscaler_url: args.autoscaler,
            node_id,
        },
        &rt,
        state,
        args.xds,
    )
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
    init_logging(args.log_level.as_deref());
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
    crate::xds::run_control(crate::xds::ControlOptions {
        config_path: args.config,
        config: cfg,
        xds_listen: args.xds_listen,
        delta: !args.no_delta,
        admin: args.admin,
        admin_token,
    })
}
