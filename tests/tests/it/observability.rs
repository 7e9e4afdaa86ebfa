//! `deploy/observability/`: the Grafana dashboard and the Prometheus alert rules parse, and
//! every Weir metric they name is one that a running `weir proxy` exports (so a renamed
//! metric cannot leave a panel or an alert silently empty).

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::json;
use weir_tests::{get, parse_metrics, start_weir, Backend};

fn file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/observability")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `weir_*` metric names in a PromQL expression (histogram series mapped to their family).
fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("weir_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            let name = &expr[start..end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            into.insert(family.to_string());
        }
        i = end;
    }
}

/// Every `expr` of the dashboard's panels (rows included) and of its template variables.
fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_exprs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| dashboard_exprs(x, out)),
        _ => {}
    }
}

#[tokio::test]
async fn dashboard_and_alerts_name_only_exported_metrics() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&file("dashboard.json")).expect("dashboard.json is JSON");
    assert_eq!(dashboard["uid"], "weir-overview");
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() > 10));
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() > 10, "the dashboard's queries: {exprs:?}");

    let alerts: serde_norway::Value =
        serde_norway::from_str(&file("alerts.yaml")).expect("alerts.yaml is YAML");
    let groups = alerts["groups"].as_sequence().expect("groups");
    let mut alert_names = Vec::new();
    for g in groups {
        for rule in g["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("every rule is an alert");
            let expr = rule["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: expr"));
            assert!(
                rule["annotations"]["summary"].as_str().is_some(),
                "{name}: a summary"
            );
            alert_names.push(name.to_string());
            exprs.push(expr.to_string());
        }
    }
    for wanted in [
        "WeirConfigRejected",
        "WeirXdsDisconnected",
        "WeirHoldTimeouts",
        "WeirHigh5xxRatio",
    ] {
        assert!(
            alert_names.iter().any(|a| a == wanted),
            "{wanted} in {alert_names:?}"
        );
    }

    let mut named = BTreeSet::new();
    for e in &exprs {
        metric_names(e, &mut named);
    }
    assert!(named.len() > 10, "{named:?}");

    // A proxy that has served, held and timed out requests, so every family has samples.
    let backend = Backend::start("obs-1");
    let weir = start_weir!(json!({
        "hold": {"timeout": "200ms"},
        "services": [
            {"name": "obs", "traffic": [{"revision": "obs-1", "percent": 100}]},
            {"name": "cold", "traffic": [{"revision": "cold-1", "percent": 100}]}],
        "revisions": [
            {"name": "obs-1", "endpoints": [backend.endpoint()]},
            {"name": "cold-1", "endpoints": []}],
    }));
    let r = get(
        &format!("{}/", weir.http_url()),
        "obs.default.example.com",
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = get(
        &format!("{}/", weir.http_url()),
        "cold.default.example.com",
        &[],
    )
    .await;
    assert_eq!(r.status, 504, "{r:?}");
    let body = get(&format!("{}/metrics", weir.admin_url()), "", &[])
        .await
        .body;
    let exported: BTreeSet<String> = parse_metrics(&body)
        .into_iter()
        .map(|s| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|x| s.name.strip_suffix(x))
                .unwrap_or(&s.name)
                .to_string()
        })
        .collect();
    let missing: Vec<&String> = named.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "named by the dashboard or the alerts but not exported: {missing:?}\nexported: {exported:?}"
    );
}
