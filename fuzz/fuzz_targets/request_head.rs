#![no_main]
//! Arbitrary bytes as the start of a client connection: parsed as pingora parses a request
//! head, then Weir's refusals and routing decision. Never panics; routing stays in the table.

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use weir_config::RouteTable;

static TABLE: OnceLock<RouteTable> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let table = TABLE.get_or_init(weir_fuzz::request::table);
    weir_fuzz::request::check_request_head(table, data);
});
