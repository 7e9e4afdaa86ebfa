//! Live updates: 200 split changes under steady load fail nothing, directly and through
//! `weir control` to two proxies (whole configs and one service at a time); the per-object
//! endpoints; invalid updates through the API, SIGHUP and dry runs change nothing, and dry
//! runs and `weir check` refuse what an apply refuses; the admin token and the body limit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use weir_tests::admin::request_json;
use weir_tests::{
    eventually, free_port, new_client, put_json, start_control, try_send, weir_bin, Backend,
    Signal, Weir,
};

const HOST: &str = "hello.default.example.com";
const CHANGES: usize = 200;
const CLIENTS: usize = 8;

/// Step `k` of the change series: even steps split r1/r2, odd steps r2/r3, with a percent
/// that moves every time. r1 is only valid on even steps and r3 only on odd ones, so a
/// request routed by a stale table after an update was answered would be caught.
fn step(k: usize, endpoints: &[String; 3]) -> (Value, [&'static str; 2]) {
    let p = 10 + (k * 7) % 81;
    let pair = if k.is_multiple_of(2) {
        ["r1", "r2"]
    } else {
        ["r2", "r3"]
    };
    let cfg = json!({
        "services": [{"name": "hello", "traffic": [
            {"revision": pair[0], "percent": p},
            {"revision": pair[1], "percent": 100 - p},
        ]}],
        "revisions": [
            {"name": "r1", "endpoints": [endpoints[0]]},
            {"name": "r2", "endpoints": [endpoints[1]]},
            {"name": "r3", "endpoints": [endpoints[2]]},
        ],
    });
    (cfg, pair)
}

/// One applied update: when its PUT was sent and answered, and the revisions it allows.
#[derive(Clone)]
struct Applied {
    sent: Instant,
    answered: Instant,
    allowed: [&'static str; 2],
}

/// One request: when it started and ended, and who answered (or the failure).
struct Outcome {
    start: Instant,
    end: Instant,
    result: Result<String, String>,
}

/// Steady load on every URL until `stop`; each outcome recorded.
fn load(urls: Vec<String>, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<Vec<Outcome>>> {
    (0..CLIENTS)
        .map(|i| {
            let url = urls[i % urls.len()].clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let client = new_client();
                let mut out = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    let r = try_send(&client, &url, HOST, &[]).await;
                    let result = match r {
                        Ok(r) if r.status == 200 => {
                            Ok(r.revision().unwrap_or_default().to_string())
                        }
                        Ok(r) => Err(format!("status {} {:?}", r.status, r.body)),
                        Err(e) => Err(e),
                    };
                    out.push(Outcome {
                        start,
                        end: Instant::now(),
                        result,
                    });
                }
                out
            })
        })
        .collect()
}

async fn collect(tasks: Vec<tokio::task::JoinHandle<Vec<Outcome>>>) -> Vec<Outcome> {
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("load task"));
    }
    all
}

fn backends() -> ([Backend; 3], [String; 3]) {
    let b = [
        Backend::start("r1"),
        Backend::start("r2"),
        Backend::start("r3"),
    ];
    let e = [b[0].endpoint(), b[1].endpoint(), b[2].endpoint()];
    (b, e)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_split_changes_under_load_fail_nothing() {
    let (_b, endpoints) = backends();
    let weir = Weir::start(weir_bin!(), &step(0, &endpoints).0);
    let stop = Arc::new(AtomicBool::new(false));
    let first = Instant::now();
    let mut applied = vec![Applied {
        sent: first,
        answered: first,
        allowed: step(0, &endpoints).1,
    }];
    let tasks = load(vec![format!("{}/", weir.http_url())], stop.clone());
    for k in 1..=CHANGES {
        let (cfg, allowed) = step(k, &endpoints);
        let sent = Instant::now();
        weir.put_config(&cfg).await;
        applied.push(Applied {
            sent,
            answered: Instant::now(),
            allowed,
        });
    }
    stop.store(true, Ordering::Relaxed);
    let outcomes = collect(tasks).await;

    let failures: Vec<_> = outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} failed requests, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    // A request that started after update k was answered runs on k or later; one that
    // started before update k+1 was sent runs on k or earlier. So it may use any update in
    // force at some instant between its start and its end.
    let mut stale = 0;
    for o in &outcomes {
        let rev = o.result.as_ref().expect("checked above");
        let ok = applied.iter().enumerate().any(|(k, a)| {
            let until = applied.get(k + 1).map_or(o.end, |next| next.answered);
            a.sent <= o.end && o.start <= until && a.allowed.contains(&rev.as_str())
        });
        if !ok {
            stale += 1;
        }
    }
    eprintln!(
        "{} requests during {CHANGES} split changes: 0 failed, {stale} on a revision not valid when they ran",
        outcomes.len()
    );
    assert_eq!(
        stale, 0,
        "requests answered by a revision outside every config in force"
    );
    assert!(
        outcomes.len() > CHANGES,
        "the load was too thin to mean anything"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_changes_through_weir_control_reach_two_proxies_without_failures() {
    let (_b, endpoints) = backends();
    let control = start_control!(step(0, &endpoints).0);
    let proxies: Vec<Weir> = (0..2)
        .map(|i| {
            Weir::builder(weir_bin!(), &json!({}))
                .arg("--xds")
                .arg(control.xds_url())
                .arg("--node-id")
                .arg(format!("proxy-{i}"))
                .without_config_flag()
                .ready_timeout(Duration::from_secs(30))
                .start()
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sent0 = Instant::now();
    let applied = Arc::new(Mutex::new(vec![(sent0, step(0, &endpoints).1)]));
    let urls = proxies
        .iter()
        .map(|p| format!("{}/", p.http_url()))
        .collect();
    let tasks = load(urls, stop.clone());
    for k in 1..=CHANGES {
        let (cfg, allowed) = step(k, &endpoints);
        let sent = Instant::now();
        if k.is_multiple_of(2) {
            control.put_config(&cfg).await;
        } else {
            // Odd steps change the one service through its own endpoint.
            control
                .put_object("services", "default", "hello", &cfg["services"][0])
                .await;
        }
        applied.lock().unwrap().push((sent, allowed));
    }
    // The last change reaches both proxies.
    let last = step(CHANGES, &endpoints).1;
    for p in &proxies {
        let client = new_client();
        let url = format!("{}/", p.http_url());
        let converged = eventually(Duration::from_secs(20), || {
            let (client, url) = (&client, &url);
            async move {
                let mut seen = std::collections::HashSet::new();
                for _ in 0..30 {
                    if let Ok(r) = try_send(client, url, HOST, &[]).await {
                        seen.insert(r.revision().unwrap_or_default().to_string());
                    }
                }
                seen.iter().all(|r| last.contains(&r.as_str()))
            }
        })
        .await;
        assert!(converged, "a proxy never converged to the last split");
    }
    stop.store(true, Ordering::Relaxed);
    let outcomes = collect(tasks).await;
    let failures: Vec<_> = outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} failed requests, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    // Through xDS a proxy converges a little after the control plane answers, so the check
    // is that every answer comes from a config that had been sent before the request ended.
    let applied = applied.lock().unwrap().clone();
    let bad = outcomes
        .iter()
        .filter(|o| {
            let rev = o.result.as_ref().expect("checked above");
            !applied
                .iter()
                .any(|(sent, allowed)| *sent <= o.end && allowed.contains(&rev.as_str()))
        })
        .count();
    eprintln!(
        "{} requests through 2 xDS proxies during {CHANGES} changes: 0 failed, {bad} from no sent config",
        outcomes.len()
    );
    assert_eq!(bad, 0);
}

#[tokio::test]
async fn invalid_updates_change_nothing() {
    let (_b, endpoints) = backends();
    let (good, _) = step(0, &endpoints);
    let weir = Weir::start(weir_bin!(), &good);
    let generation = || async {
        let r = weir_tests::get(&format!("{}/v1/config", weir.admin_url()), "", &[]).await;
        r.json()["generation"].as_u64().expect("generation")
    };
    let g0 = generation().await;

    // API: every error with its path, 400, nothing changed.
    let mut bad = good.clone();
    bad["services"][0]["traffic"][0]["percent"] = json!(5);
    bad["services"][0]["traffic"][1]["revision"] = json!("nope");
    let r = put_json(&format!("{}/v1/config", weir.admin_url()), &bad).await;
    assert_eq!(r.status, 400, "{r:?}");
    let paths: Vec<String> = r.json()["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["path"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        paths.contains(&"services[0].traffic".to_string()),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"services[0].traffic[1].revision".to_string()),
        "{paths:?}"
    );
    assert_eq!(generation().await, g0);

    // Dry run: a valid config is accepted and not applied.
    let (next, _) = step(1, &endpoints);
    let r = put_json(
        &format!("{}/v1/config?dry_run=true", weir.admin_url()),
        &next,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(generation().await, g0);
    let r = weir_tests::get(&format!("{}/", weir.http_url()), HOST, &[]).await;
    assert!(matches!(r.revision(), Some("r1" | "r2")), "{r:?}");

    // SIGHUP with an invalid file: logged, counted, nothing changed.
    weir.write_config(&bad);
    weir.signal(Signal::SIGHUP);
    let labels = [("source", "sighup"), ("result", "rejected")];
    assert!(
        eventually(Duration::from_secs(10), || async {
            weir.metric("weir_config_updates_total", &labels).await == Some(1.0)
        })
        .await,
        "the invalid SIGHUP reload was never counted"
    );
    assert_eq!(generation().await, g0);
    assert!(
        weir.logs().contains("services[0].traffic[1].revision"),
        "errors are logged with paths"
    );
    // A valid file on the next SIGHUP is applied.
    weir.write_config(&next);
    weir.signal(Signal::SIGHUP);
    assert!(
        eventually(Duration::from_secs(10), || async {
            generation().await == g0 + 1
        })
        .await,
        "the valid SIGHUP reload was not applied"
    );
}

/// The `path` of every error in a 400 answer.
fn error_paths(r: &weir_tests::Response) -> Vec<String> {
    r.json()["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors in {r:?}"))
        .iter()
        .map(|e| e["path"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn one_object_at_a_time() {
    let (_b, endpoints) = backends();
    let (good, _) = step(0, &endpoints);
    let weir = Weir::start(weir_bin!(), &good);
    let admin = weir.admin_url();
    let url = |p: &str| format!("{admin}/v1/{p}");
    let generation = || async {
        let r = weir_tests::get(&url("config"), "", &[]).await;
        r.json()["generation"].as_u64().expect("generation")
    };
    let served = || async {
        let client = new_client();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..40 {
            let r = try_send(&client, &format!("{}/", weir.http_url()), HOST, &[])
                .await
                .expect("a response");
            seen.insert(format!("{} {}", r.status, r.revision().unwrap_or_default()));
        }
        seen.into_iter().collect::<Vec<_>>()
    };
    let g0 = generation().await;

    // GET one object.
    let r = request_json(Method::GET, &url("services/default/hello"), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["object"]["traffic"][0]["revision"], "r1");
    assert_eq!(r.json()["generation"], g0);
    let r = request_json(Method::GET, &url("revisions/default/nope"), None).await;
    assert_eq!(r.status, 404, "{r:?}");

    // A service naming an unknown revision: 400 with the path, nothing changed.
    let bad = json!({"traffic": [{"revision": "nope", "percent": 100}]});
    let r = put_json(&url("services/default/hello"), &bad).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(
        error_paths(&r),
        ["services[default/hello].traffic[0].revision"]
    );
    // A body that names another object.
    let other = json!({"name": "other", "traffic": [{"revision": "r1", "percent": 100}]});
    let r = put_json(&url("services/default/hello"), &other).await;
    assert_eq!((r.status, error_paths(&r)), (400, vec!["name".to_string()]));
    // A revision still in use cannot go.
    let r = request_json(Method::DELETE, &url("revisions/default/r2"), None).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(error_paths(&r), ["revisions[default/r2]"]);
    assert_eq!(generation().await, g0);
    assert!(served()
        .await
        .iter()
        .all(|s| s == "200 r1" || s == "200 r2"));

    // A dry run is checked and not applied.
    let to_r3 = json!({"traffic": [{"revision": "r3", "percent": 100}]});
    let r = put_json(&url("services/default/hello?dry_run=true"), &to_r3).await;
    assert_eq!((r.status, r.json()["dry_run"].clone()), (200, json!(true)));
    assert_eq!(generation().await, g0);

    // The service alone changes: one generation, served at once.
    let r = put_json(&url("services/default/hello"), &to_r3).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["generation"], g0 + 1);
    assert_eq!(served().await, ["200 r3"]);
    // r1 is free now: it can go, and a new revision comes in YAML.
    let r = request_json(Method::DELETE, &url("revisions/default/r1"), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = new_client()
        .put(url("revisions/default/r4"))
        .header("content-type", "application/yaml")
        .body(format!(
            "endpoints: [\"{}\"]\ncontainer_concurrency: 2\n",
            endpoints[1]
        ))
        .send()
        .await
        .expect("PUT a revision as YAML");
    assert_eq!(r.status().as_u16(), 200);
    let r = request_json(Method::GET, &url("revisions/default/r4"), None).await;
    assert_eq!(r.json()["object"]["container_concurrency"], 2);
    // An ingress of its own hosts.
    let ing = json!({"rules": [{"hosts": ["api.example.com"], "paths": [
        {"splits": [{"revision": "r4", "percent": 100}]}]}]});
    let r = put_json(&url("ingresses/default/api"), &ing).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = weir_tests::get(&format!("{}/", weir.http_url()), "api.example.com", &[]).await;
    assert_eq!(
        (r.status, r.revision()),
        (200, Some("r2")),
        "r4 is served by r2's backend"
    );
    // An ingress may not take a host a service has.
    let clash = json!({"rules": [{"hosts": [HOST], "paths": [
        {"splits": [{"revision": "r4", "percent": 100}]}]}]});
    let r = put_json(&url("ingresses/default/clash"), &clash).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(
        error_paths(&r),
        ["ingresses[default/clash].rules[0].hosts[0]"]
    );

    // The whole config shows every change.
    let cfg = weir_tests::get(&url("config"), "", &[]).await.json();
    let names = |list: &str| -> Vec<String> {
        cfg["config"][list]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names("revisions"), ["r2", "r3", "r4"]);
    assert_eq!(names("ingresses"), ["api"]);

    // The service goes; its host with it.
    let r = request_json(Method::DELETE, &url("services/default/hello"), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = weir_tests::get(&format!("{}/", weir.http_url()), HOST, &[]).await;
    assert_eq!(r.status, 404, "{r:?}");
    let r = request_json(Method::DELETE, &url("services/default/hello"), None).await;
    assert_eq!(r.status, 404, "{r:?}");
    let r = request_json(Method::POST, &url("services/default/hello"), None).await;
    assert_eq!(r.status, 405, "{r:?}");
}

#[tokio::test]
async fn dry_runs_and_weir_check_refuse_what_the_apply_refuses() {
    let (_b, endpoints) = backends();
    let (good, _) = step(0, &endpoints);
    let ca = weir_tests::tls::TestCa::generate();
    let leaf = ca.issue(&[HOST]);
    let mut with_tls = good.clone();
    with_tls["tls"] =
        json!([{"hosts": [HOST], "cert_pem": leaf.cert_pem, "key_pem": leaf.key_pem}]);
    let weir = Weir::builder(weir_bin!(), &with_tls).https().start();
    let admin = weir.admin_url();
    let generation = || async {
        let r = weir_tests::get(&format!("{admin}/v1/config"), "", &[]).await;
        r.json()["generation"].as_u64().expect("generation")
    };
    let g0 = generation().await;

    // An endpoint name that does not resolve; a certificate that is not one.
    let mut unresolvable = with_tls.clone();
    unresolvable["revisions"][1]["endpoints"] = json!(["nowhere.invalid:8080"]);
    let mut bad_cert = with_tls.clone();
    bad_cert["tls"][0]["cert_pem"] =
        json!("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n");
    for (what, cfg, path) in [
        (
            "unresolvable name",
            &unresolvable,
            "revisions[1].endpoints[0]",
        ),
        ("bad certificate", &bad_cert, "tls[0].cert_pem"),
    ] {
        for dry in ["?dry_run=true", ""] {
            let r = put_json(&format!("{admin}/v1/config{dry}"), cfg).await;
            assert_eq!(r.status, 400, "{what} {dry:?}: {r:?}");
            assert_eq!(error_paths(&r), [path], "{what} {dry:?}");
        }
    }
    // The same through a revision's own endpoint.
    let rev = json!({"endpoints": ["nowhere.invalid:8080"]});
    for dry in ["?dry_run=true", ""] {
        let r = put_json(&format!("{admin}/v1/revisions/default/r2{dry}"), &rev).await;
        assert_eq!(r.status, 400, "{dry:?}: {r:?}");
        assert_eq!(error_paths(&r), ["revisions[default/r2].endpoints[0]"]);
    }
    assert_eq!(generation().await, g0);

    // `weir check` on the same files: refused, unless names are not looked up (then it
    // says so).
    let dir = tempfile::tempdir().expect("tempdir");
    let check = |cfg: &Value, extra: &[&str]| {
        let file = dir.path().join("c.json");
        std::fs::write(&file, cfg.to_string()).expect("write");
        let out = std::process::Command::new(weir_bin!())
            .arg("check")
            .args(extra)
            .arg(&file)
            .output()
            .expect("run weir check");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = check(&unresolvable, &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.starts_with("revisions[1].endpoints[0]: "), "{text}");
    let (code, text) = check(&unresolvable, &["--no-resolve"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("endpoint names were not resolved"), "{text}");
    let (code, text) = check(&bad_cert, &["--no-resolve"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.starts_with("tls[0].cert_pem: "), "{text}");
    let (code, text) = check(&with_tls, &[]);
    assert_eq!(code, Some(0), "{text}");
}

#[tokio::test]
async fn admin_token_and_body_limit() {
    let (_b, endpoints) = backends();
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret\n").expect("token file");
    let cfg = dir.path().join("weir.json");
    std::fs::write(&cfg, step(0, &endpoints).0.to_string()).expect("config");
    let (http, admin) = (free_port(), free_port());
    // Spawned by hand: the harness waits on /readyz, which needs the token here.
    let mut child = std::process::Command::new(weir_bin!())
        .args(["proxy", "--config"])
        .arg(&cfg)
        .args(["--http", &format!("127.0.0.1:{http}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .arg("--admin-token-file")
        .arg(&token_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn weir");
    let client = reqwest::Client::new();
    let url = |p: &str| format!("http://127.0.0.1:{admin}{p}");
    let up = eventually(Duration::from_secs(20), || {
        let (client, u) = (&client, url("/healthz"));
        async move { matches!(client.get(u).send().await, Ok(r) if r.status().as_u16() == 200) }
    })
    .await;
    let result = std::panic::AssertUnwindSafe(async {
        assert!(up, "weir never answered /healthz");
        let status = |r: reqwest::Response| r.status().as_u16();
        assert_eq!(
            status(client.get(url("/v1/config")).send().await.unwrap()),
            401
        );
        // The status page is static HTML and asks for the token; its data needs it.
        assert_eq!(status(client.get(url("/")).send().await.unwrap()), 200);
        assert_eq!(
            status(client.get(url("/v1/status")).send().await.unwrap()),
            401
        );
        assert_eq!(
            status(
                client
                    .get(url("/v1/status"))
                    .bearer_auth("s3cret")
                    .send()
                    .await
                    .unwrap()
            ),
            200
        );
        assert_eq!(
            status(
                client
                    .get(url("/v1/config"))
                    .bearer_auth("wrong")
                    .send()
                    .await
                    .unwrap()
            ),
            401
        );
        assert_eq!(
            status(
                client
                    .get(url("/readyz"))
                    .bearer_auth("s3cret")
                    .send()
                    .await
                    .unwrap()
            ),
            200
        );
        assert_eq!(
            status(
                client
                    .get(url("/v1/config"))
                    .bearer_auth("s3cret")
                    .send()
                    .await
                    .unwrap()
            ),
            200
        );
        let big = vec![b' '; 17 * 1024 * 1024];
        let r = client
            .put(url("/v1/config"))
            .bearer_auth("s3cret")
            .header("content-type", "application/json")
            .body(big)
            .send()
            .await;
        // The proxy may answer 413 and close before the whole body is sent.
        if let Ok(r) = r {
            assert_eq!(status(r), 413);
        }
    });
    let outcome = futures_util::FutureExt::catch_unwind(result).await;
    let _ = child.kill();
    let _ = child.wait();
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }
}

#[test]
fn non_loopback_admin_without_token_is_refused() {
    let out = std::process::Command::new(weir_bin!())
        .args(["proxy", "--config", "/nonexistent-but-checked-later.yaml"])
        .output()
        .expect("run weir");
    assert_eq!(out.status.code(), Some(1));
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, "services: []\n").expect("config");
    let out = std::process::Command::new(weir_bin!())
        .args(["proxy", "--config"])
        .arg(&cfg)
        .args(["--http", "127.0.0.1:0", "--admin", "0.0.0.0:0"])
        .output()
        .expect("run weir");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("admin") && stderr.contains("token"),
        "{stderr}"
    );
}
