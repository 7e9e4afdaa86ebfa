//! Weir's own HTTP/1 request loop for plain requests (on by default; `weir proxy
//! --no-fast-path` turns it off).
//!
//! pingora-proxy runs every request through its state machine: a session wrapper with cache,
//! compression and subrequest state, a boxed future per hook, and a pair of halves joined
//! through two channels to relay the answer. A plain request needs none of it: HTTP/1, no
//! body or a Content-Length one up to 64 KiB, not an upgrade, routed to a revision with a
//! free endpoint, no cookie affinity. [`WeirApp`] reads every request head with pingora's
//! own code (`HttpProxy::handle_new_request`: the same parser, limits, and 400/405/408
//! answers), then either serves it here or hands the session, head read, to the state
//! machine (`HttpProxy::process_read_request`) — chunked and larger bodies, upgrades, holds,
//! affinity, probes, local answers and HTTP/2 all go that way.
//!
//! What the fast path does not change is the HTTP/1 itself: it writes the upstream request
//! with pingora's client session after pingora's own request policy
//! (`sanitize_h1_upstream_request`, `finish_h1_upstream_request`) and relays the answer task
//! by task into pingora's server session after pingora's response framing
//! (`h1_response_framing`), so framing, validation and keep-alive rules are the proxy path's
//! code. Weir's own phases (headers, response head, log) are the same functions the proxy
//! path's hooks call.
//!
//! Differences from the proxy path, by design (docs/behaviour.md, "The fast path"): the
//! client is not read while its request is proxied, so a request that must wait for an
//! endpoint after a failed connect does not notice its client going away, and a body is sent
//! whole before the answer is read; the upstream connection pool is this app's own (a
//! connection is reused by the path that pooled it).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::{header, Method, Version};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::connectors::http::v1::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::prelude::*;
use pingora::protocols::http::v1::client::HttpSession as ClientSession;
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::http::{HttpTask, ServerSession};
use pingora::proxy::{
    finish_h1_upstream_request, h1_response_framing, sanitize_h1_upstream_request, HttpProxy,
    ProxyHttp,
};
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use pingora::upstreams::peer::Peer;
use weir_config::model::Protocol;

use super::{first_values, Ctx, Failure, WeirProxy, CONNECT_TIMEOUT, MAX_CONNECT_ATTEMPTS};
use crate::revision::Slot;

/// Largest request body the fast path takes (pingora's retry buffer keeps up to this much).
const BODY_LIMIT: usize = 64 * 1024;

/// A listener's HTTP application: the fast path in front of pingora's proxy.
pub struct WeirApp {
    proxy: Arc<HttpProxy<WeirProxy>>,
    weir: WeirProxy,
    upstream: Connector,
    /// pingora's bound on tries per request (`ServerConf::max_retries`).
    max_tries: usize,
}

impl WeirApp {
    /// `proxy` serves what the fast path does not; `weir` is its `ProxyHttp`.
    pub fn new(proxy: HttpProxy<WeirProxy>, weir: WeirProxy, conf: &ServerConf) -> Self {
        WeirApp {
            proxy: Arc::new(proxy),
            weir,
            upstream: Connector::new(Some(ConnectorOptions::from_server_conf(conf))),
            max_tries: conf.max_retries.max(1),
        }
    }

    /// Serves a planned request: upstream and back, retried as the proxy path retries
    /// (another endpoint after a failed connect, a fresh connection after a reused one failed
    /// before answering an idempotent request).
    async fn serve(
        &self,
        mut downstream: Box<ServerSession>,
        mut ctx: Ctx,
        slot: Slot,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if *shutdown.borrow() {
            downstream.set_keepalive(None);
        }
        let mut next = Some(slot);
        let mut error = None;
        let mut tries = 0;
        while let Some(slot) = next.take() {
            tries += 1;
            let addr = slot.addr();
            if ctx.attempts < MAX_CONNECT_ATTEMPTS {
                ctx.tried[ctx.attempts] = Some(addr);
            }
            ctx.sent_at = Some(Instant::now());
            ctx.attempts += 1;
            ctx.slot = Some(slot);
            let mut peer = HttpPeer::new(addr, false, String::new());
            peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
            let (mut client, reused) = match self.upstream.get_http_session(&peer).await {
                Ok(c) => c,
                Err(e) => {
                    // Never sent: as `fail_to_connect`, another endpoint, up to
                    // MAX_CONNECT_ATTEMPTS.
                    ctx.slot = None;
                    ctx.failure = Some(Failure::Connect);
                    error = Some(e.into_up());
                    if ctx.attempts < MAX_CONNECT_ATTEMPTS && tries < self.max_tries {
                        next = self.weir.next_slot(&mut ctx).await;
                    }
                    continue;
                }
            };
            ctx.failure = None;
            match self
                .exchange(&mut downstream, &mut client, &peer, &mut ctx)
                .await
            {
                Ok(reusable) => {
                    error = None;
                    if reusable {
                        self.upstream
                            .release_http_session(client, &peer, peer.idle_timeout())
                            .await;
                    }
                }
                Err(mut e) => {
                    // pingora's `error_while_proxy`: a failure on a reused connection is
                    // retried if the request can be sent again and nothing was answered.
                    if downstream.req_header().method.is_idempotent()
                        && !downstream.retry_buffer_truncated()
                    {
                        e.retry.decide_reuse(reused);
                    } else {
                        e.set_retry(false);
                    }
                    let retry = e.retry() && downstream.response_written().is_none();
                    error = Some(e);
                    if retry && tries < self.max_tries {
                        ctx.slot = None;
                        next = self.weir.next_slot(&mut ctx).await;
                    }
                }
            }
        }
        if let Some(e) = &error {
            self.weir.answer_failure(&mut downstream, e, &ctx).await;
        }
        self.weir.log(&downstream, error.as_deref(), &mut ctx);
        // `ctx` (the request's place in the drain count and in its revision's concurrency)
        // ends after the connection is handed back, as in the proxy path.
        match error {
            Some(e) => {
                downstream.on_proxy_failure(e);
                None
            }
            None => {
                let settings = HttpPersistentSettings::for_session(&downstream);
                let reusable = downstream.finish().await.ok().flatten()?;
                Some(ReusedHttpStream::from_reusable_stream(reusable, settings))
            }
        }
    }

    /// One try: the request to `client`, its answer to `downstream`. `Ok(true)` when the
    /// upstream connection can be reused.
    async fn exchange(
        &self,
        downstream: &mut ServerSession,
        client: &mut ClientSession,
        peer: &HttpPeer,
        ctx: &mut Ctx,
    ) -> Result<bool> {
        let head_request = downstream.req_header().method == Method::HEAD;
        match self.weir.upstream_head_wire(downstream, ctx) {
            // The common case: the head written straight from the client's.
            Some(wire) => {
                let body_length = if downstream.is_body_empty() {
                    0
                } else {
                    content_length(downstream.req_header()).unwrap_or(0)
                };
                client
                    .write_request_wire(&wire, head_request, body_length)
                    .await
                    .map_err(|e| e.into_up())?;
            }
            None => self.write_head(downstream, client, peer, ctx).await?,
        }
        // The body (a Content-Length one of at most BODY_LIMIT, see `plan`): what an earlier
        // try read (pingora's retry buffer, as the proxy replays it), then the rest.
        downstream.enable_retry_buffering();
        if let Some(read) = downstream.get_retry_buffer() {
            client.write_body(&read).await.map_err(|e| e.into_up())?;
        }
        while !downstream.is_body_done() {
            match downstream
                .read_request_body()
                .await
                .map_err(|e| e.into_down())?
            {
                Some(data) => {
                    client.write_body(&data).await.map_err(|e| e.into_up())?;
                }
                None => break,
            }
        }
        client.finish_body().await.map_err(|e| e.into_up())?;

        loop {
            let task = match client.read_response_task().await {
                Ok(HttpTask::Header(mut resp, end)) => {
                    if resp.status == 101 {
                        // The request did not ask to upgrade (the plan admits none).
                        return Error::e_explain(
                            InvalidHTTPHeader,
                            "101 Switching Protocols to a request without Upgrade",
                        )
                        .map_err(|e| e.into_up());
                    }
                    h1_response_framing(&mut resp, head_request, end)?;
                    self.weir.response_headers(downstream, &mut resp, ctx)?;
                    HttpTask::Header(resp, end)
                }
                Ok(task) => task,
                Err(e) => return Err(e.into_up()),
            };
            let upstream_done = task.is_end();
            let ServerSession::H1(h1) = downstream else {
                return Error::e_explain(InternalError, "the fast path serves HTTP/1 only");
            };
            let downstream_done = h1.response_duplex(task).await?;
            if upstream_done {
                return Ok(true);
            }
            if downstream_done {
                // The answer is complete downstream but not read whole from upstream.
                return Ok(false);
            }
        }
    }

    /// The upstream request head the general way: what `proxy_1to1` does to the request, in
    /// its order, on a copy of the client's head, then pingora's serializer.
    async fn write_head(
        &self,
        downstream: &mut ServerSession,
        client: &mut ClientSession,
        peer: &HttpPeer,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let mut req = downstream.req_header().clone();
        let had_host = req.headers.contains_key(header::HOST);
        let downstream_http11 = req.version == Version::HTTP_11;
        req.set_version(Version::HTTP_11);
        sanitize_h1_upstream_request(
            &mut req,
            peer.options.http_upstream_request_policy,
            downstream_http11,
        )
        .map_err(|e| e.into_down())?;
        self.weir.upstream_headers(downstream, &mut req, ctx)?;
        let has_body = !downstream.is_body_empty();
        finish_h1_upstream_request(&mut req, true, had_host, has_body)?;
        client
            .write_request_header(Box::new(req))
            .await
            .map_err(|e| e.into_up())?;
        Ok(())
    }
}

impl WeirProxy {
    /// The request's state and a slot on an endpoint when the fast path can serve it whole;
    /// `None` (nothing counted, nothing taken) when the proxy path must.
    fn plan(&self, downstream: &mut ServerSession) -> Option<(Ctx, Slot)> {
        // HTTP/1 only.
        downstream.as_http1()?;
        let body_empty = downstream.is_body_empty();
        let req = downstream.req_header();
        // An upgrade (pingora's `is_upgrade_req`: HTTP/1.1 with `Upgrade`), Transfer-Encoding
        // (whose smuggling check is `request_filter`'s) and Expect go the proxy's way; so does
        // a body that is not a Content-Length one of at most BODY_LIMIT (pingora's retry
        // buffer: a failed try replays it from there). One pass over the fields, not three
        // lookups.
        let [upgrade, transfer_encoding, expect] = first_values(
            &req.headers,
            [
                &header::UPGRADE,
                &header::TRANSFER_ENCODING,
                &header::EXPECT,
            ],
        );
        if (upgrade.is_some() && req.version == Version::HTTP_11)
            || transfer_encoding.is_some()
            || expect.is_some()
        {
            return None;
        }
        if !body_empty && content_length(req)? > BODY_LIMIT {
            return None;
        }
        let snap = self.state.load();
        let routed = self.decide(req, &snap).ok()?;
        if routed.sticky.is_some() {
            return None;
        }
        let slot = routed.target.revision.try_acquire(&[])?;
        if slot.protocol == Protocol::H2c {
            return None;
        }
        let mut ctx = self.new_ctx();
        self.admit(req, routed, &mut ctx);
        self.state.metrics.fast_path_requests.inc();
        Some((ctx, slot))
    }

    /// The slot for the next try, as `upstream_peer` takes it: an endpoint not tried yet
    /// first, waiting for one when there is none (`None`: the wait failed, `ctx.failure`
    /// says why).
    async fn next_slot(&self, ctx: &mut Ctx) -> Option<Slot> {
        let rev = ctx.revision.clone()?;
        let (avoid, n) = ctx.tried_endpoints();
        if let Some(slot) = rev.try_acquire(&avoid[..n]) {
            return Some(slot);
        }
        if self.state.edge.connections_near_limit() {
            ctx.failure = Some(Failure::Overloaded("connections"));
            return None;
        }
        let waited = Instant::now();
        let slot = rev.acquire(&avoid[..n], 0).await;
        ctx.held += waited.elapsed();
        match slot {
            Ok(slot) => Some(slot),
            Err(e) => {
                ctx.failure = Some(e.into());
                None
            }
        }
    }
}

/// The request's `Content-Length` as the fast path takes it: one number (a list, even of
/// equal numbers, goes the proxy's way).
fn content_length(req: &RequestHeader) -> Option<usize> {
    req.headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse::<usize>()
        .ok()
}

impl WeirApp {
    /// A connection's next request, its session boxed (see `process_new_http`).
    async fn process_session(
        self: &Arc<Self>,
        session: Box<ServerSession>,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if session.as_http1().is_none() {
            return self.proxy.process_new_http(*session, shutdown).await;
        }
        // The wait for a request head is awaited inline (a kept-alive connection spends its
        // idle time there, so this is what an idle connection holds); what follows is made
        // in a box once a head has arrived. Inline, the request's future (~13 KB) would make
        // this trait method's future that large: `async_trait` builds it on the stack and
        // copies it into its box on every request (callgrind: 13k of 68k instructions), and
        // every idle connection would hold it (33.7 KB per idle connection against 20.2 KB).
        let mut downstream = self.proxy.handle_new_request(session).await?;
        match self.weir.plan(&mut downstream) {
            Some((ctx, slot)) => {
                let boxed = Box::new_uninit();
                Box::into_pin(Box::write(
                    boxed,
                    self.serve(downstream, ctx, slot, shutdown),
                ))
                .await
            }
            None => {
                let boxed = Box::new_uninit();
                Box::into_pin(Box::write(
                    boxed,
                    self.proxy.process_read_request(downstream, shutdown),
                ))
                .await
            }
        }
    }
}

#[async_trait]
impl HttpServerApp for WeirApp {
    /// What `#[async_trait]` makes of `async fn process_new_http`, written out so that the
    /// session (904 bytes, passed by value for every kept-alive request) is boxed before the
    /// future is made: the future would hold it otherwise, and `async_trait` builds the
    /// future on the stack and copies it whole into its box on every request.
    fn process_new_http<'life0, 'life1, 'async_trait>(
        self: &'life0 Arc<Self>,
        session: ServerSession,
        shutdown: &'life1 ShutdownWatch,
    ) -> Pin<Box<dyn Future<Output = Option<ReusedHttpStream>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.process_session(Box::new(session), shutdown))
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.proxy.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.proxy.server_options()
    }

    async fn http_cleanup(&self) {
        self.proxy.http_cleanup().await
    }
}
