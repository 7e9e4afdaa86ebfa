//! `weir check` and the exit codes of the binary (docs/api.md#exit-codes).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use weir_tests::weir_bin;

const GOOD: &str = r#"
domain: example.com
drain_timeout: 5s
services:
  - name: hello
    namespace: default
    traffic:
      - revision: hello-00001
        percent: 90
        tag: current
      - revision: hello-00002
        percent: 10
        tag: candidate
ingresses:
  - name: api
    rules:
      - hosts: [api.example.com]
        paths:
          - path: /v2
            headers: {x-canary: "yes"}
            append_headers: {x-route: v2}
            splits:
              - revision: hello-00002
                percent: 100
          - splits:
              - revision: hello-00001
                percent: 100
revisions:
  - name: hello-00001
    endpoints: ["127.0.0.1:9001", "127.0.0.1:9002"]
  - name: hello-00002
    container_concurrency: 1
    timeout: 30s
    endpoints: []
"#;

/// Several independent mistakes; each must be reported with its path.
const BAD: &str = r#"
services:
  - name: hello
    traffic:
      - revision: hello-00001
        percent: 80
      - revision: missing-00001
        percent: 10
revisions:
  - name: hello-00001
    timeout: 30
    colour: blue
    endpoints: ["not an address"]
"#;

const BAD_PATHS: &[&str] = &[
    "services[0].traffic",
    "services[0].traffic[1].revision",
    "revisions[0].timeout",
    "revisions[0].colour",
    "revisions[0].endpoints[0]",
];

fn weir(args: &[&str]) -> Output {
    Command::new(weir_bin!())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run weir")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write a config");
    p.to_str().expect("utf-8 path").to_owned()
}

#[test]
fn check_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "good.yaml", GOOD);
    let out = weir(&["check", &file]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one summary line: {stdout:?}");
    assert!(lines[0].starts_with("ok: "), "{stdout:?}");
}

#[test]
fn check_good_json_file() {
    let dir = tempfile::tempdir().unwrap();
    let json = serde_json::json!({
        "services": [{"name": "hello", "traffic": [{"revision": "hello-00001", "percent": 100}]}],
        "revisions": [{"name": "hello-00001", "endpoints": ["127.0.0.1:9001"]}],
    });
    let file = write(dir.path(), "good.json", &json.to_string());
    let out = weir(&["check", &file]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("ok: "),
        "{}",
        text(&out)
    );
}

#[test]
fn check_bad_file_reports_every_error_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "bad.yaml", BAD);
    let out = weir(&["check", &file]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    for path in BAD_PATHS {
        assert!(
            all.lines().any(|l| l.starts_with(&format!("{path}:"))),
            "no line starts with {path:?}:\n{all}"
        );
    }
}

#[test]
fn check_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.yaml");
    let out = weir(&["check", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!text(&out).trim().is_empty(), "says why");
}

#[test]
fn bad_usage_is_exit_2() {
    let out = weir(&["check"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "check without a file: {}",
        text(&out)
    );
    let out = weir(&["no-such-command"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "unknown command: {}",
        text(&out)
    );
    let out = weir(&["proxy", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2), "unknown flag: {}", text(&out));
}

#[test]
fn proxy_with_an_invalid_config_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "bad.yaml", BAD);
    let admin = format!("127.0.0.1:{}", weir_tests::free_port());
    let http = format!("127.0.0.1:{}", weir_tests::free_port());
    let mut child = Command::new(weir_bin!())
        .args([
            "proxy", "--config", &file, "--http", &http, "--admin", &admin,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if child.try_wait().unwrap().is_none() {
        child.kill().unwrap();
        let out = child.wait_with_output().unwrap();
        panic!(
            "weir proxy kept running with an invalid config:\n{}",
            text(&out)
        );
    }
    let out = child.wait_with_output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("services[0].traffic"),
        "the reason names the path: {all}"
    );
}
