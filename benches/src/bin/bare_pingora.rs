//! The framework's floor: a bare pingora proxy doing the peers' job (Host match, 90/10 random
//! split over two backends, pooled keep-alive upstreams, nothing logged, no header added), built
//! with Weir's release profile and allocator. `benches/e2e/run.py --bare` runs it beside Weir so
//! that Weir ÷ bare pingora, measured in one run, is what Weir's own features cost per request.
//!
//! ```text
//! bare_pingora LISTEN HOST BACKEND_90 BACKEND_10
//! bare_pingora 127.0.0.1:8080 hello.default.example.com 127.0.0.1:8081 127.0.0.1:8082
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;

use async_trait::async_trait;
use pingora::http::ResponseHeader;
use pingora::prelude::{http_proxy_service, HttpPeer, ProxyHttp, Result, Session};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;

/// The same allocator as `weir`, so that the comparison is of the request path only.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    host: String,
    heavy: SocketAddr,
    light: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let host = session
            .req_header()
            .headers
            .get("host")
            .map(|h| h.as_bytes())
            .unwrap_or_default();
        let host = host.split(|&b| b == b':').next().unwrap_or_default();
        if host.eq_ignore_ascii_case(self.host.as_bytes()) {
            return Ok(false);
        }
        let mut resp = ResponseHeader::build(404, Some(1))?;
        resp.insert_header("content-length", "0")?;
        session.write_response_header(Box::new(resp), true).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let addr = if rand::random_range(0..100u32) < 90 {
            self.heavy
        } else {
            self.light
        };
        Ok(Box::new(HttpPeer::new(addr, false, String::new())))
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, host, heavy, light] = args.as_slice() else {
        eprintln!("usage: bare_pingora LISTEN HOST BACKEND_90 BACKEND_10");
        return ExitCode::from(2);
    };
    let (Ok(heavy), Ok(light)) = (heavy.parse(), light.parse()) else {
        eprintln!("error: backends must be IP:port");
        return ExitCode::from(2);
    };
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: 1024,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut svc = http_proxy_service(
        &server.configuration,
        Bare {
            host: host.to_ascii_lowercase(),
            heavy,
            light,
        },
    );
    svc.add_tcp(listen);
    server.add_service(svc);
    server.run_forever()
}
