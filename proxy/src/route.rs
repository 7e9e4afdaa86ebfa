//! The data plane's request path: pingora's `ProxyHttp` phases for one listener.
//!
//! `request_filter` routes (one snapshot load, host lookup, path rule, split draw) and answers
//! unroutable requests itself; `upstream_peer` takes a slot on an endpoint of the chosen
//! revision, holding the request when there is none; `upstream_request_filter` sets the
//! headers of docs/behaviour.md#upstream-request-headers; `logging` frees the slot and records metrics.
//!
//! Each phase's work is a plain method over pingora's downstream session (`decide` and
//! `admit`, `upstream_headers`, `response_headers`, `answer_failure`, `log`), so that the
//! `--fast-path` loop of [`fast`] does exactly the same work for the requests it serves.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::proxy::FailToProxy;
use weir_config::model::Protocol;
use weir_config::Listener;

use crate::revision::{HoldError, Revision, Slot};
use crate::state::State;

mod fast;
pub use fast::WeirApp;

/// How long a connect to an endpoint may take before the next endpoint is tried.
/// This bounds only the dial: a request that reached a backend is never timed out.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request body read into memory while a request is held (pingora's retry buffer).
const HELD_BODY_LIMIT: usize = 64 * 1024;
/// Attempts to connect, in all, before answering 502.
const MAX_CONNECT_ATTEMPTS: usize = 3;

static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
static XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
static PROXY_HEADER: HeaderName = HeaderName::from_static("k-proxy-request");
static REVISION_HEADER: HeaderName = HeaderName::from_static("knative-serving-revision");
static NAMESPACE_HEADER: HeaderName = HeaderName::from_static("knative-serving-namespace");
static TAG_HEADER: HeaderName = HeaderName::from_static("knative-serving-tag");
static PROBE_HEADER: HeaderName = HeaderName::from_static("k-network-probe");
static HASH_HEADER: HeaderName = HeaderName::from_static("k-network-hash");
static PROXY_WIRE: Bytes = Bytes::from_static(b"K-Proxy-Request");
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static ACTIVATOR: HeaderValue = HeaderValue::from_static("activator");
// The names of the headers added to every proxied request, as they go on the wire. pingora
// keeps a request's header-name case beside its map: `insert_header_parsed` (vendored
// pingora-http) takes the static name and its static case, and neither parses nor copies.
static REVISION_WIRE: Bytes = Bytes::from_static(b"Knative-Serving-Revision");
static NAMESPACE_WIRE: Bytes = Bytes::from_static(b"Knative-Serving-Namespace");
static TAG_WIRE: Bytes = Bytes::from_static(b"Knative-Serving-Tag");
static XFF_WIRE: Bytes = Bytes::from_static(b"X-Forwarded-For");
static XFP_WIRE: Bytes = Bytes::from_static(b"X-Forwarded-Proto");
// Removed from every request: named once rather than parsed from a &str per request.
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Requests between their first byte and their last log line, across all listeners.
/// SIGTERM drains until this is zero.
#[derive(Debug, Default)]
pub struct Active(AtomicUsize);

impl Active {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

struct ActiveGuard(Arc<Active>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The proxy of one kind of listener (external or internal, plain or TLS).
#[derive(Clone)]
pub struct WeirProxy {
    pub state: Arc<State>,
    pub listener: Listener,
    /// `X-Forwarded-Proto` of this listener.
    pub scheme: HeaderValue,
    pub active: Arc<Active>,
    /// Weir reports concurrency to Knative's autoscaler: requests go upstream with
    /// `K-Proxy-Request: activator`, so queue-proxy's own counts of them are not added a
    /// second time (the autoscaler subtracts "proxied" load).
    pub reporting: bool,
}

/// Why a request ended without an upstream answer. [`Failure::status`] and
/// [`Failure::body`] are the one place a failure becomes an answer
/// (docs/behaviour.md#failures-and-status-codes), but for [`Failure::Placeholder`], whose
/// page and headers come from the route's config ([`placeholder_page`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// No endpoint could be connected to, or the revision has none it can resolve: 502.
    Connect,
    /// `hold.queue_depth` requests already wait for the revision: 503.
    QueueFull,
    /// Held for the revision's timeout without an endpoint: 504.
    HoldTimeout,
    /// The client went away while held: nothing is written (logged as 499).
    ClientGone,
    /// Would wait while the process is overloaded: 503 with `Retry-After` (the reason is
    /// the `weir_overload_rejections_total` label).
    Overloaded(&'static str),
    /// A browser held past `hold.placeholder.after`: 503 with the placeholder page,
    /// `Retry-After` and `Refresh`.
    Placeholder,
}

impl Failure {
    fn status(self) -> u16 {
        match self {
            Failure::Connect => 502,
            Failure::QueueFull | Failure::Overloaded(_) | Failure::Placeholder => 503,
            Failure::HoldTimeout => 504,
            Failure::ClientGone => 499,
        }
    }

    fn body(self, rev: Option<&Revision>) -> String {
        let (ns, name) = rev.map_or(("", ""), |r| (&*r.namespace, &*r.name));
        match self {
            Failure::Connect => format!("upstream connect error for revision {ns}/{name}\n"),
            Failure::QueueFull => "pending request queue full\n".into(),
            Failure::Overloaded(_) => "overloaded; retry later\n".into(),
            Failure::HoldTimeout => format!("timed out waiting for revision {ns}/{name}\n"),
            Failure::ClientGone | Failure::Placeholder => String::new(),
        }
    }

    /// The access log's name of this failure.
    fn name(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::QueueFull => "queue_full",
            Failure::HoldTimeout => "hold_timeout",
            Failure::ClientGone => "client_gone",
            Failure::Overloaded(_) => "overloaded",
            Failure::Placeholder => "placeholder",
        }
    }
}

impl From<HoldError> for Failure {
    fn from(e: HoldError) -> Self {
        match e {
            HoldError::QueueFull => Failure::QueueFull,
            HoldError::Timeout => Failure::HoldTimeout,
            HoldError::Unresolved => Failure::Connect,
            HoldError::Overloaded => Failure::Overloaded("held_memory"),
        }
    }
}

/// Per-request state.
pub struct Ctx {
    start: Instant,
    _active: ActiveGuard,
    revision: Option<Arc<Revision>>,
    tag: Option<HeaderValue>,
    pre_headers: Option<Arc<[(HeaderName, HeaderValue)]>>,
    post_headers: Option<Arc<[(HeaderName, HeaderValue)]>>,
    rewrite_host: Option<HeaderValue>,
    slot: Option<Slot>,
    tried: [Option<SocketAddr>; MAX_CONNECT_ATTEMPTS],
    attempts: usize,
    failure: Option<Failure>,
    /// Cookie affinity of this request, if its route has it.
    sticky: Option<Box<Sticky>>,
    stats: Option<StatsGuard>,
    /// For the access log: the time the request waited for an endpoint,
    held: Duration,
    /// when it was handed to the upstream connection, and how long the answer's head took,
    sent_at: Option<Instant>,
    upstream_time: Option<Duration>,
    /// how affinity chose the revision.
    affinity: Option<&'static str>,
    /// A page for browsers still held after a while (`hold.placeholder`).
    placeholder: Option<crate::state::LoadedPlaceholder>,
}

impl Ctx {
    /// The endpoints this request already tried (the first `n`), for `try_acquire`'s
    /// `avoid`: on the stack, no allocation per request.
    fn tried_endpoints(&self) -> ([SocketAddr; MAX_CONNECT_ATTEMPTS], usize) {
        let mut buf = [SocketAddr::from(([0, 0, 0, 0], 0)); MAX_CONNECT_ATTEMPTS];
        let mut n = 0;
        for a in self.tried.iter().flatten() {
            buf[n] = *a;
            n += 1;
        }
        (buf, n)
    }
}

/// Counts the request in its revision's concurrency from routing (held included) to the end.
struct StatsGuard {
    revision: Arc<Revision>,
    proxied: bool,
}

impl Drop for StatsGuard {
    fn drop(&mut self) {
        self.revision.stats.end(self.proxied);
    }
}

/// What cookie affinity needs between routing and the response: the decision's, and the
/// endpoint the request went to.
struct Sticky {
    decided: weir_config::request::Sticky,
    revision: Arc<str>,
    endpoint: Option<SocketAddr>,
}

/// A routed request, borrowing the snapshot it was routed in.
type Routed<'s> = weir_config::request::Routed<'s, Arc<Revision>>;

/// What routing decided, before any response is written.
enum Decision {
    Proxy,
    Respond(u16, String),
    /// 301 to this URL (`http_option: redirect`).
    Redirect(String),
    /// A Knative ingress probe for a revision Weir is holding: answered here with this
    /// `K-Network-Hash`, like the activator, so that probing never wakes a revision.
    Probe(HeaderValue),
}

impl WeirProxy {
    /// The routing decision (`weir_config::request::decide`) and what it means here: the
    /// revision's run-time state, Knative's probe, the request's accounting.
    fn route(&self, req: &RequestHeader, ctx: &mut Ctx) -> Decision {
        let snap = self.state.load();
        match self.decide(req, &snap) {
            Ok(routed) => {
                self.admit(req, routed, ctx);
                Decision::Proxy
            }
            Err(decision) => decision,
        }
    }

    /// Where a request goes, with no effect on anything: the route, or the answer it gets
    /// here instead.
    fn decide<'s>(
        &self,
        req: &RequestHeader,
        snap: &'s crate::state::Snapshot,
    ) -> Result<Routed<'s>, Decision> {
        use weir_config::request::{self, Decision as Decided};
        if let Some((code, why)) = request::refused(req, &snap.settings().limits) {
            return Err(Decision::Respond(code, why.into()));
        }
        let https = self.scheme.as_bytes() == b"https";
        let routed = match request::decide(req, &snap.config.table, self.listener, https) {
            Decided::Route(r) => r,
            Decided::Respond(code, body) => return Err(Decision::Respond(code, body)),
            Decided::Redirect(url) => return Err(Decision::Redirect(url)),
            Decided::Readiness if self.state.is_ready() => {
                return Err(Decision::Respond(200, "ready\n".into()))
            }
            Decided::Readiness => {
                return Err(Decision::Respond(503, "no config in force yet\n".into()))
            }
        };
        let (rule, target) = (routed.rule, routed.target);
        let rev = &target.revision;
        if req.headers.get(&PROBE_HEADER).map(HeaderValue::as_bytes) == Some(b"probe")
            && rev.would_hold()
        {
            // The hash the backend would echo: the probe route overwrites it.
            let hash = [&rule.append_headers, &target.append_headers]
                .iter()
                .flat_map(|h| h.iter())
                .filter(|(n, _)| *n == HASH_HEADER)
                .map(|(_, v)| v.clone())
                .next_back()
                .or_else(|| req.headers.get(&HASH_HEADER).cloned());
            return Err(match hash.filter(|h| !h.is_empty()) {
                Some(h) => Decision::Probe(h),
                None => Decision::Respond(
                    400,
                    "a probe request must contain a non-empty \"K-Network-Hash\" header\n".into(),
                ),
            });
        }
        Ok(routed)
    }

    /// Takes in a routed request: counts it in its revision's concurrency and keeps in `ctx`
    /// what the later phases need.
    fn admit(&self, req: &RequestHeader, routed: Routed<'_>, ctx: &mut Ctx) {
        let (rule, target) = (routed.rule, routed.target);
        let rev = &target.revision;
        // A client's claim to be the activator counts only from inside the cluster.
        let proxied = self.listener == Listener::Internal
            && req
                .headers
                .get(&PROXY_HEADER)
                .is_some_and(|v| v.as_bytes() == b"activator");
        rev.stats.begin(proxied);
        ctx.stats = Some(StatsGuard {
            revision: rev.clone(),
            proxied,
        });
        ctx.revision = Some(rev.clone());
        ctx.tag = target.tag.clone();
        if !rule.append_headers.is_empty() {
            ctx.pre_headers = Some(rule.append_headers.clone());
        }
        if !target.append_headers.is_empty() {
            ctx.post_headers = Some(target.append_headers.clone());
        }
        ctx.rewrite_host = rule.rewrite_host.clone();
        ctx.affinity = match (&routed.sticky, &rule.affinity) {
            (Some(s), _) if s.must_set => Some("cookie-set"),
            (Some(_), _) => Some("cookie"),
            (None, Some(weir_config::AffinityMode::Header(_))) if target.tag.is_none() => {
                Some("header")
            }
            _ => None,
        };
        if rev.would_hold() {
            ctx.placeholder = self.state.placeholder_for(&routed.host.owner, req);
        }
        ctx.sticky = routed.sticky.map(|decided| {
            Box::new(Sticky {
                decided,
                revision: target.name.clone(),
                endpoint: None,
            })
        });
    }

    /// The upstream request's headers (docs/behaviour.md#upstream-request-headers).
    fn upstream_headers(
        &self,
        downstream: &ServerSession,
        req: &mut RequestHeader,
        ctx: &Ctx,
    ) -> Result<()> {
        strip_hop_by_hop(req, downstream.is_upgrade_req());
        if let Some(rev) = &ctx.revision {
            req.insert_header_parsed(
                &REVISION_HEADER,
                REVISION_WIRE.clone(),
                rev.name_value.clone(),
            );
            req.insert_header_parsed(
                &NAMESPACE_HEADER,
                NAMESPACE_WIRE.clone(),
                rev.namespace_value.clone(),
            );
        }
        if let Some(tag) = &ctx.tag {
            req.insert_header_parsed(&TAG_HEADER, TAG_WIRE.clone(), tag.clone());
        }
        let snap = self.state.load();
        let fwd = &snap.settings().forwarded;
        if fwd.use_remote_address {
            if let Some(PingoraAddr::Inet(addr)) = downstream.client_addr() {
                let xff = forwarded_for(req.headers.get(&XFF), addr.ip());
                req.insert_header_parsed(&XFF, XFF_WIRE.clone(), xff);
            }
        }
        // Envoy's rule: a trusted hop's X-Forwarded-Proto stands (a TLS-terminating load
        // balancer's "https"); otherwise it is this listener's scheme.
        if fwd.trusted_hops == 0 || !req.headers.contains_key(&XFP) {
            req.insert_header_parsed(&XFP, XFP_WIRE.clone(), self.scheme.clone());
        }
        drop(snap);
        if self.reporting {
            req.insert_header_parsed(&PROXY_HEADER, PROXY_WIRE.clone(), ACTIVATOR.clone());
        } else if self.listener == Listener::External {
            // A client must not pass itself off as the activator to queue-proxy.
            req.remove_header(&PROXY_HEADER);
        }
        for headers in [&ctx.pre_headers, &ctx.post_headers].into_iter().flatten() {
            for (name, value) in headers.iter() {
                req.insert_header(name.clone(), value.clone())?;
            }
        }
        if let Some(host) = &ctx.rewrite_host {
            req.insert_header(header::HOST, host.clone())?;
        }
        Ok(())
    }

    /// The upstream request head as it goes on the wire, written straight from the downstream
    /// head for a request that the general way (`sanitize_h1_upstream_request`,
    /// [`Self::upstream_headers`], `finish_h1_upstream_request`, pingora's serializer) would
    /// only add fields to or replace fields of in place: no hop-by-hop field, one `Host`
    /// without userinfo, an origin-form target, no route adding headers or rewriting the host,
    /// no `K-Proxy-Request` to drop. For those it writes the same bytes (the differential test,
    /// tests/tests/it/fast_path.rs, holds it to that): the request line in HTTP/1.1, the
    /// client's fields in the header map's order (each name's values together, each in its
    /// own letter case), a field Weir sets where its name first was (one value, in Weir's
    /// case), Weir's new fields after them in the order `upstream_headers` inserts them. What
    /// it saves is the head's clone into two header maps, the inserts into both and the
    /// serializing of them (docs/performance.md, "The upstream head written directly").
    ///
    /// `None`: the request takes the general way (a field must go — removal reorders
    /// pingora's header map — or something must be checked or rewritten).
    pub(crate) fn upstream_head_wire(
        &self,
        downstream: &ServerSession,
        ctx: &Ctx,
    ) -> Option<Vec<u8>> {
        let req = downstream.req_header();
        if !req.has_case()
            || ctx.pre_headers.is_some()
            || ctx.post_headers.is_some()
            || ctx.rewrite_host.is_some()
            || req.method == http::Method::CONNECT
        {
            return None;
        }
        let path = req.raw_path();
        if path.first() != Some(&b'/')
            || path
                .iter()
                .any(|&b| matches!(b, b'\0' | b'\n' | b'\r' | b' '))
        {
            return None;
        }
        // The fields looked at below, in one pass over the head rather than a lookup each.
        let [host, xff, xfp, proxy] =
            first_values(&req.headers, [&header::HOST, &XFF, &XFP, &PROXY_HEADER]);
        // A `Host` (without one, HTTP/1.0, the general way decides whether to add one). What
        // the general way checks of the final head's authority (`validate_request_authority`:
        // one `Host`, no userinfo in it, a target that agrees) pingora's `read_request`
        // checked on this same head: the same `Host`, target and method as here.
        host?;

        // Weir's fields, in `upstream_headers`' order.
        let mut set: [Option<(&HeaderName, &Bytes, HeaderValue)>; 6] = Default::default();
        if let Some(rev) = &ctx.revision {
            set[0] = Some((&REVISION_HEADER, &REVISION_WIRE, rev.name_value.clone()));
            set[1] = Some((
                &NAMESPACE_HEADER,
                &NAMESPACE_WIRE,
                rev.namespace_value.clone(),
            ));
        }
        if let Some(tag) = &ctx.tag {
            set[2] = Some((&TAG_HEADER, &TAG_WIRE, tag.clone()));
        }
        {
            let snap = self.state.load();
            let fwd = &snap.settings().forwarded;
            if fwd.use_remote_address {
                if let Some(PingoraAddr::Inet(addr)) = downstream.client_addr() {
                    let xff = forwarded_for(xff, addr.ip());
                    set[3] = Some((&XFF, &XFF_WIRE, xff));
                }
            }
            if fwd.trusted_hops == 0 || xfp.is_none() {
                set[4] = Some((&XFP, &XFP_WIRE, self.scheme.clone()));
            }
        }
        if self.reporting {
            set[5] = Some((&PROXY_HEADER, &PROXY_WIRE, ACTIVATOR.clone()));
        } else if self.listener == Listener::External && proxy.is_some() {
            return None;
        }

        let method = req.method.as_str().as_bytes();
        let mut wire = Vec::with_capacity(method.len() + path.len() + 256);
        wire.extend_from_slice(method);
        wire.push(b' ');
        wire.extend_from_slice(path);
        wire.extend_from_slice(b" HTTP/1.1\r\n");
        fn field(wire: &mut Vec<u8>, name: &[u8], value: &[u8]) {
            wire.extend_from_slice(name);
            wire.extend_from_slice(b": ");
            wire.extend_from_slice(value);
            wire.extend_from_slice(b"\r\n");
        }
        let mut written = [false; 6];
        // `HeaderMap::iter` and `case_header_iter` visit the fields in the same order
        // (pingora's serializer zips them the same way).
        for ((name, value), (case, _)) in req.headers.iter().zip(req.case_header_iter()) {
            if is_standard_hop_by_hop(name) {
                return None;
            }
            match set
                .iter()
                .position(|s| s.as_ref().is_some_and(|(n, ..)| *n == name))
            {
                // Replaced where the name first was, once for all its values.
                Some(i) => {
                    if !written[i] {
                        written[i] = true;
                        let (_, wire_name, value) = set[i].as_ref()?;
                        field(&mut wire, wire_name, value.as_bytes());
                    }
                }
                None => field(&mut wire, case.as_slice(), value.as_bytes()),
            }
        }
        for (s, written) in set.iter().zip(written) {
            if let (Some((_, wire_name, value)), false) = (s, written) {
                field(&mut wire, wire_name, value.as_bytes());
            }
        }
        wire.extend_from_slice(b"\r\n");
        Some(wire)
    }

    /// The answer's head on its way to the client: closes near `max_connections`, sets the
    /// affinity cookie.
    fn response_headers(
        &self,
        downstream: &mut ServerSession,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.upstream_time = ctx.sent_at.map(|t| t.elapsed());
        if self.state.edge.connections_near_limit() {
            // Near max_connections: close after this answer so slots turn over and clients
            // waiting in the backlog get in (Envoy's overload action "disable keepalive").
            downstream.set_keepalive(None);
        }
        if let Some(sticky) = ctx.sticky.as_ref().filter(|s| s.decided.must_set) {
            let d = &sticky.decided;
            let value = match sticky.endpoint.filter(|_| d.instance) {
                Some(ep) => format!("{}/{ep}", sticky.revision),
                None => sticky.revision.to_string(),
            };
            let cookie = format!(
                "{}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax",
                d.cookie, d.max_age_secs
            );
            resp.append_header(header::SET_COOKIE, cookie)?;
        }
        Ok(())
    }

    /// A request's end: frees its slot, counts it, writes its access log line.
    fn log(&self, session: &ServerSession, e: Option<&Error>, ctx: &mut Ctx) {
        ctx.slot = None;
        let code = match session.response_written() {
            Some(r) => r.status.as_u16(),
            // nginx's "client closed request"
            None => 499,
        };
        let total = ctx.start.elapsed();
        match &ctx.revision {
            Some(rev) => {
                rev.count_response(code);
                rev.duration_histogram().observe(total.as_secs_f64());
            }
            None => self.state.metrics.request_counter("", "", code).inc(),
        }
        let snap = self.state.load();
        let settings = &snap.settings().access_log;
        if !settings.enabled || (settings.sample < 1.0 && rand::random::<f64>() >= settings.sample)
        {
            return;
        }
        let format = if settings.format == "text" {
            crate::access_log::Format::Text
        } else {
            crate::access_log::Format::Json
        };
        drop(snap);
        let pingora_error;
        let error = match (ctx.failure, e) {
            (Some(f), _) => Some(f.name()),
            (None, Some(e)) => {
                pingora_error = format!("{} {}", e.esource().as_str(), e.etype().as_str());
                Some(pingora_error.as_str())
            }
            (None, None) => None,
        };
        let req = session.req_header();
        let [host, request_id, traceparent, user_agent] = first_values(
            &req.headers,
            [
                &header::HOST,
                &REQUEST_ID,
                &TRACEPARENT,
                &header::USER_AGENT,
            ],
        )
        .map(|v| v.map(HeaderValue::as_bytes));
        let entry = crate::access_log::Entry {
            start: std::time::SystemTime::now().checked_sub(total),
            client: match session.client_addr() {
                Some(PingoraAddr::Inet(a)) => Some(*a),
                _ => None,
            },
            method: req.method.as_str(),
            host: host
                .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()))
                .unwrap_or_default(),
            path: req.uri.path_and_query().map_or("", |p| p.as_str()),
            protocol: match req.version {
                http::Version::HTTP_10 => "HTTP/1.0",
                http::Version::HTTP_2 => "HTTP/2",
                _ => "HTTP/1.1",
            },
            status: code,
            namespace: ctx.revision.as_deref().map(|r| &*r.namespace),
            revision: ctx.revision.as_deref().map(|r| &*r.name),
            // The endpoint tried last.
            endpoint: ctx.tried[..ctx.attempts.min(MAX_CONNECT_ATTEMPTS)]
                .last()
                .copied()
                .flatten(),
            tag: ctx.tag.as_ref().map(HeaderValue::as_bytes),
            affinity: ctx.affinity,
            bytes_in: session.body_bytes_read(),
            bytes_out: session.body_bytes_sent(),
            upstream: ctx.upstream_time,
            total,
            held: ctx.held,
            attempts: ctx.attempts,
            request_id,
            traceparent,
            user_agent,
            error,
        };
        self.state.access_log.record(&entry, format);
    }

    /// The answer to a request that failed before its upstream answered (status 0: none, the
    /// client is gone), counting an overload rejection.
    fn failure_answer(&self, e: &Error, ctx: &Ctx) -> (u16, String) {
        if let Some(Failure::Overloaded(reason)) = ctx.failure {
            self.state
                .metrics
                .overload_rejections
                .with_label_values(&[reason])
                .inc();
            crate::metrics::log_limited(
                &self.state.metrics.overload_logged,
                &format!("overloaded ({reason}): answering 503 with Retry-After to requests that would wait"),
            );
        }
        match ctx.failure {
            // Nobody to answer.
            Some(Failure::ClientGone) => (0, String::new()),
            Some(f) => (f.status(), f.body(ctx.revision.as_deref())),
            _ => match e.etype() {
                ErrorType::HTTPStatus(c) => (*c, String::new()),
                _ => match e.esource() {
                    ErrorSource::Upstream => (502, "upstream error\n".into()),
                    ErrorSource::Downstream => match e.etype() {
                        ErrorType::WriteError
                        | ErrorType::ReadError
                        | ErrorType::ConnectionClosed => (0, String::new()),
                        _ => (400, "bad request\n".into()),
                    },
                    _ => (500, "internal error\n".into()),
                },
            },
        }
    }

    /// Answers a request that failed before its upstream answered, unless something was
    /// written already; returns the status (0: none, the client is gone). The connection is
    /// closed after it.
    async fn answer_failure(&self, session: &mut ServerSession, e: &Error, ctx: &Ctx) -> u16 {
        let (code, body) = self.failure_answer(e, ctx);
        // The connection is not reused after a failure (below): say so in the answer, so that
        // a client does not send its next request on it.
        session.set_keepalive(None);
        // Only answer if nothing was sent yet; otherwise the connection is simply closed.
        if let (Some(Failure::Placeholder), Some(p), None) = (
            ctx.failure,
            ctx.placeholder.as_ref(),
            session.response_written(),
        ) {
            if let Err(err) = placeholder_page(session, p).await {
                log::debug!("writing the placeholder page: {err}");
            }
        } else if code > 0 && session.response_written().is_none() {
            let retry_after = matches!(ctx.failure, Some(Failure::Overloaded(_)))
                .then(|| (header::RETRY_AFTER, RETRY_AFTER_SECS));
            if let Err(err) = respond_with(session, code, body, retry_after).await {
                log::debug!("writing the {code} answer: {err}");
            }
        }
        code
    }

    /// Takes a slot on an endpoint of the request's revision, holding the request while there
    /// is none. Leaves the queue at once if the client goes away.
    async fn acquire(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Slot, Failure> {
        let rev = ctx.revision.clone().ok_or(Failure::Connect)?;
        let (buf, n) = ctx.tried_endpoints();
        let avoid = &buf[..n];
        if let Some(addr) = ctx
            .sticky
            .as_ref()
            .filter(|s| s.decided.instance && n == 0)
            .and_then(|s| s.decided.preferred)
        {
            if let Some(slot) = rev.try_acquire_at(addr) {
                return Ok(slot);
            }
        }
        if let Some(slot) = rev.try_acquire(avoid) {
            return Ok(slot);
        }
        let downstream = session.as_downstream_mut();
        let has_body = !(downstream.is_body_empty() || downstream.is_body_done());
        // A small body (known length up to pingora's 64 KiB retry buffer) is read while the
        // request waits: pingora replays it upstream from that buffer, and once it is in,
        // the connection can be watched for the client going away. A larger or chunked body
        // cannot be held in memory that way; such a request waits until release or timeout.
        let body_len = downstream
            .get_header(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let small_body = has_body && body_len.is_some_and(|n| n <= HELD_BODY_LIMIT);
        if self.state.edge.connections_near_limit() {
            // Holding would tie up one more of the few connections left: refuse at once.
            return Err(Failure::Overloaded("connections"));
        }
        let held_body = if small_body { body_len.unwrap_or(0) } else { 0 };
        let waited = Instant::now();
        let held = rev.acquire(avoid, held_body as u64);
        tokio::pin!(held);
        // A browser still waiting after `placeholder.after` gets the placeholder page (the
        // request has been counted and has poked the revision already).
        let placeholder_after = ctx.placeholder.as_ref().map(|p| p.after);
        let placeholder = async {
            match placeholder_after {
                Some(after) => tokio::time::sleep(after).await,
                None => std::future::pending::<()>().await,
            }
        };
        let gone = async {
            if has_body && !small_body {
                return std::future::pending::<()>().await;
            }
            if small_body {
                downstream.enable_retry_buffering();
                loop {
                    match downstream.read_request_body().await {
                        Ok(Some(_)) => continue,
                        Ok(None) => break,
                        Err(_) => return,
                    }
                }
            }
            match downstream.read_body_or_idle(true).await {
                Err(_) => {}
                // Pipelined bytes: the client is still there; stop watching.
                Ok(_) => std::future::pending::<()>().await,
            }
        };
        let result = tokio::select! {
            r = &mut held => r.map_err(Failure::from),
            _ = gone => Err(Failure::ClientGone),
            _ = placeholder => Err(Failure::Placeholder),
        };
        ctx.held += waited.elapsed();
        result
    }
}

async fn respond(session: &mut ServerSession, code: u16, body: impl Into<Bytes>) -> Result<()> {
    respond_with(session, code, body, None).await
}

/// [`respond`] with one more header.
///
/// Written to the downstream session directly: Weir has no downstream modules
/// (`init_downstream_modules`), which is all pingora's `Session` would add.
async fn respond_with(
    session: &mut ServerSession,
    code: u16,
    body: impl Into<Bytes>,
    extra: Option<(HeaderName, &'static str)>,
) -> Result<()> {
    let body = body.into();
    let resp = plain_answer(code, body.len(), extra)?;
    session.write_response_header(resp).await?;
    session.write_response_body(body, true).await
}

/// The head of an answer Weir writes itself: plain text of `len` bytes, one more header.
fn plain_answer(
    code: u16,
    len: usize,
    extra: Option<(HeaderName, &'static str)>,
) -> Result<Box<ResponseHeader>> {
    let mut resp = ResponseHeader::build(code, Some(4))?;
    resp.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(header::CONTENT_LENGTH, len)?;
    if let Some((name, value)) = extra {
        resp.insert_header(name, value)?;
    }
    Ok(Box::new(resp))
}

/// The placeholder page: 503 (the request was not served), come back soon.
async fn placeholder_page(
    session: &mut ServerSession,
    p: &crate::state::LoadedPlaceholder,
) -> Result<()> {
    let mut resp = ResponseHeader::build(503, Some(5))?;
    resp.insert_header(header::CONTENT_TYPE, "text/html; charset=utf-8")?;
    resp.insert_header(header::CONTENT_LENGTH, p.html.len())?;
    resp.insert_header(header::RETRY_AFTER, PLACEHOLDER_RETRY_SECS)?;
    // Browsers reload on `Refresh` (HTML's http-equiv refresh, as a header).
    resp.insert_header("refresh", PLACEHOLDER_RETRY_SECS)?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    session.write_response_header(Box::new(resp)).await?;
    session.write_response_body(p.html.clone(), true).await
}

/// How soon a placeholder page reloads (seconds).
const PLACEHOLDER_RETRY_SECS: &str = "2";

/// How soon an overloaded answer asks the client to come back (seconds).
const RETRY_AFTER_SECS: &str = "1";

#[async_trait]
impl ProxyHttp for WeirProxy {
    type CTX = Ctx;

    /// No downstream modules. pingora's default adds a response-compression module at level 0
    /// (it compresses nothing, Weir passes bodies through), which still costs every request
    /// a module context, a boxed module and its filter calls.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Ctx {
        self.active.0.fetch_add(1, Ordering::SeqCst);
        Ctx {
            start: Instant::now(),
            _active: ActiveGuard(self.active.clone()),
            revision: None,
            tag: None,
            pre_headers: None,
            post_headers: None,
            rewrite_host: None,
            slot: None,
            tried: [None; MAX_CONNECT_ATTEMPTS],
            attempts: 0,
            failure: None,
            sticky: None,
            stats: None,
            held: Duration::ZERO,
            sent_at: None,
            upstream_time: None,
            affinity: None,
            placeholder: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if session
            .req_header()
            .headers
            .contains_key(header::TRANSFER_ENCODING)
            && session
                .as_downstream()
                .as_http1()
                .is_some_and(|h1| weir_config::request::smuggling(&h1.get_headers_raw_bytes()))
        {
            // pingora drops Content-Length when Transfer-Encoding is present (RFC 9112 6.3);
            // a request that carried both is a smuggling attempt and is refused outright.
            respond(session, 400, "both Content-Length and Transfer-Encoding\n").await?;
            return Ok(true);
        }
        match self.route(session.req_header(), ctx) {
            Decision::Proxy => Ok(false),
            Decision::Respond(code, body) => {
                respond(session, code, body).await?;
                Ok(true)
            }
            Decision::Redirect(location) => {
                let mut resp = ResponseHeader::build(301, Some(3))?;
                resp.insert_header(header::LOCATION, location)?;
                resp.insert_header(header::CONTENT_LENGTH, 0)?;
                session.write_response_header(Box::new(resp), true).await?;
                Ok(true)
            }
            Decision::Probe(hash) => {
                let mut resp = ResponseHeader::build(200, Some(3))?;
                resp.insert_header(HASH_HEADER.clone(), hash)?;
                resp.insert_header(header::CONTENT_LENGTH, 0)?;
                session.write_response_header(Box::new(resp), true).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        ctx.slot = None;
        let slot = match self.acquire(session, ctx).await {
            Ok(s) => s,
            Err(f) => {
                ctx.failure = Some(f);
                let mut e = Error::new(ErrorType::HTTPStatus(f.status()));
                e.set_retry(false);
                return Err(e);
            }
        };
        let addr = slot.addr();
        if let Some(sticky) = ctx.sticky.as_mut().filter(|s| s.decided.instance) {
            if sticky.decided.preferred != Some(addr) {
                sticky.decided.must_set = true;
            }
            sticky.endpoint = Some(addr);
        }
        if ctx.attempts < MAX_CONNECT_ATTEMPTS {
            ctx.tried[ctx.attempts] = Some(addr);
        }
        ctx.sent_at = Some(Instant::now());
        ctx.attempts += 1;
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
        if slot.protocol == Protocol::H2c {
            peer.options.set_http_version(2, 2);
        }
        ctx.slot = Some(slot);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.upstream_headers(session.as_downstream(), req, ctx)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.response_headers(session.as_downstream_mut(), resp, ctx)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Never sent: free the slot and try another endpoint, up to MAX_CONNECT_ATTEMPTS.
        ctx.slot = None;
        ctx.failure = Some(Failure::Connect);
        e.set_retry(ctx.attempts < MAX_CONNECT_ATTEMPTS);
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.failure = None;
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        FailToProxy {
            error_code: self.answer_failure(session, e, ctx).await,
            can_reuse_downstream: false,
        }
    }

    /// Every request's outcome goes to the access log (its `error` field) and the metrics,
    /// not to the process log: a client going away or a backend resetting is not for a
    /// human to read a line a request about (pingora would log each at error level).
    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, _error: &Error) -> bool {
        true
    }

    /// Nor a connect failure that is retried on another endpoint (the access log counts
    /// its attempts).
    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &Ctx,
        _error: &Error,
        _context: pingora::proxy::ProxyWarnLogContext,
    ) -> bool {
        true
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        self.log(session.as_downstream(), e, ctx);
    }
}

/// `X-Forwarded-For` with the client's address appended.
fn forwarded_for(existing: Option<&HeaderValue>, ip: std::net::IpAddr) -> HeaderValue {
    // The address on the stack first, so that the value's buffer is allocated at its exact
    // size: `Bytes` takes a full `Vec` as it is, while one with spare room costs it one more
    // allocation.
    let mut addr = [0u8; 64];
    let len = write_ip(&mut addr, ip);
    let addr = &addr[..len];
    let prev = existing.filter(|v| !v.is_empty());
    let mut buf = Vec::with_capacity(prev.map_or(0, |p| p.len() + 2) + addr.len());
    if let Some(prev) = prev {
        buf.extend_from_slice(prev.as_bytes());
        buf.extend_from_slice(b", ");
    }
    buf.extend_from_slice(addr);
    HeaderValue::from_maybe_shared(Bytes::from(buf))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The first value under each of `names` (as `HeaderMap::get` gives it), in one pass over a
/// head of up to [`ONE_PASS_FIELDS`] fields: each `get` hashes its name and probes the map
/// (~130 instructions; the access log wants four of them), while comparing two names is
/// cheap (a tag for standard names, bytes for others). A larger head is looked up name by
/// name.
fn first_values<'h, const N: usize>(
    headers: &'h http::HeaderMap,
    names: [&HeaderName; N],
) -> [Option<&'h HeaderValue>; N] {
    if headers.len() > ONE_PASS_FIELDS {
        return names.map(|name| headers.get(name));
    }
    let mut found = [None; N];
    let mut left = N;
    for (name, value) in headers {
        if let Some(i) = names.iter().position(|n| *n == name) {
            if found[i].is_none() {
                found[i] = Some(value);
                left -= 1;
                if left == 0 {
                    break;
                }
            }
        }
    }
    found
}

/// See [`first_values`].
const ONE_PASS_FIELDS: usize = 12;

/// `ip` in its text form (as `Display` writes it) at the start of `out`; returns its length.
/// An IPv4 address is written digit by digit: through `Display` it cost about 1,000
/// instructions, a fiftieth of a proxied request (callgrind).
pub(crate) fn write_ip(out: &mut [u8; 64], ip: std::net::IpAddr) -> usize {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    out[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    out[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                out[n] = b'0' + octet % 10;
                n += 1;
            }
            n
        }
        std::net::IpAddr::V6(_) => {
            let mut cursor = std::io::Cursor::new(&mut out[..]);
            let _ = write!(cursor, "{ip}");
            cursor.position() as usize
        }
    }
}

/// Whether pingora's upstream request policy (`strip_standard_hop_by_hop_headers`) removes a
/// field of this name; Weir's own list (`strip_hop_by_hop`) is a part of it.
fn is_standard_hop_by_hop(name: &HeaderName) -> bool {
    *name == header::CONNECTION
        || *name == header::TE
        || *name == header::TRAILER
        || *name == header::TRANSFER_ENCODING
        || *name == header::UPGRADE
        || *name == header::PROXY_AUTHENTICATE
        || *name == header::PROXY_AUTHORIZATION
        || *name == KEEP_ALIVE
        || *name == PROXY_CONNECTION
        || *name == HTTP2_SETTINGS
}

/// Drops hop-by-hop headers (RFC 9110 section 7.6.1): `Connection` and the headers it names,
/// `Keep-Alive`, `Proxy-Connection`, `TE` (but `trailers`, which gRPC needs) and `Upgrade`
/// unless this is an upgrade. Framing headers are left to pingora, which re-frames the body.
fn strip_hop_by_hop(req: &mut RequestHeader, upgrade: bool) {
    // Most requests carry none of these (and pingora's request policy has removed them
    // already): one pass over the names is cheaper than looking each one up.
    let hop = |n: &HeaderName| {
        *n == header::CONNECTION
            || *n == header::TE
            || *n == header::UPGRADE
            || *n == KEEP_ALIVE
            || *n == PROXY_CONNECTION
    };
    if !upgrade && !req.headers.keys().any(hop) {
        return;
    }
    if let Some(conn) = req.headers.get(header::CONNECTION).cloned() {
        if let Ok(list) = conn.to_str() {
            for token in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                let lower = token.to_ascii_lowercase();
                if matches!(lower.as_str(), "upgrade" | "keep-alive" | "close") {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(lower.as_bytes()) {
                    if name != header::CONTENT_LENGTH
                        && name != header::TRANSFER_ENCODING
                        && name != header::HOST
                    {
                        req.remove_header(&name);
                    }
                }
            }
        }
        req.remove_header(&header::CONNECTION);
    }
    req.remove_header(&KEEP_ALIVE);
    req.remove_header(&PROXY_CONNECTION);
    if let Some(te) = req.headers.get(header::TE) {
        if !te.as_bytes().eq_ignore_ascii_case(b"trailers") {
            req.remove_header(&header::TE);
        }
    }
    if upgrade {
        let _ = req.insert_header(header::CONNECTION, "upgrade");
    } else {
        req.remove_header(&header::UPGRADE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    #[test]
    fn first_values_are_what_get_finds() {
        let names = [
            &header::HOST,
            &REQUEST_ID,
            &TRACEPARENT,
            &header::USER_AGENT,
        ];
        // Heads of each size around the one-pass limit, with some of the names missing,
        // repeated (the first value counts) and in either order.
        for fields in 0..=ONE_PASS_FIELDS + 3 {
            for start in 0..4 {
                let mut headers = http::HeaderMap::new();
                for i in 0..fields {
                    let name = match (start + i) % 6 {
                        0 => header::HOST.clone(),
                        1 => REQUEST_ID.clone(),
                        2 => header::USER_AGENT.clone(),
                        3 => header::ACCEPT.clone(),
                        4 => HeaderName::from_static("x-other"),
                        _ => HeaderName::from_bytes(format!("x-{i}").as_bytes()).unwrap(),
                    };
                    headers.append(name, HeaderValue::from(i));
                }
                let one_pass = first_values(&headers, names);
                let by_name = names.map(|n| headers.get(n));
                assert_eq!(one_pass, by_name, "{headers:?}");
            }
        }
    }

    #[test]
    fn ip_text_is_what_display_writes() {
        let mut v4: Vec<IpAddr> = [
            [0, 0, 0, 0],
            [255, 255, 255, 255],
            [127, 0, 0, 1],
            [10, 9, 99, 100],
            [1, 20, 199, 250],
        ]
        .into_iter()
        .map(|o| IpAddr::V4(Ipv4Addr::from(o)))
        .collect();
        // Every octet value in every position.
        v4.extend((0..=255u8).map(|b| IpAddr::V4(Ipv4Addr::new(b, 255 - b, b / 3, b ^ 0x5a))));
        let v6 = [
            Ipv6Addr::LOCALHOST,
            Ipv6Addr::UNSPECIFIED,
            "2001:db8::1:0:0:1".parse().unwrap(),
            "::ffff:192.0.2.128".parse().unwrap(),
        ]
        .map(IpAddr::V6);
        for ip in v4.into_iter().chain(v6) {
            let mut out = [0u8; 64];
            let n = write_ip(&mut out, ip);
            assert_eq!(std::str::from_utf8(&out[..n]).unwrap(), ip.to_string());
        }
    }

    #[test]
    fn forwarded_for_appends_the_client() {
        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        assert_eq!(forwarded_for(None, ip), "192.0.2.7");
        let prev = HeaderValue::from_static("203.0.113.1");
        assert_eq!(forwarded_for(Some(&prev), ip), "203.0.113.1, 192.0.2.7");
        let empty = HeaderValue::from_static("");
        assert_eq!(forwarded_for(Some(&empty), ip), "192.0.2.7");
    }
}
