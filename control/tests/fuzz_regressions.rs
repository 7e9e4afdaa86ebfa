//! Replays `fuzz/regressions/xds/` through the fuzz target's own check (see
//! `fuzz/README.md`), so a crash found by fuzzing, once saved there, stays fixed.

#[path = "../../fuzz/src/replay.rs"]
mod replay;
#[path = "../../fuzz/src/xds.rs"]
mod xds;

#[test]
fn xds_regressions() {
    replay::replay("xds", xds::check_xds);
}
