//! The daemon's TOML configuration: `[dataplane]`, `[media]`, `[control]`, and the SIP side:
//! `[sip]`, `[registrar]`, `[[domain]]`, `[metrics]` (see `edge/sipveil.example.toml`).
//!
//! Errors name the file, the line and column, and the key, and say what would be valid, so an
//! operator can fix the file without reading the source. Unknown sections and unknown keys are
//! errors: the daemon refuses to start rather than guess. Users files of authenticated domains are
//! read at load time (their errors name the users file and line, and the config key that named
//! it). TLS certificate and key files are checked by [`Config::check_files`] /
//! [`SipSettings::load_tls`] (the lab generates them after its config exists).
mod shield;
mod sip;

pub use shield::ShieldSettings;
pub use sip::{
    DEFAULT_DEFAULT_EXPIRES, DEFAULT_MAX_BINDINGS, DEFAULT_MAX_CONTACTS, DEFAULT_MAX_EXPIRES,
    DEFAULT_MIN_EXPIRES, DEFAULT_NONCE_TTL_SECS, KeyOrigin, MAX_WORKERS, RegistrarSettings,
    SipSettings, TlsMaterial, default_database, default_sip_workers,
};

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// How the entry program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum XdpSetting {
    /// Driver mode; generic (SKB) mode with a warning when the driver has no XDP.
    #[default]
    Auto,
    /// Driver mode only.
    Driver,
    /// Generic (SKB) mode only.
    Generic,
    /// No XDP: the userspace relay forwards everything.
    Off,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneSection {
    #[serde(default)]
    pub interfaces: Vec<String>,
    #[serde(default)]
    pub xdp: XdpSetting,
    #[serde(default = "default_instance")]
    pub instance: Spanned<String>,
}

impl Default for DataplaneSection {
    fn default() -> Self {
        DataplaneSection {
            interfaces: Vec::new(),
            xdp: XdpSetting::Auto,
            instance: Spanned::new(0..0, default_instance_name()),
        }
    }
}

fn default_instance_name() -> String {
    "default".to_owned()
}

fn default_instance() -> Spanned<String> {
    Spanned::new(0..0, default_instance_name())
}

/// Leg addresses: `{ a = "...", b = "..." }` or a list (`[a, b]` or `[one]` for one-arm).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum AddressesSection {
    Legs { a: IpAddr, b: IpAddr },
    List(Vec<IpAddr>),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaSection {
    pub port_min: Spanned<u16>,
    pub port_max: Spanned<u16>,
    #[serde(default = "default_idle")]
    pub idle_timeout_secs: Spanned<u64>,
    pub addresses: Spanned<AddressesSection>,
    #[serde(default = "default_workers")]
    pub workers: Spanned<u16>,
}

fn default_idle() -> Spanned<u64> {
    Spanned::new(0..0, 60)
}

fn default_workers() -> Spanned<u16> {
    Spanned::new(0..0, 1)
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    pub socket: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    dataplane: DataplaneSection,
    media: MediaSection,
    #[serde(default)]
    control: ControlSection,
    sip: Option<sip::SipSection>,
    registrar: Option<sip::RegistrarSection>,
    #[serde(default)]
    domain: Vec<sip::DomainSection>,
    metrics: Option<sip::MetricsSection>,
    shield: Option<shield::ShieldSection>,
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub interfaces: Vec<String>,
    pub xdp: XdpSetting,
    pub instance: String,
    pub media: MediaConfig,
    pub control_socket: PathBuf,
    /// `[sip]`: listeners and transport limits; no listener (`[sip]` absent) = SIP side off.
    pub sip: SipSettings,
    /// `[registrar]` + `[[domain]]` (with the users of authenticated domains).
    pub registrar: RegistrarSettings,
    /// `[metrics] listen`: Prometheus text at `GET /metrics`; None = off.
    pub metrics_listen: Option<SocketAddr>,
    /// `[shield]`: the flood shield (absent = off).
    pub shield: ShieldSettings,
}

/// Media relay settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaConfig {
    /// First relay port (even).
    pub port_min: u16,
    /// Last relay port (inclusive).
    pub port_max: u16,
    pub idle_timeout_secs: u64,
    /// The edge address toward A.
    pub addr_a: IpAddr,
    /// The edge address toward B (equal to `addr_a` in the one-arm shape).
    pub addr_b: IpAddr,
    /// Userspace relay threads.
    pub workers: u16,
}

/// A configuration error with its place in the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config error in {path} at line {line}, column {column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("config error in {path}: {message}")]
    InvalidNoSpan { path: PathBuf, message: String },
    /// A file the config names (TLS certificate/key, users file) is missing or unreadable.
    #[error("{file}: {message} (named by {origin})")]
    File {
        file: PathBuf,
        /// The config file, key and line that named the file.
        origin: String,
        message: String,
    },
    /// A users file has a bad line.
    #[error("users file {file} at line {line}: {message} (named by {origin})")]
    Users {
        file: PathBuf,
        line: usize,
        message: String,
        /// The config file, key and line that named the users file.
        origin: String,
    },
}

/// The config text and its path, for errors that name file, line and key.
pub(crate) struct Ctx<'a> {
    pub(crate) path: &'a Path,
    pub(crate) text: &'a str,
}

impl Ctx<'_> {
    /// An error at `span` about `key`; a default (empty span at 0) has no line.
    pub(crate) fn at(&self, span: Range<usize>, key: &str, why: String) -> ConfigError {
        if span.is_empty() && span.start == 0 {
            ConfigError::InvalidNoSpan {
                path: self.path.to_owned(),
                message: format!("key `{key}`: {why}"),
            }
        } else {
            spanned_error(self.path, self.text, span, format!("key `{key}`: {why}"))
        }
    }
}

/// The default control socket of an instance.
pub fn default_control_socket(instance: &str) -> PathBuf {
    PathBuf::from(format!("/run/sipveil/{instance}.sock"))
}

/// Instance names become directory names under bpffs and /run: keep them simple.
pub fn valid_instance_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Parses and validates config text; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            let message = e.message().trim().to_owned();
            match e.span() {
                Some(span) => {
                    let message = match key_at(text, span.start) {
                        Some(key) => format!("key `{key}`: {message}"),
                        None => message,
                    };
                    spanned_error(path, text, span, message)
                }
                None => ConfigError::InvalidNoSpan {
                    path: path.to_owned(),
                    message,
                },
            }
        })?;
        let ctx = Ctx { path, text };
        let bad = |span: Range<usize>, key: &str, why: String| ctx.at(span, key, why);

        let instance = file.dataplane.instance.get_ref().clone();
        if !valid_instance_name(&instance) {
            return Err(bad(
                file.dataplane.instance.span(),
                "dataplane.instance",
                "must be 1-64 characters of [A-Za-z0-9_-]".to_owned(),
            ));
        }
        for iface in &file.dataplane.interfaces {
            if iface.is_empty() || iface.len() >= libc::IFNAMSIZ || iface.contains('/') {
                return Err(ConfigError::InvalidNoSpan {
                    path: path.to_owned(),
                    message: format!("key `dataplane.interfaces`: bad interface name {iface:?}"),
                });
            }
        }
        let m = &file.media;
        let port_min = *m.port_min.get_ref();
        let port_max = *m.port_max.get_ref();
        if port_min == 0 || !port_min.is_multiple_of(2) {
            return Err(bad(
                m.port_min.span(),
                "media.port_min",
                format!("must be even and non-zero, got {port_min}"),
            ));
        }
        if port_max <= port_min {
            return Err(bad(
                m.port_max.span(),
                "media.port_max",
                format!("must be greater than port_min ({port_min}), got {port_max}"),
            ));
        }
        let (addr_a, addr_b) = match m.addresses.get_ref() {
            AddressesSection::Legs { a, b } => (*a, *b),
            AddressesSection::List(list) => match list.as_slice() {
                [one] => (*one, *one),
                [a, b] => (*a, *b),
                _ => {
                    return Err(bad(
                        m.addresses.span(),
                        "media.addresses",
                        format!(
                            "give one address (one-arm) or two (A, B), got {}",
                            list.len()
                        ),
                    ));
                }
            },
        };
        if addr_a.is_ipv4() != addr_b.is_ipv4() {
            return Err(bad(
                m.addresses.span(),
                "media.addresses",
                "A and B must be of the same address family".to_owned(),
            ));
        }
        let workers = *m.workers.get_ref();
        if workers == 0 || workers > 64 {
            return Err(bad(
                m.workers.span(),
                "media.workers",
                format!("must be 1..=64, got {workers}"),
            ));
        }
        let idle = *m.idle_timeout_secs.get_ref();
        if idle == 0 {
            return Err(bad(
                m.idle_timeout_secs.span(),
                "media.idle_timeout_secs",
                "must be at least 1".to_owned(),
            ));
        }
        let control_socket = file
            .control
            .socket
            .clone()
            .unwrap_or_else(|| default_control_socket(&instance));
        let parts = sip::build(
            &ctx,
            &instance,
            &sip::MediaPorts {
                min: port_min,
                max: port_max,
                addrs: [addr_a, addr_b],
            },
            file.sip.as_ref(),
            file.registrar.as_ref(),
            &file.domain,
            file.metrics.as_ref(),
        )?;
        let shield = shield::build(&ctx, file.shield.as_ref())?;
        Ok(Config {
            interfaces: file.dataplane.interfaces,
            xdp: file.dataplane.xdp,
            instance,
            media: MediaConfig {
                port_min,
                port_max,
                idle_timeout_secs: idle,
                addr_a,
                addr_b,
                workers,
            },
            control_socket,
            sip: parts.sip,
            registrar: parts.registrar,
            metrics_listen: parts.metrics_listen,
            shield,
        })
    }

    /// Checks the files the config names beyond the users files (read at load): the TLS
    /// certificate chain and key must be readable PEM. Returns the number of certificates in the
    /// chain (0 without TLS listeners).
    pub fn check_files(&self) -> Result<usize, ConfigError> {
        Ok(self.sip.load_tls()?.map_or(0, |m| m.certs.len()))
    }

    /// A short human summary of what would run (for `sipveil check-config` and the logs).
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(s, "instance      {}", self.instance);
        let ifaces = if self.interfaces.is_empty() {
            "(none)".to_owned()
        } else {
            self.interfaces.join(", ")
        };
        let xdp = match self.xdp {
            XdpSetting::Auto => "auto",
            XdpSetting::Driver => "driver",
            XdpSetting::Generic => "generic",
            XdpSetting::Off => "off",
        };
        let _ = writeln!(s, "dataplane     xdp {xdp} on {ifaces}");
        let m = &self.media;
        let legs = if m.addr_a == m.addr_b {
            format!("{} (one-arm)", m.addr_a)
        } else {
            format!("A {} / B {}", m.addr_a, m.addr_b)
        };
        let _ = writeln!(
            s,
            "media         {legs}, ports {}-{}, idle {} s, {} relay worker(s)",
            m.port_min, m.port_max, m.idle_timeout_secs, m.workers
        );
        let _ = writeln!(s, "control       {}", self.control_socket.display());
        let sip = &self.sip;
        if sip.enabled() {
            let list = |v: &[SocketAddr]| {
                if v.is_empty() {
                    "-".to_owned()
                } else {
                    v.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            };
            let _ = writeln!(
                s,
                "sip           {} worker(s); udp {}; tcp {}; tls {}",
                sip.workers,
                list(&sip.udp),
                list(&sip.tcp),
                list(&sip.tls)
            );
            if let (Some(c), Some(k)) = (&sip.tls_cert, &sip.tls_key) {
                let _ = writeln!(s, "tls           cert {} key {}", c.display(), k.display());
            }
            let _ = writeln!(
                s,
                "limits        {} connections ({} per IP), idle {} s, messages <= {} B, \
                 write queue {} B",
                sip.max_connections,
                sip.max_connections_per_ip,
                sip.idle_timeout.as_secs(),
                sip.max_message_bytes,
                sip.write_queue_bytes
            );
        } else {
            let _ = writeln!(s, "sip           off (no [sip] listeners)");
        }
        let r = &self.registrar;
        let _ = writeln!(
            s,
            "registrar     database {}, nonce ttl {} s, max {} bindings",
            r.database.display(),
            r.config.nonce_ttl_secs,
            r.config.max_bindings
        );
        if r.config.domains.is_empty() {
            let _ = writeln!(s, "domains       none: every REGISTER is refused");
        }
        for d in &r.config.domains {
            let mut line = format!("domain        {} {}", d.name, d.policy.as_str());
            if d.policy == sipveil_registrar::Policy::Authenticated {
                let file = r
                    .users_files
                    .iter()
                    .find(|(n, _)| *n == d.name)
                    .map_or_else(String::new, |(_, f)| format!(" from {}", f.display()));
                let _ = write!(
                    line,
                    ", realm {:?}, {} user(s){file}",
                    d.realm,
                    d.users.len()
                );
            }
            let _ = write!(
                line,
                ", anonymous callers {}, refuse anonymous {}, expires {}..{} (default {}), \
                 {} contact(s)",
                if d.anonymous_callers { "yes" } else { "no" },
                if d.refuse_anonymous { "yes" } else { "no" },
                d.expires.min,
                d.expires.max,
                d.expires.default,
                d.max_contacts
            );
            let _ = writeln!(s, "{line}");
        }
        match self.metrics_listen {
            Some(a) => {
                let _ = writeln!(s, "metrics       http://{a}/metrics");
            }
            None => {
                let _ = writeln!(s, "metrics       off");
            }
        }
        let _ = writeln!(s, "{}", self.shield.summary());
        s
    }
}

fn spanned_error(path: &Path, text: &str, span: Range<usize>, message: String) -> ConfigError {
    let (line, column) = line_column(text, span.start);
    ConfigError::Invalid {
        path: path.to_owned(),
        line,
        column,
        message,
    }
}

/// The dotted key (`section.key`) written on the line that contains `offset`, if any.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let before = text.get(..offset)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text.get(line_start..)?.lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    let section = text
        .get(..line_start)?
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    Some(match section {
        Some(s) => format!("{s}.{key}"),
        None => key.to_owned(),
    })
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[dataplane]
interfaces = ["ea0", "eb0"]
xdp = "auto"
instance = "lab"

[media]
port_min = 30000
port_max = 30099
idle_timeout_secs = 30
addresses = { a = "198.18.1.1", b = "198.18.2.1" }

[control]
socket = "/run/sipveil/lab.sock"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), text)
    }

    #[test]
    fn good_config_parses() {
        let c = parse(GOOD).expect("good config");
        assert_eq!(c.instance, "lab");
        assert_eq!(c.interfaces, vec!["ea0", "eb0"]);
        assert_eq!(c.xdp, XdpSetting::Auto);
        assert_eq!(c.media.port_min, 30000);
        assert_eq!(c.media.addr_a, "198.18.1.1".parse::<IpAddr>().unwrap());
        assert_eq!(c.media.addr_b, "198.18.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(c.control_socket, PathBuf::from("/run/sipveil/lab.sock"));
        assert_eq!(c.media.workers, 1);
    }

    #[test]
    fn one_arm_list_and_defaults() {
        let c =
            parse("[media]\nport_min = 40000\nport_max = 40010\naddresses = [\"198.18.0.1\"]\n")
                .expect("one-arm config");
        assert_eq!(c.media.addr_a, c.media.addr_b);
        assert_eq!(c.instance, "default");
        assert_eq!(c.control_socket, PathBuf::from("/run/sipveil/default.sock"));
        assert_eq!(c.media.idle_timeout_secs, 60);
    }

    #[test]
    fn wrong_type_names_line_and_key() {
        let text = GOOD.replace("port_max = 30099", "port_max = \"lots\"");
        let err = parse(&text).expect_err("string port").to_string();
        assert!(err.contains("test.toml"), "{err}");
        assert!(err.contains("line 9"), "{err}");
        assert!(err.contains("media.port_max"), "{err}");
    }

    #[test]
    fn odd_port_min_names_line_and_key() {
        let text = GOOD.replace("port_min = 30000", "port_min = 30001");
        let err = parse(&text).expect_err("odd port").to_string();
        assert!(err.contains("line 8"), "{err}");
        assert!(err.contains("media.port_min"), "{err}");
    }

    #[test]
    fn unknown_key_in_section_is_an_error() {
        let text = GOOD.replace("idle_timeout_secs = 30", "idle_timeout = 30");
        let err = parse(&text).expect_err("unknown key").to_string();
        assert!(err.contains("line 10"), "{err}");
        assert!(err.contains("idle_timeout"), "{err}");
    }

    #[test]
    fn bad_xdp_mode_and_instance() {
        let err = parse(&GOOD.replace("\"auto\"", "\"turbo\""))
            .expect_err("bad mode")
            .to_string();
        assert!(err.contains("line 4"), "{err}");
        let err = parse(&GOOD.replace("\"lab\"", "\"../etc\""))
            .expect_err("bad instance")
            .to_string();
        assert!(
            err.contains("dataplane.instance") && err.contains("line 5"),
            "{err}"
        );
    }

    #[test]
    fn missing_media_and_syntax_error() {
        let err = parse("[dataplane]\n").expect_err("no media").to_string();
        assert!(err.contains("media"), "{err}");
        let err = parse("[media\nport_min = 1")
            .expect_err("syntax")
            .to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn three_addresses_rejected() {
        let text = GOOD.replace(
            "addresses = { a = \"198.18.1.1\", b = \"198.18.2.1\" }",
            "addresses = [\"198.18.1.1\", \"198.18.2.1\", \"198.18.3.1\"]",
        );
        let err = parse(&text).expect_err("three").to_string();
        assert!(
            err.contains("media.addresses") && err.contains("line 11"),
            "{err}"
        );
    }
}
