//! A `weir proxy` process under test.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;

use crate::kourier::GatewayPorts;

/// How long a fresh process may take to answer `GET /readyz` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);
/// How much of each output file is printed when a test fails.
const LOG_TAIL: usize = 64 * 1024;

/// A port that was free a moment ago: bound on 127.0.0.1:0, read, released.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// `n` distinct free addresses on 127.0.0.1 (all held at once while they are picked).
fn free_addrs<const N: usize>() -> [SocketAddr; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("local_addr"))
}

// === impl WeirBuilder ===

/// Options of a [`Weir`] before it starts.
pub struct WeirBuilder {
    bin: PathBuf,
    config: serde_json::Value,
    args: Vec<String>,
    ready_timeout: Duration,
    https: bool,
    /// Pass `--config` (off for `weir proxy --xds URL` alone).
    config_flag: bool,
    /// Written into the config's directory before the process starts (path relative to it).
    files: Vec<(PathBuf, Vec<u8>)>,
    /// Bind these ports as Kourier's gateway does, instead of free ones.
    gateway: Option<GatewayPorts>,
    /// Wait for `GET /readyz` to answer 200 (otherwise only for the listeners).
    wait_ready: bool,
    /// Bind these (http, internal, admin) addresses instead of free ones: a second process
    /// taking over the first one's listeners (`--upgrade`).
    addrs: Option<(SocketAddr, SocketAddr, SocketAddr)>,
    /// Whether `WEIR_TEST_PROXY_PATH=1` adds `--no-fast-path` (off for a test that compares
    /// the two paths and chooses itself).
    env_path: bool,
}

impl WeirBuilder {
    /// The path the flags given with [`WeirBuilder::arg`] choose (the fast path unless
    /// `--no-fast-path`), whatever `WEIR_TEST_PROXY_PATH` says.
    pub fn path_as_given(mut self) -> Self {
        self.env_path = false;
        self
    }

    /// Also serve the https listener (`--https` on a free port): certificates come from the
    /// config's `tls` entries, whose paths are relative to the config's directory (see
    /// [`WeirBuilder::file`] and [`Weir::dir`]).
    pub fn https(mut self) -> Self {
        self.https = true;
        self
    }

    /// A file written into the config's directory before the process starts, e.g. a
    /// certificate named by the config's `tls` entries. `path` is relative to that directory.
    pub fn file(mut self, path: impl Into<PathBuf>, contents: impl Into<Vec<u8>>) -> Self {
        let path = path.into();
        assert!(path.is_relative(), "{} is not relative", path.display());
        self.files.push((path, contents.into()));
        self
    }

    /// Start without `--config` (the config file is still written, but not passed): for
    /// `weir proxy --xds URL`, which then needs no file.
    pub fn without_config_flag(mut self) -> Self {
        self.config_flag = false;
        self
    }

    /// An extra command-line argument after the generated ones.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn ready_timeout(mut self, t: Duration) -> Self {
        self.ready_timeout = t;
        self
    }

    /// Bind the six listeners of a Kourier gateway pod on `ports` (plain, probe, internal,
    /// TLS, TLS probe, cluster-local TLS) instead of the usual http and internal ones.
    pub fn gateway(mut self, ports: GatewayPorts) -> Self {
        self.gateway = Some(ports);
        self
    }

    /// Bind the same http, internal and admin addresses as `other` (for `--upgrade`).
    pub fn addresses_of(mut self, other: &Weir) -> Self {
        self.addrs = Some((other.http, other.internal, other.admin));
        self
    }

    /// Hand the process out once its listeners accept connections, ready or not (e.g. to
    /// see it answer 503 before its first xDS sync).
    pub fn without_waiting_for_ready(mut self) -> Self {
        self.wait_ready = false;
        self
    }

    /// Spawns the process and waits until it is ready; one retry on new ports when the
    /// process died at start (another process may have taken a port in between).
    pub fn start(self) -> Weir {
        let dir = tempfile::Builder::new()
            .prefix("weir-test-")
            .tempdir()
            .expect("create a temp dir");
        let config_path = dir.path().join("weir.json");
        let text = serde_json::to_vec_pretty(&self.config).expect("serialise the config");
        fs::write(&config_path, text).expect("write the config");
        for (path, contents) in &self.files {
            let path = dir.path().join(path);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).expect("create a directory for a file");
            }
            fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }

        let mut dir = Some(dir);
        for attempt in 0..2 {
            let [http, internal, admin, https] = free_addrs::<4>();
            let (http, internal, admin) = self.addrs.unwrap_or((http, internal, admin));
            let https = self.https.then_some(https);
            let (http, internal, https) = match &self.gateway {
                Some(g) => (g.http, g.internal, Some(g.https)),
                None => (http, internal, https),
            };
            let stdout_path = dir
                .as_ref()
                .unwrap()
                .path()
                .join(format!("stdout.{attempt}.log"));
            let stderr_path = dir
                .as_ref()
                .unwrap()
                .path()
                .join(format!("stderr.{attempt}.log"));
            let mut cmd = Command::new(&self.bin);
            cmd.arg("proxy");
            // The whole suite once more through pingora's proxy path alone (`./dev test`
            // runs it both ways).
            if self.env_path && std::env::var_os("WEIR_TEST_PROXY_PATH").is_some_and(|v| v == "1") {
                cmd.arg("--no-fast-path");
            }
            if self.config_flag {
                cmd.arg("--config").arg(&config_path);
            }
            match &self.gateway {
                Some(g) => {
                    cmd.args(g.args());
                }
                None => {
                    if let Some(addr) = https {
                        cmd.arg("--https").arg(addr.to_string());
                    }
                    cmd.arg("--http")
                        .arg(http.to_string())
                        .arg("--internal")
                        .arg(internal.to_string());
                }
            }
            let child = cmd
                .arg("--admin")
                .arg(admin.to_string())
                .args(&self.args)
                .stdin(Stdio::null())
                .stdout(File::create(&stdout_path).expect("create stdout log"))
                .stderr(File::create(&stderr_path).expect("create stderr log"))
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
            let mut weir = Weir {
                child,
                dir: dir.take(),
                config_path: config_path.clone(),
                stdout_path,
                stderr_path,
                http,
                internal,
                admin,
                https,
                gateway: self.gateway,
                status: None,
            };
            let fresh_ports = self.addrs.is_none() && self.gateway.is_none();
            match weir.wait_ready(self.ready_timeout, self.wait_ready, fresh_ports) {
                Ok(()) => return weir,
                Err(Some(status)) if attempt == 0 => {
                    eprintln!("weir exited at start ({status}); retrying on new ports");
                    weir.print_logs();
                    dir = weir.dir.take();
                }
                Err(Some(status)) => panic!("weir exited at start: {status}"),
                Err(None) => panic!(
                    "weir did not answer 200 on GET {}/readyz within {:?}",
                    weir.admin_url(),
                    self.ready_timeout
                ),
            }
        }
        unreachable!("the second attempt returns or panics")
    }
}

// === impl Weir ===

/// A running `weir proxy` on 127.0.0.1 (http, internal and admin listeners on free ports).
/// Killed on drop; its stdout and stderr are printed when the test is panicking.
pub struct Weir {
    child: Child,
    /// Holds the config and the logs; removed on drop.
    dir: Option<tempfile::TempDir>,
    config_path: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    http: SocketAddr,
    internal: SocketAddr,
    admin: SocketAddr,
    https: Option<SocketAddr>,
    gateway: Option<GatewayPorts>,
    status: Option<ExitStatus>,
}

impl Weir {
    /// Starts `bin proxy` with `config` (written as JSON) and waits until it is ready.
    /// Use [`crate::start_weir!`] to get `bin` right.
    pub fn start(bin: impl AsRef<Path>, config: &serde_json::Value) -> Weir {
        Weir::builder(bin, config).start()
    }

    pub fn builder(bin: impl AsRef<Path>, config: &serde_json::Value) -> WeirBuilder {
        WeirBuilder {
            bin: bin.as_ref().to_owned(),
            config: config.clone(),
            args: Vec::new(),
            ready_timeout: READY_TIMEOUT,
            https: false,
            config_flag: true,
            files: Vec::new(),
            gateway: None,
            wait_ready: true,
            addrs: None,
            env_path: true,
        }
    }

    /// The Kourier gateway ports it binds ([`WeirBuilder::gateway`]).
    pub fn gateway_ports(&self) -> GatewayPorts {
        self.gateway
            .expect("this weir is not a gateway: start it with WeirBuilder::gateway")
    }

    /// `http://127.0.0.1:PORT` of the external listener (no trailing slash).
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// `http://127.0.0.1:PORT` of the internal (cluster-local) listener.
    pub fn internal_url(&self) -> String {
        format!("http://{}", self.internal)
    }

    /// `http://127.0.0.1:PORT` of the admin listener.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    pub fn internal_addr(&self) -> SocketAddr {
        self.internal
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The https listener (`WeirBuilder::https`); panics when it was not asked for.
    pub fn https_addr(&self) -> SocketAddr {
        self.https
            .expect("this weir has no https listener: start it with WeirBuilder::https")
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The config's directory: relative paths in the config (`tls[].cert`, `tls[].key`) are
    /// relative to it. Removed when the process is dropped.
    pub fn dir(&self) -> &Path {
        self.config_path
            .parent()
            .expect("the config file is inside a directory")
    }

    /// Replaces the config file (atomically: a new file renamed over the old one), e.g.
    /// before a SIGHUP.
    pub fn write_config(&self, config: &serde_json::Value) {
        let text = serde_json::to_vec_pretty(config).expect("serialise the config");
        let tmp = self.config_path.with_extension("json.new");
        fs::write(&tmp, text).expect("write the new config");
        fs::rename(&tmp, &self.config_path).expect("rename the new config into place");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).expect("pid fits i32"));
        nix::sys::signal::kill(pid, sig).unwrap_or_else(|e| panic!("kill -{sig} {pid}: {e}"));
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The exit status, if the process has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// What the process wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        format!(
            "{}{}",
            fs::read_to_string(&self.stdout_path).unwrap_or_default(),
            fs::read_to_string(&self.stderr_path).unwrap_or_default()
        )
    }

    pub fn print_logs(&self) {
        for (name, path) in [("stdout", &self.stdout_path), ("stderr", &self.stderr_path)] {
            let text = fs::read(path).unwrap_or_default();
            let tail = &text[text.len().saturating_sub(LOG_TAIL)..];
            eprintln!(
                "----- weir (pid {}) {name} -----\n{}\n----- end of weir {name} -----",
                self.pid(),
                String::from_utf8_lossy(tail)
            );
        }
    }

    /// Ready: `GET /readyz` answers 200 (when `wait_ready`) and every listener accepts
    /// connections, and is this process's own when `fresh_ports` (the ports were picked free
    /// for it: another process listening on one means Weir cannot have it; an upgrade's ports
    /// are its predecessor's until the hand-over). `Err(Some(status))` when the process
    /// exited (or was stopped for a taken port), `Err(None)` on timeout.
    fn wait_ready(
        &mut self,
        timeout: Duration,
        wait_ready: bool,
        fresh_ports: bool,
    ) -> Result<(), Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Err(Some(status));
            }
            // Listening means this process listens: a port picked free can be taken by
            // another test's server before Weir binds it, and a connect would be answered
            // by that server. Then Weir cannot have the port: stop it, and the retry takes
            // new ports.
            let pid = self.child.id();
            // (Fresh ports are never a gateway's, whose ports are fixed.)
            let all = [
                Some(self.http),
                Some(self.internal),
                self.https,
                Some(self.admin),
            ];
            let taken = fresh_ports
                .then(|| {
                    all.into_iter()
                        .flatten()
                        .find(|a| listener(pid, *a) == Listener::Other)
                })
                .flatten();
            if let Some(taken) = taken {
                eprintln!("port {} is another process's; stopping weir", taken.port());
                let _ = self.child.kill();
                if let Ok(status) = self.child.wait() {
                    self.status = Some(status);
                    return Err(Some(status));
                }
            }
            // (An upgrade's successor gets its listeners only once its predecessor is told
            // to hand them over, after this returns: there a connect is all to wait for.)
            let owned = |addr: SocketAddr| {
                connects(addr) && (!fresh_ports || listener(pid, addr) == Listener::Ours)
            };
            let listening = match &self.gateway {
                Some(g) => [
                    g.http,
                    g.probe,
                    g.internal,
                    g.https,
                    g.probe_https,
                    g.internal_https,
                ]
                .into_iter()
                .all(owned),
                None => owned(self.http) && owned(self.internal) && self.https.is_none_or(owned),
            };
            let ready = listening
                && owned(self.admin)
                && (!wait_ready || matches!(blocking_get(self.admin, "/readyz"), Ok((200, _))));
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(None);
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            self.print_logs();
        }
    }
}

fn connects(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Who listens on a port (from /proc: Linux only).
#[derive(Debug, PartialEq, Eq)]
enum Listener {
    /// The process asked about.
    Ours,
    /// Another process.
    Other,
    /// Nobody.
    Nobody,
}

/// Who holds a listening TCP socket on `addr`'s port: the `LISTEN` entries of /proc/net/tcp
/// (and tcp6) for that port, and whether one of their inodes is among process `pid`'s open
/// sockets.
fn listener(pid: u32, addr: SocketAddr) -> Listener {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ... inode (column 9); st 0A is LISTEN.
            if cols.len() < 10 || cols[3] != "0A" {
                continue;
            }
            let port = cols[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if port == Some(addr.port()) {
                inodes.push(format!("socket:[{}]", cols[9]));
            }
        }
    }
    if inodes.is_empty() {
        return Listener::Nobody;
    }
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        // The process is gone (its exit is seen by the caller) or not readable.
        return Listener::Nobody;
    };
    let ours = fds.flatten().any(|fd| {
        fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
    });
    if ours {
        Listener::Ours
    } else {
        Listener::Other
    }
}

/// A one-shot `GET` over a fresh connection, blocking: (status, body). For readiness
/// polling, where no async runtime may be around.
pub fn blocking_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no status line"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
