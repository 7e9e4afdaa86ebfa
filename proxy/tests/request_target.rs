//! The vendored pingora-http's `RequestHeader::build_shared` (the request target kept in the
//! buffer the head was read into, which pingora's HTTP/1 server now uses) against `build`
//! (the target copied, which it used before): the same `Uri`, the same bytes for the wire, the
//! same refusals, for every target form and for a few thousand drawn from bytes that matter
//! to the parse. The vendored crates' own unit tests do not run in this tree.

use bytes::Bytes;
use pingora_http::RequestHeader;

fn same(target: &[u8]) {
    let copied = RequestHeader::build("GET", target, Some(4));
    let shared = RequestHeader::build_shared("GET", Bytes::copy_from_slice(target), Some(4));
    match (copied, shared) {
        (Ok(c), Ok(s)) => {
            assert_eq!(
                c.uri,
                s.uri,
                "uri of {:?}",
                target.escape_ascii().to_string()
            );
            assert_eq!(
                c.raw_path(),
                s.raw_path(),
                "raw path of {:?}",
                target.escape_ascii().to_string()
            );
            assert_eq!(c.raw_path_is_utf8(), s.raw_path_is_utf8());
        }
        (Err(_), Err(_)) => {}
        (c, s) => panic!(
            "{:?}: build {} but build_shared {}",
            target.escape_ascii().to_string(),
            if c.is_ok() { "accepts" } else { "refuses" },
            if s.is_ok() { "accepts" } else { "refuses" },
        ),
    }
}

#[test]
fn every_target_form_is_stored_as_build_stores_it() {
    let targets: &[&[u8]] = &[
        b"/",
        b"",
        b"/a/b?c=d&e",
        b"/%2e%2e/x",
        b"/x%20y",
        b"/q?\"quoted\"",
        b"//double",
        b"/frag#ment",
        b"/#",
        b"#only",
        b"?q=1",
        b"*",
        b"http://hello.default.example.com/abs?x",
        b"http://host?q=1",
        b"https://user@host:8443",
        b"hello.default.example.com:443",
        b"foo:bar://host/admin",
        b"/caf\xc3\xa9",
        b"/bad\xff\xfe",
        b"/tab\there",
        b"/ctl\x01",
        b"/del\x7f",
        b"/{braces}|pipe^caret`tick",
        b"/sp ace",
        b"/back\\slash",
        b"/very/long/".repeat(400).leak(),
    ];
    for t in targets {
        same(t);
    }
}

#[test]
fn drawn_targets_are_stored_as_build_stores_them() {
    // Bytes that change the parse: delimiters, escapes, controls, non-ASCII, UTF-8 pieces.
    const ALPHABET: &[u8] = b"/?#%*:@ab.1 \t\"\\{}|^`\x00\x01\x7f\x80\xc3\xa9\xff";
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let len = (next() % 12) as usize;
        let mut target: Vec<u8> = Vec::with_capacity(len + 1);
        if next() % 4 != 0 {
            target.push(b'/');
        }
        for _ in 0..len {
            target.push(ALPHABET[(next() % ALPHABET.len() as u64) as usize]);
        }
        same(&target);
    }
}
