//! Scale from zero: the per-revision hold queue (docs/behaviour.md#holding-scale-from-zero; docs/knative.md#the-activators-role,
//! "Activator behaviour").
//!
//! No test waits a fixed time for the proxy: every step waits on observable state (`held`
//! and `in_flight` in `GET /v1/stats`, samples of `/metrics`), polled with a deadline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;
use weir_tests::{
    eventually, get, new_client, send, start_weir, try_send, Backend, Response, Signal, Weir,
};

const NS: &str = "default";
const REV: &str = "hold-00001";
const HOST: &str = "hold.default.example.com";
/// How long a test waits for the proxy to reach a state it should reach at once.
const WAIT: Duration = Duration::from_secs(10);

/// Service `hold` sending everything to one revision, described by `revision`.
fn config(revision: Value) -> Value {
    json!({
        "services": [{"name": "hold", "traffic": [{"revision": REV, "percent": 100}]}],
        "revisions": [revision],
    })
}

/// Starts `n` concurrent GETs of `path` (over one client, so `n` connections); each task
/// answers its response and when it completed.
fn spawn_requests(weir: &Weir, path: &str, n: usize) -> Vec<JoinHandle<(Response, Instant)>> {
    let client = new_client();
    (0..n)
        .map(|i| {
            let client = client.clone();
            let url = format!("{}{path}?i={i}", weir.http_url());
            tokio::spawn(async move {
                let r = send(&client, &url, HOST, &[]).await;
                (r, Instant::now())
            })
        })
        .collect()
}

/// Awaits every task; panics unless each got 200 from revision `rev`'s backend(s).
async fn expect_all_ok(tasks: Vec<JoinHandle<(Response, Instant)>>) -> Vec<Instant> {
    let mut done = Vec::with_capacity(tasks.len());
    for t in tasks {
        let (r, at) = t.await.expect("a request task panicked");
        assert_eq!(r.status, 200, "{r:?}");
        done.push(at);
    }
    done
}

async fn wait_idle(weir: &Weir) {
    let idle = eventually(WAIT, || async {
        let s = weir.revision_stats(NS, REV).await;
        s["held"] == 0 && s["in_flight"] == 0
    })
    .await;
    assert!(idle, "not idle: {}", weir.revision_stats(NS, REV).await);
}

/// A1: 200 requests to a revision at zero are all held, and all go as soon as the endpoints
/// API gives the revision a backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_go_when_endpoints_appear() {
    const N: usize = 200;
    let backend = Backend::start(REV);
    let weir = start_weir!(config(json!({"name": REV, "endpoints": []})));

    let tasks = spawn_requests(&weir, "/a1", N);
    weir.wait_held(NS, REV, N as u64, Duration::from_secs(20))
        .await;
    assert!(
        tasks.iter().all(|t| !t.is_finished()),
        "a held request completed"
    );
    let s = weir.revision_stats(NS, REV).await;
    assert_eq!(s["in_flight"], 0, "{s}");
    assert_eq!(s["endpoints"], 0, "{s}");
    assert_eq!(backend.requests(), 0);

    let sent = Instant::now();
    weir.put_endpoints(NS, REV, &[backend.endpoint()]).await;
    let acked = Instant::now();
    let done = expect_all_ok(tasks).await;

    let first = *done.iter().min().expect("N > 0");
    let last = *done.iter().max().expect("N > 0");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "A1: {N} held requests released: endpoints PUT answered in {:.1} ms; after its 200 \
         the first completed at +{:.1} ms and the last at +{:.1} ms (first +{:.1} ms, last \
         +{:.1} ms after the PUT was sent)",
        ms(acked - sent),
        ms(first.saturating_duration_since(acked)),
        ms(last.saturating_duration_since(acked)),
        ms(first.saturating_duration_since(sent)),
        ms(last.saturating_duration_since(sent)),
    );
    assert!(
        first.saturating_duration_since(acked) < Duration::from_secs(1),
        "the first held request completed {:?} after the endpoints API answered",
        first.saturating_duration_since(acked)
    );
    assert!(
        last.saturating_duration_since(acked) < Duration::from_secs(10),
        "the last held request completed {:?} after the endpoints API answered",
        last.saturating_duration_since(acked)
    );
    assert_eq!(
        backend.requests(),
        N as u64,
        "each request reached the backend once"
    );
    wait_idle(&weir).await;
}

/// A2: `hold.queue_depth` 5: five are held, the sixth is refused with 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503() {
    let backend = Backend::start(REV);
    let mut cfg = config(json!({"name": REV, "endpoints": []}));
    cfg["hold"] = json!({"queue_depth": 5});
    let weir = start_weir!(cfg);

    let tasks = spawn_requests(&weir, "/a2", 5);
    weir.wait_held(NS, REV, 5, WAIT).await;

    let started = Instant::now();
    let r = get(&format!("{}/sixth", weir.http_url()), HOST, &[]).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.body, "pending request queue full\n");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the refusal is immediate, not after a wait: {:?}",
        started.elapsed()
    );
    assert_eq!(
        weir.held(NS, REV).await,
        5,
        "the refused request was not queued"
    );
    assert!(tasks.iter().all(|t| !t.is_finished()));

    // The five held ones still go when capacity appears.
    weir.put_endpoints(NS, REV, &[backend.endpoint()]).await;
    expect_all_ok(tasks).await;
    assert_eq!(
        backend.requests(),
        5,
        "the refused request never reached the backend"
    );
    wait_idle(&weir).await;
}

/// A3: held longer than the revision's `timeout`: 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_past_the_revision_timeout_answers_504() {
    let weir = start_weir!(config(
        json!({"name": REV, "timeout": "1s", "endpoints": []})
    ));

    let started = Instant::now();
    let r = get(&format!("{}/a3", weir.http_url()), HOST, &[]).await;
    let waited = started.elapsed();
    eprintln!("A3: 504 after {waited:?} (revision timeout 1s)");
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(
        r.body,
        format!("timed out waiting for revision {NS}/{REV}\n")
    );
    assert!(
        waited >= Duration::from_secs(1),
        "answered after {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "answered after {waited:?}");
    wait_idle(&weir).await;
}

/// A4: a client that goes away while held leaves the queue at once and takes no slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_leaves_the_queue() {
    let backend = Backend::start(REV);
    let weir = start_weir!(config(json!({
        "name": REV,
        "container_concurrency": 1,
        "timeout": "10s",
        "endpoints": [],
    })));

    // A raw connection, closed while its request is held.
    let mut conn = tokio::net::TcpStream::connect(weir.http_addr())
        .await
        .expect("connect to the proxy");
    conn.write_all(format!("GET /gone-raw HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .expect("write the request");
    weir.wait_held(NS, REV, 1, WAIT).await;
    drop(conn);
    weir.wait_held(NS, REV, 0, WAIT).await;

    // A client library's request future, dropped while held (its connection closes).
    let url = format!("{}/gone-reqwest", weir.http_url());
    let task = tokio::spawn(async move { get(&url, HOST, &[]).await });
    weir.wait_held(NS, REV, 1, WAIT).await;
    task.abort();
    assert!(task.await.is_err_and(|e| e.is_cancelled()));
    weir.wait_held(NS, REV, 0, WAIT).await;

    // Neither took the only slot: a new request goes at once.
    weir.put_endpoints(NS, REV, &[backend.endpoint()]).await;
    let started = Instant::now();
    let r = get(&format!("{}/after", weir.http_url()), HOST, &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["path"], "/after");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the new request waited {:?}: a gone client kept the slot",
        started.elapsed()
    );
    assert_eq!(
        backend.requests(),
        1,
        "a gone client's request reached the backend"
    );
    wait_idle(&weir).await;
}

/// A5: `container_concurrency` 1 over two endpoints: never two requests at once on one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_concurrency_1_is_never_exceeded() {
    const N: usize = 50;
    let a = Backend::start("hold-a");
    let b = Backend::start("hold-b");
    let weir = start_weir!(config(json!({
        "name": REV,
        "container_concurrency": 1,
        "endpoints": [a.endpoint(), b.endpoint()],
    })));

    let started = Instant::now();
    let tasks = spawn_requests(&weir, "/delay/200", N);
    expect_all_ok(tasks).await;
    eprintln!(
        "A5: {N} x 200 ms over 2 endpoints at cc 1 in {:?} (a: {} requests, b: {})",
        started.elapsed(),
        a.requests(),
        b.requests()
    );
    assert_eq!(a.max_in_flight(), 1, "endpoint a");
    assert_eq!(b.max_in_flight(), 1, "endpoint b");
    assert_eq!(a.requests() + b.requests(), N as u64);
    assert!(
        a.requests() > 0 && b.requests() > 0,
        "both endpoints served"
    );
    wait_idle(&weir).await;
}

/// A6: endpoints flapping under load: every request gets exactly one answer, 200 (or 503 /
/// 504 from the hold queue), never a 502 or a broken connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_endpoints_under_load() {
    const LOOPS: usize = 8;
    let b1 = Backend::start("hold-b1");
    let b2 = Backend::start("hold-b2");
    let weir = start_weir!(config(json!({
        "name": REV,
        "timeout": "2s",
        "endpoints": [],
    })));

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut loops = Vec::new();
    for l in 0..LOOPS {
        let url = format!("{}/delay/5", weir.http_url());
        let stop = stop.clone();
        let sent = sent.clone();
        loops.push(tokio::spawn(async move {
            let client = new_client();
            let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                sent.fetch_add(1, Ordering::SeqCst);
                let url = format!("{url}?l={l}&i={i}");
                let key = match try_send(&client, &url, HOST, &[]).await {
                    Ok(r) => r.status.to_string(),
                    Err(e) => format!("error: {e}"),
                };
                *outcomes.entry(key).or_default() += 1;
                i += 1;
            }
            outcomes
        }));
    }

    // ~3 s of flapping: add, remove, add another, remove, add both, remove, ...
    let sets: [Vec<String>; 6] = [
        vec![b1.endpoint()],
        vec![],
        vec![b2.endpoint()],
        vec![],
        vec![b1.endpoint(), b2.endpoint()],
        vec![],
    ];
    let started = Instant::now();
    let mut flaps = 0;
    while started.elapsed() < Duration::from_secs(3) {
        weir.put_endpoints(NS, REV, &sets[flaps % sets.len()]).await;
        flaps += 1;
        // The cadence of the flapping, not a wait for the proxy.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // End with capacity so that every held request goes, then stop the loops.
    weir.put_endpoints(NS, REV, &[b1.endpoint()]).await;
    stop.store(true, Ordering::SeqCst);

    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for l in loops {
        for (k, n) in l.await.expect("a client loop panicked") {
            *outcomes.entry(k).or_default() += n;
        }
    }
    let total: usize = outcomes.values().sum();
    eprintln!(
        "A6: {flaps} endpoint updates in {:?}; {total} requests: {outcomes:?}",
        started.elapsed()
    );
    assert_eq!(
        total,
        sent.load(Ordering::SeqCst),
        "one outcome per request"
    );
    assert!(
        outcomes.get("200").copied().unwrap_or(0) > 0,
        "no request succeeded: {outcomes:?}"
    );
    let bad: Vec<_> = outcomes
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "200" | "503" | "504"))
        .collect();
    assert!(
        bad.is_empty(),
        "unexpected outcomes {bad:?} in {outcomes:?}"
    );
    let ok = outcomes.get("200").copied().unwrap_or(0) as u64;
    assert_eq!(
        b1.requests() + b2.requests(),
        ok,
        "each 200 reached a backend exactly once, and nothing else did"
    );
    wait_idle(&weir).await;
}

/// A6: a whole-config replace that gives a held revision an endpoint releases its requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_replace_releases_held_requests() {
    let backend = Backend::start(REV);
    let weir = start_weir!(config(json!({"name": REV, "endpoints": []})));
    let before = weir.stats().await["generation"]
        .as_u64()
        .expect("generation");

    let tasks = spawn_requests(&weir, "/a6-config", 3);
    weir.wait_held(NS, REV, 3, WAIT).await;
    let r = weir
        .put_config(&config(
            json!({"name": REV, "endpoints": [backend.endpoint()]}),
        ))
        .await;
    let generation = r.json()["generation"].as_u64().expect("generation");
    assert!(generation > before, "generation {before} -> {generation}");
    expect_all_ok(tasks).await;
    assert_eq!(backend.requests(), 3);
    wait_idle(&weir).await;
}

/// A6: SIGHUP with a config file that gives a held revision an endpoint releases them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_releases_held_requests() {
    let backend = Backend::start(REV);
    let weir = start_weir!(config(json!({"name": REV, "endpoints": []})));

    let tasks = spawn_requests(&weir, "/a6-sighup", 3);
    weir.wait_held(NS, REV, 3, WAIT).await;
    weir.write_config(&config(
        json!({"name": REV, "endpoints": [backend.endpoint()]}),
    ));
    weir.signal(Signal::SIGHUP);
    expect_all_ok(tasks).await;
    assert_eq!(backend.requests(), 3);
    wait_idle(&weir).await;
}

/// A7: the first request held for a revision at zero pokes the autoscaler at once; more
/// held requests in the same interval do not poke again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_poke_per_interval_not_per_request() {
    const N: usize = 20;
    let weir = start_weir!(config(json!({"name": REV, "endpoints": []})));
    let labels = [("namespace", NS), ("revision", REV)];
    let pokes = weir.metric("weir_autoscaler_pokes_total", &labels).await;
    assert!(
        pokes.unwrap_or(0.0) == 0.0,
        "poked before any request: {pokes:?}"
    );

    let started = Instant::now();
    let tasks = spawn_requests(&weir, "/a7", N);
    weir.wait_held(NS, REV, N as u64, WAIT).await;
    let spread = started.elapsed();
    let held = weir.metric("weir_revision_held", &labels).await;
    assert_eq!(held, Some(N as f64), "weir_revision_held");
    let pokes = weir
        .metric("weir_autoscaler_pokes_total", &labels)
        .await
        .unwrap_or(0.0);
    eprintln!("A7: {N} requests held within {spread:?}; {pokes} poke(s)");
    if spread < Duration::from_secs(1) {
        assert_eq!(
            pokes, 1.0,
            "one poke for {N} requests held within one interval"
        );
    } else {
        // A slow machine spread the arrivals over more than one 1 s interval.
        let most = 1.0 + spread.as_secs_f64().floor();
        assert!(
            (1.0..=most).contains(&pokes),
            "{pokes} pokes for {N} requests held over {spread:?}"
        );
    }
    for t in tasks {
        t.abort();
    }
    weir.wait_held(NS, REV, 0, WAIT).await;
}

/// An endpoint removed and added back while a request is still in flight on it keeps that
/// request counted: `container_concurrency` holds across endpoint updates (docs/behaviour.md#endpoint-picking:
/// "No endpoint ever has more in flight than `container_concurrency`").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_concurrency_holds_across_an_endpoint_flap() {
    let backend = Backend::start(REV);
    let weir = start_weir!(config(json!({
        "name": REV,
        "container_concurrency": 1,
        "timeout": "10s",
        "endpoints": [backend.endpoint()],
    })));

    let slow = spawn_requests(&weir, "/delay/1500", 1);
    assert!(
        eventually(WAIT, || async { backend.in_flight() == 1 }).await,
        "the slow request never reached the backend"
    );
    // The endpoint goes away and comes back (a readiness flap) while the request runs.
    weir.put_endpoints(NS, REV, &[]).await;
    weir.put_endpoints(NS, REV, &[backend.endpoint()]).await;

    assert_eq!(
        backend.in_flight(),
        1,
        "the slow request is still running after the flap"
    );

    // With the only slot taken, the second request must be held until the first ends.
    let second = spawn_requests(&weir, "/after-flap", 1);
    expect_all_ok(slow).await;
    expect_all_ok(second).await;
    assert_eq!(
        backend.max_in_flight(),
        1,
        "two requests in flight at once on an endpoint with container_concurrency 1 after \
         it was removed and re-added while a request was in flight"
    );
    wait_idle(&weir).await;
}

/// A held request with a body whose client goes away leaves the queue at once too
/// (docs/behaviour.md#holding-scale-from-zero: a client that goes away leaves the queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_body_that_goes_away_leaves_the_queue() {
    let weir = start_weir!(config(json!({
        "name": REV,
        "container_concurrency": 1,
        "endpoints": [],
    })));

    let mut conn = tokio::net::TcpStream::connect(weir.http_addr())
        .await
        .expect("connect to the proxy");
    conn.write_all(
        format!("POST /gone-body HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\n\r\nhello")
            .as_bytes(),
    )
    .await
    .expect("write the request");
    weir.wait_held(NS, REV, 1, WAIT).await;
    drop(conn);
    weir.wait_held(NS, REV, 0, Duration::from_secs(3)).await;
}

/// Knative's ingress probe for a revision at zero is answered by Weir, as the activator
/// does: 200 with `K-Network-Hash` echoed, at once, never held and never a poke, so probing
/// an ingress does not wake its revision. With an endpoint, the probe goes to the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingress_probe_is_answered_while_the_revision_is_at_zero() {
    let weir = start_weir!(config(json!({"name": REV, "endpoints": []})));
    let labels = [("namespace", NS), ("revision", REV)];
    let url = format!("{}/healthz", weir.http_url());
    let probe = [("K-Network-Probe", "probe"), ("K-Network-Hash", "abc123")];
    let started = Instant::now();
    let r = get(&url, HOST, &probe).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("k-network-hash"), Some("abc123"));
    assert!(started.elapsed() < WAIT, "answered at once");
    assert_eq!(weir.held(NS, REV).await, 0);
    let pokes = weir.metric("weir_autoscaler_pokes_total", &labels).await;
    assert_eq!(
        pokes.unwrap_or(0.0),
        0.0,
        "a probe must not poke the autoscaler"
    );
    // Without a hash it is not a valid probe (networking's handler answers 400).
    let r = get(&url, HOST, &[("K-Network-Probe", "probe")]).await;
    assert_eq!(r.status, 400);

    // With an endpoint the backend answers the probe (and sees it).
    let backend = Backend::start(REV);
    let r = weir.put_endpoints(NS, REV, &[backend.endpoint()]).await;
    assert_eq!(r.status, 200);
    let r = get(&url, HOST, &probe).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("k-network-hash"), Some("abc123"));
    assert_eq!(r.revision(), Some(REV), "the backend answered");
    assert_eq!(backend.requests(), 1);
}
