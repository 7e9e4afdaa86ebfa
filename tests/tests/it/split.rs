//! Weighted splits: over 10,000 requests every target's share is within 1 percentage point
//! of its percent (docs/behaviour.md#splits).

use std::collections::BTreeMap;

use serde_json::json;
use weir_tests::{new_client, send, start_weir, Backend};

const CONNECTIONS: usize = 16;
const PER_CONNECTION: usize = 625;
const REQUESTS: usize = CONNECTIONS * PER_CONNECTION; // 10,000

/// Sends [`REQUESTS`] over [`CONNECTIONS`] keep-alive connections to a service split over
/// `weights` and checks each revision's share.
async fn check_split(weights: &[(&str, u32)]) {
    let backends: Vec<Backend> = weights
        .iter()
        .map(|(name, _)| Backend::start(name))
        .collect();
    let traffic: Vec<_> = weights
        .iter()
        .map(|(name, p)| json!({"revision": name, "percent": p}))
        .collect();
    let revisions: Vec<_> = backends
        .iter()
        .map(|b| json!({"name": b.name(), "endpoints": [b.endpoint()]}))
        .collect();
    let weir = start_weir!(json!({
        "services": [{"name": "split", "traffic": traffic}],
        "revisions": revisions,
    }));
    let url = format!("{}/", weir.http_url());

    let mut workers = Vec::new();
    for _ in 0..CONNECTIONS {
        let url = url.clone();
        workers.push(tokio::spawn(async move {
            // One client per worker: its requests are sequential, so one connection.
            let client = new_client();
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for _ in 0..PER_CONNECTION {
                let r = send(&client, &url, "split.default.example.com", &[]).await;
                assert_eq!(r.status, 200, "{r:?}");
                let rev = r.revision().expect("x-revision").to_owned();
                *counts.entry(rev).or_default() += 1;
            }
            counts
        }));
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for w in workers {
        for (rev, n) in w.await.expect("a worker panicked") {
            *counts.entry(rev).or_default() += n;
        }
    }
    assert_eq!(counts.values().sum::<usize>(), REQUESTS);
    for (name, percent) in weights {
        let got = counts.get(*name).copied().unwrap_or(0);
        let share = 100.0 * got as f64 / REQUESTS as f64;
        assert!(
            (share - f64::from(*percent)).abs() <= 1.0,
            "{name}: {share:.2}% of {REQUESTS} requests, want {percent}% ± 1 (all: {counts:?})"
        );
    }
    assert!(
        counts.keys().all(|k| weights.iter().any(|(n, _)| n == k)),
        "an unexpected revision answered: {counts:?}"
    );
    // No request was sent twice.
    for b in &backends {
        assert_eq!(
            b.requests() as usize,
            counts.get(b.name()).copied().unwrap_or(0)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_90_10() {
    check_split(&[("split-00001", 90), ("split-00002", 10)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_1_2_4_93() {
    check_split(&[
        ("split-00001", 1),
        ("split-00002", 2),
        ("split-00003", 4),
        ("split-00004", 93),
    ])
    .await;
}
