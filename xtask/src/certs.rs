//! Throwaway TLS material for the lab and the tests: a CA and one edge certificate signed by it.
//!
//! Used by `cargo xtask certs` and included by path (`#[path]`) by the SIP end-to-end tests
//! (`tests/tests/sip_support/`), so it depends on `rcgen` and `std` only. Nothing here is meant
//! for production: the keys are generated fresh every time and never protected.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// The names the lab's edge certificate covers: its host names and every address a client
/// reaches it on (two-arm toward A, one-arm, loopback).
pub const EDGE_SANS: [&str; 7] = [
    "edge.lab",
    "open.lab",
    "auth.lab",
    "closed.lab",
    "198.18.1.1",
    "198.18.0.1",
    "127.0.0.1",
];

/// Where `cargo xtask certs` writes by default.
pub const DEFAULT_CERT_DIR: &str = "/run/sipveil-lab/certs";

/// A CA and an edge certificate it signed, in PEM (and the CA in DER for rustls clients).
pub struct Bundle {
    /// The CA certificate (what clients trust).
    pub ca_pem: String,
    /// The CA certificate, DER.
    pub ca_der: Vec<u8>,
    /// The edge certificate followed by the CA certificate (a chain, as `tls_cert` takes it).
    pub edge_chain_pem: String,
    /// The edge's private key (PKCS#8).
    pub edge_key_pem: String,
}

/// Generates a fresh CA and an edge certificate for `sans` (DNS names or IP addresses).
pub fn generate(sans: &[&str]) -> Result<Bundle, rcgen::Error> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sipveil throwaway test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key)?;

    let edge_key = KeyPair::generate()?;
    let names: Vec<String> = sans.iter().map(|name| (*name).to_owned()).collect();
    let mut edge_params = CertificateParams::new(names)?;
    edge_params
        .distinguished_name
        .push(DnType::CommonName, sans.first().copied().unwrap_or("edge"));
    edge_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    edge_params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let edge = edge_params.signed_by(&edge_key, &ca, &ca_key)?;

    Ok(Bundle {
        ca_pem: ca.pem(),
        ca_der: ca.der().to_vec(),
        edge_chain_pem: format!("{}{}", edge.pem(), ca.pem()),
        edge_key_pem: edge_key.serialize_pem(),
    })
}

/// The files [`write`] makes in a directory.
pub struct Files {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes `bundle` into `dir` as `ca.pem`, `edge.pem` (chain) and `edge.key` (mode 0600).
pub fn write(bundle: &Bundle, dir: &Path) -> std::io::Result<Files> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let files = Files {
        ca: dir.join("ca.pem"),
        cert: dir.join("edge.pem"),
        key: dir.join("edge.key"),
    };
    std::fs::write(&files.ca, &bundle.ca_pem)?;
    std::fs::write(&files.cert, &bundle.edge_chain_pem)?;
    std::fs::write(&files.key, &bundle.edge_key_pem)?;
    std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o600))?;
    Ok(files)
}
