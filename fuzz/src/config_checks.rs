//! The checks behind the `host_lookup` and `config` fuzz targets, shared with
//! `config/tests/fuzz_regressions.rs` (which includes this file by path) so that every input
//! saved under `fuzz/regressions/` is run through exactly the logic that found it.
//!
//! Depends on nothing but `weir_config`, `serde_json` and std, so it compiles in both places.

use weir_config::table::MAX_HOST_LEN;
use weir_config::{compile, normalize_host, parse, validate, Format, Listener, RouteTable};

/// The fixed table `check_host` looks hosts up in: a service with tags, an extra host, a
/// cluster-local service and an ingress with two hosts.
pub const HOST_TABLE_YAML: &str = r#"
services:
  - name: hello
    hosts: [hello.example.org]
    traffic:
      - {revision: hello-1, percent: 90, tag: current}
      - {revision: hello-2, percent: 10}
  - name: private
    namespace: team-a
    visibility: cluster-local
    traffic: [{revision: private-1, percent: 100}]
ingresses:
  - name: api
    rules:
      - hosts: [api.example.com, 10.0.0.1]
        paths: [{path: /v2, splits: [{revision: hello-2, percent: 100}]}]
revisions:
  - {name: hello-1, endpoints: ["127.0.0.1:9001"]}
  - {name: hello-2}
  - {name: private-1, namespace: team-a}
"#;

/// Hosts of [`HOST_TABLE_YAML`]: (host, served on the external listener).
pub const KNOWN_HOSTS: &[(&str, bool)] = &[
    ("hello.default.example.com", true),
    ("current-hello.default.example.com", true),
    ("hello.example.org", true),
    ("api.example.com", true),
    ("10.0.0.1", true),
    ("hello.default", false),
    ("hello.default.svc", false),
    ("hello.default.svc.cluster.local", false),
    ("current-hello.default", false),
    ("current-hello.default.svc", false),
    ("current-hello.default.svc.cluster.local", false),
    ("private.team-a", false),
    ("private.team-a.svc", false),
    ("private.team-a.svc.cluster.local", false),
];

/// Compiles [`HOST_TABLE_YAML`].
pub fn host_table() -> RouteTable {
    let cfg = parse(HOST_TABLE_YAML, Format::Yaml).expect("the fuzz table parses");
    let table = compile(&cfg).expect("the fuzz table compiles");
    assert_eq!(
        table.host_count(),
        KNOWN_HOSTS.len(),
        "KNOWN_HOSTS lists every host"
    );
    table
}

/// `data` is a raw Host header. Never panics on any input; checks that normalisation and
/// lookup agree with each other and with the contract (case, port and trailing dot ignored).
pub fn check_host(table: &RouteTable, data: &[u8]) {
    let mut buf = [0u8; MAX_HOST_LEN];
    let normalized = normalize_host(data, &mut buf).map(str::to_owned);
    let ext = table.lookup(data, Listener::External);
    let int = table.lookup(data, Listener::Internal);
    match &normalized {
        Err(e) => {
            assert_eq!(ext.map(|r| r.is_some()), Err(*e));
            assert_eq!(int.map(|r| r.is_some()), Err(*e));
        }
        Ok(n) => {
            // The normalised host is a lowercased prefix of the raw one, never empty or long.
            assert!(!n.is_empty() && n.len() <= MAX_HOST_LEN, "{n:?}");
            assert!(n.len() <= data.len());
            assert!(
                n.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()),
                "{n:?}"
            );
            assert!(data[..n.len()].eq_ignore_ascii_case(n.as_bytes()), "{n:?}");
            let ext = ext.expect("normalised, so no error");
            let int = int.expect("normalised, so no error");
            // Internal serves everything external does, with the same route.
            if let Some(e) = ext {
                assert!(std::ptr::eq(
                    e,
                    int.expect("internal serves external hosts")
                ));
                assert!(e.external);
            }
            if let Some(r) = int {
                // A hit is a configured host, and looking that up finds the same route.
                let again = table.lookup(n.as_bytes(), Listener::Internal);
                assert!(std::ptr::eq(
                    r,
                    again.ok().flatten().expect("key finds itself")
                ));
                let known = KNOWN_HOSTS.iter().find(|(h, _)| *h == n.as_str());
                let (_, external) = known.unwrap_or_else(|| panic!("{n:?} is not a known host"));
                assert_eq!(*external, r.external, "{n:?}");
                assert_eq!(*external, ext.is_some(), "{n:?}");
            }
        }
    }
    check_known_host_variant(table, data);
}

/// Uses `data` to spell one known host in another case, with a port and/or a trailing dot,
/// and checks that it is found: the contract's "exact and case-insensitive, ignoring a
/// `:port` and a trailing dot".
fn check_known_host_variant(table: &RouteTable, data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let (host, external) = KNOWN_HOSTS[usize::from(first) % KNOWN_HOSTS.len()];
    let mut raw: Vec<u8> = host
        .bytes()
        .enumerate()
        .map(|(i, b)| {
            let flip = rest.get(i / 8).is_some_and(|byte| byte >> (i % 8) & 1 == 1);
            if flip {
                b.to_ascii_uppercase()
            } else {
                b
            }
        })
        .collect();
    if first & 0x40 != 0 {
        raw.push(b'.');
    }
    if first & 0x80 != 0 {
        let port = rest.first().map_or(0, |&p| u32::from(p) * 257);
        raw.extend_from_slice(format!(":{port}").as_bytes());
    }
    let shown = String::from_utf8_lossy(&raw).into_owned();
    let int = table.lookup(&raw, Listener::Internal);
    assert!(matches!(int, Ok(Some(_))), "{shown:?} must be found");
    let ext = table.lookup(&raw, Listener::External);
    assert_eq!(
        ext.map(|r| r.is_some()),
        Ok(external),
        "{shown:?} on the external listener"
    );
}

/// `data` is a config file. Never panics; a config that validates must compile, and must
/// load back unchanged from what `GET /v1/config` would print (its JSON serialisation).
pub fn check_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for format in [Format::Yaml, Format::Json] {
        let cfg = match parse(text, format) {
            Ok(cfg) => cfg,
            Err(errors) => {
                assert!(!errors.0.is_empty(), "an error without a message");
                continue;
            }
        };
        let valid = validate(&cfg);
        if let Err(errors) = &valid {
            assert!(!errors.0.is_empty(), "Err with no errors");
            for e in &errors.0 {
                assert!(!e.message.is_empty(), "{e:?}");
            }
        }
        let table = compile(&cfg);
        match (&valid, &table) {
            (Ok(()), Ok(_)) => {}
            (Err(v), Err(c)) => assert_eq!(v, c, "compile reports what validate does"),
            (Ok(()), Err(e)) => panic!("validated but did not compile: {e}"),
            (Err(e), Ok(_)) => panic!("compiled but did not validate: {e}"),
        }
        if valid.is_ok() {
            let json = serde_json::to_string(&cfg).expect("a config serialises");
            let back = weir_config::load(&json, Format::Json)
                .unwrap_or_else(|e| panic!("serialised config does not load: {e}\n{json}"));
            assert_eq!(back, cfg, "serialised config loads differently:\n{json}");
        }
    }
}
