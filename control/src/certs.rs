//! PEM certificates and keys: parsed and checked once, the same way for files on disk
//! (`tls[].cert`/`key`), PEM text in a config (`cert_pem`/`key_pem`) and certificates that
//! arrive inline in xDS Listeners.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// Which half of a pair is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemError {
    /// `cert` or `key`.
    pub field: &'static str,
    pub message: String,
}

fn pem_error(field: &'static str, message: String) -> PemError {
    PemError { field, message }
}

/// A certificate chain and its private key as one signing identity; `origin` names where
/// each came from in messages (file paths, a Listener's filter chain).
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    origin: (&str, &str),
) -> Result<CertifiedKey, PemError> {
    let (what, key_what) = origin;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error("cert", format!("{what}: bad PEM: {e}")))?;
    if chain.is_empty() {
        return Err(pem_error(
            "cert",
            format!("{what}: no certificate (-----BEGIN CERTIFICATE-----) in the PEM"),
        ));
    }
    let der = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => pem_error(
            "key",
            format!("{key_what}: no private key (PKCS#8, PKCS#1 or SEC1) in the PEM"),
        ),
        e => pem_error("key", format!("{key_what}: bad PEM: {e}")),
    })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| pem_error("key", format!("{key_what}: unsupported key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        pem_error(
            "key",
            format!("{key_what} does not match the certificate {what}: {e}"),
        )
    })?;
    Ok(certified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_is_not_a_pair() {
        let e = certified_key(b"nothing", b"nothing", ("x", "y"))
            .err()
            .unwrap();
        assert_eq!(e.field, "cert");
        assert!(e.message.contains("no certificate"), "{e:?}");
        let cert = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let e = certified_key(cert, b"", ("x", "y")).err().unwrap();
        assert_eq!(e.field, "key");
    }
}
