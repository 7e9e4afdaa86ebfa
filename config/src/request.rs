//! What a request head means under a [`RouteTable`]: the checks that refuse it before any
//! routing ([`refused`], [`smuggling`]) and the routing decision ([`decide`]): host, readiness
//! host, https redirect, path rule, tag, sticky revision, weighted split.
//!
//! Pure: a request head in, a [`Decision`] out, no I/O and no state but the table (and one
//! random draw for a split). The proxy's pingora adapter (`weir_proxy::route`) turns the
//! decision into pingora calls; the unit tests and the fuzz targets call it directly.

use std::net::SocketAddr;

use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;

use crate::model::Limits;
use crate::split::Target;
use crate::table::{normalize_host, AffinityMode, HostRoute, Listener, PathRoute, RouteTable};

static TAG_HEADER: HeaderName = HeaderName::from_static("knative-serving-tag");

/// What to do with a request.
#[derive(Debug)]
pub enum Decision<'t, R = ()> {
    /// Send it to `target` of `rule`.
    Route(Routed<'t, R>),
    /// Answer it here: status and body.
    Respond(u16, String),
    /// `301` to this URL (`http_option: redirect` on a plain listener).
    Redirect(String),
    /// A readiness host's path: answer 200 when a config is in force, 503 otherwise.
    Readiness,
}

/// A routed request: the path rule it matched and the target picked.
#[derive(Debug)]
pub struct Routed<'t, R = ()> {
    pub host: &'t HostRoute<R>,
    pub rule: &'t PathRoute<R>,
    pub target: &'t Target<R>,
    /// The cookie to keep the user on `target` (cookie affinity).
    pub sticky: Option<Sticky>,
}

/// What cookie affinity needs between routing and the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sticky {
    pub cookie: Box<str>,
    pub max_age_secs: u64,
    /// Remember the endpoint too (`<revision>/<ip:port>`).
    pub instance: bool,
    /// The endpoint the cookie remembers (instance affinity).
    pub preferred: Option<SocketAddr>,
    /// The response must set the cookie (none, or it named a revision outside the split).
    pub must_set: bool,
}

/// A request head Weir refuses before routing, with its status and body: more header fields
/// or bytes than `limits` allow (431). `None` when it may be routed.
pub fn refused(req: &Parts, limits: &Limits) -> Option<(u16, &'static str)> {
    let h = &req.headers;
    if h.len() > limits.max_request_headers as usize {
        return Some((431, "too many request header fields\n"));
    }
    let max = limits.max_request_headers_size.get().unwrap_or(u64::MAX) as usize;
    let size: usize = h.iter().map(|(n, v)| n.as_str().len() + v.len()).sum();
    if size > max {
        return Some((431, "request header fields too large\n"));
    }
    None
}

/// Whether a raw HTTP/1 head carries both `Content-Length` and `Transfer-Encoding`: the
/// classic smuggling vector, refused with 400 (RFC 9112 section 6.3 allows it). Read from
/// the raw bytes because the parsed head no longer has `Content-Length` (pingora drops it
/// when `Transfer-Encoding` is present).
pub fn smuggling(raw_head: &[u8]) -> bool {
    let has = |name: &[u8]| {
        raw_head.split(|&b| b == b'\n').skip(1).any(|line| {
            line.len() > name.len()
                && line[..name.len()].eq_ignore_ascii_case(name)
                && line[name.len()] == b':'
        })
    };
    has(b"content-length") && has(b"transfer-encoding")
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie_value<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
}

fn no_route<'t, R>(host: &[u8]) -> Decision<'t, R> {
    Decision::Respond(
        404,
        format!("no route for host \"{}\"\n", String::from_utf8_lossy(host)),
    )
}

/// Routes a request that arrived on `listener` (`https`: over TLS).
pub fn decide<'t, R>(
    req: &Parts,
    table: &'t RouteTable<R>,
    listener: Listener,
    https: bool,
) -> Decision<'t, R> {
    let host = match req.headers.get(header::HOST) {
        Some(h) => h.as_bytes(),
        None => match req.uri.authority() {
            Some(a) => a.as_str().as_bytes(),
            None => return Decision::Respond(400, "missing Host header\n".into()),
        },
    };
    let route = match table.lookup(host, listener) {
        Ok(Some(r)) => r,
        Ok(None) => return no_route(host),
        Err(_) => return Decision::Respond(400, "invalid Host header\n".into()),
    };
    if let Some(ready_path) = &route.readiness {
        return if req.uri.path().starts_with(&**ready_path) {
            Decision::Readiness
        } else {
            no_route(host)
        };
    }
    if route.redirect_https && !https {
        let mut buf = [0u8; crate::table::MAX_HOST_LEN];
        let name = normalize_host(host, &mut buf).unwrap_or_default();
        let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
        return Decision::Redirect(format!("https://{name}{target}"));
    }
    let Some(rule) = route.route(req.uri.path().as_bytes(), |n| {
        req.headers.get(n).map(HeaderValue::as_bytes)
    }) else {
        return no_route(host);
    };
    // Knative: a missing, empty or unknown tag falls through to the split.
    let by_tag = (!route.tags.is_empty())
        .then(|| req.headers.get(&TAG_HEADER))
        .flatten()
        .map(HeaderValue::as_bytes)
        .filter(|t| !t.is_empty())
        .and_then(|t| route.tag_target(t));
    let (target, sticky) = match (by_tag, &rule.affinity) {
        (Some(t), _) => (t, None),
        (None, None) => (rule.split.pick(), None),
        (None, Some(AffinityMode::Header(name))) => match req.headers.get(name) {
            Some(key) if !key.is_empty() => (rule.split.pick_by_key(key.as_bytes()), None),
            _ => (rule.split.pick(), None),
        },
        (
            None,
            Some(AffinityMode::Cookie {
                name,
                max_age_secs,
                instance,
            }),
        ) => cookie_pick(req, rule, name, *max_age_secs, *instance),
    };
    Decision::Route(Routed {
        host: route,
        rule,
        target,
        sticky,
    })
}

/// Cookie affinity: the revision the cookie remembers while it is in the split above 0 %,
/// else a weighted pick and a new cookie. A cookie naming a revision outside the split can
/// never route anywhere the split does not.
fn cookie_pick<'t, R>(
    req: &Parts,
    rule: &'t PathRoute<R>,
    name: &str,
    max_age_secs: u64,
    instance: bool,
) -> (&'t Target<R>, Option<Sticky>) {
    let (rev_part, endpoint_part) = match cookie_value(&req.headers, name) {
        Some(v) => match v.iter().position(|&b| b == b'/') {
            Some(i) => (Some(&v[..i]), Some(&v[i + 1..])),
            None => (Some(v), None),
        },
        None => (None, None),
    };
    let remembered = rev_part.and_then(|r| rule.split.live_target(r));
    let target = remembered.unwrap_or_else(|| rule.split.pick());
    let preferred = endpoint_part
        .filter(|_| remembered.is_some())
        .and_then(|e| std::str::from_utf8(e).ok())
        .and_then(|e| e.parse().ok());
    let sticky = Sticky {
        cookie: name.into(),
        max_age_secs,
        instance,
        preferred,
        must_set: remembered.is_none(),
    };
    (target, Some(sticky))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        crate::compile(
            &crate::parse_yaml(
                r#"
tag_header_routing: true
services:
  - name: hello
    traffic:
      - {revision: hello-1, percent: 100, tag: current}
      - {revision: hello-2, percent: 0, tag: next}
  - name: sticky
    affinity: {cookie: weir-rev}
    traffic: [{revision: hello-1, percent: 50}, {revision: hello-2, percent: 50}]
  - name: secure
    http_option: redirect
    traffic: [{revision: hello-1, percent: 100}]
readiness: {hosts: [internalkourier]}
revisions: [{name: hello-1}, {name: hello-2}]
"#,
            )
            .unwrap(),
        )
        .unwrap()
    }

    fn head(host: &str, path: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::get(path).header("host", host);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn routed<'t>(d: Decision<'t>) -> Routed<'t> {
        match d {
            Decision::Route(r) => r,
            other => panic!("not routed: {other:?}"),
        }
    }

    #[test]
    fn hosts_tags_redirects_and_readiness() {
        let t = table();
        let ext = Listener::External;
        let d = decide(
            &head("Hello.Default.Example.com:80", "/", &[]),
            &t,
            ext,
            false,
        );
        assert_eq!(&*routed(d).target.name, "hello-1");
        let by_tag = head(
            "hello.default.example.com",
            "/",
            &[("knative-serving-tag", "next")],
        );
        assert_eq!(
            &*routed(decide(&by_tag, &t, ext, false)).target.name,
            "hello-2"
        );
        let r = decide(&head("nope.example.com", "/", &[]), &t, ext, false);
        assert!(matches!(r, Decision::Respond(404, _)));
        let r = decide(&head("bad host", "/", &[]), &t, ext, false);
        assert!(matches!(r, Decision::Respond(400, _)));
        match decide(
            &head("secure.default.example.com", "/a?b=c", &[]),
            &t,
            ext,
            false,
        ) {
            Decision::Redirect(url) => assert_eq!(url, "https://secure.default.example.com/a?b=c"),
            other => panic!("{other:?}"),
        }
        let over_tls = decide(&head("secure.default.example.com", "/", &[]), &t, ext, true);
        assert!(matches!(over_tls, Decision::Route(_)));
        let ready = decide(&head("internalkourier", "/ready", &[]), &t, ext, false);
        assert!(matches!(ready, Decision::Readiness));
        let other = decide(&head("internalkourier", "/x", &[]), &t, ext, false);
        assert!(matches!(other, Decision::Respond(404, _)));
    }

    #[test]
    fn cookie_affinity_keeps_a_live_revision_and_replaces_others() {
        let t = table();
        let host = "sticky.default.example.com";
        let r = routed(decide(
            &head(host, "/", &[("cookie", "a=b; weir-rev=hello-2")]),
            &t,
            Listener::External,
            false,
        ));
        assert_eq!(&*r.target.name, "hello-2");
        assert!(!r.sticky.unwrap().must_set);
        let r = routed(decide(
            &head(host, "/", &[("cookie", "weir-rev=forged-9")]),
            &t,
            Listener::External,
            false,
        ));
        assert!(r.sticky.unwrap().must_set, "a forged revision is replaced");
    }

    #[test]
    fn smuggling_and_header_limits() {
        assert!(smuggling(
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(!smuggling(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(!smuggling(
            b"GET /content-length: HTTP/1.1\r\nTransfer-Encoding: x\r\n\r\n"
        ));
        let limits = Limits {
            max_request_headers: 2,
            ..Limits::default()
        };
        let h = head("a", "/", &[("x", "1"), ("y", "2")]);
        assert_eq!(
            refused(&h, &limits).map(|r| r.0),
            Some(431),
            "host + 2 fields"
        );
        assert_eq!(refused(&head("a", "/", &[]), &limits), None);
    }
}
