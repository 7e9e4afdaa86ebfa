//! The soak and fault test (not in the default run; minutes long):
//!
//! `SOAK_SECS=600 cargo test --release -p weir-tests --test it -- --ignored --nocapture soak::`
//!
//! A `weir proxy` takes its config over xDS from a `weir control` and reports to a test
//! autoscaler, under steady load from several clients, while: the config changes every
//! 0.6 s (1,000 changes in 10 minutes: split weights, and every 50 changes the revision set),
//! one revision's endpoints flap to none and back, backends are killed and restarted, the
//! control plane is killed and restarted, and the autoscaler connection is cut. Then:
//! every request ended 200 or with a documented 502/503/504; none was answered by a
//! revision outside the configs in force around it; none was lost (every request got an
//! answer); the proxy's memory came back within 10 % of its level after warm-up and its file
//! descriptors to their baseline, apart from idle upstream connections in the keep-alive
//! pool (all established, to the test's backends, at most one per client per backend).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weir_tests::autoscaler::StatServer;
use weir_tests::{eventually, new_client, try_send, weir_bin, Backend, Weir, WeirControl};

const NS: &str = "default";
const HOST: &str = "soak.default.example.com";
/// How long a change takes at most to be in force at the proxy (control plane to proxy).
const SLACK: Duration = Duration::from_secs(5);
/// Concurrent clients of the steady load.
const CLIENTS: usize = 6;

fn secs() -> u64 {
    std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600)
}

/// Revisions a, b, c serve by turns; d is declared with a live backend but never routed.
const REVS: [&str; 4] = ["soak-a", "soak-b", "soak-c", "soak-d"];

fn config(split: &[(&str, u32)], endpoints: &[Vec<String>; 4], autoscaler: &str) -> Value {
    json!({
        "autoscaler": {"url": autoscaler, "interval": "1s"},
        "limits": {"idle_timeout": "2s"},
        "services": [{"name": "soak", "traffic": split.iter().map(|(r, p)| json!({"revision": r, "percent": p})).collect::<Vec<_>>()}],
        "revisions": REVS.iter().zip(endpoints).map(|(r, eps)| json!({"name": r, "endpoints": eps})).collect::<Vec<_>>(),
    })
}

/// One request as the client saw it.
struct Seen {
    start: Instant,
    end: Instant,
    status: u16,
    revision: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn soak_under_faults() {
    let total = Duration::from_secs(secs());
    let warm_up = (total / 10).max(Duration::from_secs(10));
    let mut backends: Vec<Vec<Option<Backend>>> = REVS
        .iter()
        .map(|r| vec![Some(Backend::start(r)), Some(Backend::start(r))])
        .collect();
    let addrs: Vec<Vec<SocketAddr>> = backends
        .iter()
        .map(|bs| bs.iter().flatten().map(Backend::addr).collect())
        .collect();
    let endpoints: [Vec<String>; 4] =
        std::array::from_fn(|i| addrs[i].iter().map(ToString::to_string).collect());
    let stat_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stat_addr = stat_listener.local_addr().unwrap();
    let mut stats = Some(StatServer::serve(stat_listener));
    let autoscaler = format!("ws://{stat_addr}");

    // The revision sets in force, as (since, revisions) at the control plane.
    let mut history: Vec<(Instant, BTreeSet<&'static str>)> =
        vec![(Instant::now(), ["soak-a", "soak-b"].into())];
    let first = config(&[("soak-a", 50), ("soak-b", 50)], &endpoints, &autoscaler);
    let mut control = WeirControl::start(weir_bin!(), &first);
    let xds = control.xds_addr();
    // No access log: millions of lines would fill the disk of a test machine.
    let proxy_config = json!({"limits": {"idle_timeout": "2s"}, "access_log": "off"});
    let proxy = Weir::builder(weir_bin!(), &proxy_config)
        .arg(format!("--xds={}", control.xds_url()))
        .arg("--autoscaler")
        .arg(&autoscaler)
        .start();
    let pid = proxy.pid();

    // Steady load until `stop`.
    let stop = Arc::new(AtomicBool::new(false));
    let run_load = |stop: Arc<AtomicBool>| {
        let url = format!("{}/", proxy.http_url());
        (0..CLIENTS)
            .map(|_| {
                let (stop, url) = (stop.clone(), url.clone());
                tokio::spawn(async move {
                    let client = new_client();
                    let mut seen = Vec::new();
                    let mut lost = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let start = Instant::now();
                        match try_send(&client, &url, HOST, &[]).await {
                            Ok(r) => seen.push(Seen {
                                start,
                                end: Instant::now(),
                                status: r.status,
                                revision: r.revision().unwrap_or_default().to_string(),
                            }),
                            Err(e) => lost.push((start, e)),
                        }
                    }
                    (seen, lost)
                })
            })
            .collect::<Vec<_>>()
    };

    // Warm-up, then the baseline.
    let warm = Arc::new(AtomicBool::new(false));
    let warm_tasks = run_load(warm.clone());
    tokio::time::sleep(warm_up).await;
    warm.store(true, Ordering::SeqCst);
    for t in warm_tasks {
        let _ = t.await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await; // idle_timeout 2 s: client connections close
    let base_rss = weir_tests::process::rss_kib(pid);
    let base_fds = weir_tests::process::fd_count(pid);
    let base_fd_list = weir_tests::process::fd_descriptions(pid);
    eprintln!(
        "baseline after {warm_up:?} of warm-up: RSS {} KiB, {base_fds} fds",
        base_rss
    );

    let tasks = run_load(stop.clone());
    let started = Instant::now();
    let mut changes = 0u32;
    let mut rng_state = 0x2545_f491_4f6c_dd1du64;
    let mut next_rand = move || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    let period = Duration::from_millis(600).min(total / 1000);
    let mut faults = Vec::new();
    while started.elapsed() < total {
        let t = started.elapsed();
        let tick = changes;
        // The revision set changes every 50 changes; the weights every change.
        let second = if (tick / 50).is_multiple_of(2) {
            "soak-b"
        } else {
            "soak-c"
        };
        let w = u32::try_from(next_rand() % 101).unwrap();
        let cfg = config(&[("soak-a", w), (second, 100 - w)], &endpoints, &autoscaler);
        let r = weir_tests::admin::put_config_at(&control.admin_url(), &cfg).await;
        assert_eq!(r.status, 200, "{r:?}");
        let live: BTreeSet<&'static str> = if w == 0 {
            [second].into()
        } else if w == 100 {
            ["soak-a"].into()
        } else {
            ["soak-a", second].into()
        };
        history.push((Instant::now(), live));
        changes += 1;

        // Faults, each at its own rhythm.
        let s = t.as_secs();
        if tick % 8 == 4 {
            // Endpoints flap: soak-a's go to none, then back (its requests wait meanwhile).
            let url = control.admin_url();
            weir_tests::admin::put_endpoints_at(&url, NS, "soak-a", &[]).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            weir_tests::admin::put_endpoints_at(&url, NS, "soak-a", &endpoints[0]).await;
        }
        if tick % 50 == 25 {
            // A backend dies and comes back on its port.
            let (r, i) = ((tick / 50) as usize % 3, (tick / 100) as usize % 2);
            let addr = addrs[r][i];
            drop(backends[r][i].take());
            faults.push(format!("{s}s: backend {} {addr} killed", REVS[r]));
            tokio::time::sleep(Duration::from_secs(1)).await;
            backends[r][i] = Some(Backend::start_at(REVS[r], addr));
        }
        if tick % 200 == 100 {
            // The control plane crashes and comes back on its xDS port (no config change
            // meanwhile; the proxy serves its last config).
            control.kill();
            faults.push(format!("{s}s: control plane killed"));
            tokio::time::sleep(Duration::from_secs(3)).await;
            control = WeirControl::start_on(weir_bin!(), &cfg, xds);
        }
        if tick % 300 == 150 {
            // The autoscaler connection is cut, and the autoscaler comes back.
            drop(stats.take());
            faults.push(format!("{s}s: autoscaler cut"));
            tokio::time::sleep(Duration::from_secs(3)).await;
            let l = loop {
                match std::net::TcpListener::bind(stat_addr) {
                    Ok(l) => break l,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            stats = Some(StatServer::serve(l));
        }
        tokio::time::sleep(period).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut seen = Vec::new();
    let mut lost = Vec::new();
    for t in tasks {
        let (s, l) = t.await.unwrap();
        seen.extend(s);
        lost.extend(l);
    }
    let reports_resumed = eventually(Duration::from_secs(10), || async {
        stats.as_ref().is_some_and(|s| !s.is_empty())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await; // idle connections close
    let end_rss = weir_tests::process::rss_kib(pid);
    let end_fds = weir_tests::process::fd_count(pid);
    let end_fd_list = weir_tests::process::fd_descriptions(pid);

    // Every answer documented; every revision in a config in force around the request.
    let mut by_status = std::collections::BTreeMap::new();
    let mut outside = Vec::new();
    for r in &seen {
        *by_status.entry(r.status).or_insert(0u64) += 1;
        if r.status != 200 {
            continue;
        }
        let allowed = history.iter().enumerate().any(|(i, (since, live))| {
            let until = history.get(i + 1).map_or(r.end, |(t, _)| *t + SLACK);
            *since <= r.end && until >= r.start && live.contains(r.revision.as_str())
        });
        if !allowed {
            outside.push(r.revision.clone());
        }
    }
    eprintln!(
        "{} requests over {:?}: {by_status:?}; {changes} config changes; faults: {faults:?}",
        seen.len(),
        total
    );
    eprintln!(
        "RSS {base_rss} KiB after warm-up, {end_rss} KiB at the end ({:+.1} %); fds {base_fds} -> {end_fds}",
        (end_rss as f64 / base_rss as f64 - 1.0) * 100.0
    );
    let lost: Vec<String> = lost
        .iter()
        .map(|(at, e)| {
            let at = at.saturating_duration_since(started).as_secs_f64();
            format!("sent at {at:.1}s: {e}")
        })
        .collect();
    assert!(
        lost.is_empty(),
        "{} requests lost (faults: {faults:?}): {:#?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(
        by_status.keys().all(|c| matches!(c, 200 | 502 | 503 | 504)),
        "{by_status:?}"
    );
    assert!(
        outside.is_empty(),
        "{} answered by a revision outside the configs in force: {:?}",
        outside.len(),
        &outside[..outside.len().min(5)]
    );
    assert!(changes >= 10);
    assert!(
        reports_resumed,
        "the autoscaler gets reports again after the cut"
    );
    assert!(
        end_rss as f64 <= base_rss as f64 * 1.10,
        "memory did not come back: {base_rss} -> {end_rss} KiB"
    );
    // File descriptors: idle upstream connections stay in pingora's keep-alive pool (each
    // backend keeps up to one per concurrent client that used it), so they are counted
    // apart: every pooled one must be ESTABLISHED to a backend of the test, at most one per
    // client per backend; everything else returns to its level after warm-up.
    let backend_ports: BTreeSet<String> = addrs
        .iter()
        .flatten()
        .map(|a| format!("-> :{} ESTABLISHED", a.port()))
        .collect();
    let pooled = |list: &[String]| {
        list.iter()
            .filter(|d| backend_ports.iter().any(|p| d.ends_with(p.as_str())))
            .count()
    };
    let (base_pooled, end_pooled) = (pooled(&base_fd_list), pooled(&end_fd_list));
    let stale: Vec<&String> = end_fd_list
        .iter()
        .filter(|d| d.starts_with("tcp") && !d.contains("ESTABLISHED") && !d.contains("LISTEN"))
        .collect();
    assert!(stale.is_empty(), "sockets not established: {stale:?}");
    assert!(
        end_pooled <= CLIENTS * addrs.iter().flatten().count(),
        "{end_pooled} pooled upstream connections: {end_fd_list:#?}"
    );
    assert!(
        end_fds - end_pooled <= base_fds - base_pooled + 4,
        "fds besides pooled upstream connections {} -> {}\nafter warm-up: {base_fd_list:#?}\nat the end: {end_fd_list:#?}",
        base_fds - base_pooled,
        end_fds - end_pooled
    );
    eprintln!(
        "fds besides pooled upstream connections: {} -> {}; pooled: {base_pooled} -> {end_pooled}",
        base_fds - base_pooled,
        end_fds - end_pooled
    );
    drop(proxy);
}
