#![no_main]
//! Arbitrary text as a config file, YAML and JSON: parse, validate, compile. Never panics; a
//! config that validates must compile and survive a serialise/load round trip.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weir_fuzz::check_config(data);
});
