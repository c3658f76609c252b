//! The SIP side's feeds into the shield, through one process-wide handle (the daemon installs
//! it at start; absent in tests that run the SIP side alone, then every feed is a no-op). Keeps
//! the hooks in `sip/service.rs` to one call each.
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use sipveil_registrar::{AuthFailure, Policy, Report, ReportResult};
use sipveil_sip::{HeaderName, Request};

use super::policy::Observation;
use super::runtime::Shield;

static SHIELD: OnceLock<Arc<Shield>> = OnceLock::new();

/// Makes `shield` the one the SIP side feeds (the first call wins).
pub fn install(shield: Arc<Shield>) {
    let _ = SHIELD.set(shield);
}

/// The installed shield.
pub fn installed() -> Option<&'static Arc<Shield>> {
    SHIELD.get()
}

/// What a registrar outcome tells the shield, if anything.
pub fn register_observation(report: &Report) -> Option<Observation> {
    match report.result {
        ReportResult::AuthFailed(AuthFailure::UnknownUser) => Some(Observation::UnknownUser),
        ReportResult::AuthFailed(AuthFailure::WrongPassword | AuthFailure::Malformed) => {
            Some(Observation::AuthFailure)
        }
        // Only a verified digest earns the allowlist: an open domain lets anyone register.
        ReportResult::Registered | ReportResult::Removed | ReportResult::Fetched
            if report.policy == Some(Policy::Authenticated) =>
        {
            Some(Observation::Authenticated)
        }
        _ => None,
    }
}

/// Feeds a registrar outcome for a REGISTER from `peer`.
pub fn register_report(peer: IpAddr, report: &Report) {
    if let (Some(sh), Some(obs)) = (SHIELD.get(), register_observation(report)) {
        sh.observe(peer, obs);
    }
}

/// At the TU's entry: true when the request's User-Agent or From matches a scanner pattern (the
/// source is then reported, and the request should be dropped without an answer).
pub fn scanner_request(peer: IpAddr, req: &Request) -> bool {
    let Some(sh) = SHIELD.get() else {
        return false;
    };
    let ua = req
        .headers()
        .get_raw_value(&HeaderName::UserAgent)
        .unwrap_or(b"");
    let from = req
        .headers()
        .get_raw_value(&HeaderName::From)
        .unwrap_or(b"");
    if sh.is_scanner(&[ua, from]) {
        sh.observe(peer, Observation::Scanner);
        true
    } else {
        false
    }
}
