//! Loading the TLS server certificate and key.
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the TLS certificate or key could not be used. Each variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    #[error("TLS file {path}: cannot read it: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS certificate file {path}: not valid PEM: {source}")]
    CertPem {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS certificate file {path}: no CERTIFICATE block in the PEM file")]
    NoCertificate { path: PathBuf },
    #[error("TLS key file {path}: not valid PEM: {source}")]
    KeyPem {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "TLS key file {path}: no private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block) in the PEM file"
    )]
    NoKey { path: PathBuf },
    #[error("TLS key file {key} does not match the certificate in {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("TLS certificate {cert} with key {key}: {source}")]
    Rejected {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// Reads a PEM certificate chain (leaf first) and a PEM private key and builds a rustls server
/// configuration (ring provider, TLS 1.2 and 1.3, no client authentication).
pub fn load_tls_config(
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsConfigError::Read {
            path: p.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(&cert_pem[..]))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsConfigError::CertPem {
            path: cert.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsConfigError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let private = rustls_pemfile::private_key(&mut BufReader::new(&key_pem[..]))
        .map_err(|source| TlsConfigError::KeyPem {
            path: key.to_owned(),
            source,
        })?
        .ok_or_else(|| TlsConfigError::NoKey {
            path: key.to_owned(),
        })?;
    let rejected = |source: rustls::Error| match source {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            TlsConfigError::KeyMismatch {
                cert: cert.to_owned(),
                key: key.to_owned(),
            }
        }
        source => TlsConfigError::Rejected {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        },
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(rejected)?
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(rejected)?;
    Ok(Arc::new(config))
}
