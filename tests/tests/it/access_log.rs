//! The access log, the process log and the placeholder page (docs/operations.md): the fields
//! of a routed, held, unroutable, unconnectable and timed-out request; lines dropped and
//! counted when the writer cannot keep up, requests unaffected; reopening on SIGUSR1;
//! `--log-format json` with no line per failed request; the placeholder for browsers only.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use weir_tests::{
    dead_endpoint, eventually, get, new_client, parse_metrics, send, Backend, Signal, Weir,
};

const WAIT: Duration = Duration::from_secs(10);

/// The access log's lines so far, parsed.
fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Waits until the access log at `path` has at least `n` lines; returns them.
async fn wait_lines(path: &Path, n: usize) -> Vec<Value> {
    let ok = eventually(WAIT, || async { lines(path).len() >= n }).await;
    let got = lines(path);
    assert!(
        ok,
        "{} line(s) in {}, wanted {n}: {got:#?}",
        got.len(),
        path.display()
    );
    got
}

async fn metric(weir: &Weir, name: &str) -> f64 {
    let body = get(&format!("{}/metrics", weir.admin_url()), "", &[])
        .await
        .body;
    parse_metrics(&body)
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

fn log_path(weir: &Weir) -> PathBuf {
    weir.dir().join("access.log")
}

/// Every field for a routed (200), a held then released (200), an unroutable (404), an
/// unconnectable (502) and a timed-out held request (504).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_of_each_outcome() {
    let backend = Backend::start("ok-1");
    let dead = dead_endpoint();
    let weir = weir_tests::start_weir!(json!({
        "access_log": {"to": "access.log"},
        "services": [
            {"name": "ok", "traffic": [{"revision": "ok-1", "percent": 100, "tag": "current"}]},
            {"name": "cold", "traffic": [{"revision": "cold-1", "percent": 100}]},
            {"name": "dead", "traffic": [{"revision": "dead-1", "percent": 100}]},
            {"name": "slow", "traffic": [{"revision": "slow-1", "percent": 100}]},
        ],
        "revisions": [
            {"name": "ok-1", "endpoints": [backend.endpoint()]},
            {"name": "cold-1", "endpoints": []},
            {"name": "dead-1", "endpoints": [dead]},
            {"name": "slow-1", "endpoints": [], "timeout": "300ms"},
        ],
    }));
    let path = log_path(&weir);
    let url = weir.http_url();
    let client = new_client();

    let r = send(
        &client,
        &format!("{url}/a?b=1"),
        "current-ok.default.example.com",
        &[
            ("x-request-id", "req-1"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("user-agent", "tester/1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let line = &wait_lines(&path, 1).await[0];
    assert_eq!(line["method"], "GET");
    assert_eq!(line["host"], "current-ok.default.example.com");
    assert_eq!(line["path"], "/a?b=1");
    assert_eq!(line["protocol"], "HTTP/1.1");
    assert_eq!(line["status"], 200);
    assert_eq!(line["namespace"], "default");
    assert_eq!(line["revision"], "ok-1");
    assert_eq!(line["endpoint"], backend.addr().to_string());
    assert_eq!(line["tag"], "current");
    assert_eq!(line["attempts"], 1);
    assert_eq!(line["request_id"], "req-1");
    assert_eq!(
        line["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_eq!(line["user_agent"], "tester/1");
    assert_eq!(line["bytes_out"].as_u64(), Some(r.body.len() as u64));
    assert!(line["upstream_ms"].as_f64().is_some(), "{line}");
    assert!(
        line["total_ms"].as_f64() >= line["upstream_ms"].as_f64(),
        "{line}"
    );
    assert_eq!(line["held_ms"], 0.0);
    assert!(line["error"].is_null(), "{line}");
    let client_addr: std::net::SocketAddr = line["client"].as_str().unwrap().parse().unwrap();
    assert!(client_addr.ip().is_loopback());
    assert!(line["time"].as_str().unwrap().ends_with('Z'));

    // Held, then released by the endpoints update.
    let held = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move {
            send(
                &client,
                &format!("{url}/held"),
                "cold.default.example.com",
                &[],
            )
            .await
        }
    });
    let ok = eventually(WAIT, || async {
        weir.revision_stats("default", "cold-1").await["held"] == 1
    })
    .await;
    assert!(ok, "the request was not held");
    weir.put_endpoints("default", "cold-1", &[backend.endpoint()])
        .await;
    assert_eq!(held.await.unwrap().status, 200);
    let line = &wait_lines(&path, 2).await[1];
    assert_eq!(line["path"], "/held");
    assert_eq!(line["status"], 200);
    assert_eq!(line["revision"], "cold-1");
    assert!(line["held_ms"].as_f64().unwrap() > 0.0, "{line}");
    assert!(
        line["total_ms"].as_f64() >= line["held_ms"].as_f64(),
        "{line}"
    );

    // Unroutable.
    let r = send(&client, &format!("{url}/x"), "nobody.example.com", &[]).await;
    assert_eq!(r.status, 404);
    let line = &wait_lines(&path, 3).await[2];
    assert_eq!(line["status"], 404);
    assert!(
        line["revision"].is_null() && line["endpoint"].is_null(),
        "{line}"
    );
    assert_eq!(line["attempts"], 0);

    // No endpoint accepts: every attempt fails to connect.
    let r = send(
        &client,
        &format!("{url}/x"),
        "dead.default.example.com",
        &[],
    )
    .await;
    assert_eq!(r.status, 502);
    let line = &wait_lines(&path, 4).await[3];
    assert_eq!(line["status"], 502);
    assert_eq!(line["revision"], "dead-1");
    assert_eq!(line["error"], "connect");
    assert_eq!(line["endpoint"], dead);
    assert!(line["attempts"].as_u64().unwrap() >= 1, "{line}");
    assert!(line["upstream_ms"].is_null(), "{line}");

    // Held for the revision's whole timeout.
    let r = send(
        &client,
        &format!("{url}/x"),
        "slow.default.example.com",
        &[],
    )
    .await;
    assert_eq!(r.status, 504);
    let line = &wait_lines(&path, 5).await[4];
    assert_eq!(line["status"], 504);
    assert_eq!(line["error"], "hold_timeout");
    assert!(line["held_ms"].as_f64().unwrap() >= 300.0, "{line}");
    assert!(line["endpoint"].is_null(), "{line}");

    assert_eq!(metric(&weir, "weir_access_log_dropped_total").await, 0.0);
    assert!(metric(&weir, "weir_access_log_written_total").await >= 5.0);
}

/// The writer is stuck (its target is a FIFO nobody reads): lines beyond the buffer are
/// dropped and counted, requests are all answered; once a reader comes, what was buffered
/// is written, and written + dropped is every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_buffer_drops_lines_not_requests() {
    let backend = Backend::start("r-1");
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("log.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let weir = weir_tests::start_weir!(json!({
        "access_log": {"to": fifo.to_str().unwrap(), "buffer": "8KiB"},
        "services": [{"name": "r", "traffic": [{"revision": "r-1", "percent": 100}]}],
        "revisions": [{"name": "r-1", "endpoints": [backend.endpoint()]}],
    }));
    const N: usize = 400;
    let client = new_client();
    let url = weir.http_url();
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                send(&client, &format!("{url}/{i}"), "r.default.example.com", &[]).await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
    let dropped = metric(&weir, "weir_access_log_dropped_total").await;
    assert!(
        dropped > 0.0,
        "nothing dropped with an 8 KiB buffer and no reader"
    );
    assert_eq!(metric(&weir, "weir_access_log_written_total").await, 0.0);

    // A reader comes: the buffered lines arrive.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&fifo).unwrap();
        for line in BufReader::new(f).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let kept = (N as f64 - dropped) as usize;
    for i in 0..kept {
        let line = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("{i} of the {kept} kept lines arrived"));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["status"], 200);
    }
    let ok = eventually(WAIT, || async {
        metric(&weir, "weir_access_log_written_total").await as usize == kept
    })
    .await;
    assert!(ok, "written + dropped = every request");
}

/// Log rotation: the file is renamed, SIGUSR1 makes Weir open a new one at the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_file() {
    let backend = Backend::start("r-1");
    let weir = weir_tests::start_weir!(json!({
        "access_log": {"to": "access.log", "format": "text"},
        "services": [{"name": "r", "traffic": [{"revision": "r-1", "percent": 100}]}],
        "revisions": [{"name": "r-1", "endpoints": [backend.endpoint()]}],
    }));
    let path = log_path(&weir);
    let rotated = weir.dir().join("access.log.1");
    let text = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let host = "r.default.example.com";
    assert_eq!(
        get(&format!("{}/before", weir.http_url()), host, &[])
            .await
            .status,
        200
    );
    assert!(eventually(WAIT, || async { text(&path).contains("/before") }).await);
    std::fs::rename(&path, &rotated).unwrap();
    weir.signal(Signal::SIGUSR1);
    // The reopen creates the file at once.
    assert!(
        eventually(WAIT, || async { path.exists() }).await,
        "no new file after SIGUSR1"
    );
    assert_eq!(
        get(&format!("{}/after", weir.http_url()), host, &[])
            .await
            .status,
        200
    );
    assert!(eventually(WAIT, || async { text(&path).contains("/after") }).await);
    let old = text(&rotated);
    assert!(old.contains("\"GET /before HTTP/1.1\" 200"), "{old}");
    assert!(!old.contains("/after"), "{old}");
    assert_eq!(text(&path).lines().count(), 1);
}

/// `--log-format json`: every process log line is a JSON object; clients going away and
/// backends failing write no line per request (the access log has them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_log_is_json_and_quiet_per_request() {
    let weir = Weir::builder(
        weir_tests::weir_bin!(),
        &json!({
            "access_log": {"to": "access.log"},
            "services": [
                {"name": "dead", "traffic": [{"revision": "dead-1", "percent": 100}]},
                {"name": "cold", "traffic": [{"revision": "cold-1", "percent": 100}]},
            ],
            "revisions": [
                {"name": "dead-1", "endpoints": [dead_endpoint()]},
                {"name": "cold-1", "endpoints": [], "timeout": "200ms"},
            ],
        }),
    )
    .arg("--log-format")
    .arg("json")
    .start();
    let client = new_client();
    let url = weir.http_url();
    for i in 0..20 {
        let host = if i % 2 == 0 { "dead" } else { "cold" };
        let r = send(
            &client,
            &format!("{url}/{i}"),
            &format!("{host}.default.example.com"),
            &[],
        )
        .await;
        assert!(r.status == 502 || r.status == 504, "{}", r.status);
    }
    // Clients that go away while held.
    for i in 0..10 {
        let mut s = tokio::net::TcpStream::connect(weir.http_addr())
            .await
            .unwrap();
        use tokio::io::AsyncWriteExt;
        let req = format!("GET /gone{i} HTTP/1.1\r\nHost: cold.default.example.com\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        drop(s);
    }
    wait_lines(&log_path(&weir), 30).await;
    let stderr = weir.logs();
    let mut n = 0;
    for l in stderr.lines().filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["time"].is_string() && v["level"].is_string() && v["message"].is_string());
        let msg = v["message"].as_str().unwrap();
        assert!(
            !msg.contains("Fail to proxy") && !msg.contains("ConnectionClosed"),
            "a per-request line in the process log: {l}"
        );
        n += 1;
    }
    assert!(n > 0, "the process log says nothing at all");
    assert!(stderr.contains("config generation 1 applied"), "{stderr}");
}

/// `hold.placeholder`: a browser still held after `after` gets the page (503, Retry-After,
/// Refresh); an API client keeps waiting and is served when endpoints come; a missing page
/// file is a config error naming its path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholder_for_browsers_only() {
    let backend = Backend::start("web-1");
    let page = "<!doctype html><title>Starting</title><p>Starting up…</p>\n";
    let weir = Weir::builder(
        weir_tests::weir_bin!(),
        &json!({
            "access_log": {"to": "access.log"},
            "services": [{
                "name": "web",
                "traffic": [{"revision": "web-1", "percent": 100}],
                "hold": {"placeholder": {"after": "200ms", "html": "starting.html"}},
            }],
            "revisions": [{"name": "web-1", "endpoints": []}],
        }),
    )
    .file("starting.html", page)
    .start();
    let client = new_client();
    let url = format!("{}/", weir.http_url());
    let host = "web.default.example.com";
    let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

    let api = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move { send(&client, &url, host, &[("accept", "application/json")]).await }
    });
    let r = send(&client, &url, host, &[("accept", browser)]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.body, page);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("retry-after"), Some("2"));
    assert_eq!(r.header("refresh"), Some("2"));
    let line = wait_lines(&log_path(&weir), 1).await.remove(0);
    assert_eq!(line["error"], "placeholder");
    assert!(line["held_ms"].as_f64().unwrap() >= 200.0, "{line}");

    // The API client is still waiting; endpoints come and it is served.
    assert!(
        !api.is_finished(),
        "the API client was answered without endpoints"
    );
    let ok = eventually(WAIT, || async {
        weir.revision_stats("default", "web-1").await["held"] == 1
    })
    .await;
    assert!(ok);
    weir.put_endpoints("default", "web-1", &[backend.endpoint()])
        .await;
    assert_eq!(api.await.unwrap().status, 200);
    // With endpoints, a browser is served like anyone.
    assert_eq!(
        send(&client, &url, host, &[("accept", browser)])
            .await
            .status,
        200
    );

    // A page that cannot be read is refused with its path; the running config stays.
    let bad = json!({
        "services": [{
            "name": "web",
            "traffic": [{"revision": "web-1", "percent": 100}],
            "hold": {"placeholder": {"html": "missing.html"}},
        }],
        "revisions": [{"name": "web-1", "endpoints": [backend.endpoint()]}],
    });
    let r = weir_tests::put_json(&format!("{}/v1/config", weir.admin_url()), &bad).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("hold.placeholder.html") && r.body.contains("missing.html"),
        "{}",
        r.body
    );
}
