//! The live status page (docs/api.md#status-page): `GET /` serves the page, `GET /v1/status`
//! its data: routes with their splits, revisions with endpoints, in flight and held, the
//! last applied update and the last rejections, search and paging.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use weir_tests::admin::put_endpoints_at;
use weir_tests::{eventually, get, put_json, start_weir, Backend};

const HOST: &str = "hello.default.example.com";

async fn status(admin: &str, query: &str) -> Value {
    let r = get(&format!("{admin}/v1/status{query}"), "", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

fn route<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["routes"]["items"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("route {name} in {v}"))
}

fn revision<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["revisions"]["items"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("revision {name} in {v}"))
}

/// `hello` split 90/10 (tag `candidate` on the 10) and `cold`, a revision with no endpoint.
fn config(b1: &Backend, b2: &Backend) -> Value {
    json!({
        "services": [
            {"name": "hello", "traffic": [
                {"revision": "hello-1", "percent": 90},
                {"revision": "hello-2", "percent": 10, "tag": "candidate"}]},
            {"name": "cold", "traffic": [{"revision": "cold-1", "percent": 100}]}],
        "revisions": [
            {"name": "hello-1", "endpoints": [b1.endpoint()]},
            {"name": "hello-2", "endpoints": [b2.endpoint()]},
            {"name": "cold-1", "endpoints": []}],
    })
}

/// Changes `hello`'s split to 50/50 through the admin API.
async fn split_evenly(admin: &str) {
    let r = put_json(
        &format!("{admin}/v1/services/default/hello"),
        &json!({"traffic": [
            {"revision": "hello-1", "percent": 50},
            {"revision": "hello-2", "percent": 50, "tag": "candidate"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test]
async fn the_page_and_what_it_shows() {
    let (b1, b2) = (Backend::start("hello-1"), Backend::start("hello-2"));
    let mut cfg = config(&b1, &b2);
    cfg["ingresses"] = json!([{"name": "api", "rules": [{"hosts": ["api.example.com"], "paths": [
        {"path": "/v2", "splits": [{"revision": "hello-2", "percent": 100}]}]}]}]);
    let weir = start_weir!(cfg);
    let admin = weir.admin_url();

    // The page: one self-contained document that reads v1/status.
    let page = get(&format!("{admin}/"), "", &[]).await;
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/html"));
    assert!(page.body.contains("v1/status"), "the page polls v1/status");
    assert!(
        !page.body.contains("http://") && !page.body.contains("https://"),
        "no external assets"
    );

    let v = status(&admin, "").await;
    assert_eq!(v["ready"], true, "{v}");
    assert_eq!(v["source"], "file", "{v}");
    assert!(v["applied_at"].as_u64().is_some(), "{v}");
    assert_eq!(v["routes"]["total"], 3, "{v}");
    assert_eq!(v["revisions"]["total"], 3, "{v}");
    let hello = route(&v, "hello");
    assert_eq!(hello["kind"], "service");
    assert!(
        hello["hosts"].as_array().unwrap().iter().any(|h| h == HOST),
        "{hello}"
    );
    assert!(
        hello["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h == "candidate-hello.default.example.com"),
        "{hello}"
    );
    let splits = &hello["paths"][0]["splits"];
    assert_eq!(splits[0]["revision"], "hello-1");
    assert_eq!(splits[0]["percent"], 90);
    assert_eq!(splits[1]["tag"], "candidate");
    let api = route(&v, "api");
    assert_eq!(api["kind"], "ingress");
    assert_eq!(api["paths"][0]["path"], "/v2");
    assert_eq!(
        revision(&v, "hello-1")["endpoints"][0],
        b1.endpoint().as_str()
    );

    // A split change through the API shows at once.
    split_evenly(&admin).await;
    let v = status(&admin, "").await;
    assert_eq!(
        route(&v, "hello")["paths"][0]["splits"][0]["percent"],
        50,
        "{v}"
    );
    assert_eq!(v["source"], "api", "{v}");

    // A rejected update is listed with its error path, and changes nothing.
    let r = put_json(
        &format!("{admin}/v1/services/default/hello"),
        &json!({"traffic": [{"revision": "nope", "percent": 100}]}),
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    let v = status(&admin, "").await;
    let rejection = &v["rejections"][0];
    assert_eq!(rejection["source"], "api", "{v}");
    assert!(
        rejection["errors"][0]
            .as_str()
            .unwrap()
            .contains("traffic[0].revision"),
        "{rejection}"
    );
    assert_eq!(
        route(&v, "hello")["paths"][0]["splits"][0]["percent"],
        50,
        "{v}"
    );

    // A held request appears, then goes once the revision has an endpoint.
    let url = weir.http_url();
    let held =
        tokio::spawn(async move { get(&format!("{url}/"), "cold.default.example.com", &[]).await });
    let seen_held = eventually(Duration::from_secs(10), || {
        let admin = admin.clone();
        async move { revision(&status(&admin, "").await, "cold-1")["held"] == 1 }
    })
    .await;
    assert!(seen_held, "the held request never showed");
    let r = put_endpoints_at(&weir.admin_url(), "default", "cold-1", &[b1.endpoint()]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(held.await.unwrap().status, 200);
    let v = status(&weir.admin_url(), "").await;
    assert_eq!(revision(&v, "cold-1")["held"], 0, "{v}");

    // Search and paging.
    let v = status(&weir.admin_url(), "?q=API").await;
    assert_eq!(v["routes"]["total"], 1, "{v}");
    assert_eq!(v["routes"]["items"][0]["name"], "api");
    let v = status(&weir.admin_url(), "?offset=1&limit=1").await;
    assert_eq!(v["routes"]["total"], 3, "{v}");
    assert_eq!(v["routes"]["items"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["revisions"]["items"].as_array().unwrap().len(), 1, "{v}");
}

/// The page in a real browser: headless Chromium (the distribution's package; `.ci/run`
/// installs it) loads it from a running proxy, runs its script against `/v1/status`, and
/// the DOM it renders shows the split bars, a held request, and a split changed through the
/// API; a screenshot is saved under the target directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_renders_in_a_real_browser() {
    let chromium = weir_tests::browser::chromium()
        .expect("headless Chromium is needed (apt-get install chromium; .ci/run installs it)");
    let (b1, b2) = (Backend::start("hello-1"), Backend::start("hello-2"));
    let weir = start_weir!(config(&b1, &b2));
    let admin = weir.admin_url();
    let url = weir.http_url();
    let held =
        tokio::spawn(async move { get(&format!("{url}/"), "cold.default.example.com", &[]).await });
    let a = admin.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            let a = a.clone();
            async move { revision(&status(&a, "").await, "cold-1")["held"] == 1 }
        })
        .await
    );

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let render = |extra: Vec<String>| {
        let (chromium, page) = (chromium.to_string(), format!("{admin}/"));
        tokio::task::spawn_blocking(move || {
            let profile = tempfile::tempdir().expect("profile dir");
            let mut cmd = std::process::Command::new(chromium);
            cmd.args(weir_tests::browser::HEADLESS)
                // Virtual time: the page's first poll and render happen before the dump.
                .arg("--virtual-time-budget=4000")
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .args(extra)
                .arg(page)
                .stderr(std::process::Stdio::null());
            let out = cmd.output().expect("run chromium");
            assert!(out.status.success(), "chromium: {:?}", out.status);
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };

    let dom = render(vec!["--dump-dom".into()]).await.unwrap();
    for want in [
        r#"data-route="default/hello""#,
        r#"data-split="hello-1" data-percent="90""#,
        r#"data-split="hello-2" data-percent="10" data-tag="candidate""#,
        r#"data-revision="default/cold-1""#,
        r#"data-held="1""#,
    ] {
        assert!(
            dom.contains(want),
            "{want} not in the rendered page:\n{dom}"
        );
    }

    // A split changed through the API is what the page shows next.
    split_evenly(&admin).await;
    let dom = render(vec!["--dump-dom".into()]).await.unwrap();
    assert!(
        dom.contains(r#"data-split="hello-1" data-percent="50""#),
        "{dom}"
    );

    // The held request leaves the page once released.
    put_endpoints_at(&admin, "default", "cold-1", &[b1.endpoint()]).await;
    assert_eq!(held.await.unwrap().status, 200);
    let dom = render(vec!["--dump-dom".into()]).await.unwrap();
    assert!(dom.contains(r#"data-revision="default/cold-1""#), "{dom}");
    assert!(!dom.contains(r#"data-held="1""#), "{dom}");

    render(vec![format!("--screenshot={}", shot.display())])
        .await
        .unwrap();
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
}

/// The page left open in a browser follows what happens, without a reload: a split changed
/// through the API appears on the next poll (the page polls every second; the time it took
/// is printed), a held request appears and goes. Driven over the DevTools protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_page_follows_changes() {
    let (b1, b2) = (Backend::start("hello-1"), Backend::start("hello-2"));
    let weir = start_weir!(config(&b1, &b2));
    let admin = weir.admin_url();
    let mut page = weir_tests::browser::Browser::open(&format!("{admin}/")).await;
    let percent = r#"(() => { const e = document.querySelector('[data-split="hello-1"]');
                       return e ? e.dataset.percent : null; })()"#;
    let deadline = |secs| std::time::Instant::now() + Duration::from_secs(secs);
    let until = deadline(30);
    while page.eval(percent).await != "90" {
        assert!(
            std::time::Instant::now() < until,
            "the page never showed the split"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let changed = std::time::Instant::now();
    split_evenly(&admin).await;
    while page.eval(percent).await != "50" {
        // The page polls every second: a change shows within 2 s.
        assert!(
            changed.elapsed() < Duration::from_secs(2),
            "the open page did not show the new split within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "status page: the split change showed on the open page {:?} after the API call",
        changed.elapsed()
    );

    let held_shown =
        r#"document.querySelector('[data-revision="default/cold-1"] [data-held="1"]') !== null"#;
    let url = weir.http_url();
    let held =
        tokio::spawn(async move { get(&format!("{url}/"), "cold.default.example.com", &[]).await });
    let until = deadline(10);
    while page.eval(held_shown).await != true {
        assert!(
            std::time::Instant::now() < until,
            "the held request never showed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    put_endpoints_at(&admin, "default", "cold-1", &[b1.endpoint()]).await;
    assert_eq!(held.await.unwrap().status, 200);
    let until = deadline(10);
    while page.eval(held_shown).await != false {
        assert!(
            std::time::Instant::now() < until,
            "the released request stayed on the page"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
