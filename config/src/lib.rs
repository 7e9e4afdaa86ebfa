//! Weir's configuration: the model users write (YAML or JSON), its validation with a path for
//! every error, and the compiled [`RouteTable`] the data plane reads.
//!
//! Pure: no I/O and no async, so the proxy, the control plane, the fuzzers and the benches
//! all share exactly the same parsing and compiling.
//!
//! ```
//! let cfg = weir_config::parse_yaml(r#"
//! services:
//!   - name: hello
//!     traffic: [{revision: hello-1, percent: 100}]
//! revisions:
//!   - name: hello-1
//!     endpoints: ["127.0.0.1:9001"]
//! "#).unwrap();
//! let table = weir_config::compile(&cfg).unwrap();
//! let route = table.lookup(b"Hello.Default.Example.com:8080", weir_config::Listener::External);
//! assert!(route.unwrap().is_some());
//! ```

pub mod compiled;
pub mod error;
pub mod hosts;
pub mod model;
pub mod objects;
pub mod request;
pub mod sharded;
pub mod split;
pub mod table;
pub mod validate;

pub use compiled::{Compiled, Plan, Update};
pub use error::{ConfigError, ConfigErrors};
pub use model::Config;
pub use objects::{Change, Key, Kind, Objects};
pub use split::{Split, Target};
pub use table::{
    compile, normalize_host, AffinityMode, HostError, HostRoute, Listener, Owner, PathRoute,
    RouteTable,
};
pub use validate::{parse_endpoint, validate, EndpointSpec};

/// The two spellings of a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    /// Guesses from a file name: `.json` is JSON, anything else YAML (a superset of JSON).
    pub fn from_path(path: &str) -> Format {
        if path.ends_with(".json") {
            Format::Json
        } else {
            Format::Yaml
        }
    }
}

/// Parses a config. A syntax or type error is reported alone, with its path.
pub fn parse(text: &str, format: Format) -> Result<Config, ConfigErrors> {
    match format {
        Format::Json => {
            let de = &mut serde_json::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| path_error(e.path(), e.inner()))
        }
        Format::Yaml => {
            if text.trim().is_empty() {
                return Ok(Config::empty());
            }
            let de = serde_norway::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| path_error(e.path(), e.inner()))
        }
    }
}

/// Parses one service, ingress or revision as the admin API's per-object endpoints receive
/// it, naming it `namespace/name` when the body does not (a body that names another object
/// is an error at `name` or `namespace`).
pub fn parse_object<T: serde::de::DeserializeOwned>(
    text: &str,
    format: Format,
    namespace: &str,
    name: &str,
) -> Result<T, ConfigErrors> {
    let value: serde_json::Value = match format {
        Format::Json => {
            let de = &mut serde_json::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| path_error(e.path(), e.inner()))?
        }
        Format::Yaml => {
            let de = serde_norway::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| path_error(e.path(), e.inner()))?
        }
    };
    let serde_json::Value::Object(mut fields) = value else {
        return Err(ConfigError::new("", "expected an object (a map of fields)").into());
    };
    for (field, want) in [("namespace", namespace), ("name", name)] {
        match fields.get(field) {
            None => {
                fields.insert(field.into(), want.into());
            }
            Some(serde_json::Value::String(s)) if s == want => {}
            Some(other) => {
                return Err(ConfigError::new(
                    field,
                    format!("is {other}, but the path says {want:?}; they must agree"),
                )
                .into())
            }
        }
    }
    serde_path_to_error::deserialize(serde_json::Value::Object(fields))
        .map_err(|e| path_error(e.path(), e.inner()))
}

/// Parses YAML (or JSON, which YAML accepts).
pub fn parse_yaml(text: &str) -> Result<Config, ConfigErrors> {
    parse(text, Format::Yaml)
}

/// Parses and validates: the form every config source (file, API, xDS) goes through.
pub fn load(text: &str, format: Format) -> Result<Config, ConfigErrors> {
    let cfg = parse(text, format)?;
    validate(&cfg)?;
    Ok(cfg)
}

fn path_error(path: &serde_path_to_error::Path, inner: &dyn std::fmt::Display) -> ConfigErrors {
    let p = path.to_string();
    let p = if p == "." { String::new() } else { p };
    let msg = inner.to_string();
    // serde_norway appends " at line L column C"; keep it, it helps find the spot. It also
    // starts nested errors with its own copy of the path: drop that, the error has one.
    let msg = match msg
        .strip_prefix(p.as_str())
        .and_then(|m| m.strip_prefix(": "))
    {
        Some(rest) if !p.is_empty() => rest.to_owned(),
        _ => msg,
    };
    ConfigError::new(p, msg).into()
}

/// One-line summary for `weir check`: `3 services, 5 revisions, 9 hosts`.
pub fn summary<R>(cfg: &Config, table: &RouteTable<R>) -> String {
    format!(
        "{} services, {} ingresses, {} revisions, {} hosts",
        cfg.services.len(),
        cfg.ingresses.len(),
        cfg.revisions.len(),
        table.host_count()
    )
}
