//! Certificates of the https listener, chosen by SNI.
//!
//! The config's `tls` entries are loaded (PEM chain + key, checked to match) whenever a config
//! is applied, and swapped in atomically with it: open connections keep the certificate they
//! were made with, the next handshake gets the new one. A name is matched exactly, then as
//! a wildcard (`*.example.com` covers `a.example.com`, not `a.b.example.com`). A handshake
//! with an unknown SNI, or none, fails cleanly with a TLS alert: Weir has
//! no default certificate, so it never presents a certificate for a host it does not serve.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use weir_config::{Config, ConfigError, ConfigErrors};

/// Host -> certificate, for one config generation.
#[derive(Default)]
pub struct Certs {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl Certs {
    fn find(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(c) = self.exact.get(&name) {
            return Some(c.clone());
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent).cloned()
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
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
        let found = hello
            .server_name()
            .and_then(|n| self.current.load().find(n));
        if found.is_none() {
            log::debug!(
                "TLS handshake for unknown server name {:?}",
                hello.server_name()
            );
        }
        found
    }
}

/// Loads every `tls` entry; file paths are relative to `base`. Errors name the entry.
pub fn load(cfg: &Config, base: &Path) -> Result<Certs, ConfigErrors> {
    let mut certs = Certs::default();
    let mut errors = Vec::new();
    for (i, entry) in cfg.tls.iter().enumerate() {
        match load_pair(&base.join(&entry.cert), &base.join(&entry.key)) {
            Ok(key) => {
                let key = Arc::new(key);
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
        Ok(certs)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, (&'static str, String)> {
    let read = |p: &Path, field| {
        std::fs::read(p).map_err(|e| (field, format!("cannot read {}: {e}", p.display())))
    };
    let cert_pem = read(cert, "cert")?;
    let key_pem = read(key, "key")?;
    let chain: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| ("cert", format!("{}: bad PEM: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err((
            "cert",
            format!("{}: no certificate in the PEM file", cert.display()),
        ));
    }
    let der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| ("key", format!("{}: bad PEM: {e}", key.display())))?
        .ok_or((
            "key",
            format!("{}: no private key in the PEM file", key.display()),
        ))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| ("key", format!("{}: unsupported key: {e}", key.display())))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        (
            "key",
            format!(
                "{} does not match the certificate {}: {e}",
                key.display(),
                cert.display()
            ),
        )
    })?;
    Ok(certified)
}
