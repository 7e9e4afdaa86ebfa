//! The admin listener: health, readiness, the config view and metrics (docs/api.md#admin-api, docs/metrics.md#metrics).

use std::time::{Duration, Instant};

use serde_json::json;
use weir_tests::{get, parse_metrics, start_weir, Backend, Sample};

#[tokio::test]
async fn health_ready_and_config() {
    let backend = Backend::start("hello-00001");
    let weir = start_weir!(json!({
        "services": [{"name": "hello", "traffic": [{"revision": "hello-00001", "percent": 100}]}],
        "revisions": [{"name": "hello-00001", "endpoints": [backend.endpoint()]}],
    }));
    let admin = weir.admin_url();

    let r = get(&format!("{admin}/healthz"), "", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body.trim(), "ok");

    let r = get(&format!("{admin}/readyz"), "", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");

    let r = get(&format!("{admin}/v1/config"), "", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert!(v["generation"].as_u64().is_some(), "generation: {v}");
    assert_eq!(v["config"]["services"][0]["name"], "hello", "{v}");
    assert_eq!(
        v["config"]["revisions"][0]["endpoints"][0],
        backend.endpoint().as_str(),
        "{v}"
    );
}

fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
}

#[tokio::test]
async fn metrics_count_requests_by_revision_and_code() {
    let backend = Backend::start("hello-00001");
    let weir = start_weir!(json!({
        "services": [{"name": "hello", "traffic": [{"revision": "hello-00001", "percent": 100}]}],
        "revisions": [{"name": "hello-00001", "endpoints": [backend.endpoint()]}],
    }));
    let host = "hello.default.example.com";
    for _ in 0..3 {
        let r = get(&format!("{}/", weir.http_url()), host, &[]).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let r = get(&format!("{}/status/503", weir.http_url()), host, &[]).await;
    assert_eq!(r.status, 503, "{r:?}");
    let r = get(&format!("{}/", weir.http_url()), "nope.example.com", &[]).await;
    assert_eq!(r.status, 404, "{r:?}");

    // Metrics may be recorded just after the response is sent: poll briefly.
    let want: [(&[(&str, &str)], f64); 3] = [
        (
            &[
                ("namespace", "default"),
                ("revision", "hello-00001"),
                ("code", "200"),
            ],
            3.0,
        ),
        (
            &[
                ("namespace", "default"),
                ("revision", "hello-00001"),
                ("code", "503"),
            ],
            1.0,
        ),
        (&[("namespace", ""), ("revision", ""), ("code", "404")], 1.0),
    ];
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let r = get(&format!("{}/metrics", weir.admin_url()), "", &[]).await;
        assert_eq!(r.status, 200, "{r:?}");
        let samples = parse_metrics(&r.body);
        let done = want.iter().all(|(labels, n)| {
            find(&samples, "weir_requests_total", labels).is_some_and(|s| s.value >= *n)
        });
        if done || Instant::now() >= deadline {
            break r.body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let samples = parse_metrics(&text);
    for (labels, n) in want {
        let s = find(&samples, "weir_requests_total", labels)
            .unwrap_or_else(|| panic!("no weir_requests_total{labels:?} in:\n{text}"));
        assert_eq!(s.value, n, "weir_requests_total{labels:?}");
    }
    assert!(
        samples
            .iter()
            .any(|s| s.name.starts_with("weir_request_duration_seconds")
                && s.label("revision") == Some("hello-00001")),
        "no weir_request_duration_seconds for hello-00001 in:\n{text}"
    );
    assert!(
        samples.iter().any(|s| s.name == "weir_config_generation"),
        "no weir_config_generation in:\n{text}"
    );
}
