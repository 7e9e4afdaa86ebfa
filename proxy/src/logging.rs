//! The process log (stderr): what needs a human — startup, config applied or rejected, xDS
//! and autoscaler connection changes, drain. Per-request outcomes go to the access log
//! ([`crate::access_log`]) and the metrics instead.
//!
//! Lines are text (env_logger's layout) or JSON (`--log-format json`, one object per line).
//! Warnings and errors from pingora, which can repeat once per connection, are rate-limited
//! per source: at most [`BURST`] lines per [`WINDOW`], then one line saying how many were
//! left out.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines a rate-limited source may log per window.
const BURST: u32 = 5;
const WINDOW: Duration = Duration::from_secs(10);

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Starts logging to stderr. `filter` is env_logger's syntax (`info`, `weir_proxy=debug`);
/// without one, RUST_LOG, else warnings from everything and info from Weir.
pub fn init(filter: Option<&str>, format: LogFormat) {
    let filter = filter
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "warn,weir_proxy=info,weir_control=info".into());
    let limiter = Limiter::default();
    let _ = env_logger::Builder::new()
        .parse_filters(&filter)
        .format(move |buf, record| {
            let note = match limiter.admit(record) {
                Admit::Yes(note) => note,
                Admit::No => return Ok(()),
            };
            let mut time = Vec::with_capacity(24);
            crate::access_log::time_now(&mut time);
            let time = String::from_utf8_lossy(&time);
            if let Some(n) = note {
                line(buf, format, &time, log::Level::Warn, record.target(), &n)?;
            }
            line(
                buf,
                format,
                &time,
                record.level(),
                record.target(),
                &record.args().to_string(),
            )
        })
        .try_init();
}

fn line(
    buf: &mut env_logger::fmt::Formatter,
    format: LogFormat,
    time: &str,
    level: log::Level,
    target: &str,
    message: &str,
) -> std::io::Result<()> {
    match format {
        LogFormat::Text => writeln!(buf, "[{time} {level:<5} {target}] {message}"),
        LogFormat::Json => {
            let v = serde_json::json!({
                "time": time,
                "level": level.as_str(),
                "target": target,
                "message": message,
            });
            writeln!(buf, "{v}")
        }
    }
}

enum Admit {
    /// Log it, after this note about lines left out before it.
    Yes(Option<String>),
    No,
}

/// Per-source windows of warnings and errors from the framework.
#[derive(Default)]
struct Limiter {
    windows: Mutex<HashMap<String, Window>>,
}

struct Window {
    start: Instant,
    logged: u32,
    left_out: u64,
}

impl Limiter {
    fn admit(&self, record: &log::Record<'_>) -> Admit {
        if record.level() > log::Level::Warn || !record.target().starts_with("pingora") {
            return Admit::Yes(None);
        }
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        // The source's name is copied once, not for every line it logs.
        if !windows.contains_key(record.target()) {
            let fresh = Window {
                start: now,
                logged: 0,
                left_out: 0,
            };
            windows.insert(record.target().to_owned(), fresh);
        }
        let Some(w) = windows.get_mut(record.target()) else {
            return Admit::Yes(None);
        };
        let mut note = None;
        if now.duration_since(w.start) >= WINDOW {
            if w.left_out > 0 {
                note = Some(format!(
                    "{} more warning(s) or error(s) from {} were left out in {} s",
                    w.left_out,
                    record.target(),
                    now.duration_since(w.start).as_secs()
                ));
            }
            *w = Window {
                start: now,
                logged: 0,
                left_out: 0,
            };
        }
        if w.logged >= BURST {
            w.left_out += 1;
            return Admit::No;
        }
        w.logged += 1;
        Admit::Yes(note)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(target: &str, level: log::Level) -> Admit {
        thread_local!(static L: Limiter = Limiter::default());
        L.with(|l| {
            l.admit(
                &log::Record::builder()
                    .target(target)
                    .level(level)
                    .args(format_args!("x"))
                    .build(),
            )
        })
    }

    #[test]
    fn framework_warnings_are_limited_weirs_lines_are_not() {
        let admitted = (0..100)
            .filter(|_| matches!(record("pingora_proxy", log::Level::Error), Admit::Yes(_)))
            .count();
        assert_eq!(admitted, BURST as usize);
        let admitted = (0..100)
            .filter(|_| matches!(record("weir_proxy::state", log::Level::Warn), Admit::Yes(_)))
            .count();
        assert_eq!(admitted, 100);
        let admitted = (0..100)
            .filter(|_| matches!(record("pingora_core", log::Level::Info), Admit::Yes(_)))
            .count();
        assert_eq!(admitted, 100);
    }
}
