//! The registrar state machine (RFC 3261 §10.3, RFC 5626, RFC 7616).

use std::collections::{BTreeSet, HashMap, VecDeque};

use bytes::Bytes;
use sipveil_sip::views::parse_token_list;
use sipveil_sip::{Auth, HeaderName, NameAddr, Request, Response, ResponseWriter, StatusCode, Uri};

use crate::aormap::{AorMap, MacHash};
use crate::digest::{self, Alg, Inputs, Keys};
use crate::users::{NameError, normalize_name};
use crate::{
    AuthFailure, Binding, DecodeError, DomainConfig, DomainCount, FlowInfo, Policy,
    RegisterOutcome, RegistrarConfig, Report, ReportResult, StoreOp,
};

/// Nonce counts remembered (per nonce: the highest nc seen).
const NC_CAPACITY: usize = 65_536;
/// Contacts accepted in one REGISTER before the count is refused outright.
const MAX_CONTACTS_PER_REQUEST: usize = 64;
/// Retry-After (seconds) on 503 when the global binding cap is reached.
const RETRY_AFTER_FULL: &str = "60";
/// A nonce issued this far in the future (ms) is not accepted.
const NONCE_FUTURE_SLACK_MS: u64 = 5_000;

/// Highest nc per (nonce, username, cnonce), bounded. Nonces are
/// stateless (two clients challenged in the same millisecond get the same
/// one), so the count is kept per client: a replayed request repeats the
/// cnonce, and a new cnonce needs the password. Keys are an HMAC of the
/// three, so the table holds fixed-size entries. Evicting a nonce raises `floor_ms`: an
/// unknown nonce issued at or before the floor is treated as stale, so an
/// eviction never re-opens a nonce for replay.
#[derive(Debug)]
struct NcTable {
    /// Keys are MACs: hashed by their first bytes, so a growth hashes nothing again.
    map: HashMap<[u8; 32], u32, MacHash>,
    order: VecDeque<([u8; 32], u64)>,
    floor_ms: u64,
    cap: usize,
}

enum NcCheck {
    Fresh,
    Replayed,
    Evicted,
}

impl NcTable {
    fn new(cap: usize) -> NcTable {
        NcTable {
            map: HashMap::default(),
            order: VecDeque::new(),
            floor_ms: 0,
            cap,
        }
    }

    fn check_and_record(&mut self, raw: [u8; 32], issue_ms: u64, nc: u32) -> NcCheck {
        if let Some(prev) = self.map.get_mut(&raw) {
            if nc <= *prev {
                return NcCheck::Replayed;
            }
            *prev = nc;
            return NcCheck::Fresh;
        }
        if issue_ms <= self.floor_ms {
            return NcCheck::Evicted;
        }
        while self.map.len() >= self.cap {
            let Some((old, issued)) = self.order.pop_front() else {
                break;
            };
            self.map.remove(&old);
            self.floor_ms = self.floor_ms.max(issued);
        }
        if issue_ms <= self.floor_ms {
            return NcCheck::Evicted;
        }
        self.map.insert(raw, nc);
        self.order.push_back((raw, issue_ms));
        NcCheck::Fresh
    }

    /// Forget nonces that expired (they are refused as stale anyway).
    fn prune(&mut self, oldest_valid_ms: u64) {
        while let Some(&(raw, issued)) = self.order.front() {
            if issued >= oldest_valid_ms {
                break;
            }
            self.order.pop_front();
            self.map.remove(&raw);
        }
    }
}

/// Per-domain derived data.
#[derive(Debug, Clone)]
struct DomainState {
    /// Lower-case name (AOR host part).
    name_lc: String,
    /// User name → index into `users`.
    users: HashMap<String, usize>,
    opaque: String,
}

/// The registrar: bindings, ownership, nonce counts. See the crate docs.
#[derive(Debug)]
pub struct Registrar {
    cfg: RegistrarConfig,
    doms: Vec<DomainState>,
    keys: Keys,
    /// Keyed hashes stored with the AORs: a growth re-hashes nothing (see `aormap`).
    aors: AorMap<Vec<Binding>>,
    by_expiry: BTreeSet<(u64, Vec<u8>)>,
    total: usize,
    nc: NcTable,
    /// Keys of expired bindings met by `restore`, deleted by the next `expire`.
    stale_keys: Vec<Vec<u8>>,
    dummy_sha: [u8; 32],
    dummy_md5: [u8; 16],
    /// `Server` header value written into every answer (see [`Registrar::set_server`]).
    server: Option<String>,
}

/// A decided answer before it is built.
struct Answer {
    status: StatusCode,
    reason: &'static str,
    headers: Vec<(HeaderName, String)>,
    result: ReportResult,
}

impl Answer {
    fn new(status: StatusCode, reason: &'static str, result: ReportResult) -> Answer {
        Answer {
            status,
            reason,
            headers: Vec::new(),
            result,
        }
    }
}

fn eq_ic(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

impl Registrar {
    /// New registrar; `secret` keys nonces, opaque values and To-tags.
    pub fn new(cfg: RegistrarConfig, secret: [u8; 32]) -> Registrar {
        let keys = Keys::new(&secret);
        let dummy_sha = keys.tag(b"dummy-ha1-sha256", &[]);
        let d = keys.tag(b"dummy-ha1-md5", &[]);
        let mut dummy_md5 = [0u8; 16];
        dummy_md5.copy_from_slice(&d[..16]);
        let mut r = Registrar {
            cfg: RegistrarConfig {
                domains: Vec::new(),
                nonce_ttl_secs: cfg.nonce_ttl_secs,
                max_bindings: cfg.max_bindings,
            },
            doms: Vec::new(),
            keys,
            aors: AorMap::default(),
            by_expiry: BTreeSet::new(),
            total: 0,
            nc: NcTable::new(NC_CAPACITY),
            stale_keys: Vec::new(),
            dummy_sha,
            dummy_md5,
            server: None,
        };
        r.reconfigure(cfg);
        r
    }

    /// Replace domains, users and limits. Bindings stay; bindings of a
    /// domain that disappeared stay until they expire, but the domain no
    /// longer serves (REGISTERs for it get 403, `domain()` is `None`).
    pub fn reconfigure(&mut self, cfg: RegistrarConfig) {
        self.doms = cfg
            .domains
            .iter()
            .map(|d| DomainState {
                name_lc: d.name.to_ascii_lowercase(),
                users: d
                    .users
                    .iter()
                    .enumerate()
                    .map(|(i, u)| (u.name.to_ascii_lowercase(), i))
                    .collect(),
                opaque: self.keys.opaque(&d.realm),
            })
            .collect();
        self.cfg = cfg;
    }

    /// A `Server` header with `value` on every answer the registrar builds (`None`: none).
    /// Written into the answer as it is built, so the answer leaves as built — no header added
    /// afterwards, no second serialisation. A value with CR, LF or NUL is refused (header
    /// injection) and leaves the previous setting in force.
    pub fn set_server(&mut self, value: Option<&str>) -> Result<(), sipveil_sip::BuildError> {
        if let Some(v) = value
            && v.bytes().any(|c| c == b'\r' || c == b'\n' || c == 0)
        {
            return Err(sipveil_sip::BuildError::InvalidHeaderValue(
                HeaderName::Server,
            ));
        }
        self.server = value.map(str::to_owned);
        Ok(())
    }

    /// The configuration in force.
    pub fn config(&self) -> &RegistrarConfig {
        &self.cfg
    }

    fn domain_index(&self, host: &[u8]) -> Option<usize> {
        self.doms
            .iter()
            .position(|d| eq_ic(d.name_lc.as_bytes(), host))
    }

    /// The served domain for `host` (case-insensitive).
    pub fn domain(&self, host: &str) -> Option<&DomainConfig> {
        self.domain_index(host.as_bytes())
            .and_then(|i| self.cfg.domains.get(i))
    }

    /// Whether `user@host` refuses anonymous calls: the user's own setting
    /// if the users file has one, else the domain default; `false` for an
    /// unserved host.
    pub fn refuses_anonymous(&self, user: &str, host: &str) -> bool {
        let Some(i) = self.domain_index(host.as_bytes()) else {
            return false;
        };
        let (Some(d), Some(ds)) = (self.cfg.domains.get(i), self.doms.get(i)) else {
            return false;
        };
        ds.users
            .get(&user.to_ascii_lowercase())
            .and_then(|&u| d.users.get(u))
            .and_then(|u| u.refuse_anonymous)
            .unwrap_or(d.refuse_anonymous)
    }

    /// Whether `user` is listed in the users file of the served domain `host` (always `false`
    /// for open and closed domains, which have no users file).
    pub fn user_exists(&self, user: &str, host: &str) -> bool {
        self.domain_index(host.as_bytes())
            .and_then(|i| self.doms.get(i))
            .is_some_and(|ds| ds.users.contains_key(&user.to_ascii_lowercase()))
    }

    /// Live bindings of `user@host` (case-insensitive), q descending, then
    /// most recently registered first.
    pub fn lookup(&self, user: &str, host: &str, now_ms: u64) -> Vec<Binding> {
        let aor = format!(
            "{}@{}",
            user.to_ascii_lowercase(),
            host.to_ascii_lowercase()
        );
        let mut v: Vec<Binding> = self
            .aors
            .get(&aor)
            .map(|bs| {
                bs.iter()
                    .filter(|b| b.expires_at_ms > now_ms)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by(|a, b| {
            b.q.cmp(&a.q)
                .then(b.registered_at_ms.cmp(&a.registered_at_ms))
        });
        v
    }

    /// Every binding held (expired ones stay until `expire` runs).
    pub fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.aors.values().flatten()
    }

    /// Bindings held per domain, for metrics gauges: every configured
    /// domain (zero if empty), plus any stored domain no longer configured.
    pub fn counts(&self) -> Vec<DomainCount> {
        let mut m: HashMap<&str, (usize, usize)> = HashMap::new();
        for d in &self.doms {
            m.entry(d.name_lc.as_str()).or_default();
        }
        for (aor, bs) in self.aors.iter() {
            let dom = aor.rsplit_once('@').map_or("", |(_, d)| d);
            let e = m.entry(dom).or_default();
            e.0 += bs.len();
            e.1 += 1;
        }
        let mut v: Vec<DomainCount> = m
            .into_iter()
            .map(|(d, (b, a))| DomainCount {
                domain: d.to_owned(),
                bindings: b,
                aors: a,
            })
            .collect();
        v.sort_by(|a, b| a.domain.cmp(&b.domain));
        v
    }

    /// Number of bindings held.
    pub fn len(&self) -> usize {
        self.total
    }

    /// No bindings held.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Load one stored binding (from `Store::load`). A binding already
    /// expired at `now_ms` is not loaded; its key is handed back as a
    /// Delete by the next [`Registrar::expire`]. Ownership of open
    /// nicknames is rebuilt from the bindings themselves (they carry the
    /// claim's Call-ID and instance).
    pub fn restore(&mut self, key: &[u8], value: &[u8], now_ms: u64) -> Result<(), DecodeError> {
        let b = Binding::decode(value)?;
        let k = b.key();
        if k != key {
            return Err(DecodeError("key does not match the binding"));
        }
        if b.expires_at_ms <= now_ms {
            self.stale_keys.push(k);
            return Ok(());
        }
        let list = self.aors.get_or_default(&b.aor);
        if let Some(old) = list.iter_mut().find(|o| o.key() == k) {
            self.by_expiry.remove(&(old.expires_at_ms, k.clone()));
            self.by_expiry.insert((b.expires_at_ms, k));
            *old = b;
        } else {
            self.by_expiry.insert((b.expires_at_ms, k));
            // Exact room (see `apply`): most AORs hold one contact for as long as they live.
            list.reserve_exact(1);
            list.push(b);
            self.total += 1;
        }
        Ok(())
    }

    /// Drop bindings expired at `now_ms`; the Delete ops to persist (no
    /// response waits on them). Also forgets expired nonce counts.
    pub fn expire(&mut self, now_ms: u64) -> Vec<StoreOp> {
        let mut ops: Vec<StoreOp> = self
            .stale_keys
            .drain(..)
            .map(|key| StoreOp::Delete { key })
            .collect();
        while let Some((at, _)) = self.by_expiry.first() {
            if *at > now_ms {
                break;
            }
            let Some((_, key)) = self.by_expiry.pop_first() else {
                break;
            };
            let aor_len = key.iter().position(|&c| c == 0).unwrap_or(key.len());
            let aor = String::from_utf8_lossy(&key[..aor_len]).into_owned();
            if let Some(list) = self.aors.get_mut(&aor) {
                let before = list.len();
                list.retain(|b| b.expires_at_ms > now_ms || b.key() != key);
                self.total -= before - list.len();
                if list.is_empty() {
                    self.aors.remove(&aor);
                }
            }
            ops.push(StoreOp::Delete { key });
        }
        let ttl_ms = self.cfg.nonce_ttl_secs.saturating_mul(1000);
        self.nc.prune(now_ms.saturating_sub(ttl_ms));
        ops
    }

    /// Earliest binding expiry (ms since the UNIX epoch); `Some(0)` when
    /// restored expired bindings wait to be deleted.
    pub fn next_expiry(&self) -> Option<u64> {
        if !self.stale_keys.is_empty() {
            return Some(0);
        }
        self.by_expiry.first().map(|(at, _)| *at)
    }

    /// The To-tag of the edge's answers to `req`: 16 hex digits of a keyed hash of Call-ID
    /// and From-tag (the same for retransmissions), written into a stack buffer.
    fn to_tag(&self, req: &Request) -> [u8; 16] {
        let call_id = req.call_id().unwrap_or_default();
        let from_tag = req.from_tag().unwrap_or_default();
        let t = self.keys.tag(b"to-tag", &[&call_id, &from_tag]);
        let mut out = [0u8; 16];
        for (pair, x) in out.chunks_exact_mut(2).zip(t) {
            pair[0] = crate::users::HEX[usize::from(x >> 4)];
            pair[1] = crate::users::HEX[usize::from(x & 15)];
        }
        out
    }

    /// The response: written directly (the fast path), or, should that fail,
    /// through `ResponseBuilder` (which checks more).
    fn build(&self, req: &Request, a: &Answer) -> Option<Response> {
        let tag = self.to_tag(req);
        if let Some(r) = self.build_fast(req, a, &tag) {
            return Some(r);
        }
        self.build_checked(req, a, &tag)
    }

    /// RFC 3261 §8.2.6.2: Via (all, in order), From, To (+ tag), Call-ID and
    /// CSeq copied as written; then our header fields. The writer records the fields as it
    /// writes them, so the answer is not parsed again.
    fn build_fast(&self, req: &Request, a: &Answer, tag: &[u8]) -> Option<Response> {
        const COPIED: [HeaderName; 5] = [
            HeaderName::Via,
            HeaderName::From,
            HeaderName::To,
            HeaderName::CallId,
            HeaderName::CSeq,
        ];
        let mut w = ResponseWriter::new(a.status, a.reason.as_bytes(), 512).ok()?;
        let has_tag = req.to_tag().is_some();
        for (name, value) in req.headers().select(&COPIED) {
            if *name == HeaderName::To && !has_tag {
                w.header(name, &[value, b";tag=", tag]).ok()?;
            } else {
                w.header(name, &[value]).ok()?;
            }
        }
        for (n, v) in &a.headers {
            w.header(n, &[v.as_bytes()]).ok()?;
        }
        if let Some(server) = &self.server {
            w.header(&HeaderName::Server, &[server.as_bytes()]).ok()?;
        }
        w.finish().ok()
    }

    fn build_checked(&self, req: &Request, a: &Answer, tag: &[u8]) -> Option<Response> {
        let mut b = req
            .response(a.status)
            .reason(Bytes::from_static(a.reason.as_bytes()))
            .to_tag(Bytes::copy_from_slice(tag));
        for (n, v) in &a.headers {
            b = b.header(n.clone(), v.clone());
        }
        if let Some(server) = &self.server {
            b = b.header(HeaderName::Server, server.clone());
        }
        b.build().ok()
    }

    fn finish(
        &self,
        req: &Request,
        a: Answer,
        report: Report,
    ) -> Result<(Response, Report), Report> {
        match self.build(req, &a) {
            Some(r) => Ok((r, report)),
            None => {
                let fallback = Answer::new(
                    StatusCode::SERVER_INTERNAL_ERROR,
                    "Server Internal Error",
                    ReportResult::Internal,
                );
                let report = Report {
                    result: ReportResult::Internal,
                    ..report
                };
                match self.build(req, &fallback) {
                    Some(r) => Ok((r, report)),
                    None => Err(report),
                }
            }
        }
    }

    /// Digest check of a request the edge bridges (an INVITE, issue 5): when the From host is
    /// a served domain with the `authenticated` policy, the caller must prove the From user's
    /// password with `Proxy-Authorization` (RFC 3261 §22.3, RFC 7616); the answer otherwise is
    /// a 407 challenge (`Proxy-Authenticate`, one per offered algorithm) or a 403. The same
    /// nonces, nonce-count replay table and constant-work comparison as REGISTER.
    pub fn authenticate_request(&mut self, now_ms: u64, req: &Request) -> RequestAuth {
        let Ok(from) = req.from() else {
            return RequestAuth::NotRequired;
        };
        let uri = from.uri();
        let Some(di) = self.domain_index(uri.host_raw()) else {
            return RequestAuth::NotRequired;
        };
        let Some(d) = self.cfg.domains.get(di) else {
            return RequestAuth::NotRequired;
        };
        if d.policy != Policy::Authenticated {
            return RequestAuth::NotRequired;
        }
        let user = uri
            .user()
            .map(|u| String::from_utf8_lossy(u).to_ascii_lowercase())
            .unwrap_or_default();
        let host = self
            .doms
            .get(di)
            .map(|ds| ds.name_lc.clone())
            .unwrap_or_default();
        match self.authenticate(now_ms, req, di, &user, AuthKind::Proxy) {
            Ok(()) => RequestAuth::Authenticated {
                aor: format!("{user}@{host}"),
            },
            Err(a) => {
                let failure = match a.result {
                    ReportResult::AuthFailed(f) => Some(f),
                    _ => None,
                };
                match self.build(req, &a) {
                    Some(response) => RequestAuth::Refused { response, failure },
                    None => RequestAuth::Unanswerable,
                }
            }
        }
    }

    /// Handle a REGISTER. The in-memory state changes here; with
    /// [`RegisterOutcome::Commit`] the TU persists `ops` durably before it
    /// sends the response. Never panics on any input.
    pub fn register(&mut self, now_ms: u64, req: &Request, flow: &FlowInfo) -> RegisterOutcome {
        let mut report = Report {
            domain: None,
            policy: None,
            result: ReportResult::BadRequest,
        };
        let (answer, ops, apply) = match self.decide(now_ms, req, flow, &mut report) {
            Decision::Answer(a) => (a, Vec::new(), None),
            Decision::Change { answer, ops, apply } => (answer, ops, Some(apply)),
        };
        report.result = answer.result;
        match self.finish(req, answer, report) {
            Ok((response, report)) => {
                let internal = report.result == ReportResult::Internal;
                match apply {
                    Some(apply) if !internal => {
                        self.apply(apply);
                        if ops.is_empty() {
                            RegisterOutcome::Respond { response, report }
                        } else {
                            RegisterOutcome::Commit {
                                ops,
                                response,
                                report,
                            }
                        }
                    }
                    _ => RegisterOutcome::Respond { response, report },
                }
            }
            Err(report) => RegisterOutcome::Drop { report },
        }
    }

    fn apply(&mut self, ch: Apply) {
        let old = self.aors.remove(&ch.aor).unwrap_or_default();
        for b in &old {
            self.by_expiry.remove(&(b.expires_at_ms, b.key()));
        }
        self.total -= old.len();
        for b in &ch.new {
            self.by_expiry.insert((b.expires_at_ms, b.key()));
        }
        self.total += ch.new.len();
        if !ch.new.is_empty() {
            // Kept for the life of the bindings: no spare room (a refresh or removal leaves
            // the list shorter than `decide` made room for; a new client's is already exact).
            let mut list = ch.new;
            list.shrink_to_fit();
            self.aors.insert(ch.aor, list);
        }
    }

    fn decide(
        &mut self,
        now_ms: u64,
        req: &Request,
        flow: &FlowInfo,
        report: &mut Report,
    ) -> Decision {
        use ReportResult as R;
        let bad =
            |reason| Decision::Answer(Answer::new(StatusCode::BAD_REQUEST, reason, R::BadRequest));
        let forbidden =
            |reason, result| Decision::Answer(Answer::new(StatusCode::FORBIDDEN, reason, result));

        // 1. Domain: the Request-URI host, case-insensitive.
        let Some(di) = self.domain_index(req.uri().host_raw()) else {
            return forbidden("Domain Not Served", R::DomainNotServed);
        };
        let (Some(d), Some(ds)) = (self.cfg.domains.get(di), self.doms.get(di)) else {
            return forbidden("Domain Not Served", R::DomainNotServed);
        };
        report.domain = Some(d.name.clone());
        report.policy = Some(d.policy);
        if d.policy == Policy::Closed {
            return forbidden("Registration Closed", R::Closed);
        }

        // 2. To: same domain, a valid nickname.
        let Ok(to) = req.to() else {
            return bad("Bad To");
        };
        if !eq_ic(to.uri().host_raw(), ds.name_lc.as_bytes()) {
            return forbidden("To Domain Mismatch", R::Forbidden);
        }
        let Some(user) = to.uri().user() else {
            return Decision::Answer(Answer::new(
                StatusCode::BAD_REQUEST,
                "Missing User In To",
                R::BadNickname,
            ));
        };
        let name = match normalize_name(user) {
            Ok(n) => n,
            Err(NameError::Syntax) => {
                return Decision::Answer(Answer::new(
                    StatusCode::BAD_REQUEST,
                    "Invalid Nickname (1-64 of a-z 0-9 . _ -)",
                    R::BadNickname,
                ));
            }
            Err(NameError::Reserved) => return forbidden("Nickname Reserved", R::BadNickname),
        };
        let Ok(call_id_b) = req.call_id() else {
            return bad("Bad Call-ID");
        };
        let Ok(call_id) = std::str::from_utf8(&call_id_b) else {
            return bad("Bad Call-ID");
        };
        let Ok(cseq) = req.cseq() else {
            return bad("Bad CSeq");
        };
        let cseq = cseq.seq;

        // Credentials before the contacts (RFC 3261 §10.3: authenticate, step 3, before the
        // Contact processing of steps 6-7): a REGISTER without them gets its 401 without the
        // contact and Expires work, and nothing unauthenticated reaches that parsing.
        if d.policy == Policy::Authenticated
            && let Err(a) = self.authenticate(now_ms, req, di, &name, AuthKind::Www)
        {
            return Decision::Answer(a);
        }

        // 3. Contacts, Expires, `*`.
        let mut contacts: Vec<NameAddr> = Vec::new();
        let mut wildcards = 0usize;
        for c in req.contacts() {
            match c {
                Err(_) => return bad("Bad Contact"),
                Ok(sipveil_sip::Contact::Wildcard) => wildcards += 1,
                Ok(sipveil_sip::Contact::Address(na)) => {
                    if contacts.len() >= MAX_CONTACTS_PER_REQUEST {
                        return forbidden("Too Many Contacts", R::TooManyContacts);
                    }
                    contacts.push(na);
                }
            }
        }
        let exp_hdr = match req.headers().get_raw_value(&HeaderName::Expires) {
            None => None,
            Some(_) => match req.expires() {
                Some(v) => Some(v),
                None => return bad("Bad Expires"),
            },
        };
        if wildcards > 0 && (wildcards > 1 || !contacts.is_empty() || exp_hdr != Some(0)) {
            return bad("Wildcard Contact Needs Expires 0 And No Other Contact");
        }
        let mut req_instance: Option<String> = None;
        for (i, c) in contacts.iter().enumerate() {
            let inst = match c.sip_instance() {
                Some(v) => match std::str::from_utf8(&v) {
                    Ok(s) => Some(s.to_owned()),
                    Err(_) => return bad("Bad +sip.instance"),
                },
                None => None,
            };
            if i == 0 {
                req_instance = inst;
            } else if inst != req_instance {
                return bad("Inconsistent +sip.instance");
            }
        }

        // Re-borrow after the &mut self call (credentials, checked before the contacts).
        let (Some(d), Some(ds)) = (self.cfg.domains.get(di), self.doms.get(di)) else {
            return forbidden("Domain Not Served", R::DomainNotServed);
        };
        let mut aor = String::with_capacity(name.len() + 1 + ds.name_lc.len());
        aor.push_str(&name);
        aor.push('@');
        aor.push_str(&ds.name_lc);
        let old: &[Binding] = self.aors.get(&aor).map_or(&[], Vec::as_slice);

        // 5. Ownership of an open nickname.
        if d.policy == Policy::Open
            && let Some(owner) = old.iter().find(|b| b.expires_at_ms > now_ms)
        {
            let same_call = owner.call_id == call_id;
            let same_instance = contacts.is_empty() || owner.instance == req_instance;
            if !(same_call && same_instance) {
                return forbidden("Nickname In Use", R::NicknameInUse);
            }
        }
        let own = |b: &Binding| {
            b.call_id == call_id || (req_instance.is_some() && b.instance == req_instance)
        };

        // 6. Fetch.
        if wildcards == 0 && contacts.is_empty() {
            let mut a = Answer::new(StatusCode::OK, "OK", R::Fetched);
            list_own(&mut a, old.iter().filter(|b| own(b)), now_ms);
            return Decision::Answer(a);
        }

        // §10.3 step 7: same Call-ID with a CSeq not higher aborts (500).
        let out_of_order = |b: &Binding| b.call_id == call_id && b.cseq >= cseq;

        // 7. `*`: remove every binding of the AOR.
        if wildcards > 0 {
            if old
                .iter()
                .any(|b| b.expires_at_ms > now_ms && out_of_order(b))
            {
                return Decision::Answer(Answer::new(
                    StatusCode::SERVER_INTERNAL_ERROR,
                    "CSeq Out Of Order",
                    R::OutOfOrder,
                ));
            }
            let ops: Vec<StoreOp> = old
                .iter()
                .map(|b| StoreOp::Delete { key: b.key() })
                .collect();
            return Decision::Change {
                answer: Answer::new(StatusCode::OK, "OK", R::Removed),
                ops,
                apply: Apply {
                    aor,
                    new: Vec::new(),
                },
            };
        }

        // 8. Contacts: expires, 423, q, RFC 5626 keys.
        let lim = d.expires;
        // Room for every contact up front: a new client's list is then allocated once, at the
        // size `apply` keeps, instead of grown to four and shrunk again. At most one past the
        // domain's limit: a request listing thousands of contacts is refused below, and must not
        // reserve room for all of them first.
        let room = contacts.len().min(d.max_contacts.saturating_add(1));
        let mut new: Vec<Binding> = Vec::with_capacity(old.len() + room);
        new.extend(old.iter().filter(|b| b.expires_at_ms > now_ms).cloned());
        let mut any_reg_id = false;
        let mut any_add = false;
        for c in &contacts {
            let e = c.expires().or(exp_hdr).unwrap_or(lim.default);
            if e != 0 && e < lim.min {
                let mut a = Answer::new(
                    StatusCode::INTERVAL_TOO_BRIEF,
                    "Interval Too Brief",
                    R::IntervalTooBrief,
                );
                a.headers
                    .push((HeaderName::MinExpires, lim.min.to_string()));
                return Decision::Answer(a);
            }
            let q = match c.params().get("q") {
                None => 1000,
                Some(_) => match c.q_millis() {
                    Some(q) => q,
                    None => return bad("Bad q"),
                },
            };
            let Ok(contact) = std::str::from_utf8(c.uri().as_bytes()) else {
                return bad("Bad Contact");
            };
            let reg_id = if req_instance.is_some() {
                c.reg_id()
            } else {
                None
            };
            any_reg_id |= reg_id.is_some();
            let mut b = Binding {
                aor: aor.clone(),
                contact: contact.to_owned(),
                q,
                expires_at_ms: now_ms.saturating_add(u64::from(e.min(lim.max)) * 1000),
                call_id: call_id.to_owned(),
                cseq,
                instance: req_instance.clone(),
                reg_id,
                flow: *flow,
                registered_at_ms: now_ms,
            };
            if old
                .iter()
                .any(|o| o.expires_at_ms > now_ms && o.same_id(&b) && out_of_order(o))
            {
                return Decision::Answer(Answer::new(
                    StatusCode::SERVER_INTERNAL_ERROR,
                    "CSeq Out Of Order",
                    R::OutOfOrder,
                ));
            }
            if let Some(pos) = new.iter().position(|o| o.same_id(&b)) {
                if e == 0 {
                    new.remove(pos);
                } else {
                    b.registered_at_ms = new[pos].registered_at_ms;
                    new[pos] = b;
                    any_add = true;
                }
            } else if e != 0 {
                new.push(b);
                any_add = true;
            }
        }
        if new.len() > d.max_contacts {
            return forbidden("Too Many Contacts", R::TooManyContacts);
        }
        let added = new
            .iter()
            .filter(|b| !old.iter().any(|o| o.same_id(b)))
            .count();
        let after = self.total - old.len() + new.len();
        if added > 0 && after > self.cfg.max_bindings {
            let mut a = Answer::new(StatusCode::SERVICE_UNAVAILABLE, "Registrar Full", R::Full);
            a.headers
                .push((HeaderName::RetryAfter, RETRY_AFTER_FULL.to_owned()));
            return Decision::Answer(a);
        }

        // 9. Store ops, 200 OK with the requester's own bindings.
        let mut ops = Vec::new();
        for o in old {
            if !new.iter().any(|b| b.same_id(o)) {
                ops.push(StoreOp::Delete { key: o.key() });
            }
        }
        for b in &new {
            if !old.iter().any(|o| o == b) {
                ops.push(StoreOp::Put {
                    key: b.key(),
                    value: b.encode(),
                });
            }
        }
        let mut a = Answer::new(
            StatusCode::OK,
            "OK",
            if any_add { R::Registered } else { R::Removed },
        );
        list_own(&mut a, new.iter().filter(|b| own(b)), now_ms);
        if any_reg_id && supports_outbound(req) {
            a.headers.push((HeaderName::Require, "outbound".to_owned()));
        }
        Decision::Change {
            answer: a,
            ops,
            apply: Apply { aor, new },
        }
    }

    /// RFC 7616 digest check for domain `di`; `name` is the To user (REGISTER, `Www`) or the
    /// From user (a request the edge bridges, `Proxy`).
    fn authenticate(
        &mut self,
        now_ms: u64,
        req: &Request,
        di: usize,
        name: &str,
        kind: AuthKind,
    ) -> Result<(), Answer> {
        let (Some(d), Some(ds)) = (self.cfg.domains.get(di), self.doms.get(di)) else {
            return Err(Answer::new(
                StatusCode::FORBIDDEN,
                "Domain Not Served",
                ReportResult::DomainNotServed,
            ));
        };
        let realm = d.realm.as_str();
        let challenge = |stale: bool, result: ReportResult| {
            let nonce = self.keys.nonce(now_ms, realm);
            let mut a = Answer::new(kind.status(), kind.reason(), result);
            for &alg in d.offered_algorithms() {
                a.headers.push((
                    kind.challenge_header(),
                    digest::challenge(realm, &nonce, &ds.opaque, alg, stale),
                ));
            }
            a
        };
        let fail = |f: AuthFailure| challenge(f == AuthFailure::Stale, ReportResult::AuthFailed(f));
        let malformed = || fail(AuthFailure::Malformed);

        // Credentials for our realm (others are ignored), their parameters read in one pass.
        let mut creds = None;
        for h in req.headers().get_all(&kind.credentials_header()) {
            if let Ok(a) = Auth::parse(h.value())
                && a.is_digest()
            {
                let c = digest::Creds::gather(&a);
                if c.realm.as_deref() == Some(realm.as_bytes()) {
                    creds = Some(c);
                    break;
                }
            }
        }
        let Some(creds) = creds else {
            return Err(challenge(false, ReportResult::Challenged));
        };
        let Some(username) = creds.username else {
            return Err(malformed());
        };
        if !eq_ic(&username, name.as_bytes()) {
            return Err(Answer::new(
                StatusCode::FORBIDDEN,
                kind.mismatch_reason(),
                ReportResult::Forbidden,
            ));
        }
        let alg = match creds.algorithm {
            None => Alg::Md5,
            Some(a) if eq_ic(&a, b"MD5") => Alg::Md5,
            Some(a) if eq_ic(&a, b"SHA-256") => Alg::Sha256,
            Some(_) => return Err(malformed()),
        };
        // Only what this domain offers (a domain may refuse MD5 altogether).
        if !d.offered_algorithms().contains(&alg) {
            return Err(malformed());
        }
        let digest::Creds {
            nonce: Some(nonce),
            uri: Some(uri),
            response: Some(response),
            cnonce: Some(cnonce),
            nc: Some(nc),
            qop: Some(qop),
            opaque: Some(opaque),
            ..
        } = creds
        else {
            return Err(malformed());
        };
        if !eq_ic(&qop, b"auth") || opaque[..] != *ds.opaque.as_bytes() || cnonce.is_empty() {
            return Err(malformed());
        }
        let nc_val = match parse_nc(&nc) {
            Some(v) if v > 0 => v,
            _ => return Err(malformed()),
        };
        match Uri::parse(uri.clone()) {
            Ok(u) if eq_ic(u.host_raw(), req.uri().host_raw()) => {}
            _ => return Err(malformed()),
        }
        let Some((issue_ms, raw)) = self.keys.check_nonce(&nonce, realm) else {
            return Err(malformed());
        };
        let want_len = match alg {
            Alg::Sha256 => 64,
            Alg::Md5 => 32,
        };
        if response.len() != want_len {
            return Err(malformed());
        }

        // Same work whether or not the user exists: a dummy HA1 stands in.
        let user = ds.users.get(name).and_then(|&i| d.users.get(i));
        let (ha1, known): (&[u8], bool) = match (alg, user) {
            (Alg::Sha256, Some(u)) => (&u.ha1_sha256, true),
            (Alg::Md5, Some(u)) => match &u.ha1_md5 {
                Some(h) => (h, true),
                None => (&self.dummy_md5, false),
            },
            (Alg::Sha256, None) => (&self.dummy_sha, false),
            (Alg::Md5, None) => (&self.dummy_md5, false),
        };
        let expected = digest::expected_response(
            alg,
            ha1,
            &Inputs {
                method: req.method().as_bytes(),
                uri: &uri,
                nonce: &nonce,
                nc: &nc,
                cnonce: &cnonce,
            },
        );
        let mut given = [0u8; 64];
        for (g, c) in given.iter_mut().zip(response.iter()) {
            *g = c.to_ascii_lowercase();
        }
        let matches = digest::ct_eq(&expected, &given[..want_len]);
        if !(matches && known) {
            return Err(fail(if user.is_none() {
                AuthFailure::UnknownUser
            } else {
                AuthFailure::WrongPassword
            }));
        }
        let ttl_ms = self.cfg.nonce_ttl_secs.saturating_mul(1000);
        if now_ms > issue_ms.saturating_add(ttl_ms)
            || issue_ms > now_ms.saturating_add(NONCE_FUTURE_SLACK_MS)
        {
            return Err(fail(AuthFailure::Stale));
        }
        let nc_key = self.keys.tag(b"nc", &[&raw, name.as_bytes(), &cnonce]);
        let verdict = self.nc.check_and_record(nc_key, issue_ms, nc_val);
        match verdict {
            NcCheck::Fresh => Ok(()),
            NcCheck::Replayed => Err(self.fresh_challenge(now_ms, di, AuthFailure::Replayed, kind)),
            NcCheck::Evicted => Err(self.fresh_challenge(now_ms, di, AuthFailure::Stale, kind)),
        }
    }

    fn fresh_challenge(&self, now_ms: u64, di: usize, f: AuthFailure, kind: AuthKind) -> Answer {
        let mut a = Answer::new(kind.status(), kind.reason(), ReportResult::AuthFailed(f));
        let (Some(d), Some(ds)) = (self.cfg.domains.get(di), self.doms.get(di)) else {
            return a;
        };
        let nonce = self.keys.nonce(now_ms, &d.realm);
        for &alg in d.offered_algorithms() {
            a.headers.push((
                kind.challenge_header(),
                digest::challenge(&d.realm, &nonce, &ds.opaque, alg, f == AuthFailure::Stale),
            ));
        }
        a
    }
}

enum Decision {
    Answer(Answer),
    Change {
        answer: Answer,
        ops: Vec<StoreOp>,
        apply: Apply,
    },
}

struct Apply {
    aor: String,
    new: Vec<Binding>,
}

fn parse_nc(b: &[u8]) -> Option<u32> {
    if b.len() != 8 {
        return None;
    }
    let s = std::str::from_utf8(b).ok()?;
    u32::from_str_radix(s, 16).ok()
}

fn supports_outbound(req: &Request) -> bool {
    req.headers()
        .values(&HeaderName::Supported)
        .any(|v| parse_token_list(&v).is_ok_and(|l| l.iter().any(|t| eq_ic(t, b"outbound"))))
}

/// Appends the decimal form of `n` (no formatting machinery).
fn push_decimal(out: &mut String, n: u64) {
    let mut buf = [0u8; 20];
    for &d in sipveil_sip::decimal(n, &mut buf) {
        out.push(char::from(d));
    }
}

fn list_own<'a>(a: &mut Answer, own: impl Iterator<Item = &'a Binding>, now_ms: u64) {
    for b in own {
        let left = b.expires_at_ms.saturating_sub(now_ms).div_ceil(1000);
        let extra = b.instance.as_ref().map_or(0, |i| i.len() + 40);
        let mut v = String::with_capacity(b.contact.len() + 40 + extra);
        v.push('<');
        v.push_str(&b.contact);
        v.push_str(">;expires=");
        push_decimal(&mut v, left);
        if b.q != 1000 {
            // q in thousandths: "0.5" is written "0.500".
            v.push_str(";q=");
            push_decimal(&mut v, u64::from(b.q / 1000));
            v.push('.');
            let frac = b.q % 1000;
            for d in [frac / 100, frac / 10 % 10, frac % 10] {
                v.push(char::from(b'0' + (d % 10) as u8));
            }
        }
        if let Some(i) = &b.instance {
            v.push_str(";+sip.instance=\"");
            v.push_str(i);
            v.push('"');
            if let Some(r) = b.reg_id {
                v.push_str(";reg-id=");
                push_decimal(&mut v, u64::from(r));
            }
        }
        a.headers.push((HeaderName::Contact, v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Contact values of a 200 OK, against what `format!` writes for them.
    #[test]
    fn listed_contacts_are_written_as_format_writes_them() {
        let flow = FlowInfo {
            proto: crate::Proto::Udp,
            local: "198.18.0.1:5060".parse().expect("addr"),
            peer: "198.18.0.7:5060".parse().expect("addr"),
            worker: 0,
            conn: 0,
        };
        let mk =
            |q: u16, instance: Option<&str>, reg_id: Option<u32>, expires_at_ms: u64| Binding {
                aor: "a@open.lab".into(),
                contact: "sip:a@198.18.0.7:5060;transport=udp".into(),
                q,
                expires_at_ms,
                call_id: "c".into(),
                cseq: 1,
                instance: instance.map(str::to_owned),
                reg_id,
                flow,
                registered_at_ms: 0,
            };
        let now = 1_000_000;
        let list = [
            mk(1000, None, None, now + 3_600_000),
            mk(500, None, None, now + 1),
            mk(0, Some("<urn:uuid:1>"), Some(7), now + 59_999),
            mk(1, Some("<urn:uuid:2>"), None, now),
            mk(u16::MAX, None, None, now + 120_000_000_000),
        ];
        let mut a = Answer::new(StatusCode::OK, "OK", ReportResult::Registered);
        list_own(&mut a, list.iter(), now);
        let want: Vec<String> = list
            .iter()
            .map(|b| {
                let left = b.expires_at_ms.saturating_sub(now).div_ceil(1000);
                let mut v = format!("<{}>;expires={left}", b.contact);
                if b.q != 1000 {
                    v.push_str(&format!(";q={}.{:03}", b.q / 1000, b.q % 1000));
                }
                if let Some(i) = &b.instance {
                    v.push_str(&format!(";+sip.instance=\"{i}\""));
                    if let Some(r) = b.reg_id {
                        v.push_str(&format!(";reg-id={r}"));
                    }
                }
                v
            })
            .collect();
        let got: Vec<String> = a.headers.iter().map(|(_, v)| v.clone()).collect();
        assert_eq!(got, want);
        assert!(a.headers.iter().all(|(n, _)| *n == HeaderName::Contact));
    }

    #[test]
    fn nc_table_is_bounded_and_eviction_never_reopens_a_nonce() {
        let mut t = NcTable::new(2);
        assert!(matches!(
            t.check_and_record([1; 32], 100, 1),
            NcCheck::Fresh
        ));
        assert!(matches!(
            t.check_and_record([1; 32], 100, 1),
            NcCheck::Replayed
        ));
        assert!(matches!(
            t.check_and_record([1; 32], 100, 2),
            NcCheck::Fresh
        ));
        assert!(matches!(
            t.check_and_record([2; 32], 200, 1),
            NcCheck::Fresh
        ));
        // full: the oldest entry goes, the floor rises to its issue time
        assert!(matches!(
            t.check_and_record([3; 32], 300, 1),
            NcCheck::Fresh
        ));
        assert_eq!(t.map.len(), 2);
        assert_eq!(t.floor_ms, 100);
        // the evicted one cannot be replayed as if new
        assert!(matches!(
            t.check_and_record([1; 32], 100, 1),
            NcCheck::Evicted
        ));
        // pruning by age
        t.prune(250);
        assert_eq!(t.map.len(), 1);
        assert!(matches!(
            t.check_and_record([3; 32], 300, 1),
            NcCheck::Replayed
        ));
    }
}

#[cfg(test)]
mod build_tests {
    use super::*;
    use sipveil_sip::{Limits, Message, parse_datagram};

    #[test]
    fn fast_path_writes_what_the_builder_writes() {
        let text = "REGISTER sip:open.lab SIP/2.0\r\n\
            v: SIP/2.0/UDP 198.18.1.2:5060;branch=z9hG4bK1;rport\r\n\
            Via: SIP/2.0/TCP 198.18.1.9;branch=z9hG4bK2\r\n\
            Max-Forwards: 70\r\n\
            f: <sip:a@open.lab>;tag=x1\r\n\
            t: \"A\" <sip:a@open.lab>\r\n\
            i: cid-1\r\n\
            CSeq: 3 REGISTER\r\n\
            m: <sip:a@198.18.1.2>\r\n\
            l: 0\r\n\r\n";
        let Ok(Message::Request(req)) =
            parse_datagram(Bytes::from_static(text.as_bytes()), &Limits::default())
        else {
            panic!("fixture parses");
        };
        let r = Registrar::new(
            RegistrarConfig {
                domains: Vec::new(),
                nonce_ttl_secs: 300,
                max_bindings: 10,
            },
            [1; 32],
        );
        let mut a = Answer::new(StatusCode::OK, "OK", ReportResult::Registered);
        a.headers
            .push((HeaderName::Contact, "<sip:a@198.18.1.2>;expires=60".into()));
        a.headers.push((HeaderName::Require, "outbound".into()));
        let tag = r.to_tag(&req);
        let fast = r.build_fast(&req, &a, &tag).expect("fast path");
        let checked = r.build_checked(&req, &a, &tag).expect("builder");
        assert_eq!(
            String::from_utf8_lossy(&fast.to_bytes()),
            String::from_utf8_lossy(&checked.to_bytes())
        );
        // The written answer is the one a parse of its bytes gives (it is not parsed again).
        let Ok(Message::Response(reparsed)) = parse_datagram(fast.to_bytes(), &Limits::default())
        else {
            panic!("the fast path's bytes parse");
        };
        assert_eq!(format!("{fast:?}"), format!("{reparsed:?}"));
        assert_eq!(fast.headers().count(&HeaderName::Via), 2);
        // a value that would split the header section falls back
        a.headers.push((HeaderName::Contact, "x\r\nEvil: 1".into()));
        assert!(r.build_fast(&req, &a, b"t").is_none());
    }

    /// An AOR's binding list is kept at its size, not at the growth capacity of its pushes,
    /// both when a REGISTER creates it and when bindings are restored at start.
    #[test]
    fn binding_lists_hold_no_spare_room() {
        let text = "REGISTER sip:open.lab SIP/2.0\r\n\
            Via: SIP/2.0/UDP 198.18.1.2:5060;branch=z9hG4bK1\r\n\
            Max-Forwards: 70\r\n\
            From: <sip:neo@open.lab>;tag=x1\r\n\
            To: <sip:neo@open.lab>\r\n\
            Call-ID: cid-1\r\n\
            CSeq: 1 REGISTER\r\n\
            Contact: <sip:neo@198.18.1.2>\r\n\
            Content-Length: 0\r\n\r\n";
        let Ok(Message::Request(req)) =
            parse_datagram(Bytes::from_static(text.as_bytes()), &Limits::default())
        else {
            panic!("fixture parses");
        };
        let cfg = RegistrarConfig {
            domains: vec![crate::DomainConfig {
                name: "open.lab".into(),
                policy: crate::Policy::Open,
                realm: "open.lab".into(),
                users: Vec::new(),
                anonymous_callers: true,
                refuse_anonymous: false,
                expires: crate::ExpiresLimits {
                    min: 60,
                    max: 3600,
                    default: 600,
                },
                max_contacts: 4,
                digest_algorithms: Vec::new(),
            }],
            nonce_ttl_secs: 300,
            max_bindings: 10,
        };
        let flow = FlowInfo {
            proto: crate::Proto::Udp,
            local: "198.18.1.1:5060".parse().expect("address"),
            peer: "198.18.1.2:5060".parse().expect("address"),
            worker: 0,
            conn: 0,
        };
        let now = 1_700_000_000_000;
        let mut r = Registrar::new(cfg.clone(), [1; 32]);
        let RegisterOutcome::Commit { ops, .. } = r.register(now, &req, &flow) else {
            panic!("a first REGISTER commits");
        };
        let list = r.aors.get("neo@open.lab").expect("the AOR is held");
        assert_eq!((list.len(), list.capacity()), (1, 1));

        let mut restored = Registrar::new(cfg, [1; 32]);
        for op in ops {
            if let StoreOp::Put { key, value } = op {
                restored.restore(&key, &value, now).expect("restores");
            }
        }
        let list = restored.aors.get("neo@open.lab").expect("restored");
        assert_eq!((list.len(), list.capacity()), (1, 1));
    }
}

/// Which digest exchange: REGISTER's (401, `WWW-Authenticate`, `Authorization`) or a bridged
/// request's (407, `Proxy-Authenticate`, `Proxy-Authorization`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AuthKind {
    Www,
    Proxy,
}

impl AuthKind {
    fn status(self) -> StatusCode {
        match self {
            AuthKind::Www => StatusCode::UNAUTHORIZED,
            AuthKind::Proxy => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        }
    }
    fn reason(self) -> &'static str {
        match self {
            AuthKind::Www => "Unauthorized",
            AuthKind::Proxy => "Proxy Authentication Required",
        }
    }
    fn challenge_header(self) -> HeaderName {
        match self {
            AuthKind::Www => HeaderName::WwwAuthenticate,
            AuthKind::Proxy => HeaderName::ProxyAuthenticate,
        }
    }
    fn credentials_header(self) -> HeaderName {
        match self {
            AuthKind::Www => HeaderName::Authorization,
            AuthKind::Proxy => HeaderName::ProxyAuthorization,
        }
    }
    fn mismatch_reason(self) -> &'static str {
        match self {
            AuthKind::Www => "Username Does Not Match To",
            AuthKind::Proxy => "Username Does Not Match From",
        }
    }
}

/// The outcome of [`Registrar::authenticate_request`].
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one value per INVITE, consumed at once; boxing the response would allocate"
)]
pub enum RequestAuth {
    /// The From host is not an `authenticated` domain served here: the caller is anonymous.
    NotRequired,
    /// Credentials checked: the caller is `aor` (`user@domain`, lower case).
    Authenticated {
        /// The authenticated address of record.
        aor: String,
    },
    /// Answer the request with `response` (407 challenge, or 403).
    Refused {
        /// The answer.
        response: Response,
        /// Why, when credentials were given and failed.
        failure: Option<AuthFailure>,
    },
    /// No answer could be built (malformed request): drop it.
    Unanswerable,
}
