#![no_main]
//! Arbitrary bytes as a Host header: normalisation and lookup must never panic and must agree.

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use weir_config::RouteTable;

static TABLE: OnceLock<RouteTable> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let table = TABLE.get_or_init(weir_fuzz::host_table);
    weir_fuzz::check_host(table, data);
});
