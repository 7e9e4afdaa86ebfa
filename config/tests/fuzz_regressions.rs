//! Replays every input saved under `fuzz/regressions/` through the fuzz targets' own checks,
//! so that a crash found by fuzzing, once saved there, stays fixed.
//!
//! To add one: copy the crashing input (`fuzz/artifacts/<target>/crash-*`) to
//! `fuzz/regressions/<target>/<short-name>`, fix the bug, and run `cargo test -p weir-config`.

// The fuzz crate lives outside the workspace (it needs libFuzzer); its checks are plain Rust
// over weir_config and are compiled here as modules.
#[path = "../../fuzz/src/config_checks.rs"]
mod checks;
#[path = "../../fuzz/src/replay.rs"]
mod replay;

use replay::replay;

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
