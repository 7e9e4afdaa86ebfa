//! PROXY protocol (v1 text and v2 binary, HAProxy's spec) on the listeners whose port is in
//! `listen.proxy_protocol` (or whose xDS Listener has the `proxy_protocol` filter): a load
//! balancer in front of Weir sends the client's address first, and Weir then uses it as the
//! client address (`X-Forwarded-For`, logs) instead of the balancer's.
//!
//! [`parse`] is sans-io: bytes in, a header (and how many bytes it took) out. [`Reader`] is
//! the pingora hook that reads the header off a new connection before TLS or HTTP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::l4::stream::Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest};
use pingora::{Error, ErrorType, OrErr, Result};
use tokio::io::AsyncReadExt;

use crate::state::State;

/// The v2 signature.
const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, CRLF included (the spec's bound).
const V1_MAX: usize = 107;
/// Largest v2 header accepted (16 bytes + addresses + TLVs).
const V2_MAX: usize = 16 + 536;

/// A parsed PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Bytes the header took.
    pub len: usize,
    /// The client's address, or `None` for `LOCAL` (v2) and `UNKNOWN` (v1): a health check
    /// of the balancer itself, whose connection address stays the client address.
    pub source: Option<SocketAddr>,
}

/// Why bytes are not a PROXY header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// More bytes are needed.
    Incomplete,
    Invalid(&'static str),
}

/// Parses a PROXY header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Header, ParseError> {
    use ParseError::{Incomplete, Invalid};
    let sig_len = buf.len().min(V2_SIG.len());
    if buf[..sig_len] == V2_SIG[..sig_len] && !buf.is_empty() {
        return parse_v2(buf);
    }
    let v1_len = buf.len().min(6);
    if buf[..v1_len] != b"PROXY "[..v1_len] {
        return Err(Invalid("expected a PROXY protocol header"));
    }
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(Invalid("PROXY v1 header longer than 107 bytes"))
        } else {
            Err(Incomplete)
        };
    };
    if end + 2 > V1_MAX {
        return Err(Invalid("PROXY v1 header longer than 107 bytes"));
    }
    let line = std::str::from_utf8(&buf[6..end]).map_err(|_| Invalid("PROXY v1: not text"))?;
    let mut parts = line.split(' ');
    let len = end + 2;
    match parts.next() {
        Some("UNKNOWN") => Ok(Header { len, source: None }),
        Some(proto @ ("TCP4" | "TCP6")) => {
            let fields: Vec<&str> = parts.collect();
            let [src, _dst, sport, _dport] = fields[..] else {
                return Err(Invalid("PROXY v1: expected 4 fields after the protocol"));
            };
            let ip: IpAddr = src
                .parse()
                .map_err(|_| Invalid("PROXY v1: bad source address"))?;
            if ip.is_ipv4() != (proto == "TCP4") {
                return Err(Invalid(
                    "PROXY v1: address family differs from the protocol",
                ));
            }
            let port: u16 = sport
                .parse()
                .map_err(|_| Invalid("PROXY v1: bad source port"))?;
            Ok(Header {
                len,
                source: Some(SocketAddr::new(ip, port)),
            })
        }
        _ => Err(Invalid("PROXY v1: protocol must be TCP4, TCP6 or UNKNOWN")),
    }
}

fn parse_v2(buf: &[u8]) -> Result<Header, ParseError> {
    use ParseError::{Incomplete, Invalid};
    if buf.len() < 16 {
        return Err(Incomplete);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(Invalid("PROXY v2: unknown version"));
    }
    let fam = buf[13];
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + body;
    if len > V2_MAX {
        return Err(Invalid("PROXY v2: header too long"));
    }
    if buf.len() < len {
        return Err(Incomplete);
    }
    let addrs = &buf[16..len];
    match ver_cmd & 0x0f {
        0 => return Ok(Header { len, source: None }), // LOCAL: the balancer's own check
        1 => {}
        _ => return Err(Invalid("PROXY v2: unknown command")),
    }
    let source = match fam >> 4 {
        // AF_INET: src(4) dst(4) sport(2) dport(2)
        1 if addrs.len() >= 12 => {
            let ip = Ipv4Addr::new(addrs[0], addrs[1], addrs[2], addrs[3]);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([addrs[8], addrs[9]]),
            ))
        }
        // AF_INET6: src(16) dst(16) sport(2) dport(2)
        2 if addrs.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&addrs[..16]);
            Some(SocketAddr::new(
                Ipv6Addr::from(octets).into(),
                u16::from_be_bytes([addrs[32], addrs[33]]),
            ))
        }
        1 | 2 => return Err(Invalid("PROXY v2: address block too short")),
        // AF_UNSPEC / AF_UNIX: no usable client address.
        _ => None,
    };
    Ok(Header { len, source })
}

/// Reads the PROXY header off new connections whose local port asks for one (the current
/// config's `listen.proxy_protocol`), before TLS or HTTP; the client address is then the
/// header's source. A connection without a valid header within the time limit is closed.
pub struct Reader {
    pub state: Arc<State>,
    pub timeout: Duration,
}

#[async_trait]
impl PreTlsProcess for Reader {
    async fn process(&self, stream: &mut Stream) -> Result<()> {
        let Some(digest) = stream.get_socket_digest() else {
            return Ok(());
        };
        let port = match digest.local_addr() {
            Some(PingoraAddr::Inet(a)) => a.port(),
            _ => return Ok(()),
        };
        if !self
            .state
            .load()
            .settings()
            .listen
            .proxy_protocol
            .contains(&port)
        {
            return Ok(());
        }
        let header = tokio::time::timeout(self.timeout, read_header(stream))
            .await
            .or_err(
                ErrorType::ReadTimedout,
                "waiting for the PROXY protocol header",
            )??;
        if let Some(source) = header {
            let fd = stream.as_raw_fd();
            let replaced = SocketDigest::from_raw_fd(fd);
            let _ = replaced.peer_addr.set(Some(PingoraAddr::Inet(source)));
            if let Some(local) = digest.local_addr() {
                let _ = replaced.local_addr.set(Some(local.clone()));
            }
            stream.set_socket_digest(replaced);
        }
        Ok(())
    }
}

/// Reads exactly the header (what came after it goes back to the stream).
async fn read_header(stream: &mut Stream) -> Result<Option<SocketAddr>> {
    let mut buf = [0u8; V2_MAX];
    let mut n = 0;
    loop {
        let read = stream
            .read(&mut buf[n..])
            .await
            .or_err(ErrorType::ReadError, "reading the PROXY protocol header")?;
        if read == 0 {
            return Error::e_explain(
                ErrorType::ConnectionClosed,
                "closed before the PROXY protocol header",
            );
        }
        n += read;
        match parse(&buf[..n]) {
            Ok(h) => {
                stream.rewind(&buf[h.len..n]);
                return Ok(h.source);
            }
            Err(ParseError::Incomplete) if n < buf.len() => continue,
            Err(ParseError::Incomplete) => {
                return Error::e_explain(ErrorType::InvalidHTTPHeader, "PROXY header too long")
            }
            Err(ParseError::Invalid(why)) => {
                return Error::e_explain(ErrorType::InvalidHTTPHeader, why)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1() {
        let h = parse(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /").unwrap();
        assert_eq!(h.len, 45);
        assert_eq!(h.source, Some("192.0.2.1:56324".parse().unwrap()));
        let h = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n").unwrap();
        assert_eq!(h.source, Some("[2001:db8::1]:1".parse().unwrap()));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n").unwrap(),
            Header {
                len: 15,
                source: None
            }
        );
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Err(ParseError::Incomplete));
        assert_eq!(parse(b"PRO"), Err(ParseError::Incomplete));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n"),
            Err(ParseError::Invalid(_))
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 ::1 1.2.3.4 1 2\r\n"),
            Err(ParseError::Invalid(_))
        ));
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(120));
        assert!(matches!(
            parse(long.as_bytes()),
            Err(ParseError::Invalid(_))
        ));
    }

    fn v2(cmd: u8, fam: u8, addrs: &[u8]) -> Vec<u8> {
        let mut b = V2_SIG.to_vec();
        b.push(0x20 | cmd);
        b.push(fam);
        b.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
        b.extend_from_slice(addrs);
        b
    }

    #[test]
    fn v2_addresses() {
        let mut a = vec![10, 0, 0, 7, 10, 0, 0, 1];
        a.extend_from_slice(&4000u16.to_be_bytes());
        a.extend_from_slice(&80u16.to_be_bytes());
        let mut b = v2(1, 0x11, &a);
        b.extend_from_slice(b"GET");
        let h = parse(&b).unwrap();
        assert_eq!(h.len, 28);
        assert_eq!(h.source, Some("10.0.0.7:4000".parse().unwrap()));
        assert_eq!(parse(&b[..20]), Err(ParseError::Incomplete));

        let mut a6 = vec![0u8; 36];
        a6[15] = 1;
        a6[32..34].copy_from_slice(&9u16.to_be_bytes());
        let h = parse(&v2(1, 0x21, &a6)).unwrap();
        assert_eq!(h.source, Some("[::1]:9".parse().unwrap()));

        // LOCAL: a health check of the balancer, no client address.
        assert_eq!(parse(&v2(0, 0x00, &[])).unwrap().source, None);
        assert!(matches!(
            parse(&v2(1, 0x11, &[1, 2])),
            Err(ParseError::Invalid(_))
        ));
        let mut bad = v2(1, 0x11, &a);
        bad[12] = 0x11;
        assert!(matches!(parse(&bad), Err(ParseError::Invalid(_))));
    }
}
