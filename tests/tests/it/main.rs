//! Weir's integration suites, one module per job, linked into one test binary (one link of
//! the whole stack instead of one per suite). Run one suite with its module path as the
//! filter, e.g. `cargo test -p weir-tests --test it xds::`; the long runs are `#[ignore]`d
//! (`-- --ignored`, see each module's docs).

mod access_log;
mod admin;
mod affinity;
mod autoscaler;
mod cli;
mod deploy;
mod edge;
mod failures;
mod fast_path;
mod harness;
mod headers;
mod hold;
mod kourier;
mod malformed;
mod observability;
mod pool;
mod protocols;
mod routing;
mod signals;
mod soak;
mod split;
mod status;
mod tls;
mod updates;
mod xds;
