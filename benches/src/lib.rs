//! Config generators shared by the criterion benches and the `compile_mem` probe.
//!
//! Everything is built in memory (no YAML text), so a bench measures what it names and
//! nothing of the parser.

use weir_config::model::{Revision, Service};
use weir_config::Config;

/// Hosts a service of [`services_config`] answers on: its default host and the three
/// cluster-local names.
pub const HOSTS_PER_SERVICE: usize = 4;

/// The name of service `i` of [`services_config`].
pub fn service_name(i: usize) -> String {
    format!("svc-{i}")
}

/// The default (external) host of service `i` of [`services_config`].
pub fn service_host(i: usize) -> String {
    format!("svc-{i}.default.example.com")
}

/// `n` external services `svc-<i>` in namespace `default`, each sending all its traffic to
/// its one revision `svc-<i>-00001` with one endpoint. Valid; compiles to
/// `n * HOSTS_PER_SERVICE` hosts.
pub fn services_config(n: usize) -> Config {
    // Templates parsed once and cloned: every field the model grows keeps its default.
    let svc: Service = serde_json::from_str(
        r#"{"name": "x", "namespace": "default", "traffic": [{"revision": "x", "percent": 100}]}"#,
    )
    .expect("service template");
    let rev: Revision = serde_json::from_str(r#"{"name": "x", "namespace": "default"}"#)
        .expect("revision template");
    let mut cfg = Config::empty();
    cfg.services.reserve_exact(n);
    cfg.revisions.reserve_exact(n);
    for i in 0..n {
        let name = service_name(i);
        let revision = format!("{name}-00001");
        let mut s = svc.clone();
        s.traffic[0].revision.clone_from(&revision);
        s.name = name;
        cfg.services.push(s);
        // Ports cycle through 10000..60000; a revision's own endpoints stay distinct.
        let port = 10_000 + (i % 50_000);
        let mut r = rev.clone();
        r.name = revision;
        r.endpoints = vec![format!("127.0.0.1:{port}")];
        cfg.revisions.push(r);
    }
    cfg
}

/// Services needed for a table of about `hosts` hosts (at least one service).
pub fn services_for_hosts(hosts: usize) -> usize {
    hosts.div_ceil(HOSTS_PER_SERVICE).max(1)
}

/// A small deterministic generator (xorshift64*), so runs are comparable and the benches
/// need no RNG crate of their own.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// `count` Host header values for random existing services among `services`, each in random
/// mixed case and with a `:8080` port, as a client might send them.
pub fn hit_hosts(services: usize, count: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|_| {
            let host = service_host(rng.below(services));
            let bits = rng.next_u64();
            let mut out: Vec<u8> = host
                .bytes()
                .enumerate()
                .map(|(k, b)| {
                    if bits >> (k % 64) & 1 == 1 {
                        b.to_ascii_uppercase()
                    } else {
                        b
                    }
                })
                .collect();
            out.extend_from_slice(b":8080");
            out
        })
        .collect()
}

/// The driver of the memory probes (`compile_mem`, `config_mem`): each N of the arguments
/// (default `default`) measured by `child` in a fresh process (this program again, with
/// `--child N`), so every figure starts from a clean heap; the children's table rows printed
/// under `header`.
pub fn run_probe(
    name: &str,
    header: &[&str],
    default: &[usize],
    child: fn(usize),
) -> std::process::ExitCode {
    use std::process::{Command, ExitCode};
    let usage = || {
        eprintln!("usage: {name} [N ...]   (services; default {default:?})");
        ExitCode::from(2)
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        return match args.get(1).and_then(|n| n.parse().ok()) {
            Some(n) => {
                child(n);
                ExitCode::SUCCESS
            }
            None => usage(),
        };
    }
    let ns: Vec<usize> = if args.is_empty() {
        default.to_vec()
    } else {
        match args.iter().map(|a| a.replace('_', "").parse()).collect() {
            Ok(ns) => ns,
            Err(_) => return usage(),
        }
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{name}: cannot find my own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    for line in header {
        println!("{line}");
    }
    for n in ns {
        match Command::new(&exe)
            .arg("--child")
            .arg(n.to_string())
            .output()
        {
            Ok(o) if o.status.success() => print!("{}", String::from_utf8_lossy(&o.stdout)),
            Ok(o) => {
                eprintln!(
                    "{name}: child for {n} failed ({}): {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr)
                );
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("{name}: cannot run child for {n}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_config::Listener;

    #[test]
    fn generated_config_compiles_and_every_hit_hits() {
        let n = 50;
        let table = weir_config::compile(&services_config(n)).unwrap();
        assert_eq!(table.host_count(), n * HOSTS_PER_SERVICE);
        for h in hit_hosts(n, 200, 7) {
            let route = table.lookup(&h, Listener::External).unwrap();
            assert!(route.is_some(), "{}", String::from_utf8_lossy(&h));
        }
        assert!(table
            .lookup(b"nope.default.example.com:8080", Listener::External)
            .unwrap()
            .is_none());
    }

    #[test]
    fn host_counts() {
        assert_eq!(services_for_hosts(10), 3);
        assert_eq!(services_for_hosts(10_000) * HOSTS_PER_SERVICE, 10_000);
        assert_eq!(services_for_hosts(0), 1);
    }
}
