//! Memory and time of compiling N generated services into a RouteTable.
//!
//! `compile_mem 1000 10000 100000` runs each N in a fresh child process (itself, with
//! `--child N`) so that every figure starts from a clean heap, and prints a markdown table.
//! Memory is read from `/proc/self/status` (Linux): `VmRSS` growth across the compile
//! approximates what the table keeps; `VmHWM` growth is the peak the compile needs on top of
//! the parsed config (the table plus its temporaries).

use std::process::ExitCode;
use std::time::Instant;

use weir_benches::services_config;

fn main() -> ExitCode {
    weir_benches::run_probe(
        "compile_mem",
        &[
            "| services | hosts | compile ms | table bytes (RSS delta) | peak RSS delta |",
            "|---:|---:|---:|---:|---:|",
        ],
        &[1_000, 10_000, 100_000],
        child,
    )
}

/// One measurement, in a process of its own.
fn child(n: usize) {
    let cfg = services_config(n);
    let before = Mem::read();
    let start = Instant::now();
    let table = weir_config::compile(&cfg).expect("generated config is valid");
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let after = Mem::read();
    println!(
        "| {n} | {} | {ms:.1} | {} | {} |",
        table.host_count(),
        human(after.rss.saturating_sub(before.rss)),
        human(after.hwm.saturating_sub(before.hwm)),
    );
    drop(table);
    drop(cfg);
}

/// Resident set now and at its peak, in bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Mem {
    rss: u64,
    hwm: u64,
}

impl Mem {
    fn read() -> Mem {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let kib = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        Mem {
            rss: kib("VmRSS:") * 1024,
            hwm: kib("VmHWM:") * 1024,
        }
    }
}

fn human(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if bytes as f64 >= MIB {
        format!("{:.1} MiB", bytes as f64 / MIB)
    } else {
        format!("{:.0} KiB", bytes as f64 / 1024.0)
    }
}
