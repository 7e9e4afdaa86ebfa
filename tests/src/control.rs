//! A `weir control` process under test: the control plane that serves its config over xDS
//! (ADS) and takes changes through its admin API. Killed on drop; output printed when a test
//! panics. It can be restarted on the same xDS port, as after a crash.

use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::Response;
use crate::weir::blocking_get;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const LOG_TAIL: usize = 64 * 1024;

/// A running `weir control` on 127.0.0.1.
pub struct WeirControl {
    child: Child,
    /// Holds the config and the logs; removed on drop.
    _dir: tempfile::TempDir,
    config_path: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    xds: SocketAddr,
    admin: SocketAddr,
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
}

impl WeirControl {
    /// Starts `bin control` with `config` on free ports and waits until it is ready.
    pub fn start(bin: impl AsRef<Path>, config: &Value) -> WeirControl {
        WeirControl::start_on(bin, config, free_addr())
    }

    /// Starts it with its xDS listener on `xds` (e.g. the address of a killed one).
    pub fn start_on(bin: impl AsRef<Path>, config: &Value, xds: SocketAddr) -> WeirControl {
        WeirControl::start_with(bin, config, xds, &[])
    }

    /// Starts it on `xds` with `args` added to the command line (e.g. `--no-delta`).
    pub fn start_with(
        bin: impl AsRef<Path>,
        config: &Value,
        xds: SocketAddr,
        args: &[&str],
    ) -> WeirControl {
        let dir = tempfile::Builder::new()
            .prefix("weir-control-")
            .tempdir()
            .expect("create a temp dir");
        let config_path = dir.path().join("control.json");
        fs::write(
            &config_path,
            serde_json::to_vec(config).expect("serialise the config"),
        )
        .expect("write the config");
        let admin = free_addr();
        let stdout_path = dir.path().join("stdout.log");
        let stderr_path = dir.path().join("stderr.log");
        let child = Command::new(bin.as_ref())
            .arg("control")
            .arg("--config")
            .arg(&config_path)
            .arg("--xds-listen")
            .arg(xds.to_string())
            .arg("--admin")
            .arg(admin.to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path).expect("create stdout log"))
            .stderr(File::create(&stderr_path).expect("create stderr log"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.as_ref().display()));
        let mut c = WeirControl {
            child,
            _dir: dir,
            config_path,
            stdout_path,
            stderr_path,
            xds,
            admin,
        };
        c.wait_ready();
        c
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.print_logs();
                panic!("weir control exited at start: {status}");
            }
            let ready = matches!(blocking_get(self.admin, "/readyz"), Ok((200, _)))
                && TcpStream::connect_timeout(&self.xds, Duration::from_millis(500)).is_ok();
            if ready {
                return;
            }
            if Instant::now() >= deadline {
                self.print_logs();
                panic!("weir control not ready within {READY_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `http://127.0.0.1:PORT` of the ADS listener, as `weir proxy --xds` takes it.
    pub fn xds_url(&self) -> String {
        format!("http://{}", self.xds)
    }

    pub fn xds_addr(&self) -> SocketAddr {
        self.xds
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// `PUT /v1/config`; panics unless the answer is 200.
    pub async fn put_config(&self, config: &Value) -> Response {
        crate::admin::put_config_at(&self.admin_url(), config).await
    }

    /// `PUT /v1/{kind}/{ns}/{name}`; panics unless the answer is 200.
    pub async fn put_object(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        object: &Value,
    ) -> Response {
        crate::admin::put_object_at(&self.admin_url(), kind, namespace, name, object).await
    }

    /// `PUT /v1/revisions/{ns}/{name}/endpoints`; panics unless the answer is 200.
    pub async fn put_endpoints(
        &self,
        namespace: &str,
        name: &str,
        endpoints: &[String],
    ) -> Response {
        crate::admin::put_endpoints_at(&self.admin_url(), namespace, name, endpoints).await
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash: no goodbye to the proxies.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn logs(&self) -> String {
        format!(
            "{}{}",
            fs::read_to_string(&self.stdout_path).unwrap_or_default(),
            fs::read_to_string(&self.stderr_path).unwrap_or_default()
        )
    }

    pub fn print_logs(&self) {
        let text = self.logs().into_bytes();
        let tail = String::from_utf8_lossy(&text[text.len().saturating_sub(LOG_TAIL)..]);
        eprintln!(
            "----- weir control (pid {}) -----\n{tail}\n----- end of weir control -----",
            self.child.id()
        );
    }
}

impl Drop for WeirControl {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            self.print_logs();
        }
    }
}

/// Starts a `weir control` with `config` (a [`serde_json::Value`]) on free ports.
#[macro_export]
macro_rules! start_control {
    ($config:expr) => {
        $crate::WeirControl::start($crate::weir_bin!(), &$config)
    };
}
