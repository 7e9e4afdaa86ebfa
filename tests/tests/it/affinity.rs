//! Sticky revisions: `affinity` by header (weighted rendezvous hashing, the same on every
//! replica) and by cookie (optionally down to the endpoint), and how affinity yields to tags.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};
use weir_tests::{get, new_client, send, start_weir, Backend, Response, Weir};

const STABLE: &str = "aff-00001";
const CANARY: &str = "aff-00002";
const HOST: &str = "aff.default.example.com";
const KEY_HEADER: &str = "x-user-id";
const KEYS: usize = 2_000;
/// Keep-alive clients that share the keys of a run.
const WORKERS: usize = 16;

/// Service `aff`: `STABLE` at `100 - canary`, `CANARY` at `canary`, sticky by `x-user-id`.
fn header_config(stable: &Backend, canary: &Backend, canary_percent: u32) -> Value {
    json!({
        "services": [{
            "name": "aff",
            "affinity": {"header": KEY_HEADER},
            "traffic": [
                {"revision": STABLE, "percent": 100 - canary_percent},
                {"revision": CANARY, "percent": canary_percent},
            ],
        }],
        "revisions": [
            {"name": STABLE, "endpoints": [stable.endpoint()]},
            {"name": CANARY, "endpoints": [canary.endpoint()]},
        ],
    })
}

fn keys() -> Arc<Vec<String>> {
    Arc::new((0..KEYS).map(|i| format!("user-{i}")).collect())
}

/// For each key, the revisions that answered `reps` requests carrying it in `x-user-id`,
/// sent over [`WORKERS`] keep-alive clients (worker `w` takes keys `w`, `w + WORKERS`, ...).
async fn revisions_by_key(weir: &Weir, keys: &Arc<Vec<String>>, reps: usize) -> Vec<Vec<String>> {
    let url = format!("{}/", weir.http_url());
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let url = url.clone();
        let keys = keys.clone();
        workers.push(tokio::spawn(async move {
            let client = new_client();
            let mut out = Vec::new();
            for i in (w..keys.len()).step_by(WORKERS) {
                let mut seen = Vec::with_capacity(reps);
                for _ in 0..reps {
                    let r = send(&client, &url, HOST, &[(KEY_HEADER, &keys[i])]).await;
                    assert_eq!(r.status, 200, "key {}: {r:?}", keys[i]);
                    seen.push(r.revision().expect("x-revision").to_owned());
                }
                out.push((i, seen));
            }
            out
        }));
    }
    let mut by_key = vec![Vec::new(); keys.len()];
    for w in workers {
        for (i, seen) in w.await.expect("a worker panicked") {
            by_key[i] = seen;
        }
    }
    by_key
}

/// The one revision of each key; panics naming a key that saw two.
fn one_revision_per_key(keys: &[String], seen: &[Vec<String>]) -> Vec<String> {
    keys.iter()
        .zip(seen)
        .map(|(k, revs)| {
            assert!(
                !revs.is_empty() && revs.iter().all(|r| *r == revs[0]),
                "key {k} saw {revs:?}"
            );
            revs[0].clone()
        })
        .collect()
}

fn share(picks: &[String], rev: &str) -> f64 {
    picks.iter().filter(|p| *p == rev).count() as f64 / picks.len() as f64
}

/// Every `Set-Cookie` of a response.
fn set_cookies(r: &Response) -> Vec<String> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().expect("ASCII Set-Cookie").to_owned())
        .collect()
}

/// B1: 2,000 keys x 5 requests: each key sticks to one revision, the shares follow the
/// weights, and a second proxy with the same config agrees on every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_affinity_sticks_and_agrees_across_replicas() {
    let stable = Backend::start(STABLE);
    let canary = Backend::start(CANARY);
    let cfg = header_config(&stable, &canary, 10);
    let first = start_weir!(cfg);
    let second = start_weir!(cfg);
    let keys = keys();

    let picks = one_revision_per_key(&keys, &revisions_by_key(&first, &keys, 5).await);
    let canary_share = share(&picks, CANARY);
    let stable_share = share(&picks, STABLE);
    eprintln!(
        "B1: {KEYS} keys x 5 requests: {:.2}% of keys on {STABLE} (90%), {:.2}% on {CANARY} (10%)",
        100.0 * stable_share,
        100.0 * canary_share
    );
    assert!(
        (stable_share + canary_share - 1.0).abs() < 1e-9,
        "another revision answered"
    );
    assert!(
        (canary_share - 0.10).abs() <= 0.03,
        "{CANARY} has {:.2}% of keys, want 10 ± 3",
        100.0 * canary_share
    );
    assert!(
        (stable_share - 0.90).abs() <= 0.03,
        "{STABLE} has {:.2}% of keys, want 90 ± 3",
        100.0 * stable_share
    );
    assert_eq!(
        stable.requests() + canary.requests(),
        (KEYS * 5) as u64,
        "one backend request per client request"
    );

    let again = one_revision_per_key(&keys, &revisions_by_key(&second, &keys, 1).await);
    let differ: Vec<_> = keys
        .iter()
        .zip(picks.iter().zip(&again))
        .filter(|(_, (a, b))| a != b)
        .map(|(k, (a, b))| format!("{k}: {a} vs {b}"))
        .collect();
    assert!(
        differ.is_empty(),
        "{} of {KEYS} keys get another revision from the second proxy, e.g. {:?}",
        differ.len(),
        &differ[..differ.len().min(5)]
    );
}

/// B2: raising the canary 10 -> 20 -> 50 moves only stable keys, and only as many as must.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_the_canary_moves_the_fewest_keys_one_way() {
    let stable = Backend::start(STABLE);
    let canary = Backend::start(CANARY);
    let weir = start_weir!(header_config(&stable, &canary, 10));
    let keys = keys();

    let mut steps: Vec<(u32, Vec<String>)> = Vec::new();
    for percent in [10, 20, 50] {
        if percent != 10 {
            weir.put_config(&header_config(&stable, &canary, percent))
                .await;
        }
        let picks = one_revision_per_key(&keys, &revisions_by_key(&weir, &keys, 1).await);
        eprintln!(
            "B2: canary at {percent}%: {:.2}% of keys on {CANARY}",
            100.0 * share(&picks, CANARY)
        );
        steps.push((percent, picks));
    }

    // Of the keys on stable before a step, the fraction that must move to reach the new share:
    // (new - old) / (100 - old).
    for pair in steps.windows(2) {
        let ((from, before), (to, after)) = (&pair[0], &pair[1]);
        let back: Vec<_> = keys
            .iter()
            .zip(before.iter().zip(after))
            .filter(|(_, (a, b))| *a == CANARY && *b == STABLE)
            .map(|(k, _)| k)
            .collect();
        assert!(
            back.is_empty(),
            "{from}% -> {to}%: {} keys went from canary back to stable, e.g. {:?}",
            back.len(),
            &back[..back.len().min(5)]
        );
        let was_stable = before.iter().filter(|r| *r == STABLE).count();
        let moved = before
            .iter()
            .zip(after)
            .filter(|(a, b)| *a == STABLE && *b == CANARY)
            .count();
        let fraction = moved as f64 / was_stable as f64;
        let ideal = f64::from(to - from) / f64::from(100 - from);
        eprintln!(
            "B2: {from}% -> {to}%: {moved} of {was_stable} stable keys moved ({:.2}%, ideal \
             {:.2}%; {:.2}% of all keys)",
            100.0 * fraction,
            100.0 * ideal,
            100.0 * moved as f64 / KEYS as f64
        );
        assert!(
            (fraction - ideal).abs() <= 0.03,
            "{from}% -> {to}%: {:.2}% of stable keys moved, want {:.2} ± 3",
            100.0 * fraction,
            100.0 * ideal
        );
    }
}

const CK_HOST: &str = "ck.default.example.com";
const CK1: &str = "ck-00001";
const CK2: &str = "ck-00002";
const OTHER: &str = "other-00001";

/// Service `ck` split over `traffic` (revision, percent), sticky by cookie `weir-rev` for an
/// hour; service `other` with its own revision.
fn cookie_config(b1: &Backend, b2: &Backend, other: &Backend, traffic: &[(&str, u32)]) -> Value {
    let traffic: Vec<_> = traffic
        .iter()
        .map(|(r, p)| json!({"revision": r, "percent": p}))
        .collect();
    json!({
        "services": [
            {"name": "ck", "affinity": {"cookie": "weir-rev", "ttl": "1h"}, "traffic": traffic},
            {"name": "other", "traffic": [{"revision": OTHER, "percent": 100}]},
        ],
        "revisions": [
            {"name": CK1, "endpoints": [b1.endpoint()]},
            {"name": CK2, "endpoints": [b2.endpoint()]},
            {"name": OTHER, "endpoints": [other.endpoint()]},
        ],
    })
}

fn cookie_for(rev: &str) -> String {
    format!("weir-rev={rev}; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax")
}

/// Sends `n` requests with `cookie`; each must reach `rev` and set no new cookie.
async fn stays_on(weir: &Weir, cookie: &str, rev: &str, n: usize) {
    let client = new_client();
    let url = format!("{}/", weir.http_url());
    for i in 0..n {
        let r = send(&client, &url, CK_HOST, &[("cookie", cookie)]).await;
        assert_eq!(r.status, 200, "request {i} with {cookie:?}: {r:?}");
        assert_eq!(r.revision(), Some(rev), "request {i} with {cookie:?}");
        assert_eq!(
            set_cookies(&r),
            Vec::<String>::new(),
            "request {i} with a valid {cookie:?} got a new cookie"
        );
    }
}

/// B3: cookie affinity: set on a cookieless request, honoured while its revision is live in
/// the block, replaced when it is not, and never trusted to leave the block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_affinity_sets_honours_and_replaces() {
    let b1 = Backend::start(CK1);
    let b2 = Backend::start(CK2);
    let other = Backend::start(OTHER);
    let weir = start_weir!(cookie_config(&b1, &b2, &other, &[(CK1, 50), (CK2, 50)]));
    let url = format!("{}/", weir.http_url());

    let r = get(&url, CK_HOST, &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let first = r.revision().expect("x-revision").to_owned();
    assert_eq!(set_cookies(&r), vec![cookie_for(&first)]);
    stays_on(&weir, &format!("weir-rev={first}"), &first, 20).await;
    // Also among other cookies.
    stays_on(&weir, &format!("a=1; weir-rev={first}; b=2"), &first, 3).await;
    let second = if first == CK1 { CK2 } else { CK1 };
    stays_on(&weir, &format!("weir-rev={second}"), second, 5).await;

    // A forged cookie naming a revision outside the block is ignored and replaced.
    for forged in [OTHER, "nope-00001", ""] {
        let r = get(&url, CK_HOST, &[("cookie", &format!("weir-rev={forged}"))]).await;
        assert_eq!(r.status, 200, "forged {forged:?}: {r:?}");
        let rev = r.revision().expect("x-revision");
        assert!(rev == CK1 || rev == CK2, "forged {forged:?} reached {rev}");
        assert_eq!(set_cookies(&r), vec![cookie_for(rev)], "forged {forged:?}");
    }
    assert_eq!(other.requests(), 0, "a cookie routed outside its block");

    // The remembered revision drops to 0 percent: re-picked, cookie replaced.
    weir.put_config(&cookie_config(
        &b1,
        &b2,
        &other,
        &[(first.as_str(), 0), (second, 100)],
    ))
    .await;
    let r = get(&url, CK_HOST, &[("cookie", &format!("weir-rev={first}"))]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.revision(),
        Some(second),
        "a 0 percent revision is not sticky"
    );
    assert_eq!(set_cookies(&r), vec![cookie_for(second)]);
    stays_on(&weir, &format!("weir-rev={second}"), second, 5).await;

    // The remembered revision leaves the block altogether: the same.
    weir.put_config(&cookie_config(&b1, &b2, &other, &[(first.as_str(), 100)]))
        .await;
    let r = get(&url, CK_HOST, &[("cookie", &format!("weir-rev={second}"))]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.revision(), Some(first.as_str()));
    assert_eq!(set_cookies(&r), vec![cookie_for(&first)]);
    stays_on(&weir, &format!("weir-rev={first}"), &first, 5).await;
    assert_eq!(other.requests(), 0);
}

/// B4: `instance_affinity`: the cookie also names the endpoint, and sending it back keeps
/// reaching that endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_affinity_keeps_the_endpoint() {
    const REV: &str = "inst-00001";
    const HOST: &str = "inst.default.example.com";
    let a = Backend::start("inst-a");
    let b = Backend::start("inst-b");
    let weir = start_weir!(json!({
        "services": [{
            "name": "inst",
            "affinity": {"cookie": "weir-inst", "instance_affinity": true},
            "traffic": [{"revision": REV, "percent": 100}],
        }],
        "revisions": [{"name": REV, "endpoints": [a.endpoint(), b.endpoint()]}],
    }));
    let url = format!("{}/", weir.http_url());
    let backend_of = |endpoint: &str| {
        [&a, &b]
            .into_iter()
            .find(|x| x.endpoint() == endpoint)
            .map(|x| x.name().to_owned())
            .unwrap_or_else(|| panic!("{endpoint} is no backend's"))
    };
    let inst_cookie = |endpoint: &str| {
        format!("weir-inst={REV}/{endpoint}; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax")
    };

    // Cookieless: the cookie names the revision and the endpoint that answered.
    let r = get(&url, HOST, &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let cookies = set_cookies(&r);
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let value = cookies[0]
        .strip_prefix("weir-inst=")
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("bad cookie {cookies:?}"));
    let (rev, endpoint) = value.split_once('/').expect("<revision>/<ip:port>");
    assert_eq!(rev, REV);
    assert_eq!(Some(backend_of(endpoint).as_str()), r.revision());
    assert_eq!(cookies[0], inst_cookie(endpoint));

    // Sent back, it keeps reaching that endpoint; so does a cookie naming the other one.
    let client = new_client();
    for ep in [a.endpoint(), b.endpoint()] {
        let cookie = format!("weir-inst={REV}/{ep}");
        for i in 0..20 {
            let r = send(&client, &url, HOST, &[("cookie", &cookie)]).await;
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(
                r.revision(),
                Some(backend_of(&ep).as_str()),
                "request {i} with {cookie:?}"
            );
            assert!(set_cookies(&r).is_empty(), "request {i}: {r:?}");
        }
    }

    // A cookie without an endpoint, or naming one the revision does not have: served by an
    // endpoint of the revision and given a cookie naming it.
    for cookie in [
        format!("weir-inst={REV}"),
        format!("weir-inst={REV}/127.0.0.1:1"),
        format!("weir-inst={REV}/not-an-address"),
    ] {
        let r = send(&client, &url, HOST, &[("cookie", &cookie)]).await;
        assert_eq!(r.status, 200, "{cookie:?}: {r:?}");
        let answered = r.revision().expect("x-revision");
        let ep = if answered == a.name() {
            a.endpoint()
        } else {
            b.endpoint()
        };
        assert_eq!(set_cookies(&r), vec![inst_cookie(&ep)], "{cookie:?}");
    }
}

/// B5: tag hosts and `Knative-Serving-Tag` routing win over affinity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_win_over_affinity() {
    let stable = Backend::start(STABLE);
    let canary = Backend::start(CANARY);
    let b1 = Backend::start(CK1);
    let b2 = Backend::start(CK2);
    let weir = start_weir!(json!({
        "tag_header_routing": true,
        "services": [
            {
                "name": "aff",
                "affinity": {"header": KEY_HEADER},
                "traffic": [
                    {"revision": STABLE, "percent": 90, "tag": "current"},
                    {"revision": CANARY, "percent": 10, "tag": "candidate"},
                ],
            },
            {
                "name": "ck",
                "affinity": {"cookie": "weir-rev"},
                "traffic": [
                    {"revision": CK1, "percent": 100},
                    {"revision": CK2, "percent": 0, "tag": "next"},
                ],
            },
        ],
        "revisions": [
            {"name": STABLE, "endpoints": [stable.endpoint()]},
            {"name": CANARY, "endpoints": [canary.endpoint()]},
            {"name": CK1, "endpoints": [b1.endpoint()]},
            {"name": CK2, "endpoints": [b2.endpoint()]},
        ],
    }));
    let url = format!("{}/", weir.http_url());
    let client = new_client();

    // Keys by the revision affinity gives them on the default host.
    let mut by_rev: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..200 {
        let key = format!("user-{i}");
        let r = send(&client, &url, HOST, &[(KEY_HEADER, &key)]).await;
        assert_eq!(r.status, 200, "{r:?}");
        by_rev
            .entry(r.revision().expect("x-revision").to_owned())
            .or_default()
            .push(key);
    }
    let on_stable = by_rev.get(STABLE).expect("keys on stable");
    let on_canary = by_rev.get(CANARY).expect("keys on canary");

    for key in on_stable.iter().take(10) {
        let r = send(
            &client,
            &url,
            "candidate-aff.default.example.com",
            &[(KEY_HEADER, key)],
        )
        .await;
        assert_eq!(r.revision(), Some(CANARY), "tag host, key {key}: {r:?}");
        let r = send(
            &client,
            &url,
            HOST,
            &[(KEY_HEADER, key), ("knative-serving-tag", "candidate")],
        )
        .await;
        assert_eq!(r.revision(), Some(CANARY), "tag header, key {key}: {r:?}");
    }
    for key in on_canary.iter().take(10) {
        let r = send(
            &client,
            &url,
            "current-aff.default.example.com",
            &[(KEY_HEADER, key)],
        )
        .await;
        assert_eq!(r.revision(), Some(STABLE), "tag host, key {key}: {r:?}");
        let r = send(
            &client,
            &url,
            HOST,
            &[(KEY_HEADER, key), ("knative-serving-tag", "current")],
        )
        .await;
        assert_eq!(r.revision(), Some(STABLE), "tag header, key {key}: {r:?}");
    }

    // A cookie naming the split's revision does not pull a tag host's request off its tag,
    // and the tag route sets no cookie.
    let cookie = format!("weir-rev={CK1}");
    let r = send(
        &client,
        &url,
        "next-ck.default.example.com",
        &[("cookie", &cookie)],
    )
    .await;
    assert_eq!(r.revision(), Some(CK2), "{r:?}");
    assert!(set_cookies(&r).is_empty(), "{r:?}");
    let r = send(
        &client,
        &url,
        CK_HOST,
        &[("cookie", &cookie), ("knative-serving-tag", "next")],
    )
    .await;
    assert_eq!(r.revision(), Some(CK2), "{r:?}");
    assert!(set_cookies(&r).is_empty(), "{r:?}");
}

/// B6: without affinity (or without the affinity header) a split is per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_affinity_the_split_is_per_request() {
    const N: usize = 400;
    let stable = Backend::start(STABLE);
    let canary = Backend::start(CANARY);
    let plain_rev = |r: &str| r.replace("aff", "plain");
    let p1 = Backend::start(&plain_rev(STABLE));
    let p2 = Backend::start(&plain_rev(CANARY));
    let mut cfg = header_config(&stable, &canary, 50);
    cfg["services"]
        .as_array_mut()
        .expect("services")
        .push(json!({
            "name": "plain",
            "traffic": [
                {"revision": plain_rev(STABLE), "percent": 50},
                {"revision": plain_rev(CANARY), "percent": 50},
            ],
        }));
    for b in [&p1, &p2] {
        cfg["revisions"]
            .as_array_mut()
            .expect("revisions")
            .push(json!({"name": b.name(), "endpoints": [b.endpoint()]}));
    }
    let weir = start_weir!(cfg);
    let url = format!("{}/", weir.http_url());
    let client = new_client();

    let cases: [(&str, &[(&str, &str)]); 3] = [
        // No affinity: the same key still splits.
        ("plain.default.example.com", &[(KEY_HEADER, "user-1")]),
        // Affinity by header, but no header or an empty one: a plain split.
        (HOST, &[]),
        (HOST, &[(KEY_HEADER, "")]),
    ];
    for (host, headers) in cases {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..N {
            let r = send(&client, &url, host, headers).await;
            assert_eq!(r.status, 200, "{r:?}");
            assert!(set_cookies(&r).is_empty(), "{r:?}");
            *counts
                .entry(r.revision().expect("x-revision").to_owned())
                .or_default() += 1;
        }
        eprintln!("B6: {host} {headers:?}: {counts:?}");
        assert_eq!(counts.len(), 2, "{host} {headers:?}: {counts:?}");
        assert!(
            counts.values().all(|n| (120..=280).contains(n)),
            "{host} {headers:?}: a 50/50 split gave {counts:?} over {N} requests"
        );
    }
}

/// Affinity on an ingress path applies to that path only; the catch-all path after it splits
/// per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_path_affinity_is_per_path() {
    const API_HOST: &str = "api.example.com";
    let a1 = Backend::start("api-00001");
    let a2 = Backend::start("api-00002");
    let splits = json!([
        {"revision": "api-00001", "percent": 50},
        {"revision": "api-00002", "percent": 50},
    ]);
    let weir = start_weir!(json!({
        "ingresses": [{
            "name": "api",
            "rules": [{
                "hosts": [API_HOST],
                "paths": [
                    {"path": "/sticky", "affinity": {"header": KEY_HEADER}, "splits": splits},
                    {"path": "", "splits": splits},
                ],
            }],
        }],
        "revisions": [
            {"name": "api-00001", "endpoints": [a1.endpoint()]},
            {"name": "api-00002", "endpoints": [a2.endpoint()]},
        ],
    }));
    let client = new_client();
    let mut sticky: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..40 {
        let key = format!("user-{i}");
        let mut seen = Vec::new();
        for _ in 0..5 {
            let url = format!("{}/sticky/x", weir.http_url());
            let r = send(&client, &url, API_HOST, &[(KEY_HEADER, &key)]).await;
            assert_eq!(r.status, 200, "{r:?}");
            seen.push(r.revision().expect("x-revision").to_owned());
        }
        assert!(seen.iter().all(|r| *r == seen[0]), "key {key}: {seen:?}");
        *sticky.entry(seen[0].clone()).or_default() += 1;
    }
    assert_eq!(sticky.len(), 2, "40 keys over a 50/50 split: {sticky:?}");

    let mut loose: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..100 {
        let url = format!("{}/other", weir.http_url());
        let r = send(&client, &url, API_HOST, &[(KEY_HEADER, "user-1")]).await;
        assert_eq!(r.status, 200, "{r:?}");
        *loose
            .entry(r.revision().expect("x-revision").to_owned())
            .or_default() += 1;
    }
    assert_eq!(
        loose.len(),
        2,
        "the catch-all path has no affinity: {loose:?}"
    );
}
