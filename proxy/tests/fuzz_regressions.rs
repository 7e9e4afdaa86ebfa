//! Replays `fuzz/regressions/request_head/` and `fuzz/regressions/cookie/` through the fuzz
//! targets' own checks (see `fuzz/README.md`), so a crash found by fuzzing, once saved
//! there, stays fixed.

#[path = "../../fuzz/src/replay.rs"]
mod replay;
#[path = "../../fuzz/src/request.rs"]
mod request;

#[test]
fn request_head_regressions() {
    let table = request::table();
    replay::replay("request_head", |data| {
        request::check_request_head(&table, data)
    });
}

#[test]
fn cookie_regressions() {
    let table = request::table();
    replay::replay("cookie", |data| request::check_cookie(&table, data));
}
