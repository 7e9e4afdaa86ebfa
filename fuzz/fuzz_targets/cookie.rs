#![no_main]
//! Arbitrary bytes as a `Cookie` header on a sticky service: a remembered revision is kept
//! only while it is live in the split.

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use weir_config::RouteTable;

static TABLE: OnceLock<RouteTable> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let table = TABLE.get_or_init(weir_fuzz::request::table);
    weir_fuzz::request::check_cookie(table, data);
});
