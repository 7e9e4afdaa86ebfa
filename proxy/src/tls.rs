//! Certificates of the TLS listeners, chosen by SNI.
//!
//! The config's `tls` entries (files, PEM text, or certificates from xDS Listeners) are
//! loaded (PEM chain + key, checked to match) whenever a config is applied, and swapped in
//! atomically with it: open connections keep the certificate they were made with, the next
//! handshake gets the new one. External entries serve the `https` listeners, cluster-local
//! ones the `internal_https` listeners. A name is matched exactly, then as a wildcard
//! (`*.example.com` covers `a.example.com`, not `a.b.example.com`), then the entry marked
//! `default` answers. Without a default, a handshake with an unknown SNI, or none, fails
//! cleanly with a TLS alert: Weir never presents a certificate for a host it does not serve.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use weir_config::model::TlsEntry;
use weir_config::{Config, ConfigError, ConfigErrors};

/// Host -> certificate, for one config generation and one kind of TLS listener.
#[derive(Default)]
pub struct Certs {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// For no SNI or an unknown one.
    default: Option<Arc<CertifiedKey>>,
}

impl Certs {
    fn find(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let by_name = name.and_then(|name| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(c) = self.exact.get(&name) {
                return Some(c.clone());
            }
            let (_, parent) = name.split_once('.')?;
            self.wildcard.get(parent).cloned()
        });
        by_name.or_else(|| self.default.clone())
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len() + usize::from(self.default.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The SNI resolver installed on the https listener.
#[derive(Default)]
pub struct CertStore {
    current: ArcSwap<Certs>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertStore({} names)", self.current.load().len())
    }
}

impl CertStore {
    pub fn store(&self, certs: Certs) {
        self.current.store(Arc::new(certs));
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let found = self.current.load().find(hello.server_name());
        if found.is_none() {
            log::debug!(
                "TLS handshake for unknown server name {:?}",
                hello.server_name()
            );
        }
        found
    }
}

/// The certificates of one config: (external, cluster-local).
pub type Loaded = (Certs, Certs);

/// Loads every `tls` entry; file paths are relative to `base`. Errors name the entry.
pub fn load(cfg: &Config, base: &Path) -> Result<Loaded, ConfigErrors> {
    let mut loaded: Loaded = Default::default();
    let mut errors = Vec::new();
    for (i, entry) in cfg.tls.iter().enumerate() {
        let certs = if entry.visibility.is_external() {
            &mut loaded.0
        } else {
            &mut loaded.1
        };
        match load_entry(entry, base) {
            Ok(key) => {
                let key = Arc::new(key);
                if entry.default {
                    certs.default = Some(key.clone());
                }
                for host in &entry.hosts {
                    let host = host.trim_end_matches('.').to_ascii_lowercase();
                    match host.strip_prefix("*.") {
                        Some(suffix) => certs.wildcard.insert(suffix.to_owned(), key.clone()),
                        None => certs.exact.insert(host, key.clone()),
                    };
                }
            }
            Err((field, why)) => errors.push(ConfigError::new(format!("tls[{i}].{field}"), why)),
        }
    }
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn load_entry(entry: &TlsEntry, base: &Path) -> Result<CertifiedKey, (String, String)> {
    let read = |file: &Option<String>, pem: &Option<String>, field: &str| match (file, pem) {
        (_, Some(text)) => Ok((text.clone().into_bytes(), format!("{field}_pem"))),
        (Some(f), None) => {
            let p = base.join(f);
            std::fs::read(&p)
                .map(|b| (b, field.to_string()))
                .map_err(|e| {
                    (
                        field.to_string(),
                        format!("cannot read {}: {e}", p.display()),
                    )
                })
        }
        (None, None) => Err((field.to_string(), "missing".to_string())),
    };
    let (cert_pem, cert_field) = read(&entry.cert, &entry.cert_pem, "cert")?;
    let (key_pem, key_field) = read(&entry.key, &entry.key_pem, "key")?;
    let origin = |file: &Option<String>, pem: &Option<String>, field: &str| match (file, pem) {
        (Some(f), None) => base.join(f).display().to_string(),
        _ => format!("{field}_pem"),
    };
    let what = (
        origin(&entry.cert, &entry.cert_pem, "cert"),
        origin(&entry.key, &entry.key_pem, "key"),
    );
    weir_control::certs::certified_key(&cert_pem, &key_pem, (&what.0, &what.1)).map_err(|e| {
        let field = if e.field == "cert" {
            cert_field
        } else {
            key_field
        };
        (field, e.message)
    })
}
