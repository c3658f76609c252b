//! The call side of the configuration (issue 5): `[privacy]`, `[calls]` and `[[peer]]`.
//!
//! A reload applies all of them to calls started afterwards (the privacy policy of a running
//! call's dialog map is replaced as a whole; timers use the new limits at their next check).
use std::net::SocketAddr;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Ctx};

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct PrivacySection {
    /// `User-Agent` / `Server` value on call signalling; "" writes none.
    server: Option<Spanned<String>>,
    /// Header names that cross from one leg to the other besides the built-in allowlist.
    #[serde(default)]
    pass_headers: Vec<Spanned<String>>,
    /// Next-hop hosts inside the trust domain (they get `P-Asserted-Identity`).
    #[serde(default)]
    trusted_hosts: Vec<Spanned<String>>,
    /// Served domains whose callers always appear anonymous.
    #[serde(default)]
    force_anonymous: Vec<Spanned<String>>,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct CallsSection {
    max_duration_secs: Option<Spanned<i64>>,
    media_timeout_secs: Option<Spanned<i64>>,
    max_calls: Option<Spanned<i64>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PeerSection {
    domain: Spanned<String>,
    address: Spanned<String>,
    #[serde(default)]
    trusted: bool,
}

/// A static route: calls for `domain` go to `address` over UDP (the transport has no outbound
/// connects, so TCP/TLS peers are not possible yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRoute {
    /// The domain (lower case).
    pub domain: String,
    /// Where INVITEs for it are sent, from the edge's UDP socket.
    pub address: SocketAddr,
    /// Inside the trust domain (gets `P-Asserted-Identity`).
    pub trusted: bool,
}

/// `[privacy]` + `[calls]` + `[[peer]]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallSettings {
    /// `User-Agent`/`Server` on call signalling (`None`: no header). Default `sipveil`.
    pub server: Option<String>,
    /// Extra pass-through header names (lower case).
    pub pass_headers: Vec<String>,
    /// Trusted next-hop hosts (lower case).
    pub trusted_hosts: Vec<String>,
    /// Domains whose callers are always anonymous (lower case).
    pub force_anonymous: Vec<String>,
    /// A call is ended (BYE both legs) after this long; 0 = no limit.
    pub max_duration_secs: u64,
    /// No media either way for this long ends the call; 0 = never.
    pub media_timeout_secs: u64,
    /// Calls at once; more get 503 with Retry-After.
    pub max_calls: usize,
    /// Static peer routes.
    pub peers: Vec<PeerRoute>,
}

impl Default for CallSettings {
    fn default() -> Self {
        CallSettings {
            server: Some("sipveil".to_owned()),
            pass_headers: Vec::new(),
            trusted_hosts: Vec::new(),
            force_anonymous: Vec::new(),
            max_duration_secs: 4 * 3600,
            media_timeout_secs: 60,
            max_calls: 1000,
            peers: Vec::new(),
        }
    }
}

fn token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn names(ctx: &Ctx<'_>, list: &[Spanned<String>], key: &str) -> Result<Vec<String>, ConfigError> {
    list.iter()
        .map(|v| {
            let s = v.get_ref().trim().to_ascii_lowercase();
            if token(&s) {
                Ok(s)
            } else {
                Err(ctx.at(
                    v.span(),
                    key,
                    format!("{:?} is not a name (letters, digits, - _ .)", v.get_ref()),
                ))
            }
        })
        .collect()
}

pub(super) fn build(
    ctx: &Ctx<'_>,
    privacy: Option<&PrivacySection>,
    calls: Option<&CallsSection>,
    peers: &[PeerSection],
) -> Result<CallSettings, ConfigError> {
    let defaults = CallSettings::default();
    let p = privacy.cloned().unwrap_or_default();
    let c = calls.cloned().unwrap_or_default();
    let server = match &p.server {
        None => defaults.server,
        Some(v) if v.get_ref().is_empty() => None,
        Some(v) => {
            let s = v.get_ref();
            if s.len() > 128 || s.bytes().any(|b| b.is_ascii_control()) {
                return Err(ctx.at(
                    v.span(),
                    "privacy.server",
                    "must be at most 128 printable characters".to_owned(),
                ));
            }
            Some(s.clone())
        }
    };
    let max_duration_secs = super::sip::int(
        ctx,
        &c.max_duration_secs,
        "calls.max_duration_secs",
        defaults.max_duration_secs,
        0,
        7 * 86_400,
    )?;
    let media_timeout_secs = super::sip::int(
        ctx,
        &c.media_timeout_secs,
        "calls.media_timeout_secs",
        defaults.media_timeout_secs,
        0,
        86_400,
    )?;
    let max_calls = super::sip::int(
        ctx,
        &c.max_calls,
        "calls.max_calls",
        defaults.max_calls as u64,
        1,
        1_000_000,
    )?;
    let mut routes: Vec<PeerRoute> = Vec::new();
    for peer in peers {
        let domain = peer.domain.get_ref().trim().to_ascii_lowercase();
        if !token(&domain) {
            return Err(ctx.at(
                peer.domain.span(),
                "peer.domain",
                format!("{:?} is not a domain name", peer.domain.get_ref()),
            ));
        }
        if routes.iter().any(|r| r.domain == domain) {
            return Err(ctx.at(
                peer.domain.span(),
                "peer.domain",
                format!("{domain} has two routes"),
            ));
        }
        let address: SocketAddr = peer.address.get_ref().parse().map_err(|_| {
            ctx.at(
                peer.address.span(),
                "peer.address",
                format!("{:?} is not ip:port", peer.address.get_ref()),
            )
        })?;
        if address.port() == 0 || address.ip().is_unspecified() {
            return Err(ctx.at(
                peer.address.span(),
                "peer.address",
                "needs a specified address and a non-zero port".to_owned(),
            ));
        }
        routes.push(PeerRoute {
            domain,
            address,
            trusted: peer.trusted,
        });
    }
    Ok(CallSettings {
        server,
        pass_headers: names(ctx, &p.pass_headers, "privacy.pass_headers")?,
        trusted_hosts: names(ctx, &p.trusted_hosts, "privacy.trusted_hosts")?,
        force_anonymous: names(ctx, &p.force_anonymous, "privacy.force_anonymous")?,
        max_duration_secs,
        media_timeout_secs,
        max_calls: usize::try_from(max_calls).unwrap_or(usize::MAX),
        peers: routes,
    })
}
