//! Kourier-shaped replay: real `weir proxy` processes run as net-kourier's gateway
//! (`--xds-sotw --node-id 3scale-kourier-gateway`, Kourier's six listeners) behind an
//! independent ADS server that serves resources shaped like net-kourier's generator output
//! (`weir_tests::kourier`), with real backends that answer Knative's probes. For each test of
//! Knative's ingress conformance suite, the behaviour it asks for; for each, the port of
//! Kourier's status prober sees the KIngress become ready on every probe port. Then the
//! gateway duties beyond routing: the status host, LDS certificates, PROXY protocol,
//! trusted hops, ext-authz refused, tracing and unresolvable clusters tolerated.
//!
//! This is a replay of Kourier's shapes, not Kourier conformance: no net-kourier, Envoy or
//! Kubernetes takes part.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use weir_tests::kourier::ads::KourierAds;
use weir_tests::kourier::prober::{self, Verdict};
use weir_tests::kourier::resources::{self, Options, Snapshot};
use weir_tests::kourier::{
    split, Backend as Service, GatewayPorts, HttpOption, IngressTls, KIngress, Path, Rule, Secret,
    Visibility, NODE_ID, STATUS_HOST,
};
use weir_tests::protocols::{
    chat, grpc_client, header, ws_backend, ws_connect, ws_echo, H2Backend,
};
use weir_tests::tls::{peer_certificate, tls_connect, HttpConn, Leaf, TestCa};
use weir_tests::{
    eventually, get, new_client, raw_request, send, try_send, weir_bin, Backend, Weir,
};

const NS: &str = "serving-tests";
/// How long a KIngress may take to become ready, or a change to be served.
const READY: Duration = Duration::from_secs(20);

// === the replay fixture ===

/// One Kourier-shaped control plane, its backends and secrets, and one gateway pod.
struct Replay {
    /// Dropped (killed) before the control plane.
    weir: Weir,
    ads: KourierAds,
    ports: GatewayPorts,
    services: HashMap<(String, String), Service>,
    secrets: HashMap<String, Secret>,
    opts: Options,
    /// What the last snapshot held.
    ingresses: Vec<KIngress>,
    hashes: BTreeMap<String, String>,
    version: String,
}

/// The config file of a Weir gateway under Kourier (deploy/kourier's ConfigMap).
fn gateway_config() -> serde_json::Value {
    json!({
        "drain_timeout": "5s",
        "readiness": {"hosts": [STATUS_HOST], "path": "/ready"}
    })
}

impl Replay {
    /// A control plane serving `ingresses`, and a gateway that has taken them.
    fn start(ingresses: Vec<KIngress>, services: Vec<(&str, Service)>, opts: Options) -> Replay {
        Replay::start_with(ingresses, services, HashMap::new(), opts, &[])
    }

    fn start_with(
        ingresses: Vec<KIngress>,
        services: Vec<(&str, Service)>,
        secrets: HashMap<String, Secret>,
        opts: Options,
        extra_args: &[&str],
    ) -> Replay {
        let ads = KourierAds::start();
        let ports = GatewayPorts::free();
        let services = services
            .into_iter()
            .map(|(name, s)| ((NS.to_string(), name.to_string()), s))
            .collect();
        let mut r = Replay {
            weir: {
                // The snapshot must exist before the gateway is ready; set it first below.
                let mut b = Weir::builder(weir_bin!(), &gateway_config())
                    .gateway(ports)
                    .arg(format!("--xds={}", ads.url()))
                    .arg("--xds-sotw")
                    .arg(format!("--node-id={NODE_ID}"));
                for a in extra_args {
                    b = b.arg(*a);
                }
                let snap = resources::snapshot(&ingresses, &services, &secrets, &ports, &opts);
                ads.set_snapshot(NODE_ID, &snap.0);
                b.start()
            },
            ads,
            ports,
            services,
            secrets,
            opts,
            ingresses: Vec::new(),
            hashes: BTreeMap::new(),
            version: String::new(),
        };
        r.publish(ingresses);
        r
    }

    /// Publishes `ingresses` as a new snapshot; returns when the gateway ACKed every type of
    /// it (or panics).
    fn publish(&mut self, ingresses: Vec<KIngress>) {
        let (snap, hashes) = self.snapshot(&ingresses);
        self.version = self.ads.set_snapshot(NODE_ID, &snap);
        self.ingresses = ingresses;
        self.hashes = hashes;
        let deadline = Instant::now() + READY;
        while !self.ads.acked(NODE_ID, &self.version) {
            assert!(
                Instant::now() < deadline,
                "the gateway did not ACK version {} in time; NACKs: {:?}",
                self.version,
                self.ads.nacks()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn snapshot(&self, ingresses: &[KIngress]) -> (Snapshot, BTreeMap<String, String>) {
        resources::snapshot(
            ingresses,
            &self.services,
            &self.secrets,
            &self.ports,
            &self.opts,
        )
    }

    /// What Kourier's status prober does: every KIngress ready on every probe port (and the
    /// gateway itself ready).
    async fn all_ready(&self) {
        let readyz = get(&format!("{}/readyz", self.weir.admin_url()), "", &[]).await;
        assert_eq!(readyz.status, 200, "the gateway is not ready");
        for ing in &self.ingresses {
            let key = format!("{}/{}", ing.namespace, ing.name);
            let hash = &self.hashes[&key];
            let verdicts = prober::wait_ready(ing, hash, &[self.ports], READY)
                .await
                .unwrap_or_else(|e| panic!("KIngress {key} never became ready: {e}"));
            // A redirected ingress answers the plain probe with its 301, which the prober
            // takes as success without a hash (as with Envoy); every other answer carries it.
            let redirected = ing.http_option == HttpOption::Redirected;
            assert!(
                verdicts
                    .iter()
                    .all(|v| *v == Verdict::Ready || (redirected && *v == Verdict::Abandoned(301))),
                "KIngress {key}: {verdicts:?}"
            );
        }
    }

    fn http(&self) -> String {
        format!("http://{}", self.ports.http)
    }

    fn internal(&self) -> String {
        format!("http://{}", self.ports.internal)
    }
}

fn pods(backends: &[&Backend]) -> Service {
    Service::Pods {
        addrs: backends.iter().map(|b| b.addr()).collect(),
        h2c: false,
    }
}

fn host(name: &str) -> String {
    format!("{name}.{NS}.example.com")
}

fn ingress(name: &str, hosts: &[&str], splits: &[(&str, u32)]) -> KIngress {
    KIngress::simple(NS, name, hosts, splits)
}

fn path(prefix: &str, splits: &[(&str, u32)]) -> Path {
    Path {
        path: prefix.into(),
        splits: splits.iter().map(|(s, p)| split(NS, s, *p)).collect(),
        ..Default::default()
    }
}

/// Counts which backend answered `n` requests.
async fn spread(url: &str, host: &str, n: usize) -> BTreeMap<String, usize> {
    let client = new_client();
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let r = send(&client, url, host, &[]).await;
        assert_eq!(r.status, 200, "{r:?}");
        *seen
            .entry(r.revision().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    seen
}

// === conformance: basics, basics/http2, headers, hosts ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basics_http2_headers_and_hosts_are_served_and_ready() {
    let runtime = Backend::start("runtime");
    let h2 = H2Backend::start("runtime-h2c");
    let quarters: Vec<Backend> = (0..4).map(|i| Backend::start(&format!("q{i}"))).collect();
    let basics = ingress("basics", &[&host("basics")], &[("runtime", 100)]);
    let http2 = ingress("http2", &[&host("http2")], &[("runtime-h2c", 100)]);
    let mut pre = ingress("pre-split", &[&host("pre")], &[("runtime", 100)]);
    pre.rules[0].paths[0]
        .append_headers
        .insert("Foo".into(), "bar".into());
    let mut post = ingress(
        "post-split",
        &[&host("post")],
        &[("q0", 25), ("q1", 25), ("q2", 25), ("q3", 25)],
    );
    for (i, s) in post.rules[0].paths[0].splits.iter_mut().enumerate() {
        s.append_headers.insert("Foo".into(), format!("q{i}"));
    }
    let multi = ingress(
        "multiple",
        &[&host("one"), &host("two"), &host("three")],
        &[("runtime", 100)],
    );
    let mut services = vec![
        ("runtime", pods(&[&runtime])),
        (
            "runtime-h2c",
            Service::Pods {
                addrs: vec![h2.endpoint().parse().unwrap()],
                h2c: true,
            },
        ),
    ];
    for (i, q) in quarters.iter().enumerate() {
        services.push((["q0", "q1", "q2", "q3"][i], pods(&[q])));
    }
    let r = Replay::start(
        vec![basics, http2, pre, post, multi],
        services,
        Options::default(),
    );
    r.all_ready().await;

    // basics: an HTTP/1.1 GET reaches the runtime with Serving's headers.
    let resp = get(&r.http(), &host("basics"), &[]).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.revision(), Some("runtime"));
    assert_eq!(
        resp.upstream_header("knative-serving-revision").as_deref(),
        Some("runtime")
    );
    assert_eq!(
        resp.upstream_header("knative-serving-namespace").as_deref(),
        Some(NS)
    );
    // basics/http2: the h2c port makes the backend see HTTP/2.
    let resp = get(&r.http(), &host("http2"), &[]).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.json()["version"], "HTTP/2.0");
    // headers/pre-split: the path's header overwrites the client's.
    let resp = get(&r.http(), &host("pre"), &[("Foo", "client")]).await;
    assert_eq!(resp.upstream_header("foo").as_deref(), Some("bar"));
    // headers/post-split: each split's header, every split within 100 requests.
    let client = new_client();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..100 {
        let resp = send(&client, &r.http(), &host("post"), &[("Foo", "client")]).await;
        let rev = resp.revision().unwrap().to_string();
        assert_eq!(resp.upstream_header("foo").as_deref(), Some(rev.as_str()));
        seen.insert(rev);
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
    // hosts/multiple: every host of the rule.
    for h in ["one", "two", "three"] {
        let resp = get(&r.http(), &host(h), &[]).await;
        assert_eq!(resp.status, 200, "{h}: {resp:?}");
    }
    assert!(r.ads.nacks().is_empty(), "{:?}", r.ads.nacks());
}

// === conformance: headers/probe ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_headers_carry_the_spec_hash_or_pass_through() {
    let runtime = Backend::start("runtime");
    let ing = ingress("probe", &[&host("probe")], &[("runtime", 100)]);
    let r = Replay::start(
        vec![ing],
        vec![("runtime", pods(&[&runtime]))],
        Options::default(),
    );
    let hash = r.hashes[&format!("{NS}/probe")].clone();
    let probe = |value: &'static str| {
        let url = format!("http://{}/healthz", r.ports.probe);
        async move {
            get(
                &url,
                &host("probe"),
                &[("K-Network-Probe", "probe"), ("K-Network-Hash", value)],
            )
            .await
        }
    };
    let resp = probe("override").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("k-network-hash"), Some(hash.as_str()));
    // Any other value reaches the backend as it is, and comes back.
    let resp = probe("something-else").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("k-network-hash"), Some("something-else"));
    r.all_ready().await;
}

// === conformance: dispatch/path, percentage, path_and_percentage, rule ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_by_path_percentage_and_rule() {
    let names: Vec<String> = (0..10).map(|i| format!("pct{i}")).collect();
    let backends: Vec<Backend> = names.iter().map(|n| Backend::start(n)).collect();
    let paths: Vec<Backend> = ["foo", "bar", "baz", "fallback"]
        .iter()
        .map(|n| Backend::start(n))
        .collect();
    let halves = [Backend::start("left"), Backend::start("right")];
    let rules = [Backend::start("rule-a"), Backend::start("rule-b")];

    let percents = [1, 2, 4, 8, 16, 32, 37, 0, 0, 0];
    let pct_splits: Vec<(&str, u32)> = names
        .iter()
        .zip(percents)
        .map(|(n, p)| (n.as_str(), p))
        .collect();
    let percentage = ingress("percentage", &[&host("percentage")], &pct_splits);
    let mut by_path = ingress("path", &[&host("path")], &[("fallback", 100)]);
    by_path.rules[0].paths = vec![
        path("/foo", &[("foo", 100)]),
        path("/bar", &[("bar", 100)]),
        path("/baz", &[("baz", 100)]),
        path("", &[("fallback", 100)]),
    ];
    let mut path_pct = ingress("path-pct", &[&host("path-pct")], &[("fallback", 100)]);
    path_pct.rules[0].paths = vec![
        path("/foo", &[("left", 50), ("right", 50)]),
        path("", &[("fallback", 100)]),
    ];
    let mut by_rule = ingress("rule", &[&host("rule-a")], &[("rule-a", 100)]);
    by_rule.rules.push(Rule {
        hosts: vec![host("rule-b")],
        visibility: Visibility::ExternalIP,
        paths: vec![path("", &[("rule-b", 100)])],
    });

    let mut services: Vec<(&str, Service)> = names
        .iter()
        .zip(&backends)
        .map(|(n, b)| (n.as_str(), pods(&[b])))
        .collect();
    for (n, b) in ["foo", "bar", "baz", "fallback"].iter().zip(&paths) {
        services.push((n, pods(&[b])));
    }
    services.push(("left", pods(&[&halves[0]])));
    services.push(("right", pods(&[&halves[1]])));
    services.push(("rule-a", pods(&[&rules[0]])));
    services.push(("rule-b", pods(&[&rules[1]])));
    let r = Replay::start(
        vec![percentage, by_path, path_pct, by_rule],
        services,
        Options::default(),
    );
    r.all_ready().await;

    // dispatch/path: prefixes, and the catch-all for "" and anything else.
    for (p, want) in [
        ("/foo", "foo"),
        ("/bar", "bar"),
        ("/baz", "baz"),
        ("", "fallback"),
        ("/asdf", "fallback"),
    ] {
        let resp = get(&format!("{}{p}", r.http()), &host("path"), &[]).await;
        assert_eq!(resp.revision(), Some(want), "{p}");
    }
    // dispatch/percentage: 1000 requests, each within 10 points; 0 % gets nothing.
    let seen = spread(&r.http(), &host("percentage"), 1000).await;
    for (n, p) in names.iter().zip(percents) {
        let got = *seen.get(n).unwrap_or(&0) as f64 / 10.0;
        if p == 0 {
            assert_eq!(got, 0.0, "{n} at 0 % got traffic: {seen:?}");
        } else {
            assert!(
                (got - f64::from(p)).abs() <= 10.0,
                "{n}: {got} % for {p} %: {seen:?}"
            );
        }
    }
    // dispatch/path_and_percentage: /foo split 50/50, 500 ± 150 each over 1000.
    let seen = spread(&format!("{}/foo", r.http()), &host("path-pct"), 1000).await;
    for side in ["left", "right"] {
        let n = *seen.get(side).unwrap_or(&0);
        assert!((350..=650).contains(&n), "{side}: {n}: {seen:?}");
    }
    // dispatch/rule: two rules, two backends.
    assert_eq!(
        get(&r.http(), &host("rule-a"), &[]).await.revision(),
        Some("rule-a")
    );
    assert_eq!(
        get(&r.http(), &host("rule-b"), &[]).await.revision(),
        Some("rule-b")
    );
}

// === conformance: retry, timeout ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ingress_retry_and_no_short_timeout() {
    let runtime = Backend::start("runtime");
    let ing = ingress("timeouts", &[&host("timeouts")], &[("runtime", 100)]);
    let r = Replay::start(
        vec![ing],
        vec![("runtime", pods(&[&runtime]))],
        Options::default(),
    );
    r.all_ready().await;
    // retry: the backend's first 503 reaches the client; the next request gets 200.
    let url = format!("{}/fail-once/retry", r.http());
    let first = get(&url, &host("timeouts"), &[]).await;
    assert_eq!(first.status, 503, "the ingress must not retry an answer");
    let second = get(&url, &host("timeouts"), &[]).await;
    assert_eq!(second.status, 200);
    // timeout: 10 s before the headers, and 10 s after them, both still 200.
    let (slow_head, slow_body) = (
        format!("{}/delay/10000", r.http()),
        format!("{}/delay-body/10000", r.http()),
    );
    let h = host("timeouts");
    let (before, after) = tokio::join!(get(&slow_head, &h, &[]), get(&slow_body, &h, &[]));
    assert_eq!(before.status, 200, "{before:?}");
    assert_eq!(after.status, 200, "{after:?}");
    assert_eq!(after.json()["revision"], "runtime");
}

// === conformance: grpc, grpc/split, websocket, websocket/split ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_streams_and_websockets_through_splits() {
    let g = [H2Backend::start("grpc-a"), H2Backend::start("grpc-b")];
    let w = [ws_backend("ws-a"), ws_backend("ws-b")];
    let h2c = |b: &H2Backend| Service::Pods {
        addrs: vec![b.endpoint().parse().unwrap()],
        h2c: true,
    };
    let plain = |addr: SocketAddr| Service::Pods {
        addrs: vec![addr],
        h2c: false,
    };
    let r = Replay::start(
        vec![
            ingress("grpc", &[&host("grpc")], &[("grpc-a", 100)]),
            ingress(
                "grpc-split",
                &[&host("grpc-split")],
                &[("grpc-a", 50), ("grpc-b", 50)],
            ),
            ingress("ws", &[&host("ws")], &[("ws-a", 100)]),
            ingress(
                "ws-split",
                &[&host("ws-split")],
                &[("ws-a", 50), ("ws-b", 50)],
            ),
        ],
        vec![
            ("grpc-a", h2c(&g[0])),
            ("grpc-b", h2c(&g[1])),
            ("ws-a", plain(w[0].addr())),
            ("ws-b", plain(w[1].addr())),
        ],
        Options::default(),
    );
    r.all_ready().await;
    // grpc: a bidirectional stream, 100 round trips.
    let client = grpc_client(r.ports.http, &host("grpc")).await;
    let revs = chat(&client, 100).await.expect("PingStream");
    assert!(revs.iter().all(|v| v == "grpc-a"));
    // grpc/split: streams reach both backends, each stays on one.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let client = grpc_client(r.ports.http, &host("grpc-split")).await;
        let revs = chat(&client, 10).await.expect("a split stream");
        assert!(
            revs.windows(2).all(|w| w[0] == w[1]),
            "one stream, one backend: {revs:?}"
        );
        seen.insert(revs[0].clone());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    // websocket and websocket/split.
    let (ws, _) = ws_connect(r.ports.http, &host("ws")).await;
    ws_echo(ws, "one").await;
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..20 {
        let (ws, headers) = ws_connect(r.ports.http, &host("ws-split")).await;
        seen.insert(header(&headers, "x-revision"));
        ws_echo(ws, &i.to_string()).await;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

// === conformance: visibility, visibility/split, visibility/path ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_local_rules_only_on_the_internal_listener() {
    let a = Backend::start("private-a");
    let b = Backend::start("private-b");
    let short = format!("private.{NS}");
    let hosts = [
        format!("private.{NS}.svc.cluster.local"),
        format!("private.{NS}.svc"),
        short.clone(),
    ];
    let host_refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let mut local = ingress(
        "private",
        &host_refs,
        &[("private-a", 50), ("private-b", 50)],
    );
    local.rules[0].visibility = Visibility::ClusterLocal;
    local.rules[0]
        .paths
        .insert(0, path("/only-a", &[("private-a", 100)]));
    let r = Replay::start(
        vec![local],
        vec![("private-a", pods(&[&a])), ("private-b", pods(&[&b]))],
        Options::default(),
    );
    r.all_ready().await;
    for h in &hosts {
        let outside = get(&r.http(), h, &[]).await;
        assert_eq!(outside.status, 404, "{h} from the public listener");
        let inside = get(&r.internal(), h, &[]).await;
        assert_eq!(inside.status, 200, "{h} from inside");
    }
    // visibility/path and visibility/split, through the private listener.
    let resp = get(&format!("{}/only-a", r.internal()), &short, &[]).await;
    assert_eq!(resp.revision(), Some("private-a"));
    let seen = spread(&r.internal(), &short, 1000).await;
    for side in ["private-a", "private-b"] {
        let n = *seen.get(side).unwrap_or(&0);
        assert!((350..=650).contains(&n), "{side}: {n}: {seen:?}");
    }
}

// === conformance: tls, httpoption ===

fn secret(leaf: &Leaf) -> Secret {
    Secret {
        cert_pem: leaf.cert_pem.clone(),
        key_pem: leaf.key_pem.clone(),
    }
}

/// `GET /` over TLS to `addr` for `host` (SNI and Host): the response and the certificate.
async fn https_get(addr: SocketAddr, host: &str, ca: &TestCa) -> (weir_tests::Response, Vec<u8>) {
    let tls = tls_connect(addr, host, ca.client_config(&["http/1.1"]))
        .await
        .unwrap_or_else(|e| panic!("TLS to {addr} for {host}: {e}"));
    let cert = peer_certificate(&tls);
    let mut conn = HttpConn::http1(tls).await;
    let (resp, _) = conn.get(host, "/").await.expect("GET over TLS");
    (resp, cert)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_httpoption_with_certificates_from_listeners() {
    let ca = TestCa::generate();
    let runtime = Backend::start("runtime");
    let (secure, enabled, redirected) = (host("secure"), host("enabled"), host("redirected"));
    let leaves: HashMap<String, Leaf> = [&secure, &enabled, &redirected]
        .iter()
        .map(|h| (h.to_string(), ca.issue(&[h.as_str()])))
        .collect();
    let tls_of = |h: &str| IngressTls {
        hosts: vec![h.to_string()],
        secret_name: h.to_string(),
    };
    let mut plain_and_tls = ingress("tls", &[&secure], &[("runtime", 100)]);
    plain_and_tls.tls.push(tls_of(&secure));
    let mut opt_enabled = ingress("enabled", &[&enabled], &[("runtime", 100)]);
    opt_enabled.tls.push(tls_of(&enabled));
    let mut opt_redirected = ingress("redirected", &[&redirected], &[("runtime", 100)]);
    opt_redirected.tls.push(tls_of(&redirected));
    opt_redirected.http_option = HttpOption::Redirected;
    let secrets = leaves.iter().map(|(h, l)| (h.clone(), secret(l))).collect();
    let r = Replay::start_with(
        vec![plain_and_tls, opt_enabled, opt_redirected],
        vec![("runtime", pods(&[&runtime]))],
        secrets,
        Options::default(),
        &[],
    );
    r.all_ready().await;

    // tls: the same host over http and https, with the Secret's certificate.
    assert_eq!(get(&r.http(), &secure, &[]).await.status, 200);
    let (resp, cert) = https_get(r.ports.https, &secure, &ca).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(cert == leaves[&secure].der, "the Secret's certificate");
    assert_eq!(resp.json()["headers"]["x-forwarded-proto"], "https");
    // httpoption: Enabled serves plain http, Redirected answers 301 to https; both serve
    // https, and the TLS probe port too.
    assert_eq!(get(&r.http(), &enabled, &[]).await.status, 200);
    let resp = raw_request(
        r.ports.http,
        &format!("GET /a/b?c=d HTTP/1.1\r\nHost: {redirected}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(resp.status, 301, "{resp:?}");
    assert_eq!(
        resp.header("location"),
        Some(format!("https://{redirected}/a/b?c=d").as_str())
    );
    for h in [&enabled, &redirected] {
        for port in [r.ports.https, r.ports.probe_https] {
            let (resp, cert) = https_get(port, h, &ca).await;
            assert_eq!(resp.status, 200, "{h} on {port}: {resp:?}");
            assert!(
                cert == leaves[h.as_str()].der,
                "{h}'s certificate on {port}"
            );
        }
    }
}

// === conformance: update ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_under_a_continuous_prober_never_fail() {
    let first = Backend::start("update-0");
    let mut r = Replay::start(
        vec![ingress("update", &[&host("update")], &[("update-0", 100)])],
        vec![("update-0", pods(&[&first]))],
        Options::default(),
    );
    r.all_ready().await;
    // A client that never stops while the spec changes; every answer must be 200.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let prober = {
        let (stop, failures, sent) = (stop.clone(), failures.clone(), sent.clone());
        let url = r.http();
        tokio::spawn(async move {
            let client = new_client();
            let mut bad = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                sent.fetch_add(1, Ordering::SeqCst);
                match try_send(&client, &url, &host("update"), &[]).await {
                    Ok(resp) if resp.status == 200 => {}
                    other => {
                        failures.fetch_add(1, Ordering::SeqCst);
                        bad.push(format!("{other:?}"));
                    }
                }
            }
            bad
        })
    };
    let mut keep = vec![first];
    // 10 updates that change only an appended header; each is served once ready.
    for i in 0..10 {
        let mut ing = ingress("update", &[&host("update")], &[("update-0", 100)]);
        ing.rules[0].paths[0]
            .append_headers
            .insert("Who-Are-You".into(), format!("v{i}"));
        r.publish(vec![ing]);
        r.all_ready().await;
        let resp = get(&r.http(), &host("update"), &[]).await;
        assert_eq!(resp.upstream_header("who-are-you"), Some(format!("v{i}")));
    }
    // 10 updates to fresh backends; the old one goes away once the new one is ready.
    let mut current = "update-0".to_string();
    for i in 1..=10 {
        let name = format!("update-{i}");
        let b = Backend::start(&name);
        r.services.insert((NS.into(), name.clone()), pods(&[&b]));
        r.publish(vec![ingress("update", &[&host("update")], &[(&name, 100)])]);
        r.all_ready().await;
        let resp = get(&r.http(), &host("update"), &[]).await;
        assert_eq!(resp.revision(), Some(name.as_str()));
        r.services.remove(&(NS.into(), current.clone()));
        keep.push(b);
        keep.remove(0);
        current = name;
    }
    stop.store(true, Ordering::SeqCst);
    let bad = prober.await.unwrap();
    assert!(sent.load(Ordering::SeqCst) > 20);
    assert_eq!(failures.load(Ordering::SeqCst), 0, "{bad:?}");
}

// === conformance (beta): headers/tags, host-rewrite ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_header_paths_and_host_rewrite_through_an_external_name() {
    let tagged = Backend::start("tagged");
    let default = Backend::start("default");
    let private = Backend::start("private");
    let mut tags = ingress("tags", &[&host("tags")], &[("default", 100)]);
    let mut tag_path = path("", &[("tagged", 100)]);
    tag_path
        .headers
        .insert("Knative-Serving-Tag".into(), "the-tag".into());
    tags.rules[0].paths.insert(0, tag_path);
    // host-rewrite: a vanity host rewritten to a cluster-local host, through an
    // ExternalName service pointing at the gateway's own private listener.
    let private_host = format!("private.{NS}.svc.cluster.local");
    let mut local = ingress("private", &[&private_host], &[("private", 100)]);
    local.rules[0].visibility = Visibility::ClusterLocal;
    let mut vanity = ingress("vanity", &["vanity.example.org"], &[("private-lb", 100)]);
    vanity.rules[0].paths[0].rewrite_host = Some(private_host.clone());
    let mut r = Replay::start(
        vec![tags.clone()],
        vec![("tagged", pods(&[&tagged])), ("default", pods(&[&default]))],
        Options::default(),
    );
    r.services
        .insert((NS.into(), "private".into()), pods(&[&private]));
    r.services.insert(
        (NS.into(), "private-lb".into()),
        Service::ExternalName {
            host: "localhost".into(),
            port: r.ports.internal.port(),
        },
    );
    r.publish(vec![tags, local, vanity]);
    r.all_ready().await;
    // headers/tags: only that exact tag picks the tagged path.
    let (url, tags_host) = (r.http(), host("tags"));
    for (value, want) in [("the-tag", "tagged"), ("other", "default"), ("", "default")] {
        let resp = get(&url, &tags_host, &[("Knative-Serving-Tag", value)]).await;
        assert_eq!(resp.revision(), Some(want), "tag {value:?}");
    }
    assert_eq!(
        get(&r.http(), &host("tags"), &[]).await.revision(),
        Some("default")
    );
    // host-rewrite: the request arrives at the private backend under the private host.
    let resp = get(&r.http(), "vanity.example.org", &[]).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.revision(), Some("private"));
    assert_eq!(resp.upstream_header("host"), Some(private_host));
}

// === the gateway's own duties ===

/// kubelet's probe of the gateway: `GET :8081/ready` with `Host: internalkourier`.
async fn status(r_internal: SocketAddr) -> u16 {
    raw_request(
        r_internal,
        &format!("GET /ready HTTP/1.1\r\nHost: {STATUS_HOST}\r\nConnection: close\r\n\r\n"),
    )
    .await
    .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_host_answers_once_a_config_is_in_force() {
    let ads = KourierAds::start();
    let ports = GatewayPorts::free();
    let weir = Weir::builder(weir_bin!(), &gateway_config())
        .gateway(ports)
        .arg(format!("--xds={}", ads.url()))
        .arg("--xds-sotw")
        .arg(format!("--node-id={NODE_ID}"))
        .without_waiting_for_ready()
        .start();
    // No snapshot yet: not ready, and kubelet's probe says so.
    assert_eq!(status(ports.internal).await, 503);
    let readyz = get(&format!("{}/readyz", weir.admin_url()), "", &[]).await;
    assert_eq!(readyz.status, 503);
    // A snapshot: the status route to `service_stats` is accepted, not NACKed, and the
    // status host answers 200 from then on.
    let runtime = Backend::start("runtime");
    let services = [((NS.to_string(), "runtime".to_string()), pods(&[&runtime]))].into();
    let (snap, _) = resources::snapshot(
        &[ingress("hello", &[&host("hello")], &[("runtime", 100)])],
        &services,
        &HashMap::new(),
        &ports,
        &Options::default(),
    );
    let version = ads.set_snapshot(NODE_ID, &snap);
    assert!(
        eventually(READY, || async { ads.acked(NODE_ID, &version) }).await,
        "{:?}",
        ads.nacks()
    );
    assert_eq!(status(ports.internal).await, 200);
    assert_eq!(
        get(&format!("{}/readyz", weir.admin_url()), "", &[])
            .await
            .status,
        200
    );
    // Only `/ready` on that host, and not a route anyone else can claim.
    let other = raw_request(
        ports.internal,
        &format!("GET /other HTTP/1.1\r\nHost: {STATUS_HOST}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(other.status, 404);
    assert!(ads.nacks().is_empty(), "{:?}", ads.nacks());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_certificates_default_chain_and_rotation() {
    let ca = TestCa::generate();
    let runtime = Backend::start("runtime");
    let named = host("named");
    let leaf = ca.issue(&[&named]);
    let fallback = ca.issue(&["default.example.com"]);
    let mut ing = ingress("named", &[&named, &host("other")], &[("runtime", 100)]);
    ing.tls.push(IngressTls {
        hosts: vec![named.clone()],
        secret_name: "named".into(),
    });
    let secrets = [("named".to_string(), secret(&leaf))].into();
    let opts = Options {
        default_certificate: Some(secret(&fallback)),
        cluster_certificate: Some(secret(&fallback)),
        ..Default::default()
    };
    let mut r = Replay::start_with(
        vec![ing.clone()],
        vec![("runtime", pods(&[&runtime]))],
        secrets,
        opts,
        &[],
    );
    r.all_ready().await;
    // SNI picks the chain that lists the name; any other name, or none, the default one.
    let (_, cert) = https_get(r.ports.https, &named, &ca).await;
    assert!(cert == leaf.der);
    let other_cfg = {
        // The default certificate does not name `other`: accept it for this check.
        let tls = tls_connect(
            r.ports.https,
            "default.example.com",
            ca.client_config(&["http/1.1"]),
        )
        .await
        .expect("a handshake with an unknown name gets the default certificate");
        peer_certificate(&tls)
    };
    assert!(other_cfg == fallback.der);
    // The cluster-local TLS listener has its own default (Kourier's cluster-cert-secret).
    let tls = tls_connect(
        r.ports.internal_https,
        "default.example.com",
        ca.client_config(&["http/1.1"]),
    )
    .await
    .expect("the cluster-local TLS listener's default certificate");
    assert!(peer_certificate(&tls) == fallback.der);

    // Rotation: an open connection keeps working; new handshakes get the new certificate.
    let tls = tls_connect(r.ports.https, &named, ca.client_config(&["http/1.1"]))
        .await
        .unwrap();
    let mut open = HttpConn::http1(tls).await;
    assert_eq!(open.get(&named, "/").await.unwrap().0.status, 200);
    let rotated = ca.issue(&[&named]);
    r.secrets.insert("named".into(), secret(&rotated));
    r.publish(vec![ing]);
    let mut new_cert = Vec::new();
    for _ in 0..100 {
        new_cert = https_get(r.ports.https, &named, &ca).await.1;
        if new_cert == rotated.der {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(new_cert == rotated.der, "the rotated certificate is served");
    assert_eq!(
        open.get(&named, "/")
            .await
            .expect("the open connection")
            .0
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracing_is_ignored_and_ext_authz_is_refused() {
    let runtime = Backend::start("runtime");
    let ing = ingress("hello", &[&host("hello")], &[("runtime", 100)]);
    let mut r = Replay::start(
        vec![ing.clone()],
        vec![("runtime", pods(&[&runtime]))],
        Options {
            tracing: true,
            ..Default::default()
        },
    );
    r.all_ready().await;
    assert!(
        r.ads.nacks().is_empty(),
        "otel-collector: {:?}",
        r.ads.nacks()
    );
    assert_eq!(get(&r.http(), &host("hello"), &[]).await.status, 200);

    // ext-authz on: the Cluster and Listener responses are NACKed with the reason, and the
    // running config stays (fail closed: never served without the check).
    r.opts.ext_authz = true;
    let (snap, _) = r.snapshot(&[ing]);
    let version = r.ads.set_snapshot(NODE_ID, &snap);
    assert!(
        eventually(READY, || async {
            let n = r.ads.nacks();
            ["Cluster", "Listener"].iter().all(|t| {
                n.iter()
                    .any(|x| x.type_url.ends_with(t) && x.message.contains("ext_authz"))
            })
        })
        .await,
        "{:?}",
        r.ads.nacks()
    );
    assert!(!r.ads.acked(NODE_ID, &version));
    let nack = r
        .ads
        .nacks()
        .into_iter()
        .find(|n| n.type_url.ends_with("Listener"))
        .unwrap();
    assert!(
        nack.message.contains("Weir does not enforce it"),
        "{}",
        nack.message
    );
    assert_eq!(get(&r.http(), &host("hello"), &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolvable_external_name_fails_alone() {
    let runtime = Backend::start("runtime");
    let r = Replay::start(
        vec![
            ingress("hello", &[&host("hello")], &[("runtime", 100)]),
            ingress("gone", &[&host("gone")], &[("nowhere", 100)]),
        ],
        vec![
            ("runtime", pods(&[&runtime])),
            (
                "nowhere",
                Service::ExternalName {
                    host: "no-such-host.invalid".into(),
                    port: 80,
                },
            ),
        ],
        Options::default(),
    );
    // Accepted (no NACK): the other ingress is served, and the unresolvable one fails fast
    // with the connect error instead of waiting as if scaled to zero.
    assert!(r.ads.nacks().is_empty(), "{:?}", r.ads.nacks());
    assert_eq!(get(&r.http(), &host("hello"), &[]).await.status, 200);
    let started = Instant::now();
    let resp = get(&r.http(), &host("gone"), &[]).await;
    assert_eq!(resp.status, 502, "{resp:?}");
    assert!(
        resp.body.contains("upstream connect error"),
        "{}",
        resp.body
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_and_trusted_hops() {
    let runtime = Backend::start("runtime");
    let ing = ingress("hello", &[&host("hello")], &[("runtime", 100)]);
    let mut r = Replay::start(
        vec![ing.clone()],
        vec![("runtime", pods(&[&runtime]))],
        Options {
            proxy_protocol: true,
            ..Default::default()
        },
    );
    let request = |h: &str| format!("GET / HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n");
    // v1: the client address is the header's source.
    let v1 = format!(
        "PROXY TCP4 203.0.113.7 10.0.0.1 51000 8080\r\n{}",
        request(&host("hello"))
    );
    let resp = raw_request(r.ports.http, &v1).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        resp.upstream_header("x-forwarded-for").as_deref(),
        Some("203.0.113.7")
    );
    // Kept alive: every request on the connection has the header's source, not only the
    // first (the next session on a connection takes over the previous one's digest).
    let kept = kept_alive_requests(
        r.ports.http,
        b"PROXY TCP4 203.0.113.8 10.0.0.1 51000 8080\r\n",
        &host("hello"),
        3,
    )
    .await;
    for (i, resp) in kept.iter().enumerate() {
        assert!(resp.starts_with("HTTP/1.1 200"), "request {i}: {resp}");
        assert!(
            resp.contains("\"x-forwarded-for\":\"203.0.113.8\""),
            "request {i}: {resp}"
        );
    }
    // v2, IPv6 source.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24".to_vec();
    let mut src = [0u8; 16];
    src[0] = 0x20;
    src[1] = 0x01;
    src[2] = 0x0d;
    src[3] = 0xb8;
    src[15] = 0x05;
    v2.extend_from_slice(&src);
    v2.extend_from_slice(&[0u8; 16]);
    v2.extend_from_slice(&4000u16.to_be_bytes());
    v2.extend_from_slice(&8080u16.to_be_bytes());
    v2.extend_from_slice(request(&host("hello")).as_bytes());
    let resp = raw_bytes(r.ports.http, &v2).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.contains("\"x-forwarded-for\":\"2001:db8::5\""),
        "{resp}"
    );
    // Without the header on that port the connection is refused; the probe port 8090
    // never expects one.
    let plain = raw_bytes(r.ports.http, request(&host("hello")).as_bytes()).await;
    assert!(!plain.starts_with("HTTP/1.1 200"), "{plain}");
    let resp = raw_request(r.ports.probe, &request(&host("hello"))).await;
    assert_eq!(resp.status, 200);

    // Trusted hops: behind a TLS-terminating balancer, its X-Forwarded-Proto stands.
    let xfp = |port: SocketAddr| {
        let req = format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n",
            host("hello")
        );
        async move {
            raw_request(port, &req)
                .await
                .upstream_header("x-forwarded-proto")
        }
    };
    assert_eq!(
        xfp(r.ports.probe).await.as_deref(),
        Some("http"),
        "0 trusted hops"
    );
    r.opts.proxy_protocol = false;
    r.opts.trusted_hops = 1;
    r.publish(vec![ing]);
    assert_eq!(
        xfp(r.ports.probe).await.as_deref(),
        Some("https"),
        "1 trusted hop"
    );
}

/// Writes `bytes` on a new connection and reads until the server closes it (or 10 s).
async fn raw_bytes(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes `prefix`, then `n` GETs for `host` on one connection, each after the previous
/// answer (read by its Content-Length) came back; the answers, head and body.
async fn kept_alive_requests(addr: SocketAddr, prefix: &[u8], host: &str, n: usize) -> Vec<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(prefix).await.expect("write");
    let mut answers = Vec::new();
    let mut buf = Vec::new();
    for _ in 0..n {
        let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let read = async {
            loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().expect("content-length"));
                    if buf.len() >= end + 4 + len {
                        let answer: Vec<u8> = buf.drain(..end + 4 + len).collect();
                        return String::from_utf8_lossy(&answer).into_owned();
                    }
                }
                let mut chunk = [0u8; 4096];
                let got = s.read(&mut chunk).await.expect("read");
                assert!(got > 0, "closed after {} answers", answers.len());
                buf.extend_from_slice(&chunk[..got]);
            }
        };
        let answer = tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("an answer within 10 s");
        answers.push(answer);
    }
    answers
}

// === benchmark: a fleet of gateways at 1,000 KIngresses ===

/// Four gateways behind the Kourier-shaped server, 1,000 KIngresses (one host and one
/// revision each, Kourier's probe paths and status host included): seconds until every
/// gateway has ACKed the first snapshot and serves it, then for one route change (one
/// ingress moves to a new revision: Kourier re-sends the whole snapshot under a new
/// version), and each gateway's memory. Not part of the default run:
/// `cargo test --release -p weir-tests --test it -- --ignored --nocapture kourier::fleet`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn fleet_convergence_at_1000_kingresses() {
    const N: usize = 1000;
    const FLEET: usize = 4;
    let backend = Backend::start("fleet");
    let mut services = HashMap::new();
    let mut ingresses = Vec::with_capacity(N);
    for i in 0..N {
        let svc = format!("svc-{i}-00001");
        services.insert((NS.to_string(), svc.clone()), pods(&[&backend]));
        ingresses.push(ingress(
            &format!("svc-{i}"),
            &[&host(&format!("svc-{i}"))],
            &[(&svc, 100)],
        ));
    }
    let ads = KourierAds::start();
    let pods_: Vec<GatewayPorts> = (0..FLEET).map(|_| GatewayPorts::free()).collect();
    let build = |ings: &[KIngress]| {
        resources::snapshot(
            ings,
            &services,
            &HashMap::new(),
            &pods_[0],
            &Options::default(),
        )
    };
    let fleet: Vec<Weir> = pods_
        .iter()
        .map(|p| {
            Weir::builder(weir_bin!(), &gateway_config())
                .gateway(*p)
                .arg(format!("--xds={}", ads.url()))
                .arg("--xds-sotw")
                .arg(format!("--node-id={NODE_ID}"))
                .without_waiting_for_ready()
                .start()
        })
        .collect();
    let idle: Vec<u64> = fleet
        .iter()
        .map(|w| weir_tests::process::rss_kib(w.pid()))
        .collect();

    // First sync: every gateway ACKs and its status host says ready.
    let (snap, _) = build(&ingresses);
    let started = Instant::now();
    let version = ads.set_snapshot(NODE_ID, &snap);
    let acks = |version: &str| {
        let version = version.to_string();
        let ads = &ads;
        async move {
            eventually(Duration::from_secs(120), || async {
                let acked = ads
                    .acks()
                    .into_iter()
                    .filter(|a| a.version == version && a.type_url.ends_with("RouteConfiguration"))
                    .count();
                acked >= FLEET
            })
            .await
        }
    };
    assert!(acks(&version).await, "first sync; NACKs: {:?}", ads.nacks());
    let first_ack = started.elapsed();
    for p in &pods_ {
        assert_eq!(status(p.internal).await, 200);
    }
    let first = started.elapsed();
    let synced: Vec<u64> = fleet
        .iter()
        .map(|w| weir_tests::process::rss_kib(w.pid()))
        .collect();

    // One route change: svc-0 moves to a new revision; served by every gateway.
    services.insert((NS.to_string(), "svc-0-00002".into()), pods(&[&backend]));
    ingresses[0] = ingress("svc-0", &[&host("svc-0")], &[("svc-0-00002", 100)]);
    let (snap, _) = resources::snapshot(
        &ingresses,
        &services,
        &HashMap::new(),
        &pods_[0],
        &Options::default(),
    );
    let started = Instant::now();
    let version = ads.set_snapshot(NODE_ID, &snap);
    for p in &pods_ {
        let url = format!("http://{}/", p.http);
        assert!(
            eventually(Duration::from_secs(120), || async {
                let r = get(&url, &host("svc-0"), &[]).await;
                r.upstream_header("knative-serving-revision").as_deref() == Some("svc-0-00002")
            })
            .await
        );
    }
    let change = started.elapsed();
    assert!(acks(&version).await);
    let after: Vec<u64> = fleet
        .iter()
        .map(|w| weir_tests::process::rss_kib(w.pid()))
        .collect();
    eprintln!(
        "fleet of {FLEET} at {N} KIngresses: first sync ACKed by all in {:.2} s, all ready in \
         {:.2} s; one route change served by all in {:.3} s",
        first_ack.as_secs_f64(),
        first.as_secs_f64(),
        change.as_secs_f64()
    );
    eprintln!(
        "RSS per gateway (MiB): idle {:?}, synced {:?}, after the change {:?}",
        idle.iter().map(|k| k / 1024).collect::<Vec<_>>(),
        synced.iter().map(|k| k / 1024).collect::<Vec<_>>(),
        after.iter().map(|k| k / 1024).collect::<Vec<_>>()
    );
}
