//! The access log (docs/operations.md#access-log): one line per request, JSON or text.
//!
//! A line is formatted on the worker thread that served the request and appended to one
//! bounded in-memory buffer; a thread of its own writes the buffer out (stdout, stderr or a
//! file). Requests never wait for the log: when the buffer is full (a slow disk, a pipe
//! nobody reads) the line is dropped and counted in `weir_access_log_dropped_total`.
//!
//! The writer wakes only when there is something to write: when idle, the first line after
//! it wakes it; under load it writes every [`BATCH_EVERY`] (or as soon as the buffer is half
//! full), so a busy proxy does not pay a wake-up or a `write` per request. A file is
//! reopened on SIGUSR1 ([`AccessLog::reopen`]), for log rotation.

use std::cell::RefCell;
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::IntCounter;

/// How long the writer collects lines under load before writing them out.
const BATCH_EVERY: Duration = Duration::from_millis(100);

/// Line format (`access_log.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Text,
}

/// Where lines go (`access_log.to`), resolved against the config's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    Stderr,
    File(PathBuf),
}

impl Target {
    /// `to` as written in the config; a relative path is relative to `base`.
    pub fn parse(to: &str, base: &Path) -> Target {
        match to {
            "stdout" | "-" => Target::Stdout,
            "stderr" => Target::Stderr,
            path => Target::File(base.join(path)),
        }
    }

    /// Whether lines could be written there, without changing anything: an existing file
    /// must open for appending; a missing one needs its directory. A path that exists and
    /// is not a regular file (a FIFO, a device) is accepted without opening it, since
    /// opening a FIFO waits for its reader.
    pub fn check(&self) -> Result<(), String> {
        let Target::File(path) = self else {
            return Ok(());
        };
        match std::fs::metadata(path) {
            Ok(m) if !m.is_file() => Ok(()),
            Ok(_) => std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .map(drop)
                .map_err(|e| format!("cannot open {} for appending: {e}", path.display())),
            Err(_) => {
                let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
                match dir.map(std::fs::metadata) {
                    None | Some(Ok(_)) => Ok(()),
                    Some(Err(e)) => Err(format!(
                        "cannot create {}: its directory: {e}",
                        path.display()
                    )),
                }
            }
        }
    }
}

fn open(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// What one request's line says. Borrowed from the request's state: building it allocates
/// nothing.
#[derive(Debug, Default)]
pub struct Entry<'a> {
    /// When the request's head arrived.
    pub start: Option<SystemTime>,
    pub client: Option<SocketAddr>,
    pub method: &'a str,
    pub host: &'a [u8],
    pub path: &'a str,
    pub protocol: &'a str,
    /// 499 when nothing was answered (the client went away).
    pub status: u16,
    pub namespace: Option<&'a str>,
    pub revision: Option<&'a str>,
    pub endpoint: Option<SocketAddr>,
    pub tag: Option<&'a [u8]>,
    /// How the revision was chosen besides the split: `cookie` (the request's affinity
    /// cookie), `cookie-set` (a new cookie was set), `header` (the affinity header's hash).
    pub affinity: Option<&'a str>,
    pub bytes_in: usize,
    pub bytes_out: usize,
    /// From the request being sent upstream to the response head arriving.
    pub upstream: Option<Duration>,
    pub total: Duration,
    /// Time spent waiting for an endpoint (scale from zero, or every endpoint full).
    pub held: Duration,
    /// Endpoints tried (connect failures are retried on another endpoint).
    pub attempts: usize,
    pub request_id: Option<&'a [u8]>,
    pub traceparent: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
    /// Why the request did not get an upstream answer: `connect`, `hold_timeout`,
    /// `queue_full`, `overloaded`, `client_gone`, or pingora's error kind.
    pub error: Option<&'a str>,
}

impl Entry<'_> {
    /// Appends the line (with its newline) to `out`.
    pub fn write(&self, format: Format, out: &mut Vec<u8>) {
        match format {
            Format::Json => self.json(out),
            Format::Text => self.text(out),
        }
    }

    fn json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time\":\"");
        time(self.start, out);
        out.extend_from_slice(b"\",\"client\":");
        opt_display(out, self.client);
        out.extend_from_slice(b",\"method\":");
        json_str(out, self.method.as_bytes());
        out.extend_from_slice(b",\"host\":");
        json_str(out, self.host);
        out.extend_from_slice(b",\"path\":");
        json_str(out, self.path.as_bytes());
        out.extend_from_slice(b",\"protocol\":");
        json_str(out, self.protocol.as_bytes());
        out.extend_from_slice(b",\"status\":");
        num(out, self.status as u64);
        out.extend_from_slice(b",\"namespace\":");
        opt_str(out, self.namespace.map(str::as_bytes));
        out.extend_from_slice(b",\"revision\":");
        opt_str(out, self.revision.map(str::as_bytes));
        out.extend_from_slice(b",\"endpoint\":");
        opt_display(out, self.endpoint);
        out.extend_from_slice(b",\"tag\":");
        opt_str(out, self.tag);
        out.extend_from_slice(b",\"affinity\":");
        opt_str(out, self.affinity.map(str::as_bytes));
        out.extend_from_slice(b",\"bytes_in\":");
        num(out, self.bytes_in as u64);
        out.extend_from_slice(b",\"bytes_out\":");
        num(out, self.bytes_out as u64);
        out.extend_from_slice(b",\"upstream_ms\":");
        match self.upstream {
            Some(d) => millis(out, d),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"total_ms\":");
        millis(out, self.total);
        out.extend_from_slice(b",\"held_ms\":");
        millis(out, self.held);
        out.extend_from_slice(b",\"attempts\":");
        num(out, self.attempts as u64);
        out.extend_from_slice(b",\"request_id\":");
        opt_str(out, self.request_id);
        out.extend_from_slice(b",\"traceparent\":");
        opt_str(out, self.traceparent);
        out.extend_from_slice(b",\"user_agent\":");
        opt_str(out, self.user_agent);
        out.extend_from_slice(b",\"error\":");
        opt_str(out, self.error.map(str::as_bytes));
        out.extend_from_slice(b"}\n");
    }

    /// nginx's combined log's order first, then `key=value` pairs; `-` for none.
    fn text(&self, out: &mut Vec<u8>) {
        match self.client {
            Some(c) => addr(out, c),
            None => out.push(b'-'),
        }
        out.extend_from_slice(b" [");
        time(self.start, out);
        out.extend_from_slice(b"] \"");
        text_bytes(out, self.method.as_bytes());
        out.push(b' ');
        text_bytes(out, self.path.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.protocol.as_bytes());
        out.extend_from_slice(b"\" ");
        num(out, u64::from(self.status));
        out.push(b' ');
        num(out, self.bytes_out as u64);
        out.extend_from_slice(b" \"");
        text_bytes(out, self.host);
        out.extend_from_slice(b"\" \"");
        text_bytes(out, self.user_agent.unwrap_or(b"-"));
        out.extend_from_slice(b"\" revision=");
        match (self.namespace, self.revision) {
            (Some(ns), Some(r)) => {
                text_bytes(out, ns.as_bytes());
                out.push(b'/');
                text_bytes(out, r.as_bytes());
            }
            _ => out.push(b'-'),
        }
        out.extend_from_slice(b" endpoint=");
        match self.endpoint {
            Some(e) => addr(out, e),
            None => out.push(b'-'),
        }
        for (key, value) in [
            ("tag", self.tag),
            ("affinity", self.affinity.map(str::as_bytes)),
        ] {
            let _ = write!(out, " {key}=");
            text_bytes(out, value.unwrap_or(b"-"));
        }
        out.extend_from_slice(b" bytes_in=");
        num(out, self.bytes_in as u64);
        out.extend_from_slice(b" upstream_ms=");
        match self.upstream {
            Some(d) => millis(out, d),
            None => out.push(b'-'),
        }
        out.extend_from_slice(b" total_ms=");
        millis(out, self.total);
        out.extend_from_slice(b" held_ms=");
        millis(out, self.held);
        out.extend_from_slice(b" attempts=");
        num(out, self.attempts as u64);
        for (key, value) in [
            ("request_id", self.request_id),
            ("traceparent", self.traceparent),
            ("error", self.error.map(str::as_bytes)),
        ] {
            let _ = write!(out, " {key}=");
            text_bytes(out, value.unwrap_or(b"-"));
        }
        out.push(b'\n');
    }
}

// Numbers and addresses are written by hand (itoa, octets): `write!` through `fmt` costs
// several times more, and a line has a dozen of them (benches/request_cost.py).

fn num(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `n` as exactly `width` digits, zero-padded (`n` < 10^width).
fn padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut buf = [b'0'; 4];
    let mut n = n;
    for d in buf[..width].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&buf[..width]);
}

/// Milliseconds with three decimals (microseconds).
fn millis(out: &mut Vec<u8>, d: Duration) {
    let us = d.as_micros() as u64;
    num(out, us / 1000);
    out.push(b'.');
    padded(out, us % 1000, 3);
}

/// `IP:port` (`[IPv6]:port`), as `SocketAddr`'s `Display` writes it.
fn addr(out: &mut Vec<u8>, a: SocketAddr) {
    // Into a buffer on the stack and out in one copy: digit by digit into the line's `Vec`
    // cost about 1.8 times as much (each `push` checks the capacity).
    let mut buf = [0u8; 64];
    let mut n = 0;
    if a.is_ipv6() {
        buf[0] = b'[';
        n = 1;
    }
    let mut ip = [0u8; 64];
    let len = crate::route::write_ip(&mut ip, a.ip());
    buf[n..n + len].copy_from_slice(&ip[..len]);
    n += len;
    if a.is_ipv6() {
        buf[n] = b']';
        n += 1;
    }
    buf[n] = b':';
    n += 1;
    let mut port = itoa::Buffer::new();
    let port = port.format(a.port()).as_bytes();
    buf[n..n + port.len()].copy_from_slice(port);
    out.extend_from_slice(&buf[..n + port.len()]);
}

fn opt_display(out: &mut Vec<u8>, v: Option<SocketAddr>) {
    match v {
        Some(v) => {
            out.push(b'"');
            addr(out, v);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
}

fn opt_str(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        Some(v) => json_str(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// Whether `s` is printable ASCII without `"` or `\` (what both formats copy as is), eight
/// bytes at a time: seven strings of a line are checked (host, path, user agent, ...), and
/// byte by byte the checks cost about 260 instructions more per line (callgrind).
fn plain(s: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // Whether some byte of `x` is below `n` (n <= 0x80; exact for the word as a whole, though
    // not for which byte).
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH != 0;
    let has = |x: u64, b: u8| below(x ^ (ONES * u64::from(b)), 1);
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let x = u64::from_ne_bytes(w);
        if x & HIGH != 0 || below(x, 0x20) || has(x, 0x7f) || has(x, b'"') || has(x, b'\\') {
            return false;
        }
    }
    chunks
        .remainder()
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

/// A JSON string of `s`: quotes, backslashes and control characters escaped; bytes that
/// are not UTF-8 (a header may carry any) become U+FFFD.
fn json_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    // Nearly always printable ASCII with nothing to escape: copied as is.
    if plain(s) {
        out.extend_from_slice(s);
        out.push(b'"');
        return;
    }
    for chunk in s.utf8_chunks() {
        for &b in chunk.valid().as_bytes() {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0..=0x1f | 0x7f => {
                    let _ = write!(out, "\\u{b:04x}");
                }
                _ => out.push(b),
            }
        }
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{fffd}".as_bytes());
        }
    }
    out.push(b'"');
}

/// `s` for a text line: printable ASCII as is, anything else (and `"`, `\`) escaped as
/// `\xHH`, so that a line is one line and fields stay apart.
fn text_bytes(out: &mut Vec<u8>, s: &[u8]) {
    if plain(s) {
        out.extend_from_slice(s);
        return;
    }
    for &b in s {
        if b.is_ascii_graphic() && b != b'"' && b != b'\\' || b == b' ' {
            out.push(b);
        } else {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

/// The time now as [`time`] writes it (for the process log).
pub fn time_now(out: &mut Vec<u8>) {
    time(None, out);
}

/// RFC 3339 UTC with milliseconds: `2026-11-30T10:29:50.123Z`. The part up to the second is
/// formatted once per second per thread.
fn time(t: Option<SystemTime>, out: &mut Vec<u8>) {
    thread_local! {
        static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
    }
    let since = t
        .unwrap_or_else(SystemTime::now)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            let mut buf = Vec::with_capacity(19);
            let (y, m, d) = civil_from_days((secs / 86_400) as i64);
            let s = secs % 86_400;
            let _ = write!(
                buf,
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
                s / 3600,
                s / 60 % 60,
                s % 60
            );
            if let Ok(b) = <[u8; 19]>::try_from(buf.as_slice()) {
                *cached = (secs, b);
            } else {
                // Beyond year 9999: not cached.
                out.extend_from_slice(&buf);
                out.push(b'.');
                padded(out, u64::from(since.subsec_millis()), 3);
                out.push(b'Z');
                return;
            }
        }
        out.extend_from_slice(&cached.1);
        out.push(b'.');
        padded(out, u64::from(since.subsec_millis()), 3);
        out.push(b'Z');
    });
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The access log of a process: settings of the config in force, the buffer and its writer.
pub struct AccessLog {
    inner: Arc<Inner>,
    /// Started with the first config that turns the log on.
    writer: std::sync::OnceLock<()>,
}

struct Inner {
    pending: Mutex<Pending>,
    wake: Condvar,
    dropped: IntCounter,
    written: IntCounter,
}

struct Pending {
    /// Lines not yet written.
    buf: Vec<u8>,
    /// `access_log.buffer`.
    limit: usize,
    /// Where lines go; `None` while the log is off.
    target: Option<Target>,
    /// The writer must (re)open its target.
    reopen: bool,
    /// The writer waits for a line (and must be woken for one).
    idle: bool,
    /// Lines in `buf`, for the written counter.
    lines: u64,
}

impl AccessLog {
    pub fn new(dropped: IntCounter, written: IntCounter) -> AccessLog {
        AccessLog {
            inner: Arc::new(Inner {
                pending: Mutex::new(Pending {
                    buf: Vec::new(),
                    limit: 1 << 20,
                    target: None,
                    reopen: false,
                    idle: false,
                    lines: 0,
                }),
                wake: Condvar::new(),
                dropped,
                written,
            }),
            writer: std::sync::OnceLock::new(),
        }
    }

    /// Puts the config's settings in force: where lines go and how many bytes may wait.
    /// `None` turns the log off (lines already buffered are still written).
    pub fn configure(&self, target: Option<Target>, limit: usize) {
        let on = target.is_some();
        {
            let mut p = self.lock();
            p.limit = limit;
            if target.is_some() && p.target != target {
                p.reopen = true;
                p.target = target;
            }
        }
        if on {
            self.writer.get_or_init(|| {
                let inner = self.inner.clone();
                if let Err(e) = std::thread::Builder::new()
                    .name("weir-access-log".into())
                    .spawn(move || inner.run())
                {
                    log::error!("access log: cannot start its writer thread: {e}");
                }
            });
            self.inner.wake.notify_one();
        }
    }

    /// Reopens the file (SIGUSR1: the old one was renamed by a log rotation).
    pub fn reopen(&self) {
        self.lock().reopen = true;
        self.inner.wake.notify_one();
    }

    /// Appends one line, formatted by `entry`, or drops and counts it when the buffer is
    /// full. Never waits for the writer.
    pub fn record(&self, entry: &Entry<'_>, format: Format) {
        thread_local! {
            static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
        }
        LINE.with(|line| {
            let mut line = line.borrow_mut();
            line.clear();
            entry.write(format, &mut line);
            let mut p = self.lock();
            if p.buf.len() + line.len() > p.limit {
                drop(p);
                self.inner.dropped.inc();
                return;
            }
            let before = p.buf.len();
            p.buf.extend_from_slice(&line);
            p.lines += 1;
            // Wake the writer when it sleeps with nothing to do, or when the buffer is half
            // full (it then writes before its batch time is up).
            let half = p.limit / 2;
            let wake = if p.idle {
                p.idle = false;
                true
            } else {
                before < half && p.buf.len() >= half
            };
            drop(p);
            if wake {
                self.inner.wake.notify_one();
            }
        });
    }

    /// Waits (up to `timeout`) until every buffered line is written: at exit.
    pub fn flush(&self, timeout: Duration) {
        if self.writer.get().is_none() {
            return;
        }
        let deadline = std::time::Instant::now() + timeout;
        self.inner.wake.notify_one();
        loop {
            let p = self.lock();
            if p.buf.is_empty() && p.idle {
                return;
            }
            drop(p);
            if std::time::Instant::now() >= deadline {
                return;
            }
            self.inner.wake.notify_one();
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.inner.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The writer's open target.
enum Sink {
    Stdout,
    Stderr,
    File(File),
    /// A file that could not be opened: lines are dropped (and counted) until the next
    /// reopen or config.
    Broken,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The writer thread: swaps the buffer out, writes it, collects again.
    fn run(&self) {
        let mut sink = Sink::Broken;
        let mut out = Vec::new();
        loop {
            let (reopen, target, lines) = {
                let mut p = self.lock();
                while p.buf.is_empty() && !p.reopen {
                    p.idle = true;
                    p = self.wake.wait(p).unwrap_or_else(|e| e.into_inner());
                }
                p.idle = false;
                std::mem::swap(&mut p.buf, &mut out);
                let lines = std::mem::take(&mut p.lines);
                let reopen = std::mem::take(&mut p.reopen);
                (reopen, reopen.then(|| p.target.clone()).flatten(), lines)
            };
            if reopen {
                if let Some(t) = target {
                    sink = Sink::open(&t);
                }
            }
            if !out.is_empty() {
                match sink.write(&out) {
                    Ok(()) => self.written.inc_by(lines),
                    Err(e) => {
                        self.dropped.inc_by(lines);
                        log::warn!("access log: {lines} line(s) lost: {e}");
                    }
                }
                out.clear();
                // A large burst leaves a large buffer behind: give it back.
                out.shrink_to(1 << 20);
            }
            // Under load, let lines gather before the next write.
            let p = self.lock();
            if p.buf.len() < p.limit / 2 && !p.reopen {
                let _unused = self.wake.wait_timeout(p, BATCH_EVERY);
            }
        }
    }
}

impl Sink {
    fn open(t: &Target) -> Sink {
        match t {
            Target::Stdout => Sink::Stdout,
            Target::Stderr => Sink::Stderr,
            Target::File(path) => match open(path) {
                Ok(f) => Sink::File(f),
                Err(e) => {
                    log::error!(
                        "access log: cannot open {}: {e}; dropping lines until the next reopen (SIGUSR1) or config",
                        path.display()
                    );
                    Sink::Broken
                }
            },
        }
    }

    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Stdout => {
                let mut o = std::io::stdout().lock();
                o.write_all(buf)?;
                o.flush()
            }
            Sink::Stderr => std::io::stderr().lock().write_all(buf),
            Sink::File(f) => f.write_all(buf),
            Sink::Broken => Err(std::io::Error::other("no open target")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            start: Some(UNIX_EPOCH + Duration::from_millis(1_796_034_590_123)),
            client: Some("127.0.0.1:5000".parse().unwrap()),
            method: "GET",
            host: b"hello.default.example.com",
            path: "/a?b=\"c\"",
            protocol: "HTTP/1.1",
            status: 200,
            namespace: Some("default"),
            revision: Some("hello-1"),
            endpoint: Some("127.0.0.1:8081".parse().unwrap()),
            tag: None,
            affinity: None,
            bytes_in: 0,
            bytes_out: 12,
            upstream: Some(Duration::from_micros(1500)),
            total: Duration::from_micros(2250),
            held: Duration::ZERO,
            attempts: 1,
            request_id: Some(b"r\x01\xff"),
            traceparent: None,
            user_agent: Some(b"curl/8"),
            error: None,
        }
    }

    #[test]
    fn json_line_parses_with_every_field() {
        let mut out = Vec::new();
        entry().write(Format::Json, &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).expect("one JSON object");
        assert_eq!(v["time"], "2026-11-30T10:29:50.123Z");
        assert_eq!(v["path"], "/a?b=\"c\"");
        assert_eq!(v["status"], 200);
        assert_eq!(v["upstream_ms"], 1.5);
        assert_eq!(v["total_ms"], 2.25);
        assert_eq!(v["request_id"], "r\u{1}\u{fffd}");
        assert!(v["tag"].is_null());
        assert_eq!(v.as_object().unwrap().len(), 22);
    }

    #[test]
    fn text_line_is_one_line() {
        let mut out = Vec::new();
        let mut e = entry();
        e.user_agent = Some(b"evil\nline \"x\"");
        e.write(Format::Text, &mut out);
        let s = String::from_utf8(out).unwrap();
        assert_eq!(s.matches('\n').count(), 1, "{s}");
        assert!(s.starts_with(
            "127.0.0.1:5000 [2026-11-30T10:29:50.123Z] \"GET /a?b=\\x22c\\x22 HTTP/1.1\" 200 12"
        ));
        assert!(s.contains("\"evil\\x0aline \\x22x\\x22\""), "{s}");
        assert!(s.contains(" revision=default/hello-1 endpoint=127.0.0.1:8081 "));
        assert!(s.contains(" upstream_ms=1.500 total_ms=2.250 held_ms=0.000 attempts=1 "));
    }

    #[test]
    fn addresses_as_display_writes_them() {
        for a in [
            "127.0.0.1:80",
            "[::1]:8080",
            "255.255.255.255:65535",
            "0.0.0.0:0",
            "10.0.99.100:9",
            "1.20.100.9:10000",
            "[2001:db8::1]:443",
        ] {
            let a: SocketAddr = a.parse().unwrap();
            let mut out = Vec::new();
            addr(&mut out, a);
            assert_eq!(String::from_utf8(out).unwrap(), a.to_string());
        }
    }

    #[test]
    fn plain_is_the_bytewise_check() {
        let bytewise = |s: &[u8]| {
            s.iter()
                .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        };
        // Every byte value at every position of strings around the word size, in a run of
        // printable ones, and pairs of neighbouring values that borrow into each other.
        for len in [1, 7, 8, 9, 15, 16, 17, 24] {
            for pos in 0..len {
                for b in 0..=255u8 {
                    let mut s = vec![b'a'; len];
                    s[pos] = b;
                    assert_eq!(plain(&s), bytewise(&s), "{s:?}");
                    if pos + 1 < len {
                        s[pos + 1] = b.wrapping_add(1);
                        assert_eq!(plain(&s), bytewise(&s), "{s:?}");
                        s[pos + 1] = 0x20;
                        assert_eq!(plain(&s), bytewise(&s), "{s:?}");
                    }
                }
            }
        }
        assert!(plain(b""));
        assert!(plain(b"hello.default.example.com"));
        assert!(!plain(b"hello.default.example.co\\m"));
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_787), (2026, 11, 30));
    }

    #[test]
    fn full_buffer_drops_and_counts() {
        let dropped = IntCounter::new("d", "d").unwrap();
        let written = IntCounter::new("w", "w").unwrap();
        let log = AccessLog::new(dropped.clone(), written);
        // No writer yet (never configured on): lines stay in the buffer.
        log.lock().limit = 4096;
        for _ in 0..100 {
            log.record(&entry(), Format::Json);
        }
        let kept = log.lock().lines;
        assert!(kept > 0 && kept < 100, "{kept}");
        assert_eq!(kept + dropped.get(), 100);
        assert!(log.lock().buf.len() <= 4096);
    }
}
