//! Concurrency reports to the autoscaler (docs/metrics.md#autoscaler-reports, docs/metrics.md#stat-messages), the
//! metrics (docs/metrics.md) and `GET /v1/stats` (docs/api.md).
//!
//! A test autoscaler (`weir_tests::autoscaler::StatServer`) is a WebSocket server on
//! 127.0.0.1 that records every binary frame with the instant it arrived, decoded with
//! Knative's `stat.proto` written in the harness, not with the proxy's own types. The proxy reports every
//! `autoscaler.interval` (1 s here) on ticks of its own; the tests align themselves to those
//! ticks by waiting for a report frame and acting right after it arrives, so that what they
//! send falls in the window the next periodic frame reports. Waiting for the next frame is
//! the only time-based wait (the protocol itself is time-based); everything else waits on
//! observable state with a deadline.

use std::time::{Duration, Instant};

use prometheus_parse::{LineInfo, Scrape, Value as PromValue};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use weir_tests::{eventually, get, new_client, send, weir_bin, Backend, Response, Weir};

use weir_tests::autoscaler::{is_poke, Frame, Stat, StatServer};

const NS: &str = "default";
const NODE: &str = "test-node";
/// Services of the test configs; each sends everything to revision `<service>-00001`.
const BUSY: &str = "busy";
const IDLE: &str = "idle";
const ZERO: &str = "zero";
/// Longest wait for the next report frame (the interval is 1 s).
const NEXT_FRAME: Duration = Duration::from_secs(5);
/// Longest wait for a state the proxy should reach at once.
const WAIT: Duration = Duration::from_secs(10);

fn rev(service: &str) -> String {
    format!("{service}-00001")
}

fn host(service: &str) -> String {
    format!("{service}.{NS}.example.com")
}

/// One service per `(name, endpoints)`, reports to `url` every second.
fn config(url: &str, services: &[(&str, Vec<String>)]) -> Value {
    json!({
        "autoscaler": {"url": url, "interval": "1s"},
        "services": services.iter().map(|(s, _)| json!({
            "name": s,
            "traffic": [{"revision": rev(s), "percent": 100}],
        })).collect::<Vec<_>>(),
        "revisions": services.iter().map(|(s, eps)| json!({
            "name": rev(s),
            "endpoints": eps,
        })).collect::<Vec<_>>(),
    })
}

fn start(config: &Value) -> Weir {
    Weir::builder(weir_bin!(), config)
        .arg("--node-id")
        .arg(NODE)
        .start()
}

/// A frame's stat of a service's revision, by service name.
trait ByService {
    fn stat(&self, service: &str) -> Option<&Stat>;
    /// Panics with the frame when it is missing.
    fn expect(&self, service: &str) -> &Stat;
}

impl ByService for Frame {
    fn stat(&self, service: &str) -> Option<&Stat> {
        self.revision_stat(NS, &rev(service))
    }

    fn expect(&self, service: &str) -> &Stat {
        self.stat(service)
            .unwrap_or_else(|| panic!("no {NS}/{} in frame {self:?}", rev(service)))
    }
}

// === helpers ===

/// Aligns the test with the proxy's reporting ticks: one quick request to `service`, then
/// the first frame that arrives after its answer. The window that request ended in had
/// traffic, so such a frame comes, and it was sent at a tick: whatever the test sends right
/// after it falls in the window that the next periodic frame reports.
async fn align_to_tick(weir: &Weir, server: &StatServer, service: &str) -> (usize, Frame) {
    let r = get(&format!("{}/align", weir.http_url()), &host(service), &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let answered = Instant::now();
    server.wait_frame(0, NEXT_FRAME, |f| f.at > answered).await
}

/// Starts `n` concurrent GETs of `path` on `service`, each on its own connection.
fn spawn_requests(weir: &Weir, service: &str, path: &str, n: usize) -> Vec<JoinHandle<Response>> {
    let client = new_client();
    (0..n)
        .map(|i| {
            let client = client.clone();
            let url = format!("{}{path}?i={i}", weir.http_url());
            let host = host(service);
            tokio::spawn(async move { send(&client, &url, &host, &[]).await })
        })
        .collect()
}

async fn expect_all_ok(tasks: Vec<JoinHandle<Response>>) {
    for t in tasks {
        let r = t.await.expect("a request task panicked");
        assert_eq!(r.status, 200, "{r:?}");
    }
}

/// The value of the sample called `name` with exactly `labels` (besides `le` of buckets).
fn prom_value<'a>(
    samples: &'a [prometheus_parse::Sample],
    text: &str,
    name: &str,
    labels: &[(&str, &str)],
) -> &'a PromValue {
    &samples
        .iter()
        .find(|x| {
            x.metric == name
                && x.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v))
        })
        .unwrap_or_else(|| panic!("no {name}{labels:?} in:\n{text}"))
        .value
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn near(value: f64, want: f64, tolerance: f64) -> bool {
    (value - want).abs() <= tolerance
}

// === tests ===

/// The stat protocol: field numbers, the node id, timestamps; time-weighted concurrency of
/// sequential and of steady concurrent requests; arrivals counted once, in the window they
/// arrived in; a revision without traffic is never reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_time_weighted_concurrency_per_revision() {
    let backend = Backend::start(&rev(BUSY));
    let idle = Backend::start(&rev(IDLE));
    let server = StatServer::start();
    let weir = start(&config(
        &server.url(),
        &[
            (BUSY, vec![backend.endpoint()]),
            (IDLE, vec![idle.endpoint()]),
            (ZERO, vec![]),
        ],
    ));

    // --- The fields decode with Knative's numbers.
    let (i0, f0) = align_to_tick(&weir, &server, BUSY).await;
    let s = f0.expect(BUSY);
    assert_eq!(s.pod_name, NODE, "{f0:?}");
    assert!(
        (s.timestamp as f64 - f0.unix).abs() <= 3.0,
        "timestamp {} is not now ({}): {f0:?}",
        s.timestamp,
        f0.unix
    );
    assert!(
        s.process_uptime > 0.0 && s.process_uptime < 60.0,
        "process_uptime: {f0:?}"
    );
    assert!(s.request_count >= 1.0, "the aligning request: {f0:?}");
    assert_eq!(s.average_proxied_concurrent_requests, 0.0, "{f0:?}");
    assert_eq!(s.proxied_request_count, 0.0, "{f0:?}");

    // --- Two sequential 500 ms requests.
    // They start `lag` after the tick that sent f0, so both arrive in the window that frame
    // i0+1 reports. Together they last a little over 1 s (two 500 ms delays plus the proxy's
    // own time), longer than the window that is left, so the end of the second one spills
    // into the next window(s). The reports covering them are frames i0+1 up to the first
    // frame that arrived after the second answer; their averages (each over a ~1 s window)
    // add up to the requests' total time in flight, 1.0 ± 0.1, and frame i0+1 alone holds
    // all but the spill: about `lag` plus the proxy's own few milliseconds per request, so
    // it must be 1.0 ± 0.1 as well, less at most `lag`.
    let client = new_client();
    let started = Instant::now();
    let lag = secs(started - f0.at);
    for _ in 0..2 {
        let r = send(
            &client,
            &format!("{}/delay/500", weir.http_url()),
            &host(BUSY),
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let answered = Instant::now();
    let (ie, fe) = server
        .wait_frame(i0 + 1, NEXT_FRAME, |f| f.at > answered)
        .await;
    let covering = server.frames()[i0 + 1..=ie].to_vec();
    let averages: Vec<f64> = covering
        .iter()
        .map(|f| f.stat(BUSY).map_or(0.0, |s| s.average_concurrent_requests))
        .collect();
    let counts: Vec<f64> = covering
        .iter()
        .map(|f| f.stat(BUSY).map_or(0.0, |s| s.request_count))
        .collect();
    eprintln!(
        "two sequential 500 ms requests, started {:.1} ms after a tick, took {:.1} ms: \
         averages {averages:?}, request counts {counts:?}",
        lag * 1000.0,
        secs(answered - started) * 1000.0
    );
    let first = covering[0].expect(BUSY);
    assert_eq!(
        first.request_count,
        2.0,
        "both arrived in the window of frame {}: {covering:?}",
        i0 + 1
    );
    assert_eq!(counts.iter().sum::<f64>(), 2.0, "arrivals count once");
    let total: f64 = averages.iter().sum();
    assert!(
        near(total, 1.0, 0.1),
        "two 500 ms requests: total average concurrency {total} over {averages:?}"
    );
    assert!(
        first.average_concurrent_requests <= 1.1 && first.average_concurrent_requests >= 0.9 - lag,
        "the window of both requests: {} (the requests started {lag:.3} s into it)",
        first.average_concurrent_requests
    );

    // --- Four steady concurrent requests of 4 s, started right after frame ie arrived.
    // Window ie+1 sees them arrive (a little after its start), windows ie+2 and ie+3 lie
    // wholly inside them, and they end early in window ie+4 (or ie+5 if ticks drift).
    let started = Instant::now();
    let lag = secs(started - fe.at);
    let tasks = spawn_requests(&weir, BUSY, "/delay/4000", 4);
    let window = server.wait_frames(ie + 1, ie + 3, NEXT_FRAME * 4).await;
    let averages: Vec<f64> = window
        .iter()
        .map(|f| f.expect(BUSY).average_concurrent_requests)
        .collect();
    eprintln!(
        "4 x 4 s concurrent requests, started {:.1} ms after a tick: averages of the next \
         three windows {averages:?}",
        lag * 1000.0
    );
    let arrival = window[0].expect(BUSY);
    assert_eq!(arrival.request_count, 4.0, "{window:?}");
    assert!(
        arrival.average_concurrent_requests <= 4.3
            && arrival.average_concurrent_requests >= 3.7 - 4.0 * lag,
        "the window they arrived in: {arrival:?} (started {lag:.3} s into it)"
    );
    for f in &window[1..] {
        let s = f.expect(BUSY);
        assert!(
            near(s.average_concurrent_requests, 4.0, 0.3),
            "a full window in the middle of 4 steady requests: {f:?}"
        );
        assert_eq!(s.request_count, 0.0, "no new arrivals: {f:?}");
    }
    for pair in window.windows(2) {
        let gap = secs(pair[1].at - pair[0].at);
        assert!(
            (0.7..1.5).contains(&gap),
            "periodic frames {gap:.3} s apart with a 1 s interval"
        );
    }
    expect_all_ok(tasks).await;
    let answered = Instant::now();
    let (last, _) = server
        .wait_frame(ie + 4, NEXT_FRAME, |f| f.at > answered)
        .await;
    let all = server.frames();
    let counted: f64 = all[ie + 1..=last]
        .iter()
        .filter_map(|f| f.stat(BUSY))
        .map(|s| s.request_count)
        .sum();
    assert_eq!(
        counted,
        4.0,
        "the 4 requests counted once: {:?}",
        &all[ie + 1..]
    );

    // --- Revisions without traffic are never in a frame; timestamps and uptimes advance.
    for f in &all {
        assert!(f.stat(IDLE).is_none(), "an idle revision reported: {f:?}");
        assert!(f.stat(ZERO).is_none(), "an idle revision reported: {f:?}");
        assert_eq!(f.msgs.messages.len(), 1, "only the busy revision: {f:?}");
        assert_eq!(f.conn, 0, "one connection throughout");
    }
    for pair in all.windows(2) {
        let (a, b) = (pair[0].expect(BUSY), pair[1].expect(BUSY));
        assert!(b.process_uptime > a.process_uptime, "{pair:?}");
        assert!(b.timestamp >= a.timestamp, "{pair:?}");
    }
    assert_eq!(idle.requests(), 0);
    server.assert_clean(NODE);
}

/// Scale from zero: the first held request pokes the autoscaler at once (concurrency 1,
/// one request), once per interval however many are held, and the poked request is taken
/// off the next periodic report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_held_request_pokes_the_autoscaler_at_once() {
    let busy = Backend::start(&rev(BUSY));
    let zero = Backend::start(&rev(ZERO));
    let server = StatServer::start();
    let weir = start(&config(
        &server.url(),
        &[(BUSY, vec![busy.endpoint()]), (ZERO, vec![])],
    ));

    // The first request goes on a connection opened beforehand, so the latency measured is
    // the proxy's (parse, route, hold, poke, send), not a connection setup.
    let mut first = tokio::net::TcpStream::connect(weir.http_addr())
        .await
        .expect("connect to the proxy");
    first.set_nodelay(true).expect("nodelay");

    // Right after a tick, so the poke and all the held requests fall in one window (the one
    // the next periodic frame reports), well before its end.
    let (i0, f0) = align_to_tick(&weir, &server, BUSY).await;
    let sent = Instant::now();
    first
        .write_all(
            format!(
                "GET /first HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                host(ZERO)
            )
            .as_bytes(),
        )
        .await
        .expect("write the first request");
    let first = tokio::spawn(async move {
        let mut answer = String::new();
        first
            .read_to_string(&mut answer)
            .await
            .expect("read the first answer");
        answer
    });
    let mut tasks = spawn_requests(&weir, ZERO, "/first-wave", 9);
    let (ip, poke) = server
        .wait_frame(i0 + 1, Duration::from_secs(5), |f| f.stat(ZERO).is_some())
        .await;
    let latency = poke.at.saturating_duration_since(sent);
    eprintln!(
        "poke: the frame arrived {:.1} ms after the first request for a revision at zero \
         was written ({:.1} ms after the tick before it)",
        secs(latency) * 1000.0,
        secs(poke.at - f0.at) * 1000.0
    );
    assert!(
        latency < Duration::from_secs(1),
        "the poke came {latency:?} after the first held request"
    );
    assert_eq!(
        poke.msgs.messages.len(),
        1,
        "a poke names one revision: {poke:?}"
    );
    let p = poke.expect(ZERO);
    assert!(is_poke(p), "concurrency 1 and one request: {poke:?}");
    assert_eq!(p.pod_name, NODE);
    assert!(p.process_uptime > 0.0 && p.timestamp > 0, "{poke:?}");

    // More requests held in the same window poke no more.
    weir.wait_held(NS, &rev(ZERO), 10, WAIT).await;
    tasks.extend(spawn_requests(&weir, ZERO, "/second-wave", 5));
    weir.wait_held(NS, &rev(ZERO), 15, WAIT).await;
    let all_held = secs(f0.at.elapsed());
    assert!(
        all_held < 0.9,
        "precondition: the 15 requests should be held early in the window, but that took \
         {all_held:.3} s after the tick (machine overloaded?)"
    );

    // The next two periodic reports: the one closing the poke's window, and the one after.
    let (i1, f1) = server
        .wait_frame(ip + 1, NEXT_FRAME, |f| {
            f.stat(ZERO).is_some_and(|s| !is_poke(s))
        })
        .await;
    let (i2, f2) = server
        .wait_frame(i1 + 1, NEXT_FRAME, |f| {
            f.stat(ZERO).is_some_and(|s| !is_poke(s))
        })
        .await;
    let frames = server.frames();
    let pokes: Vec<&Frame> = frames[i0 + 1..=i2]
        .iter()
        .filter(|f| f.stat(ZERO).is_some_and(is_poke))
        .collect();
    assert_eq!(
        pokes.len(),
        1,
        "one poke per interval for 15 held requests: {:#?}",
        &frames[i0 + 1..=i2]
    );
    let (s1, s2) = (f1.expect(ZERO), f2.expect(ZERO));
    eprintln!(
        "periodic reports after the poke: concurrency {:.3} / {:.3}, requests {} / {}",
        s1.average_concurrent_requests,
        s2.average_concurrent_requests,
        s1.request_count,
        s2.request_count
    );
    assert_eq!(
        s1.request_count, 14.0,
        "15 arrivals less the one already poked: {f1:?}"
    );
    assert_eq!(s2.request_count, 0.0, "no new arrivals: {f2:?}");
    // Held requests count as in flight.
    assert!(
        s1.average_concurrent_requests > 12.0 && s1.average_concurrent_requests <= 15.0,
        "15 held for most of the window: {f1:?}"
    );
    assert!(
        near(s2.average_concurrent_requests, 15.0, 0.3),
        "15 held for the whole window: {f2:?}"
    );

    // Capacity appears: every held request is answered.
    weir.put_endpoints(NS, &rev(ZERO), &[zero.endpoint()]).await;
    expect_all_ok(tasks).await;
    let answer = first.await.expect("the first request's task");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
    assert_eq!(zero.requests(), 15);
    let pokes = weir
        .metric(
            "weir_autoscaler_pokes_total",
            &[("namespace", NS), ("revision", &rev(ZERO))],
        )
        .await;
    assert_eq!(pokes, Some(1.0), "weir_autoscaler_pokes_total");
    server.assert_clean(NODE);
}

/// The autoscaler is down: requests still flow, reports are dropped and counted; once it
/// listens, the proxy dials it again (with backoff) and reports arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_dropped_while_the_autoscaler_is_down() {
    // A port that is bound but not listening: connections to it are refused, and no other
    // process can take it before the test autoscaler listens on it.
    let reserved = tokio::net::TcpSocket::new_v4().expect("a socket");
    // Accepted connections inherit SO_REUSEADDR, so the port can be bound again below while
    // they linger (FIN_WAIT2, TIME_WAIT) after the server goes away.
    reserved.set_reuseaddr(true).expect("SO_REUSEADDR");
    reserved
        .bind("127.0.0.1:0".parse().unwrap())
        .expect("bind 127.0.0.1:0");
    let addr = reserved.local_addr().expect("local_addr");

    let backend = Backend::start(&rev(BUSY));
    // The config names a dead URL of its own; `--autoscaler` wins over it.
    let cfg = config("ws://127.0.0.1:1", &[(BUSY, vec![backend.endpoint()])]);
    let weir = Weir::builder(weir_bin!(), &cfg)
        .arg("--node-id")
        .arg(NODE)
        .arg("--autoscaler")
        .arg(format!("ws://{addr}"))
        .start();
    let dropped = || async {
        weir.metric("weir_autoscaler_reports_total", &[("result", "dropped")])
            .await
            .unwrap_or(0.0)
    };

    // Traffic across several windows: quick requests, and one that lasts 2.5 s.
    let slow = spawn_requests(&weir, BUSY, "/delay/2500", 1);
    for _ in 0..3 {
        let r = get(&format!("{}/", weir.http_url()), &host(BUSY), &[]).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert!(
        eventually(WAIT, || async { dropped().await >= 1.0 }).await,
        "no report counted as dropped: {:?}",
        weir.metrics().await
    );
    let first = dropped().await;
    assert!(
        eventually(WAIT, || async { dropped().await > first }).await,
        "dropped reports do not grow past {first}"
    );
    expect_all_ok(slow).await;
    let down_for = Instant::now();
    assert_eq!(
        weir.metric("weir_autoscaler_reports_total", &[("result", "sent")])
            .await
            .unwrap_or(0.0),
        0.0,
        "nothing can have been sent"
    );

    // The autoscaler comes up on that port; keep some traffic going so there is something
    // to report, until a frame arrives (the dialer's backoff is capped at 5 s plus jitter).
    let listener = reserved
        .listen(64)
        .expect("listen")
        .into_std()
        .expect("into_std");
    let server = StatServer::serve(listener);
    let up = Instant::now();
    let deadline = up + Duration::from_secs(15);
    while server.is_empty() {
        assert!(
            Instant::now() < deadline,
            "no report within 15 s of the autoscaler coming up ({} connections)",
            server.connections()
        );
        let r = get(&format!("{}/", weir.http_url()), &host(BUSY), &[]).await;
        assert_eq!(r.status, 200, "{r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "autoscaler down: {first} then more reports dropped; the first report arrived {:.2} s \
         after it came up ({:.2} s after the dropped ones)",
        secs(up.elapsed()),
        secs(down_for.elapsed())
    );
    let (_, f) = server.wait_frame(0, NEXT_FRAME, |_| true).await;
    assert!(f.expect(BUSY).request_count >= 1.0, "{f:?}");
    assert!(
        eventually(WAIT, || async {
            weir.metric("weir_autoscaler_reports_total", &[("result", "sent")])
                .await
                .unwrap_or(0.0)
                >= 1.0
        })
        .await,
        "weir_autoscaler_reports_total{{result=\"sent\"}} after a frame arrived"
    );
    server.assert_clean(NODE);

    // --- The autoscaler goes away (its connections close) and comes back on the same port:
    // reports are dropped again in between, and the proxy dials it again.
    drop(server);
    let gone = Instant::now();
    let before = dropped().await;
    let deadline = gone + WAIT;
    while dropped().await <= before {
        assert!(
            Instant::now() < deadline,
            "no report dropped within {WAIT:?} of the autoscaler going away"
        );
        let r = get(&format!("{}/", weir.http_url()), &host(BUSY), &[]).await;
        assert_eq!(r.status, 200, "{r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = tokio::net::TcpSocket::new_v4().expect("a socket");
    again.set_reuseaddr(true).expect("SO_REUSEADDR");
    again
        .bind(addr)
        .unwrap_or_else(|e| panic!("bind {addr} again: {e}"));
    let server = StatServer::serve(again.listen(64).expect("listen").into_std().expect("std"));
    let up = Instant::now();
    let deadline = up + Duration::from_secs(15);
    while server.is_empty() {
        assert!(
            Instant::now() < deadline,
            "no report within 15 s of the autoscaler coming back ({} connections)",
            server.connections()
        );
        let r = get(&format!("{}/", weir.http_url()), &host(BUSY), &[]).await;
        assert_eq!(r.status, 200, "{r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "autoscaler restarted: reports dropped again {:.2} s after it went away; the first \
         report on the new connection {:.2} s after it came back",
        secs(up - gone),
        secs(up.elapsed())
    );
    server.assert_clean(NODE);
}

/// `/metrics` after some traffic parses with a real Prometheus text parser and holds the
/// series of docs/metrics.md#metrics with their labels and types.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_hold_the_contract_series() {
    let busy = Backend::start(&rev(BUSY));
    let zero = Backend::start(&rev(ZERO));
    let server = StatServer::start();
    let cfg = config(
        &server.url(),
        &[(BUSY, vec![busy.endpoint()]), (ZERO, vec![])],
    );
    let weir = start(&cfg);

    for _ in 0..3 {
        let r = get(&format!("{}/", weir.http_url()), &host(BUSY), &[]).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let r = get(&format!("{}/", weir.http_url()), "nowhere.example.com", &[]).await;
    assert_eq!(r.status, 404, "{r:?}");
    // Held, then released by the endpoints API.
    let held = spawn_requests(&weir, ZERO, "/held", 1);
    weir.wait_held(NS, &rev(ZERO), 1, WAIT).await;
    weir.put_endpoints(NS, &rev(ZERO), &[zero.endpoint()]).await;
    expect_all_ok(held).await;
    // A config PUT (the same services, the released endpoint kept).
    let mut cfg2 = cfg.clone();
    cfg2["revisions"][1]["endpoints"] = json!([zero.endpoint()]);
    let generation = weir.put_config(&cfg2).await.json()["generation"]
        .as_f64()
        .expect("a generation");
    // At least one report sent.
    server.wait_frame(0, NEXT_FRAME, |_| true).await;

    let want_sent = |samples: &[prometheus_parse::Sample]| {
        samples.iter().any(|s| {
            s.metric == "weir_autoscaler_reports_total"
                && s.labels.get("result") == Some("sent")
                && matches!(s.value, PromValue::Counter(v) if v >= 1.0)
        })
    };
    let deadline = Instant::now() + WAIT;
    let (text, scrape) = loop {
        let r = get(&format!("{}/metrics", weir.admin_url()), "", &[]).await;
        assert_eq!(r.status, 200, "{r:?}");
        let scrape = Scrape::parse(r.body.lines().map(|l| Ok(l.to_owned())))
            .unwrap_or_else(|e| panic!("/metrics does not parse: {e}\n{}", r.body));
        if want_sent(&scrape.samples) || Instant::now() >= deadline {
            break (r.body, scrape);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The parser skips what it does not understand: require that every line is a comment it
    // knows, a sample, or empty.
    for line in text.lines() {
        match LineInfo::parse(line) {
            LineInfo::Sample { value, .. } => assert!(
                matches!(value, "+Inf" | "-Inf" | "NaN") || value.parse::<f64>().is_ok(),
                "not a sample value: {line:?}"
            ),
            LineInfo::Ignored => assert!(line.starts_with('#'), "not Prometheus text: {line:?}"),
            _ => {}
        }
    }
    let s = &scrape.samples;
    let find = |name: &str, labels: &[(&str, &str)]| prom_value(s, &text, name, labels).clone();
    let counter = |name: &str, labels: &[(&str, &str)]| match find(name, labels) {
        PromValue::Counter(v) => v,
        other => panic!("{name}{labels:?} is not a counter: {other:?}"),
    };
    let gauge = |name: &str, labels: &[(&str, &str)]| match find(name, labels) {
        PromValue::Gauge(v) => v,
        other => panic!("{name}{labels:?} is not a gauge: {other:?}"),
    };
    let busy_l = [("namespace", NS), ("revision", "busy-00001")];
    let zero_l = [("namespace", NS), ("revision", "zero-00001")];
    let with_code =
        |l: &[(&'static str, &'static str); 2], code: &'static str| [l[0], l[1], ("code", code)];

    assert_eq!(
        counter("weir_requests_total", &with_code(&busy_l, "200")),
        3.0
    );
    assert_eq!(
        counter("weir_requests_total", &with_code(&zero_l, "200")),
        1.0
    );
    assert_eq!(
        counter(
            "weir_requests_total",
            &[("namespace", ""), ("revision", ""), ("code", "404")]
        ),
        1.0,
        "unrouted requests count under empty labels"
    );

    // Histograms: buckets with `le`, then _sum and _count with the same labels.
    let histogram = |name: &str, labels: &[(&str, &str)], count: f64| {
        let buckets = match find(name, labels) {
            PromValue::Histogram(b) => b,
            other => panic!("{name}{labels:?} is not a histogram: {other:?}"),
        };
        assert!(buckets.len() > 2, "{name}{labels:?}: {buckets:?}");
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].less_than < w[1].less_than && w[0].count <= w[1].count),
            "{name}{labels:?}: buckets must grow: {buckets:?}"
        );
        let inf = buckets.last().unwrap();
        assert!(inf.less_than.is_infinite(), "{name}: no +Inf bucket");
        assert_eq!(inf.count, count, "{name}{labels:?} +Inf bucket");
        let untyped = |n: String| match find(&n, labels) {
            PromValue::Untyped(v) | PromValue::Counter(v) | PromValue::Gauge(v) => v,
            other => panic!("{n}{labels:?}: {other:?}"),
        };
        assert_eq!(untyped(format!("{name}_count")), count, "{name}_count");
        let sum = untyped(format!("{name}_sum"));
        assert!(sum > 0.0 && sum < 60.0 * count, "{name}_sum {sum}");
    };
    histogram("weir_request_duration_seconds", &busy_l, 3.0);
    histogram("weir_request_duration_seconds", &zero_l, 1.0);
    histogram("weir_hold_duration_seconds", &zero_l, 1.0);

    assert_eq!(gauge("weir_revision_in_flight", &busy_l), 0.0);
    assert_eq!(gauge("weir_revision_in_flight", &zero_l), 0.0);
    assert_eq!(gauge("weir_revision_held", &zero_l), 0.0);
    assert_eq!(gauge("weir_config_generation", &[]), generation);
    assert_eq!(
        counter(
            "weir_config_updates_total",
            &[("source", "file"), ("result", "ok")]
        ),
        1.0
    );
    assert_eq!(
        counter(
            "weir_config_updates_total",
            &[("source", "api"), ("result", "ok")]
        ),
        1.0
    );
    assert!(
        counter(
            "weir_config_updates_total",
            &[("source", "endpoints"), ("result", "ok")]
        ) >= 1.0
    );
    assert_eq!(gauge("weir_xds_connected", &[]), 0.0, "no xDS configured");
    assert!(counter("weir_autoscaler_reports_total", &[("result", "sent")]) >= 1.0);
    assert!(
        !s.iter().any(|x| x.metric == "weir_autoscaler_reports_total"
            && x.labels.get("result") == Some("dropped")
            && matches!(x.value, PromValue::Counter(v) if v > 0.0)),
        "nothing dropped while the autoscaler was up:\n{text}"
    );
    server.assert_clean(NODE);
}

/// `GET /v1/stats`: per revision, in flight and held right now, and the average concurrency
/// and requests of the last closed window — the window the last report frame described.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_stats_shows_the_last_window() {
    let busy = Backend::start(&rev(BUSY));
    let idle = Backend::start(&rev(IDLE));
    let zero = Backend::start(&rev(ZERO));
    let server = StatServer::start();
    let weir = start(&config(
        &server.url(),
        &[
            (BUSY, vec![busy.endpoint()]),
            (IDLE, vec![idle.endpoint()]),
            (ZERO, vec![]),
        ],
    ));

    // In one window: one 500 ms request and one quick one to busy, two requests held for
    // zero.
    let (i0, f0) = align_to_tick(&weir, &server, BUSY).await;
    let lag = secs(f0.at.elapsed());
    let slow = spawn_requests(&weir, BUSY, "/delay/500", 1);
    let held = spawn_requests(&weir, ZERO, "/held", 2);
    let in_flight = eventually(WAIT, || async {
        let s = weir.revision_stats(NS, &rev(BUSY)).await;
        s["in_flight"] == 1
    })
    .await;
    assert!(
        in_flight,
        "busy in flight: {}",
        weir.revision_stats(NS, &rev(BUSY)).await
    );
    weir.wait_held(NS, &rev(ZERO), 2, WAIT).await;
    // And one quick request proxied by an activator (`K-Proxy-Request`), which can only come
    // from inside the cluster: the internal listener (the external one drops the header).
    let r = get(
        &format!("{}/proxied", weir.internal_url()),
        &host(BUSY),
        &[("K-Proxy-Request", "activator")],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    expect_all_ok(slow).await;

    // The periodic frame closing that window (not the poke), then /v1/stats at once: it
    // shows the same window until the next tick, a second later.
    let (i1, f1) = server
        .wait_frame(i0 + 1, NEXT_FRAME, |f| f.stat(BUSY).is_some())
        .await;
    let stats = weir.stats().await;
    let read_after = secs(f1.at.elapsed());
    assert!(
        read_after < 0.8,
        "precondition: /v1/stats read {read_after:.3} s after the frame, too close to the next tick"
    );
    let entry = |service: &str| -> Value {
        stats["revisions"]
            .as_array()
            .and_then(|r| {
                r.iter()
                    .find(|x| x["namespace"] == NS && x["name"] == rev(service).as_str())
                    .cloned()
            })
            .unwrap_or_else(|| panic!("no {service} in /v1/stats: {stats}"))
    };
    let num = |v: &Value, k: &str| -> f64 {
        v[k].as_f64()
            .unwrap_or_else(|| panic!("no numeric {k} in {v}"))
    };
    eprintln!(
        "/v1/stats {:.1} ms after report {i1}: {stats}",
        read_after * 1000.0
    );

    let b = entry(BUSY);
    let fb = f1.expect(BUSY);
    assert_eq!(num(&b, "in_flight"), 0.0, "{b}");
    assert_eq!(num(&b, "held"), 0.0, "{b}");
    assert_eq!(num(&b, "requests"), 2.0, "{b}");
    assert_eq!(num(&b, "proxied_requests"), 1.0, "{b}");
    assert_eq!(fb.request_count, 2.0, "{fb:?}");
    assert_eq!(fb.proxied_request_count, 1.0, "{fb:?}");
    assert!(
        fb.average_proxied_concurrent_requests > 0.0
            && fb.average_proxied_concurrent_requests < 0.1,
        "one quick proxied request: {fb:?}"
    );
    assert!(
        near(
            num(&b, "average_concurrency"),
            fb.average_concurrent_requests,
            1e-9
        ),
        "the same window as the report: {b} vs {fb:?}"
    );
    assert!(
        near(num(&b, "average_concurrency"), 0.5, 0.1),
        "one 500 ms request (and a quick one) in a 1 s window (started {lag:.3} s into it): {b}"
    );

    let z = entry(ZERO);
    let fz = f1.expect(ZERO);
    assert_eq!(num(&z, "in_flight"), 0.0, "nothing reached a backend: {z}");
    assert_eq!(num(&z, "held"), 2.0, "{z}");
    assert_eq!(num(&z, "requests"), 2.0, "both arrivals, poke or not: {z}");
    assert_eq!(
        fz.request_count, 1.0,
        "the report takes the poked one off: {fz:?}"
    );
    assert!(
        near(
            num(&z, "average_concurrency"),
            fz.average_concurrent_requests,
            1e-9
        ),
        "the same window as the report: {z} vs {fz:?}"
    );
    assert!(
        num(&z, "average_concurrency") > 1.5 && num(&z, "average_concurrency") <= 2.0,
        "two held for most of the window: {z}"
    );

    let i = entry(IDLE);
    for k in ["in_flight", "held", "requests", "average_concurrency"] {
        assert_eq!(num(&i, k), 0.0, "idle {k}: {i}");
    }

    weir.put_endpoints(NS, &rev(ZERO), &[zero.endpoint()]).await;
    expect_all_ok(held).await;
    let idle_now = eventually(WAIT, || async {
        let z = weir.revision_stats(NS, &rev(ZERO)).await;
        z["in_flight"] == 0 && z["held"] == 0
    })
    .await;
    assert!(idle_now, "{}", weir.revision_stats(NS, &rev(ZERO)).await);
    server.assert_clean(NODE);
}
