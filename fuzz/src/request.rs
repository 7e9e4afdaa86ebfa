//! Checks behind the `request_head` and `cookie` fuzz targets: a client's request head, as
//! pingora 0.9's HTTP/1 server parses it (httparse into a `pingora_http::RequestHeader`), through
//! Weir's refusals and routing decision (`weir_config::request`). Shared with
//! `proxy/tests/fuzz_regressions.rs`, which includes this file by path.

use http::request::Parts;
use weir_config::model::Limits;
use weir_config::request::{self, Decision};
use weir_config::{compile, parse, Format, Listener, RouteTable};

/// The table requests are routed against: hosts, tags with tag-header routing, a path
/// rule with a header match, header and cookie affinity, a redirect and a readiness host.
pub const TABLE_YAML: &str = r#"
tag_header_routing: true
readiness: {hosts: [internalkourier]}
services:
  - name: hello
    traffic:
      - {revision: hello-1, percent: 90, tag: current}
      - {revision: hello-2, percent: 10, tag: next}
      - {revision: hello-3, percent: 0, tag: dark}
  - name: sticky
    affinity: {cookie: weir-rev, instance_affinity: true}
    traffic: [{revision: hello-1, percent: 50}, {revision: hello-2, percent: 50}]
  - name: keyed
    affinity: {header: x-user}
    traffic: [{revision: hello-1, percent: 70}, {revision: hello-2, percent: 30}]
  - name: secure
    http_option: redirect
    traffic: [{revision: hello-1, percent: 100}]
ingresses:
  - name: api
    rules:
      - hosts: [api.example.com]
        paths:
          - {path: /v2, headers: {x-canary: "yes"}, splits: [{revision: hello-2, percent: 100}]}
          - {path: /, splits: [{revision: hello-1, percent: 100}]}
revisions: [{name: hello-1}, {name: hello-2}, {name: hello-3}]
"#;

pub fn table() -> RouteTable {
    compile(&parse(TABLE_YAML, Format::Yaml).expect("the fuzz table parses"))
        .expect("the fuzz table compiles")
}

/// Parses a request head the way pingora 0.9.1's HTTP/1 server does (`read_request`:
/// httparse with 256 header slots, then `RequestHeader::build` and `append_header` per
/// field; both Content-Length and Transfer-Encoding: Content-Length dropped). `None` when
/// pingora would not have a head to route (incomplete, or answered 400).
pub fn parse_head(data: &[u8]) -> Option<(pingora_http::RequestHeader, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(data) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let mut head = pingora_http::RequestHeader::build(
        req.method.unwrap_or(""),
        req.path.unwrap_or("").as_bytes(),
        Some(req.headers.len()),
    )
    .ok()?;
    for h in req.headers.iter() {
        let value = http::HeaderValue::from_bytes(h.value).ok()?;
        head.append_header(h.name.to_string(), value).ok()?;
    }
    if head.headers.contains_key(http::header::TRANSFER_ENCODING) {
        head.remove_header(&http::header::CONTENT_LENGTH);
    }
    Some((head, len))
}

/// `data` is what a client sends first on a connection. Never panics; a request Weir
/// routes names a host of the table on the listener it came in on, and its target is in the
/// split of the rule it matched (a 0 % target only through its tag).
pub fn check_request_head(table: &RouteTable, data: &[u8]) {
    let Some((head, len)) = parse_head(data) else {
        return;
    };
    let smuggled = request::smuggling(&data[..len]);
    let limits = Limits {
        max_request_headers: 16,
        ..Limits::default()
    };
    let refused = request::refused(&head, &limits);
    if let Some((code, body)) = refused {
        assert_eq!(code, 431);
        assert!(body.ends_with('\n'));
    }
    for listener in [Listener::External, Listener::Internal] {
        for https in [false, true] {
            check_decision(&head, request::decide(&head, table, listener, https), https);
        }
    }
    // The raw check sees what the parsed head has lost.
    if smuggled {
        assert!(head.headers.contains_key(http::header::TRANSFER_ENCODING));
    }
}

fn check_decision(head: &Parts, d: Decision<'_>, https: bool) {
    match d {
        Decision::Route(r) => {
            let in_split = r
                .rule
                .split
                .targets()
                .iter()
                .any(|t| std::ptr::eq(t, r.target));
            let by_tag = r.host.tags.iter().any(|(_, t)| std::ptr::eq(t, r.target));
            assert!(in_split || by_tag, "a target outside its rule");
            if in_split && !by_tag && r.target.percent == 0 {
                panic!("a 0 % target picked without its tag");
            }
            assert!(
                !r.host.redirect_https || https,
                "a redirecting host routed on plain HTTP"
            );
        }
        Decision::Respond(code, body) => {
            assert!(matches!(code, 400 | 404), "{code}");
            assert!(body.ends_with('\n'));
        }
        Decision::Redirect(url) => {
            assert!(!https);
            assert!(url.starts_with("https://"), "{url}");
            assert!(!url.contains(['\r', '\n']), "{url:?}");
        }
        Decision::Readiness => assert!(head.uri.path().starts_with("/ready")),
    }
}

/// `data` is a `Cookie` header for the sticky service. The revision a cookie names is kept
/// only while it is in the split above 0 %; any other value is replaced by a weighted pick.
pub fn check_cookie(table: &RouteTable, data: &[u8]) {
    let Ok(value) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    let mut head = http::Request::get("/")
        .header("host", "sticky.default.example.com")
        .body(())
        .expect("a request")
        .into_parts()
        .0;
    head.headers.insert(http::header::COOKIE, value);
    let remembered = request::cookie_value(&head.headers, "weir-rev").map(|v| v.to_vec());
    let Decision::Route(r) = request::decide(&head, table, Listener::External, false) else {
        panic!("the sticky host routes");
    };
    assert!(r.target.percent > 0);
    let sticky = r.sticky.expect("cookie affinity");
    let named = remembered
        .as_deref()
        .map(|v| v.split(|&b| b == b'/').next().unwrap_or_default());
    let live = named.is_some_and(|n| n == b"hello-1" || n == b"hello-2");
    assert_eq!(sticky.must_set, !live, "cookie {remembered:?}");
    if live {
        assert_eq!(Some(r.target.name.as_bytes()), named);
    } else {
        assert!(sticky.preferred.is_none());
    }
}
