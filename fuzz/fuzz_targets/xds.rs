#![no_main]
//! Arbitrary bytes as xDS resources and discovery responses: decode, translate, judge.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weir_fuzz::xds::check_xds(data);
});
