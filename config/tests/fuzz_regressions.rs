//! Replays every input saved under `fuzz/regressions/` through the fuzz targets' own checks,
//! so that a crash found by fuzzing, once saved there, stays fixed.
//!
//! To add one: copy the crashing input (`fuzz/artifacts/<target>/crash-*`) to
//! `fuzz/regressions/<target>/<short-name>`, fix the bug, and run `cargo test -p weir-config`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

// The fuzz crate lives outside the workspace (it needs libFuzzer); its checks are plain Rust
// over weir_config and are compiled here as a module.
#[path = "../../fuzz/src/lib.rs"]
mod checks;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no inputs in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, data)
        })
        .collect()
}

/// Runs `check` on every input and reports all that fail, not just the first.
fn replay(target: &str, check: impl Fn(&[u8])) {
    let mut failed = Vec::new();
    for (path, data) in inputs(target) {
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target} regressions failing: {failed:#?}"
    );
}

#[test]
fn host_lookup_regressions() {
    let table = checks::host_table();
    replay("host_lookup", |data| checks::check_host(&table, data));
}

#[test]
fn config_regressions() {
    replay("config", checks::check_config);
}

#[test]
fn every_known_host_of_the_fuzz_table_is_found() {
    let table = checks::host_table();
    for (host, external) in checks::KNOWN_HOSTS {
        for spelling in [
            host.to_string(),
            host.to_ascii_uppercase(),
            format!("{host}."),
            format!("{host}:8080"),
        ] {
            checks::check_host(&table, spelling.as_bytes());
            let ext = table.lookup(spelling.as_bytes(), weir_config::Listener::External);
            assert_eq!(ext.map(|r| r.is_some()), Ok(*external), "{spelling}");
        }
    }
}
