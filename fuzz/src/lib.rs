//! The checks behind Weir's fuzz targets, one module per input, each shared with the
//! workspace crate whose tests replay `fuzz/regressions/<target>/` through it (included there
//! by path, so a saved crash runs through exactly the logic that found it):
//!
//! - [`config_checks`]: `host_lookup` and `config` (`config/tests/fuzz_regressions.rs`);
//! - [`request`]: `request_head` and `cookie` (`proxy/tests/fuzz_regressions.rs`);
//! - [`xds`]: `xds` (`control/tests/fuzz_regressions.rs`).

pub mod config_checks;
pub mod request;
pub mod xds;

pub use config_checks::*;
