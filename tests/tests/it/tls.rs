//! The https listener (docs/behaviour.md#listeners; docs/knative.md#ingress-conformance-suite: tls, httpoption redirect):
//! certificates chosen by SNI (exact, then `*.` wildcard; an unknown or missing name fails
//! the handshake), ALPN h2 and http/1.1, certificates reloaded on every config apply (open
//! connections keep theirs), bad certificates refused with their path, and the 301 of
//! `http_option: redirect` on plain HTTP.
//!
//! Certificates are made by a test CA (rcgen) and written into the proxy's config directory;
//! the `tls` entries name them relative to it.

use serde_json::{json, Value};
use weir_tests::tls::{
    alpn, certificate_names, peer_certificate, tls_connect, HttpConn, Leaf, TestCa,
};
use weir_tests::{put_json, raw_request, weir_bin, Backend, Weir};

const HELLO: &str = "hello.default.example.com";
/// Served with the wildcard certificate `*.apps.example.com` (service `web`, namespace `apps`).
const WEB: &str = "web.apps.example.com";
const SECURE: &str = "secure.default.example.com";
const BOTH: &[&str] = &["h2", "http/1.1"];

/// Services `hello` (default namespace), `web` (namespace `apps`) and `secure` (redirected
/// to https on plain HTTP), each on its own backend, with `tls` entries as given.
fn config(hello: &Backend, web: &Backend, secure: &Backend, tls: Value) -> Value {
    json!({
        "services": [
            {"name": "hello", "traffic": [{"revision": "hello-00001", "percent": 100}]},
            {"name": "web", "namespace": "apps",
             "traffic": [{"revision": "web-00001", "percent": 100}]},
            {"name": "secure", "http_option": "redirect",
             "traffic": [{"revision": "secure-00001", "percent": 100}]},
        ],
        "revisions": [
            {"name": "hello-00001", "endpoints": [hello.endpoint()]},
            {"name": "web-00001", "namespace": "apps", "endpoints": [web.endpoint()]},
            {"name": "secure-00001", "endpoints": [secure.endpoint()]},
        ],
        "tls": tls,
    })
}

/// One `tls` entry.
fn entry(hosts: &[&str], cert: &str, key: &str) -> Value {
    json!({"hosts": hosts, "cert": cert, "key": key})
}

struct Setup {
    ca: TestCa,
    hello_cert: Leaf,
    web_cert: Leaf,
    hello: Backend,
    web: Backend,
    secure: Backend,
    weir: Weir,
}

impl Setup {
    /// A proxy with https: `hello` by its exact name (`hello.pem`), `web` by the wildcard
    /// `*.apps.example.com` (`wild.pem`), `secure` by its exact name (`secure.pem`).
    fn start() -> Setup {
        let ca = TestCa::generate();
        let hello_cert = ca.issue(&[HELLO]);
        let web_cert = ca.issue(&["*.apps.example.com"]);
        let secure_cert = ca.issue(&[SECURE]);
        let (hello, web, secure) = (
            Backend::start("hello-00001"),
            Backend::start("web-00001"),
            Backend::start("secure-00001"),
        );
        let cfg = config(&hello, &web, &secure, Self::tls(("hello.pem", "hello.key")));
        let weir = Weir::builder(weir_bin!(), &cfg)
            .https()
            .file("hello.pem", hello_cert.cert_pem.clone())
            .file("hello.key", hello_cert.key_pem.clone())
            .file("wild.pem", web_cert.cert_pem.clone())
            .file("wild.key", web_cert.key_pem.clone())
            .file("secure.pem", secure_cert.cert_pem.clone())
            .file("secure.key", secure_cert.key_pem.clone())
            .start();
        Setup {
            ca,
            hello_cert,
            web_cert,
            hello,
            web,
            secure,
            weir,
        }
    }

    /// The `tls` list, with `hello`'s entry first and pointing at `hello_files`.
    fn tls(hello_files: (&str, &str)) -> Value {
        json!([
            entry(&[HELLO], hello_files.0, hello_files.1),
            entry(&["*.apps.example.com"], "wild.pem", "wild.key"),
            entry(&[SECURE], "secure.pem", "secure.key"),
        ])
    }

    fn config(&self, tls: Value) -> Value {
        config(&self.hello, &self.web, &self.secure, tls)
    }

    /// A new TLS connection for `host` offering `alpn`: panics when the handshake fails.
    async fn connect(
        &self,
        host: &str,
        alpn: &[&str],
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        tls_connect(self.weir.https_addr(), host, self.ca.client_config(alpn))
            .await
            .unwrap_or_else(|e| panic!("TLS handshake for {host}: {e}"))
    }

    /// The certificate a new handshake for `host` gets.
    async fn certificate_for(&self, host: &str) -> Vec<u8> {
        peer_certificate(&self.connect(host, BOTH).await)
    }

    async fn generation(&self) -> u64 {
        let r = weir_tests::get(&format!("{}/v1/config", self.weir.admin_url()), "", &[]).await;
        assert_eq!(r.status, 200, "{r:?}");
        r.json()["generation"].as_u64().expect("a generation")
    }
}

/// Over h2 (by ALPN): 200 from the backend, which sees `X-Forwarded-Proto: https`.
async fn expect_proxied_h2(
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    host: &str,
    revision: &str,
) -> HttpConn {
    let mut conn = HttpConn::http2(tls, "https").await;
    let (r, version) = conn.get(host, "/tls?q=1").await.expect("GET over h2");
    assert_eq!(version, http::Version::HTTP_2);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.revision(), Some(revision), "{r:?}");
    assert_eq!(r.json()["path"], "/tls");
    assert_eq!(r.json()["query"], "q=1");
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("https")
    );
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_exact_and_wildcard_certificates() {
    let s = Setup::start();

    // Exact name, ALPN h2 and http/1.1 offered: h2 is chosen.
    let tls = s.connect(HELLO, BOTH).await;
    assert_eq!(alpn(&tls).as_deref(), Some("h2"));
    let cert = peer_certificate(&tls);
    assert!(cert == s.hello_cert.der, "not hello's certificate");
    let (cn, sans) = certificate_names(&cert);
    assert_eq!(cn, HELLO);
    assert_eq!(sans, [HELLO]);
    expect_proxied_h2(tls, HELLO, "hello-00001").await;
    assert_eq!(s.hello.requests(), 1);

    // By the wildcard, a client that speaks only HTTP/1.1.
    let tls = s.connect(WEB, &["http/1.1"]).await;
    assert_eq!(alpn(&tls).as_deref(), Some("http/1.1"));
    let cert = peer_certificate(&tls);
    assert!(cert == s.web_cert.der, "not the wildcard certificate");
    let (cn, sans) = certificate_names(&cert);
    assert_eq!(cn, "*.apps.example.com");
    assert_eq!(sans, ["*.apps.example.com"]);
    let mut conn = HttpConn::http1(tls).await;
    for i in 0..2 {
        let (r, version) = conn.get(WEB, "/one").await.expect("GET over http/1.1");
        assert_eq!(version, http::Version::HTTP_11);
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.revision(), Some("web-00001"));
        assert_eq!(
            r.upstream_header("x-forwarded-proto").as_deref(),
            Some("https")
        );
    }
    assert_eq!(s.web.requests(), 2);

    // No ALPN at all: HTTP/1.1.
    let tls = s.connect(HELLO, &[]).await;
    assert_eq!(alpn(&tls), None);
    let (r, _) = HttpConn::http1(tls)
        .await
        .get(HELLO, "/")
        .await
        .expect("GET without ALPN");
    assert_eq!(r.status, 200, "{r:?}");

    // No certificate for an unknown name, for a name two labels under the wildcard, nor
    // without SNI (an IP address as the server name sends none): the handshake fails.
    let addr = s.weir.https_addr();
    for name in ["unknown.example.org", "a.b.apps.example.com", "127.0.0.1"] {
        let res = tls_connect(addr, name, s.ca.client_config(BOTH)).await;
        // A clean failure: the server refuses with a TLS alert (not a reset or a timeout).
        let err = match res {
            Ok(_) => panic!("a handshake for {name:?} succeeded"),
            Err(e) => e,
        };
        let alert = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
            .is_some_and(|e| matches!(e, rustls::Error::AlertReceived(_)));
        assert!(alert, "handshake for {name:?}: not an alert: {err:?}");
    }
    // The listener is still fine.
    expect_proxied_h2(s.connect(HELLO, BOTH).await, HELLO, "hello-00001").await;
    assert_eq!(s.hello.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_keeps_open_connections() {
    let s = Setup::start();
    let old = s.hello_cert.der.clone();

    let h2_tls = s.connect(HELLO, BOTH).await;
    assert!(peer_certificate(&h2_tls) == old);
    let mut h2 = expect_proxied_h2(h2_tls, HELLO, "hello-00001").await;
    let h1_tls = s.connect(HELLO, &["http/1.1"]).await;
    let mut h1 = HttpConn::http1(h1_tls).await;
    let (r, _) = h1.get(HELLO, "/").await.expect("GET over http/1.1");
    assert_eq!(r.status, 200, "{r:?}");

    // New files for the same host, applied through the control API.
    let new = s.ca.issue(&[HELLO]);
    let files = new.write(s.weir.dir(), "hello-2");
    let before = s.generation().await;
    s.weir
        .put_config(&s.config(Setup::tls((&files.0, &files.1))))
        .await;
    assert!(s.generation().await > before);

    // The open connections go on with the certificate they were made with.
    for (conn, what) in [(&mut h2, "h2"), (&mut h1, "http/1.1")] {
        let (r, _) = conn
            .get(HELLO, "/after-rotation")
            .await
            .unwrap_or_else(|e| panic!("the open {what} connection broke: {e}"));
        assert_eq!(r.status, 200, "{what}: {r:?}");
        assert_eq!(r.json()["path"], "/after-rotation");
    }
    // The next handshake gets the new one.
    let cert = s.certificate_for(HELLO).await;
    assert!(cert != old, "still the old certificate after the update");
    assert!(cert == new.der, "not the new certificate");
    // Others are unchanged.
    assert!(s.certificate_for(WEB).await == s.web_cert.der);
    assert_eq!(s.hello.requests(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificates_are_refused_and_the_running_ones_stay() {
    let s = Setup::start();
    let dir = s.weir.dir();
    let good = s.hello_cert.clone();
    let other = s.ca.issue(&[HELLO]);
    // A PEM section whose base64 is broken; a key of another certificate.
    let broken = "-----BEGIN CERTIFICATE-----\nnot*base64!\n-----END CERTIFICATE-----\n".to_owned();
    let broken_key = "-----BEGIN PRIVATE KEY-----\n%%%%\n-----END PRIVATE KEY-----\n".to_owned();
    std::fs::write(dir.join("broken.pem"), &broken).unwrap();
    std::fs::write(dir.join("broken.key"), &broken_key).unwrap();
    std::fs::write(dir.join("empty.pem"), "no PEM in here\n").unwrap();
    std::fs::write(dir.join("good.pem"), &good.cert_pem).unwrap();
    std::fs::write(dir.join("other.key"), &other.key_pem).unwrap();
    let generation = s.generation().await;

    let cases = [
        (("broken.pem", "hello.key"), "tls[0].cert", "bad PEM"),
        (("empty.pem", "hello.key"), "tls[0].cert", "no certificate"),
        (("missing.pem", "hello.key"), "tls[0].cert", "cannot read"),
        (("good.pem", "broken.key"), "tls[0].key", "bad PEM"),
        (("good.pem", "other.key"), "tls[0].key", "does not match"),
    ];
    let url = format!("{}/v1/config", s.weir.admin_url());
    for ((cert, key), path, why) in cases {
        let r = put_json(&url, &s.config(Setup::tls((cert, key)))).await;
        assert_eq!(r.status, 400, "{cert} + {key}: {r:?}");
        let errors = r.json()["errors"].clone();
        let found =
            errors.as_array().into_iter().flatten().any(|e| {
                e["path"] == path && e["message"].as_str().is_some_and(|m| m.contains(why))
            });
        assert!(
            found,
            "{cert} + {key}: no error at {path} saying {why:?}: {errors}"
        );

        // Nothing changed: same generation, the running certificate still served.
        assert_eq!(s.generation().await, generation, "{cert} + {key}");
        let tls = s.connect(HELLO, BOTH).await;
        assert!(
            peer_certificate(&tls) == good.der,
            "{cert} + {key}: not the running certificate"
        );
        expect_proxied_h2(tls, HELLO, "hello-00001").await;
    }

    // The error names the entry it is in.
    let mut tls = Setup::tls(("hello.pem", "hello.key"));
    tls[1]["key"] = json!("other.key");
    let r = put_json(&url, &s.config(tls)).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.json()["errors"][0]["path"], "tls[1].key", "{r:?}");
    assert!(s.certificate_for(WEB).await == s.web_cert.der);
    assert_eq!(s.generation().await, generation);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_option_redirect_sends_plain_http_to_https() {
    let s = Setup::start();
    let addr = s.weir.http_addr();
    for (target, location) in [
        (
            "/a/b?c=d&e=f%20g",
            "https://secure.default.example.com/a/b?c=d&e=f%20g",
        ),
        ("/", "https://secure.default.example.com/"),
        ("/only/path", "https://secure.default.example.com/only/path"),
    ] {
        let r = raw_request(
            addr,
            &format!("GET {target} HTTP/1.1\r\nHost: {SECURE}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(r.status, 301, "{target}: {r:?}");
        assert_eq!(r.header("location"), Some(location), "{target}: {r:?}");
    }
    assert_eq!(
        s.secure.requests(),
        0,
        "a redirected request reached the backend"
    );
    // Other services on plain HTTP are not redirected.
    let r = weir_tests::get(&format!("{}/x", s.weir.http_url()), HELLO, &[]).await;
    assert_eq!(r.status, 200, "{r:?}");

    // The same host over https is proxied.
    let tls = s.connect(SECURE, BOTH).await;
    let mut conn = HttpConn::http2(tls, "https").await;
    let (r, _) = conn
        .get(SECURE, "/a/b?c=d&e=f%20g")
        .await
        .expect("GET over h2");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.revision(), Some("secure-00001"));
    assert_eq!(r.json()["path"], "/a/b");
    assert_eq!(r.json()["query"], "c=d&e=f%20g");
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("https")
    );
    assert_eq!(s.secure.requests(), 1);
}
