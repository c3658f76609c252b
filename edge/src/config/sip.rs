//! The SIP side of the configuration: `[sip]`, `[registrar]`, `[[domain]]`, `[metrics]`.
//!
//! The raw sections are deserialized with spans; [`build`] validates them and turns them into
//! [`SipSettings`], [`RegistrarSettings`] and the metrics address. Users files are read here, at
//! load time, relative to the config file.
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sipveil_registrar::{
    DigestAlgorithm, DomainConfig, ExpiresLimits, Policy, RegistrarConfig, UserEntry,
};
use toml::Spanned;

use super::{ConfigError, Ctx};

/// Upper bound of `[sip] workers`.
pub const MAX_WORKERS: u64 = 256;

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct SipSection {
    workers: Option<Spanned<i64>>,
    #[serde(default)]
    udp: Vec<Spanned<String>>,
    #[serde(default)]
    tcp: Vec<Spanned<String>>,
    #[serde(default)]
    tls: Vec<Spanned<String>>,
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
    #[serde(default)]
    edge_names: Vec<Spanned<String>>,
    server: Option<Spanned<String>>,
    max_connections: Option<Spanned<i64>>,
    max_connections_per_ip: Option<Spanned<i64>>,
    idle_timeout_secs: Option<Spanned<i64>>,
    max_message_bytes: Option<Spanned<i64>>,
    write_queue_bytes: Option<Spanned<i64>>,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RegistrarSection {
    database: Option<Spanned<String>>,
    min_expires: Option<Spanned<i64>>,
    max_expires: Option<Spanned<i64>>,
    default_expires: Option<Spanned<i64>>,
    max_contacts: Option<Spanned<i64>>,
    nonce_ttl_secs: Option<Spanned<i64>>,
    max_bindings: Option<Spanned<i64>>,
    commit_interval_ms: Option<Spanned<i64>>,
    commit_group: Option<Spanned<i64>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DomainSection {
    name: Spanned<String>,
    policy: Spanned<String>,
    anonymous_callers: Option<Spanned<bool>>,
    refuse_anonymous: Option<Spanned<bool>>,
    realm: Option<Spanned<String>>,
    users: Option<Spanned<String>>,
    min_expires: Option<Spanned<i64>>,
    max_expires: Option<Spanned<i64>>,
    default_expires: Option<Spanned<i64>>,
    max_contacts: Option<Spanned<i64>>,
    digest: Option<Spanned<Vec<String>>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MetricsSection {
    listen: Spanned<String>,
}

/// Where a key was written (for messages about files it names, checked after loading).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyOrigin {
    /// The config file.
    pub config: PathBuf,
    /// Dotted key, e.g. `sip.tls_cert`.
    pub key: String,
    /// 1-based line (0 = not written in the file).
    pub line: usize,
}

impl std::fmt::Display for KeyOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "key `{}` of {}", self.key, self.config.display())
        } else {
            write!(
                f,
                "key `{}` in {} at line {}",
                self.key,
                self.config.display(),
                self.line
            )
        }
    }
}

/// `[sip]`: the transport pool's settings. With no listener at all the SIP side is off
/// ([`SipSettings::enabled`]); that is the case when `[sip]` is absent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SipSettings {
    /// io_uring worker threads (default: available CPUs).
    pub workers: usize,
    /// UDP listen addresses.
    pub udp: Vec<SocketAddr>,
    /// TCP listen addresses.
    pub tcp: Vec<SocketAddr>,
    /// TLS listen addresses.
    pub tls: Vec<SocketAddr>,
    /// PEM certificate chain, resolved relative to the config file (required when `tls` is
    /// non-empty). Checked by [`SipSettings::load_tls`] / `Config::check_files`, not at load.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key, as `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Where `tls_cert` / `tls_key` were written.
    pub tls_cert_origin: KeyOrigin,
    pub tls_key_origin: KeyOrigin,
    /// Host names (lower case) that mean the edge itself; its listen IPs count too.
    pub edge_names: Vec<String>,
    /// Server / User-Agent value; None = send none.
    pub server: Option<String>,
    /// TCP + TLS connections, total.
    pub max_connections: usize,
    /// TCP + TLS connections per source IP.
    pub max_connections_per_ip: usize,
    /// A TCP/TLS connection without traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Largest SIP message accepted (datagram or framed stream message).
    pub max_message_bytes: usize,
    /// Per-connection write queue; beyond it the connection is closed (slow reader).
    pub write_queue_bytes: usize,
}

/// Default `[sip] workers`: the available CPUs (1 when unknown).
pub fn default_sip_workers() -> usize {
    std::thread::available_parallelism()
        .map(std::num::NonZeroUsize::get)
        .unwrap_or(1)
        .min(MAX_WORKERS as usize)
}

impl Default for SipSettings {
    fn default() -> Self {
        SipSettings {
            workers: default_sip_workers(),
            udp: Vec::new(),
            tcp: Vec::new(),
            tls: Vec::new(),
            tls_cert: None,
            tls_key: None,
            tls_cert_origin: KeyOrigin::default(),
            tls_key_origin: KeyOrigin::default(),
            edge_names: Vec::new(),
            server: Some("sipveil".to_owned()),
            max_connections: 10_000,
            max_connections_per_ip: 64,
            idle_timeout: Duration::from_secs(300),
            max_message_bytes: 65_535,
            write_queue_bytes: 262_144,
        }
    }
}

/// The TLS material of `[sip] tls_cert` / `tls_key`.
#[derive(Debug)]
pub struct TlsMaterial {
    pub certs: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub key: rustls::pki_types::PrivateKeyDer<'static>,
}

impl SipSettings {
    /// Whether any listener is configured (otherwise the daemon runs no SIP side).
    pub fn enabled(&self) -> bool {
        !(self.udp.is_empty() && self.tcp.is_empty() && self.tls.is_empty())
    }

    /// Reads and parses the TLS certificate chain and key. `Ok(None)` when no TLS listener is
    /// configured. Errors name the file and the config key that named it.
    pub fn load_tls(&self) -> Result<Option<TlsMaterial>, ConfigError> {
        if self.tls.is_empty() {
            return Ok(None);
        }
        let (Some(cert_path), Some(key_path)) = (&self.tls_cert, &self.tls_key) else {
            // Config::parse refuses this; reached only with hand-built settings.
            return Err(ConfigError::InvalidNoSpan {
                path: self.tls_cert_origin.config.clone(),
                message: "key `sip.tls_cert`/`sip.tls_key`: required when `sip.tls` is non-empty"
                    .to_owned(),
            });
        };
        let file_error = |file: &Path, origin: &KeyOrigin, message: String| ConfigError::File {
            file: file.to_owned(),
            origin: origin.to_string(),
            message,
        };
        let cert_text = std::fs::read(cert_path).map_err(|e| {
            file_error(
                cert_path,
                &self.tls_cert_origin,
                format!("cannot read: {e}"),
            )
        })?;
        let mut certs = Vec::new();
        for item in rustls_pemfile::certs(&mut cert_text.as_slice()) {
            let cert = item.map_err(|e| {
                file_error(
                    cert_path,
                    &self.tls_cert_origin,
                    format!("not a valid PEM certificate file: {e}"),
                )
            })?;
            certs.push(cert);
        }
        if certs.is_empty() {
            return Err(file_error(
                cert_path,
                &self.tls_cert_origin,
                "no PEM certificate (-----BEGIN CERTIFICATE-----) in the file".to_owned(),
            ));
        }
        let key_text = std::fs::read(key_path)
            .map_err(|e| file_error(key_path, &self.tls_key_origin, format!("cannot read: {e}")))?;
        let key = rustls_pemfile::private_key(&mut key_text.as_slice())
            .map_err(|e| {
                file_error(
                    key_path,
                    &self.tls_key_origin,
                    format!("not a valid PEM key file: {e}"),
                )
            })?
            .ok_or_else(|| {
                file_error(
                    key_path,
                    &self.tls_key_origin,
                    "no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file".to_owned(),
                )
            })?;
        Ok(Some(TlsMaterial { certs, key }))
    }
}

/// `[registrar]` and `[[domain]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrarSettings {
    /// The redb file of the bindings (relative paths resolved against the config file).
    pub database: PathBuf,
    /// The registrar crate's configuration (domains with their users).
    pub config: RegistrarConfig,
    /// The users file of each authenticated domain: (domain name, path).
    pub users_files: Vec<(String, PathBuf)>,
    /// Group commit: a commit starts at least this long after the previous one began (0: as
    /// soon as the previous one ends) ...
    pub commit_interval: std::time::Duration,
    /// ... unless this many binding changes already wait.
    pub commit_group: usize,
}

/// Default `[registrar] database` of an instance.
pub fn default_database(instance: &str) -> PathBuf {
    PathBuf::from(format!("/var/lib/sipveil/{instance}/registrar.redb"))
}

/// Registrar defaults (`[registrar]` keys not written).
pub const DEFAULT_MIN_EXPIRES: u32 = 60;
pub const DEFAULT_MAX_EXPIRES: u32 = 3600;
pub const DEFAULT_DEFAULT_EXPIRES: u32 = 600;
pub const DEFAULT_MAX_CONTACTS: usize = 8;
pub const DEFAULT_NONCE_TTL_SECS: u64 = 300;
pub const DEFAULT_MAX_BINDINGS: usize = 100_000;
/// `[registrar] commit_interval_ms` and `commit_group`: why these values is in the example
/// config and BENCHMARKS.md "Registrar" (lab VM, 2026-11-22: against 0 ms, ~10-15 % less CPU
/// per REGISTER in the open domain and ~40 % less in the authenticated one at 2 000/s, and no
/// longer a p99 at 7 000/s: the extra group writes cost more CPU than the hold costs time).
pub const DEFAULT_COMMIT_INTERVAL_MS: u64 = 5;
pub const DEFAULT_COMMIT_GROUP: usize = 20;

/// Resolves a path written in the config file: relative paths are relative to the file's
/// directory.
pub(super) fn resolve(config_path: &Path, written: &str) -> PathBuf {
    let p = Path::new(written);
    if p.is_absolute() {
        return p.to_owned();
    }
    match config_path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
        _ => p.to_owned(),
    }
}

/// An integer key with a default and an inclusive range.
pub(super) fn int(
    ctx: &Ctx<'_>,
    value: &Option<Spanned<i64>>,
    key: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let Some(v) = value else {
        return Ok(default);
    };
    let n = *v.get_ref();
    match u64::try_from(n) {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ctx.at(
            v.span(),
            key,
            format!("must be an integer in {min}..={max}, got {n}"),
        )),
    }
}

fn listen_list(
    ctx: &Ctx<'_>,
    list: &[Spanned<String>],
    key: &str,
) -> Result<Vec<SocketAddr>, ConfigError> {
    let mut out: Vec<SocketAddr> = Vec::with_capacity(list.len());
    for item in list {
        let text = item.get_ref();
        let addr: SocketAddr = text.trim().parse().map_err(|_| {
            ctx.at(
                item.span(),
                key,
                format!(
                    "{text:?} is not a listen address; write IP:PORT, e.g. \"198.18.1.1:5060\" \
                     or \"[2001:db8::1]:5060\""
                ),
            )
        })?;
        if addr.port() == 0 {
            return Err(ctx.at(
                item.span(),
                key,
                format!("{text:?}: the port must be 1-65535"),
            ));
        }
        if out.contains(&addr) {
            return Err(ctx.at(item.span(), key, format!("{addr} is listed twice")));
        }
        out.push(addr);
    }
    Ok(out)
}

/// A DNS host name (labels of letters, digits and '-', 1-63 each, 253 in all) or an IP literal.
fn valid_host(name: &str) -> bool {
    if name.parse::<IpAddr>().is_ok() {
        return true;
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Header-safe text: printable ASCII and spaces, no quotes or backslashes (used in `server`
/// and `realm`, which go into header values / quoted strings).
fn header_text(s: &str) -> bool {
    s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

pub(super) struct SipParts {
    pub sip: SipSettings,
    pub registrar: RegistrarSettings,
    pub metrics_listen: Option<SocketAddr>,
}

fn origin(ctx: &Ctx<'_>, span: std::ops::Range<usize>, key: &str) -> KeyOrigin {
    let line = if span.is_empty() && span.start == 0 {
        0
    } else {
        super::line_column(ctx.text, span.start).0
    };
    KeyOrigin {
        config: ctx.path.to_owned(),
        key: key.to_owned(),
        line,
    }
}

/// The media relay's ports and addresses: SIP listeners must not take relay ports.
pub(super) struct MediaPorts {
    pub min: u16,
    pub max: u16,
    pub addrs: [IpAddr; 2],
}

fn build_sip(
    ctx: &Ctx<'_>,
    s: &SipSection,
    media: &MediaPorts,
) -> Result<SipSettings, ConfigError> {
    let d = SipSettings::default();
    let workers = int(
        ctx,
        &s.workers,
        "sip.workers",
        d.workers as u64,
        1,
        MAX_WORKERS,
    )?;
    let udp = listen_list(ctx, &s.udp, "sip.udp")?;
    let tcp = listen_list(ctx, &s.tcp, "sip.tcp")?;
    let tls = listen_list(ctx, &s.tls, "sip.tls")?;
    for item in &s.udp {
        if let Ok(addr) = item.get_ref().trim().parse::<SocketAddr>()
            && (media.min..=media.max).contains(&addr.port())
            && (addr.ip().is_unspecified() || media.addrs.contains(&addr.ip()))
        {
            return Err(ctx.at(
                item.span(),
                "sip.udp",
                format!(
                    "{addr} lies in the media relay's port range {}-{} (media.port_min/port_max); \
                     use a port outside it, e.g. 5060",
                    media.min, media.max
                ),
            ));
        }
    }
    // TCP and TLS share the stream socket space.
    for item in &s.tls {
        if let Ok(addr) = item.get_ref().trim().parse::<SocketAddr>()
            && tcp.contains(&addr)
        {
            return Err(ctx.at(
                item.span(),
                "sip.tls",
                format!("{addr} is also a TCP listener (sip.tcp); use another port, e.g. 5061"),
            ));
        }
    }
    let path_key =
        |v: &Option<Spanned<String>>, key: &str| -> Result<Option<PathBuf>, ConfigError> {
            match v {
                None => Ok(None),
                Some(p) if p.get_ref().trim().is_empty() => {
                    Err(ctx.at(p.span(), key, "must be a file path, got \"\"".to_owned()))
                }
                Some(p) => Ok(Some(resolve(ctx.path, p.get_ref()))),
            }
        };
    let tls_cert = path_key(&s.tls_cert, "sip.tls_cert")?;
    let tls_key = path_key(&s.tls_key, "sip.tls_key")?;
    if let Some(first) = s.tls.first() {
        if tls_cert.is_none() {
            return Err(ctx.at(
                first.span(),
                "sip.tls_cert",
                "required when `sip.tls` lists listeners: the PEM certificate chain file"
                    .to_owned(),
            ));
        }
        if tls_key.is_none() {
            return Err(ctx.at(
                first.span(),
                "sip.tls_key",
                "required when `sip.tls` lists listeners: the PEM private key file".to_owned(),
            ));
        }
    }
    let mut edge_names = Vec::with_capacity(s.edge_names.len());
    for n in &s.edge_names {
        let name = n.get_ref().trim().to_ascii_lowercase();
        if !valid_host(&name) {
            return Err(ctx.at(
                n.span(),
                "sip.edge_names",
                format!(
                    "{:?} is not a host name (letters, digits, '-' and '.')",
                    n.get_ref()
                ),
            ));
        }
        if !edge_names.contains(&name) {
            edge_names.push(name);
        }
    }
    let server = match &s.server {
        None => d.server.clone(),
        Some(v) if v.get_ref().is_empty() => None,
        Some(v) => {
            let text = v.get_ref();
            if !header_text(text) || text.len() > 128 || text.trim() != text {
                return Err(ctx.at(
                    v.span(),
                    "sip.server",
                    "must be at most 128 printable ASCII characters without quotes, \
                     backslashes or surrounding spaces (\"\" = send no Server header)"
                        .to_owned(),
                ));
            }
            Some(text.clone())
        }
    };
    let max_connections = int(
        ctx,
        &s.max_connections,
        "sip.max_connections",
        d.max_connections as u64,
        1,
        1_000_000,
    )?;
    let max_connections_per_ip = int(
        ctx,
        &s.max_connections_per_ip,
        "sip.max_connections_per_ip",
        (d.max_connections_per_ip as u64).min(max_connections),
        1,
        max_connections,
    )?;
    let idle = int(
        ctx,
        &s.idle_timeout_secs,
        "sip.idle_timeout_secs",
        d.idle_timeout.as_secs(),
        1,
        86_400,
    )?;
    let max_message_bytes = int(
        ctx,
        &s.max_message_bytes,
        "sip.max_message_bytes",
        d.max_message_bytes as u64,
        1024,
        1 << 20,
    )?;
    let write_queue_bytes = int(
        ctx,
        &s.write_queue_bytes,
        "sip.write_queue_bytes",
        (d.write_queue_bytes as u64).max(max_message_bytes),
        max_message_bytes,
        1 << 30,
    )?;
    Ok(SipSettings {
        workers: usize::try_from(workers).unwrap_or(1),
        udp,
        tcp,
        tls,
        tls_cert,
        tls_key,
        tls_cert_origin: origin(
            ctx,
            s.tls_cert.as_ref().map_or(0..0, Spanned::span),
            "sip.tls_cert",
        ),
        tls_key_origin: origin(
            ctx,
            s.tls_key.as_ref().map_or(0..0, Spanned::span),
            "sip.tls_key",
        ),
        edge_names,
        server,
        max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
        max_connections_per_ip: usize::try_from(max_connections_per_ip).unwrap_or(usize::MAX),
        idle_timeout: Duration::from_secs(idle),
        max_message_bytes: usize::try_from(max_message_bytes).unwrap_or(usize::MAX),
        write_queue_bytes: usize::try_from(write_queue_bytes).unwrap_or(usize::MAX),
    })
}

/// Largest Expires value accepted (RFC 3261 allows 2^32-1; keep it in i32 for clients).
const MAX_EXPIRES: u64 = (1 << 31) - 1;

/// Expires limits with the keys that set them (for messages).
struct Limits {
    min: (u64, std::ops::Range<usize>, String),
    max: (u64, std::ops::Range<usize>, String),
    default: (u64, std::ops::Range<usize>, String),
}

impl Limits {
    fn check(&self, ctx: &Ctx<'_>) -> Result<ExpiresLimits, ConfigError> {
        let (min, _, min_key) = &self.min;
        let (max, max_span, max_key) = &self.max;
        let (default, default_span, default_key) = &self.default;
        if max < min {
            return Err(ctx.at(
                max_span.clone(),
                max_key,
                format!("must be at least `{min_key}` ({min}), got {max}"),
            ));
        }
        if default < min || default > max {
            return Err(ctx.at(
                default_span.clone(),
                default_key,
                format!(
                    "must lie between `{min_key}` ({min}) and `{max_key}` ({max}), got {default}"
                ),
            ));
        }
        Ok(ExpiresLimits {
            min: u32::try_from(*min).unwrap_or(u32::MAX),
            max: u32::try_from(*max).unwrap_or(u32::MAX),
            default: u32::try_from(*default).unwrap_or(u32::MAX),
        })
    }
}

fn span_of<T>(v: &Option<Spanned<T>>) -> std::ops::Range<usize> {
    v.as_ref().map_or(0..0, Spanned::span)
}

/// Validates `[sip]`, `[registrar]`, `[[domain]]` and `[metrics]`; reads the users files.
pub(super) fn build(
    ctx: &Ctx<'_>,
    instance: &str,
    media: &MediaPorts,
    sip: Option<&SipSection>,
    registrar: Option<&RegistrarSection>,
    domains: &[DomainSection],
    metrics: Option<&MetricsSection>,
) -> Result<SipParts, ConfigError> {
    let sip = match sip {
        Some(s) => build_sip(ctx, s, media)?,
        None => SipSettings::default(),
    };

    let empty = RegistrarSection::default();
    let r = registrar.unwrap_or(&empty);
    let database = match &r.database {
        None => default_database(instance),
        Some(p) if p.get_ref().trim().is_empty() => {
            return Err(ctx.at(
                p.span(),
                "registrar.database",
                "must be a file path, got \"\"".to_owned(),
            ));
        }
        Some(p) => resolve(ctx.path, p.get_ref()),
    };
    let e = |k: &str| format!("registrar.{k}");
    let g_min = int(
        ctx,
        &r.min_expires,
        &e("min_expires"),
        u64::from(DEFAULT_MIN_EXPIRES),
        1,
        MAX_EXPIRES,
    )?;
    let g_max = int(
        ctx,
        &r.max_expires,
        &e("max_expires"),
        u64::from(DEFAULT_MAX_EXPIRES),
        1,
        MAX_EXPIRES,
    )?;
    let g_default = int(
        ctx,
        &r.default_expires,
        &e("default_expires"),
        u64::from(DEFAULT_DEFAULT_EXPIRES),
        1,
        MAX_EXPIRES,
    )?;
    let global = Limits {
        min: (g_min, span_of(&r.min_expires), e("min_expires")),
        max: (g_max, span_of(&r.max_expires), e("max_expires")),
        default: (g_default, span_of(&r.default_expires), e("default_expires")),
    };
    global.check(ctx)?;
    let g_contacts = int(
        ctx,
        &r.max_contacts,
        &e("max_contacts"),
        DEFAULT_MAX_CONTACTS as u64,
        1,
        1000,
    )?;
    let nonce_ttl_secs = int(
        ctx,
        &r.nonce_ttl_secs,
        &e("nonce_ttl_secs"),
        DEFAULT_NONCE_TTL_SECS,
        1,
        86_400,
    )?;
    let max_bindings = int(
        ctx,
        &r.max_bindings,
        &e("max_bindings"),
        DEFAULT_MAX_BINDINGS as u64,
        1,
        100_000_000,
    )?;
    let commit_interval_ms = int(
        ctx,
        &r.commit_interval_ms,
        &e("commit_interval_ms"),
        DEFAULT_COMMIT_INTERVAL_MS,
        0,
        100,
    )?;
    let commit_group = int(
        ctx,
        &r.commit_group,
        &e("commit_group"),
        DEFAULT_COMMIT_GROUP as u64,
        1,
        4096,
    )?;

    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(domains.len());
    let mut users_files = Vec::new();
    for d in domains {
        let (dom, users_file) = build_domain(ctx, d, &global, g_contacts, &mut seen)?;
        if let Some(f) = users_file {
            users_files.push((dom.name.clone(), f));
        }
        out.push(dom);
    }

    let metrics_listen = match metrics {
        None => None,
        Some(m) => {
            let text = m.listen.get_ref();
            let addr: SocketAddr = text.trim().parse().map_err(|_| {
                ctx.at(
                    m.listen.span(),
                    "metrics.listen",
                    format!(
                        "{text:?} is not a listen address; write IP:PORT, e.g. \"127.0.0.1:9090\""
                    ),
                )
            })?;
            if addr.port() == 0 {
                return Err(ctx.at(
                    m.listen.span(),
                    "metrics.listen",
                    "the port must be 1-65535".to_owned(),
                ));
            }
            if sip.tcp.contains(&addr) || sip.tls.contains(&addr) {
                return Err(ctx.at(
                    m.listen.span(),
                    "metrics.listen",
                    format!("{addr} is also a SIP TCP/TLS listener"),
                ));
            }
            Some(addr)
        }
    };

    Ok(SipParts {
        sip,
        registrar: RegistrarSettings {
            database,
            config: RegistrarConfig {
                domains: out,
                nonce_ttl_secs,
                max_bindings: usize::try_from(max_bindings).unwrap_or(usize::MAX),
            },
            users_files,
            commit_interval: std::time::Duration::from_millis(commit_interval_ms),
            commit_group: usize::try_from(commit_group).unwrap_or(usize::MAX),
        },
        metrics_listen,
    })
}

fn build_domain(
    ctx: &Ctx<'_>,
    d: &DomainSection,
    global: &Limits,
    g_contacts: u64,
    seen: &mut HashMap<String, usize>,
) -> Result<(DomainConfig, Option<PathBuf>), ConfigError> {
    let raw_name = d.name.get_ref();
    let name = raw_name.trim().to_ascii_lowercase();
    let name = name.strip_suffix('.').unwrap_or(&name).to_owned();
    if !valid_host(&name) {
        return Err(ctx.at(
            d.name.span(),
            "domain.name",
            format!(
                "{raw_name:?} is not a host name (letters, digits, '-' and '.', e.g. \"open.lab\") \
                 or IP address"
            ),
        ));
    }
    let line = super::line_column(ctx.text, d.name.span().start).0;
    if let Some(first) = seen.insert(name.clone(), line) {
        return Err(ctx.at(
            d.name.span(),
            "domain.name",
            format!(
                "domain {name:?} is already defined at line {first} (names are compared \
                 case-insensitively); each [[domain]] needs its own name"
            ),
        ));
    }
    // Keys of this domain in messages: `domain.KEY`; the message names the domain.
    let k = |key: &str| format!("domain.{key}");
    let named = |why: String| format!("in domain {name:?}: {why}");
    let policy = match d.policy.get_ref().as_str() {
        "open" => Policy::Open,
        "authenticated" => Policy::Authenticated,
        "closed" => Policy::Closed,
        other => {
            return Err(ctx.at(
                d.policy.span(),
                &k("policy"),
                named(format!(
                    "{other:?} is not a policy; valid: \"open\", \"authenticated\", \"closed\""
                )),
            ));
        }
    };
    let realm = match (&d.realm, policy) {
        (Some(r), Policy::Authenticated) => {
            let text = r.get_ref();
            if text.is_empty() || text.len() > 128 || !header_text(text) {
                return Err(ctx.at(
                    r.span(),
                    &k("realm"),
                    named(
                        "must be 1-128 printable ASCII characters without quotes or backslashes"
                            .to_owned(),
                    ),
                ));
            }
            text.clone()
        }
        (Some(r), _) => {
            return Err(ctx.at(
                r.span(),
                &k("realm"),
                named(format!(
                    "only an authenticated domain has a digest realm; this one is {:?} \
                     (remove the key or set policy = \"authenticated\")",
                    policy.as_str()
                )),
            ));
        }
        (None, _) => name.clone(),
    };
    let (users, users_file) = match (&d.users, policy) {
        (Some(u), Policy::Authenticated) => {
            let written = u.get_ref();
            if written.trim().is_empty() {
                return Err(ctx.at(
                    u.span(),
                    &k("users"),
                    named("must be the path of a users file, got \"\"".to_owned()),
                ));
            }
            let file = resolve(ctx.path, written);
            let users = read_users(ctx, u.span(), &k("users"), &file)?;
            (users, Some(file))
        }
        (None, Policy::Authenticated) => {
            return Err(ctx.at(
                d.policy.span(),
                &k("users"),
                named(
                    "an authenticated domain needs `users = \"FILE\"`: its users file \
                 (one `name sha256:<hex> [md5:<hex>]` per line; `sipveil ha1` makes lines)"
                        .to_owned(),
                ),
            ));
        }
        (Some(u), _) => {
            return Err(ctx.at(
                u.span(),
                &k("users"),
                named(format!(
                    "only an authenticated domain has a users file; this one is {:?} \
                     (remove the key or set policy = \"authenticated\")",
                    policy.as_str()
                )),
            ));
        }
        (None, _) => (Vec::new(), None),
    };
    let min = int(
        ctx,
        &d.min_expires,
        &k("min_expires"),
        global.min.0,
        1,
        MAX_EXPIRES,
    )?;
    let max = int(
        ctx,
        &d.max_expires,
        &k("max_expires"),
        global.max.0,
        1,
        MAX_EXPIRES,
    )?;
    let default = int(
        ctx,
        &d.default_expires,
        &k("default_expires"),
        global.default.0,
        1,
        MAX_EXPIRES,
    )?;
    let pick =
        |v: &Option<Spanned<i64>>, g: &(u64, std::ops::Range<usize>, String), key: &str, n| match v
        {
            Some(s) => (n, s.span(), k(key)),
            None => (n, g.1.clone(), g.2.clone()),
        };
    // A limit that is not overridden is reported at the domain's own key if the conflict comes
    // from an override: point at whichever the domain wrote, else at [registrar].
    let limits = Limits {
        min: pick(&d.min_expires, &global.min, "min_expires", min),
        max: pick(&d.max_expires, &global.max, "max_expires", max),
        default: pick(
            &d.default_expires,
            &global.default,
            "default_expires",
            default,
        ),
    };
    let limits = blame_override(limits, d);
    let expires = limits.check(ctx)?;
    let max_contacts = int(
        ctx,
        &d.max_contacts,
        &k("max_contacts"),
        g_contacts,
        1,
        1000,
    )?;
    let digest_algorithms = match (&d.digest, policy) {
        (None, _) => Vec::new(),
        (Some(list), Policy::Authenticated) => {
            let mut algs = Vec::new();
            for written in list.get_ref() {
                let alg = match written.to_ascii_uppercase().as_str() {
                    "SHA-256" => DigestAlgorithm::Sha256,
                    "MD5" => DigestAlgorithm::Md5,
                    _ => {
                        return Err(ctx.at(
                            list.span(),
                            &k("digest"),
                            named(format!(
                                "{written:?} is not a digest algorithm; valid: \"SHA-256\", \"MD5\""
                            )),
                        ));
                    }
                };
                if algs.contains(&alg) {
                    return Err(ctx.at(
                        list.span(),
                        &k("digest"),
                        named(format!("{written:?} is listed twice")),
                    ));
                }
                algs.push(alg);
            }
            if algs.is_empty() {
                return Err(ctx.at(
                    list.span(),
                    &k("digest"),
                    named("lists no algorithm; valid: \"SHA-256\", \"MD5\" (in the order to offer them)".to_owned()),
                ));
            }
            algs
        }
        (Some(list), _) => {
            return Err(ctx.at(
                list.span(),
                &k("digest"),
                named(format!(
                    "only an authenticated domain has digest algorithms; this one is {:?}",
                    policy.as_str()
                )),
            ));
        }
    };
    let domain = DomainConfig {
        digest_algorithms,
        name,
        policy,
        realm,
        users,
        anonymous_callers: d.anonymous_callers.as_ref().is_none_or(|v| *v.get_ref()),
        refuse_anonymous: d.refuse_anonymous.as_ref().is_some_and(|v| *v.get_ref()),
        expires,
        max_contacts: usize::try_from(max_contacts).unwrap_or(usize::MAX),
    };
    Ok((domain, users_file))
}

/// When a domain overrides some expires limit and the result conflicts, the message should point
/// at the domain's key even if the failing check is phrased against an inherited value: move the
/// span of the failing key to the first override the domain wrote.
fn blame_override(mut l: Limits, d: &DomainSection) -> Limits {
    let first_override = [&d.default_expires, &d.max_expires, &d.min_expires]
        .into_iter()
        .flatten()
        .map(Spanned::span)
        .next();
    if let Some(span) = first_override {
        for slot in [&mut l.max, &mut l.default] {
            if !slot.2.starts_with("domain.") {
                slot.1 = span.clone();
            }
        }
    }
    l
}

fn read_users(
    ctx: &Ctx<'_>,
    span: std::ops::Range<usize>,
    key: &str,
    file: &Path,
) -> Result<Vec<UserEntry>, ConfigError> {
    let origin = origin(ctx, span, key);
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError::File {
        file: file.to_owned(),
        origin: origin.to_string(),
        message: format!("cannot read the users file: {e}"),
    })?;
    let users = sipveil_registrar::parse_users(&text).map_err(|e| ConfigError::Users {
        file: file.to_owned(),
        line: e.line,
        message: e.message.clone(),
        origin: origin.to_string(),
    })?;
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, u) in users.iter().enumerate() {
        if names.insert(u.name.as_str(), i).is_some() {
            let line = user_line(&text, &u.name, 2).unwrap_or(0);
            return Err(ConfigError::Users {
                file: file.to_owned(),
                line,
                message: format!("user {:?} is listed twice", u.name),
                origin: origin.to_string(),
            });
        }
    }
    Ok(users)
}

/// The 1-based line of the `nth` (1-based) entry line for `name` in a users file.
fn user_line(text: &str, name: &str, nth: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            l.split_whitespace()
                .next()
                .is_some_and(|w| w.eq_ignore_ascii_case(name))
        })
        .nth(nth.saturating_sub(1))
        .map(|(i, _)| i + 1)
}
