//! xDS end to end (docs/api.md#xds, control/README.md): `weir control` serving real `weir proxy --xds`
//! processes over delta (the default) and over state of the world (`--no-delta`, the
//! proxy's fallback), a test ADS server without delta that sends a bad resource, a control
//! plane crash, and a 10,000-service config. Every wait is bounded.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weir_control::translate::to_resources;
use weir_control::xds::Kind;
use weir_control::xds_api::pb::envoy::config::route::v3::{route, route_action};
use weir_control::xds_api::pb::google::protobuf::UInt32Value;
use weir_tests::scripted_ads::ScriptedAds;
use weir_tests::weir::blocking_get;
use weir_tests::{
    eventually, free_port, get, new_client, send, start_control, weir_bin, Backend, Weir,
    WeirControl,
};

const HOST: &str = "hello.default.example.com";
const CONVERGE: Duration = Duration::from_secs(15);

fn hello(revision: &str, revisions: &Value) -> Value {
    json!({
        "services": [{"name": "hello", "traffic": [{"revision": revision, "percent": 100}]}],
        "revisions": revisions,
    })
}

/// A `weir proxy --xds` of `control`; `config_flag: false` runs it without a config file.
fn xds_proxy(xds_url: &str, node: &str, config_flag: bool, ready: Duration) -> Weir {
    let mut b = Weir::builder(weir_bin!(), &json!({}))
        .arg("--xds")
        .arg(xds_url)
        .arg("--node-id")
        .arg(node)
        .arg("--threads")
        .arg("1")
        .ready_timeout(ready);
    if !config_flag {
        b = b.without_config_flag();
    }
    b.start()
}

/// Which backend answered `host` on `proxy` (`None` for a non-200).
async fn answered_by(proxy: &Weir, host: &str) -> Option<String> {
    let r = get(&format!("{}/", proxy.http_url()), host, &[]).await;
    (r.status == 200).then(|| r.revision().unwrap_or_default().to_string())
}

/// Polls every millisecond over one keep-alive connection (a measurement: the usual 10 ms
/// poll on a fresh client would be its resolution).
async fn time_until_served_by(
    client: &reqwest::Client,
    proxy: &Weir,
    host: &str,
    backend: &str,
    within: Duration,
) {
    let t = Instant::now();
    let url = format!("{}/", proxy.http_url());
    loop {
        let r = send(client, &url, host, &[]).await;
        if r.status == 200 && r.revision() == Some(backend) {
            return;
        }
        assert!(
            t.elapsed() < within,
            "{host} not served by {backend} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn wait_served_by(proxy: &Weir, host: &str, backend: &str, within: Duration) {
    let t = Instant::now();
    let ok = eventually(within, || async {
        answered_by(proxy, host).await.as_deref() == Some(backend)
    })
    .await;
    assert!(
        ok,
        "{host} not served by {backend} within {within:?} (last: {:?})",
        answered_by(proxy, host).await
    );
    eprintln!("{host} served by {backend} after {:?}", t.elapsed());
}

fn count(logs: &str, needle: &str) -> usize {
    logs.matches(needle).count()
}

async fn xds_updates(proxy: &Weir) -> f64 {
    proxy
        .metric(
            "weir_config_updates_total",
            &[("source", "xds"), ("result", "ok")],
        )
        .await
        .unwrap_or(0.0)
}

// === (a) one control plane, two proxies ===

#[tokio::test]
async fn control_plane_changes_reach_every_proxy() {
    let (b1, b2) = (Backend::start("hello-1"), Backend::start("hello-2"));
    let revs = json!([
        {"name": "hello-1", "endpoints": [b1.endpoint()]},
        {"name": "hello-2", "endpoints": [b2.endpoint()]},
    ]);
    let control = start_control!(hello("hello-1", &revs));
    // One proxy with a config file (settings), one with --xds alone.
    let proxies = [
        xds_proxy(&control.xds_url(), "p1", true, CONVERGE),
        xds_proxy(&control.xds_url(), "p2", false, CONVERGE),
    ];
    for p in &proxies {
        assert_eq!(answered_by(p, HOST).await.as_deref(), Some("hello-1"));
        assert_eq!(p.metric("weir_xds_connected", &[]).await, Some(1.0));
    }

    // A route change through the control plane's API.
    control.put_config(&hello("hello-2", &revs)).await;
    for p in &proxies {
        wait_served_by(p, HOST, "hello-2", CONVERGE).await;
    }

    // An endpoint change arrives as an endpoint-only update: no config is re-applied.
    let moved = Backend::start("hello-2-moved");
    let before: Vec<(usize, f64)> = {
        let mut v = Vec::new();
        for p in &proxies {
            v.push((count(&p.logs(), "applied from xds"), xds_updates(p).await));
        }
        v
    };
    control
        .put_endpoints("default", "hello-2", &[moved.endpoint()])
        .await;
    for (p, (applied, updates)) in proxies.iter().zip(before) {
        wait_served_by(p, HOST, "hello-2-moved", CONVERGE).await;
        let logged = eventually(Duration::from_secs(5), || async {
            count(&p.logs(), "default/hello-2 has 1 endpoint(s) (from xds)") == 1
        })
        .await;
        assert!(logged, "no endpoint-only update in the log:\n{}", p.logs());
        assert_eq!(
            count(&p.logs(), "applied from xds"),
            applied,
            "a whole config was re-applied"
        );
        assert_eq!(xds_updates(p).await, updates + 1.0);
    }
}

// === delta, and the fallback to state of the world ===

/// The proxy speaks delta to `weir control`, and an endpoint change reaches it as one
/// ClusterLoadAssignment and nothing else (the client logs each response at debug level).
#[tokio::test]
async fn delta_carries_an_endpoint_change_as_one_load_assignment() {
    let (b1, b2) = (Backend::start("hello-1"), Backend::start("hello-2"));
    let revs = json!([
        {"name": "hello-1", "endpoints": [b1.endpoint()]},
        {"name": "hello-2", "endpoints": [b2.endpoint()]},
    ]);
    let control = start_control!(hello("hello-1", &revs));
    let proxy = Weir::builder(weir_bin!(), &json!({}))
        .arg("--xds")
        .arg(control.xds_url())
        .arg("--node-id")
        .arg("delta")
        .arg("--threads")
        .arg("1")
        .arg("--log-level")
        .arg("warn,weir_proxy=info,weir_control=debug")
        .ready_timeout(CONVERGE)
        .start();
    assert_eq!(answered_by(&proxy, HOST).await.as_deref(), Some("hello-1"));
    let logs = proxy.logs();
    assert_eq!(count(&logs, "xDS: delta stream to"), 1, "{logs}");
    assert_eq!(count(&logs, "state of the world"), 0, "{logs}");

    let responses = |logs: &str| count(logs, "xDS: delta ");
    let before = (responses(&logs), count(&logs, "applied from xds"));
    let moved = Backend::start("hello-1-moved");
    control
        .put_endpoints("default", "hello-1", &[moved.endpoint()])
        .await;
    wait_served_by(&proxy, HOST, "hello-1-moved", CONVERGE).await;
    let logs = proxy.logs();
    assert_eq!(
        responses(&logs),
        before.0 + 1,
        "one delta response for one endpoint change:\n{logs}"
    );
    let last = logs
        .lines()
        .rfind(|l| l.contains("xDS: delta "))
        .unwrap_or_default();
    assert!(
        last.contains("xDS: delta ClusterLoadAssignment (nonce")
            && last.ends_with(": 1 resource(s), 0 removed"),
        "{last}"
    );
    assert_eq!(
        count(&logs, "applied from xds"),
        before.1,
        "a whole config was re-applied"
    );

    // A route change still converges over delta.
    control.put_config(&hello("hello-2", &revs)).await;
    wait_served_by(&proxy, HOST, "hello-2", CONVERGE).await;
}

/// `weir control --no-delta` answers delta with UNIMPLEMENTED: the proxy says so once,
/// speaks state of the world, converges and follows changes.
#[tokio::test]
async fn without_delta_the_proxy_falls_back_to_state_of_the_world() {
    let (b1, b2) = (Backend::start("hello-1"), Backend::start("hello-2"));
    let revs = json!([
        {"name": "hello-1", "endpoints": [b1.endpoint()]},
        {"name": "hello-2", "endpoints": [b2.endpoint()]},
    ]);
    let xds = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let control =
        WeirControl::start_with(weir_bin!(), &hello("hello-1", &revs), xds, &["--no-delta"]);
    let proxy = xds_proxy(&control.xds_url(), "sotw", true, CONVERGE);
    assert_eq!(answered_by(&proxy, HOST).await.as_deref(), Some("hello-1"));
    let logs = proxy.logs();
    assert_eq!(count(&logs, "does not serve delta xDS"), 1, "{logs}");
    assert_eq!(
        count(&logs, "established (state of the world)"),
        1,
        "{logs}"
    );
    assert_eq!(count(&logs, "xDS: delta stream to"), 0, "{logs}");

    control.put_config(&hello("hello-2", &revs)).await;
    wait_served_by(&proxy, HOST, "hello-2", CONVERGE).await;
    let moved = Backend::start("hello-2-moved");
    control
        .put_endpoints("default", "hello-2", &[moved.endpoint()])
        .await;
    wait_served_by(&proxy, HOST, "hello-2-moved", CONVERGE).await;
}

#[test]
fn proxy_needs_a_config_or_xds() {
    let out = std::process::Command::new(weir_bin!())
        .args(["proxy", "--admin", "127.0.0.1:0"])
        .output()
        .expect("run weir proxy");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--config FILE, --xds URL, or both"), "{err}");
}

#[test]
fn not_ready_until_the_first_sync() {
    let (http, admin, dead) = (free_port(), free_port(), free_port());
    let mut child = std::process::Command::new(weir_bin!())
        .args([
            "proxy",
            "--xds",
            &format!("http://127.0.0.1:{dead}"),
            "--threads",
            "1",
        ])
        .args([
            "--http",
            &format!("127.0.0.1:{http}"),
            "--admin",
            &format!("127.0.0.1:{admin}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn weir proxy");
    let addr = format!("127.0.0.1:{admin}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        if let Ok(a) = blocking_get(addr, "/readyz") {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "the admin listener never answered"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let metrics = blocking_get(addr, "/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(answer.0, 503, "{answer:?}");
    assert!(metrics.contains("weir_xds_connected 0"), "{metrics}");
}

// === (b) a bad resource from another ADS server ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_resources_are_nacked_and_change_nothing() {
    let (b1, b2) = (Backend::start("hello-1"), Backend::start("hello-2"));
    let cfg: weir_config::Config = serde_json::from_value(json!({
        "services": [{"name": "hello", "traffic": [
            {"revision": "hello-1", "percent": 90}, {"revision": "hello-2", "percent": 10}]}],
        "revisions": [
            {"name": "hello-1", "endpoints": [b1.endpoint()]},
            {"name": "hello-2", "endpoints": [b2.endpoint()]}],
    }))
    .unwrap();
    let good = to_resources(&cfg);

    let mut ads = ScriptedAds::start().await;
    // Version 1, good, queued before the proxy connects.
    ads.send(Kind::Cluster, "1", "c1", &good.clusters).await;
    ads.send(Kind::Endpoints, "1", "e1", &good.endpoints).await;
    ads.send(Kind::Routes, "1", "r1", &good.routes).await;
    let url = ads.url.clone();
    let proxy = tokio::task::spawn_blocking(move || xds_proxy(&url, "nack-test", true, CONVERGE))
        .await
        .unwrap();
    let ack = ads.answer_to("r1", CONVERGE).await;
    assert!(ack.error_detail.is_none(), "{ack:?}");
    assert_eq!(ack.version_info, "1");
    assert!(answered_by(&proxy, HOST).await.is_some());

    // Version 2: the weighted split adds up to 90.
    let mut bad = good.routes.clone();
    let Some(route::Action::Route(a)) = &mut bad[0].virtual_hosts[0].routes[0].action else {
        panic!("a route action")
    };
    let Some(route_action::ClusterSpecifier::WeightedClusters(wc)) = &mut a.cluster_specifier
    else {
        panic!("weighted clusters")
    };
    wc.clusters[1].weight = Some(UInt32Value { value: 0 });
    ads.send(Kind::Routes, "2", "bad", &bad).await;
    let nack = ads.answer_to("bad", CONVERGE).await;
    let detail = nack.error_detail.expect("a NACK");
    assert_eq!(detail.code, 3, "INVALID_ARGUMENT");
    assert_eq!(
        nack.version_info, "1",
        "the NACK names the version still in force"
    );
    assert_eq!(
        detail.message,
        "RouteConfiguration \"external_services\": virtual_hosts[0] (\"default/hello\")\
         .routes[0].route.weighted_clusters: weights add up to 90; they must add up to 100"
    );
    // Nothing changed: still the 90/10 split, one config applied from xDS.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..50 {
        seen.insert(answered_by(&proxy, HOST).await.expect("still served"));
    }
    assert!(seen.contains("hello-1"), "{seen:?}");
    assert_eq!(xds_updates(&proxy).await, 1.0);
    assert_eq!(count(&proxy.logs(), "applied from xds"), 1);
}

// === (c) the control plane crashes and comes back ===

#[tokio::test]
async fn proxies_survive_a_control_plane_restart() {
    let (b1, b2) = (Backend::start("hello-1"), Backend::start("hello-2"));
    let revs = json!([
        {"name": "hello-1", "endpoints": [b1.endpoint()]},
        {"name": "hello-2", "endpoints": [b2.endpoint()]},
    ]);
    let mut control = start_control!(hello("hello-1", &revs));
    let xds = control.xds_addr();
    let proxies = [
        xds_proxy(&control.xds_url(), "p1", true, CONVERGE),
        xds_proxy(&control.xds_url(), "p2", true, CONVERGE),
    ];
    control.kill();
    for p in &proxies {
        let down = eventually(Duration::from_secs(5), || async {
            p.metric("weir_xds_connected", &[]).await == Some(0.0)
        })
        .await;
        assert!(
            down,
            "weir_xds_connected still 1 after the control plane died"
        );
        for _ in 0..5 {
            assert_eq!(
                answered_by(p, HOST).await.as_deref(),
                Some("hello-1"),
                "last config kept"
            );
        }
    }
    // Back on the same port, with a new route: the proxies re-dial and converge.
    let _control = WeirControl::start_on(weir_bin!(), &hello("hello-2", &revs), xds);
    for p in &proxies {
        wait_served_by(p, HOST, "hello-2", CONVERGE).await;
        assert_eq!(p.metric("weir_xds_connected", &[]).await, Some(1.0));
    }
}

// === (d) 10,000 services ===

fn many_services(n: usize, endpoint: &str) -> Value {
    let services: Vec<Value> = (0..n)
        .map(|i| json!({"name": format!("svc-{i}"), "traffic": [{"revision": format!("svc-{i}-1"), "percent": 100}]}))
        .collect();
    let revisions: Vec<Value> = (0..n)
        .map(|i| json!({"name": format!("svc-{i}-1"), "endpoints": [endpoint]}))
        .collect();
    json!({"services": services, "revisions": revisions})
}

#[tokio::test]
async fn ten_thousand_services_and_an_endpoint_change() {
    let all = Backend::start("all");
    let t = Instant::now();
    let control = start_control!(many_services(10_000, &all.endpoint()));
    eprintln!(
        "weir control ready with 10,000 services after {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    let proxy = xds_proxy(&control.xds_url(), "big", true, Duration::from_secs(60));
    eprintln!("proxy synced 10,000 services after {:?}", t.elapsed());
    for i in [0, 4_999, 9_999] {
        let host = format!("svc-{i}.default.example.com");
        assert_eq!(
            answered_by(&proxy, &host).await.as_deref(),
            Some("all"),
            "{host}"
        );
    }
    let applied = count(&proxy.logs(), "applied from xds");
    let moved = Backend::start("moved");
    let t = Instant::now();
    control
        .put_endpoints("default", "svc-5000-1", &[moved.endpoint()])
        .await;
    wait_served_by(&proxy, "svc-5000.default.example.com", "moved", CONVERGE).await;
    eprintln!("endpoint change served after {:?}", t.elapsed());
    let logged = eventually(Duration::from_secs(5), || async {
        count(
            &proxy.logs(),
            "default/svc-5000-1 has 1 endpoint(s) (from xds)",
        ) == 1
    })
    .await;
    assert!(logged, "no endpoint-only update in the log");
    assert_eq!(
        count(&proxy.logs(), "applied from xds"),
        applied,
        "a whole config was re-applied"
    );
    assert_eq!(
        answered_by(&proxy, "svc-5001.default.example.com")
            .await
            .as_deref(),
        Some("all")
    );
}

// === measurement (not a test of behaviour) ===

/// p50, p99 and max of `v`.
fn percentiles(v: &mut [Duration]) -> String {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n={})",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
        v.len()
    )
}

/// Propagation from a `weir control` PUT to being served by both of 2 proxies, at
/// `WEIR_SERVICES` services (default 10,000): a route change through the service's own
/// endpoint and through a whole-config PUT, and an endpoint change; CPU per change in
/// `weir control` and in a proxy; RSS. Run by hand, in release mode:
/// `WEIR_SERVICES=100000 cargo test --release -p weir-tests --test it -- --ignored --nocapture xds::propagation`
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement; run it by hand, in release mode"]
async fn propagation() {
    use weir_tests::process::{cpu_seconds, rss_kib};
    let n: usize = std::env::var("WEIR_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let rounds: usize = std::env::var("WEIR_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let mut cfg = many_services(n, &a.endpoint());
    let t = Instant::now();
    let control = start_control!(cfg);
    eprintln!(
        "weir control ready with {n} services after {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    let proxies: Vec<Weir> = (0..2)
        .map(|i| {
            xds_proxy(
                &control.xds_url(),
                &format!("measure-{i}"),
                true,
                Duration::from_secs(600),
            )
        })
        .collect();
    eprintln!("2 proxies synced after {:?}", t.elapsed());
    let rss = |what: &str| {
        let kib: Vec<u64> = proxies.iter().map(|p| rss_kib(p.pid())).collect();
        eprintln!(
            "RSS {what}: proxies {:?} MiB, weir control {} MiB",
            kib.iter().map(|k| k / 1024).collect::<Vec<_>>(),
            rss_kib(control.pid()) / 1024
        );
    };
    rss("after the first sync");
    let victim = n / 2 + 7;
    let host = format!("svc-{victim}.default.example.com");
    let client = new_client();
    let served_by_all = |target: &'static str| {
        let (client, host, proxies) = (&client, &host, &proxies);
        async move {
            for p in proxies {
                time_until_served_by(client, p, host, target, Duration::from_secs(120)).await;
            }
        }
    };
    let cpu = || {
        (
            cpu_seconds(control.pid()),
            proxies.iter().map(|p| cpu_seconds(p.pid())).sum::<f64>() / 2.0,
        )
    };
    let report = |what: &str, changes: usize, before: (f64, f64), times: &mut Vec<Duration>| {
        let after = cpu();
        eprintln!(
            "{what} at {n} services, PUT -> served by both proxies: {}; CPU per change: weir control {:.1} ms, proxy {:.1} ms",
            percentiles(times),
            (after.0 - before.0) * 1e3 / changes as f64,
            (after.1 - before.1) * 1e3 / changes as f64,
        );
    };

    // Route changes through the service's own endpoint: a new revision, then the service
    // moved to it (what Knative does on a deploy).
    let mut times = Vec::new();
    let before = cpu();
    for round in 0..rounds {
        let (target, backend) = if round.is_multiple_of(2) {
            ("b", &b)
        } else {
            ("c", &c)
        };
        let rev = format!("svc-{victim}-r{round}{target}");
        control
            .put_object(
                "revisions",
                "default",
                &rev,
                &json!({"endpoints": [backend.endpoint()]}),
            )
            .await;
        let svc = json!({"traffic": [{"revision": rev, "percent": 100}]});
        let t = Instant::now();
        control
            .put_object("services", "default", &format!("svc-{victim}"), &svc)
            .await;
        served_by_all(target).await;
        times.push(t.elapsed());
        cfg["services"][victim]["traffic"][0]["revision"] = json!(rev);
        cfg["revisions"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": rev, "endpoints": [backend.endpoint()]}));
    }
    // (Each round is two changes: the revision and the service.)
    report(
        "route change (per-object PUT)",
        2 * rounds,
        before,
        &mut times,
    );

    // Endpoint changes.
    let mut times = Vec::new();
    let before = cpu();
    let last = format!(
        "svc-{victim}-r{}{}",
        rounds - 1,
        if (rounds - 1).is_multiple_of(2) {
            "b"
        } else {
            "c"
        }
    );
    for round in 0..rounds * 3 {
        let (target, backend) = if round.is_multiple_of(2) {
            ("a", &a)
        } else {
            ("b", &b)
        };
        let t = Instant::now();
        control
            .put_endpoints("default", &last, &[backend.endpoint()])
            .await;
        served_by_all(target).await;
        times.push(t.elapsed());
    }
    report("endpoint change", rounds * 3, before, &mut times);
    // The last endpoint change (an odd round) left `last` on b: so does the config now.
    for r in cfg["revisions"].as_array_mut().unwrap() {
        if r["name"] == json!(last) {
            r["endpoints"] = json!([b.endpoint()]);
        }
    }

    // Route changes through a whole-config PUT (within the admin API's 16 MiB body limit).
    if cfg.to_string().len() < 16 * 1024 * 1024 {
        let mut times = Vec::new();
        let before = cpu();
        for round in 0..rounds {
            // svc-0-1 is served by a, `last` by b.
            let (rev, target) = if round.is_multiple_of(2) {
                ("svc-0-1".to_string(), "a")
            } else {
                (last.clone(), "b")
            };
            cfg["services"][victim]["traffic"][0]["revision"] = json!(rev);
            let t = Instant::now();
            control.put_config(&cfg).await;
            served_by_all(target).await;
            times.push(t.elapsed());
        }
        report(
            "route change (whole-config PUT)",
            rounds,
            before,
            &mut times,
        );
    } else {
        eprintln!("whole-config PUT skipped: the config is over the 16 MiB body limit");
    }
    rss("at the end");
    if std::env::var_os("WEIR_PRINT_LOGS").is_some() {
        control.print_logs();
        proxies[0].print_logs();
    }
}
