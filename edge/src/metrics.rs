//! Prometheus metrics and HdrHistogram interval logs (issue 4, item 6).
//!
//! One [`Metrics`] per daemon, shared as `Arc<Metrics>` by the transport workers, the TU, the
//! store committer and the control socket. Every recording call is thread-safe and cheap: the
//! series for known SIP methods, transports and workers are created once and kept as atomics;
//! the rest (response codes, domains, reasons) are looked up under a read lock without
//! allocating once the series exists.
//!
//! Label values are bounded:
//! - `method`: the SIP methods of RFC 3261 and its common extensions, anything else `other`;
//! - `code`: 100–699, anything else `other`;
//! - `proto`: `udp`, `tcp`, `tls` (case-insensitive on input), anything else `other`;
//! - `domain`: only the names given to [`Metrics::set_domains`], anything else `other`;
//! - free-form values (`policy`, `result`, `reason`): at most [`MAX_FREE_LABELS`] distinct values
//!   per label, each at most 64 bytes of `[A-Za-z0-9_.:+-]`; beyond that, or otherwise, `other`;
//! - `worker`: 0..[`MAX_WORKERS`]; larger indices are counted on the last slot.
//!
//! Scrape-time extras (for example XDP counters read from BPF maps) are added with
//! [`Metrics::add_collector`] (a closure that appends OpenMetrics text lines) or
//! [`Metrics::register_collector`] (a prometheus-client [`Collector`]).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam::channel::{self, RecvTimeoutError, Sender};
use hdrhistogram::Histogram as HdrHistogram;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Worker slots are created on demand up to this many; larger worker indices share the last one.
pub const MAX_WORKERS: usize = 256;
/// Distinct values kept per free-form label (`policy`, `result`, `reason`) before `other`.
pub const MAX_FREE_LABELS: usize = 32;
/// The tag of every interval in the HdrHistogram interval log.
pub const HLOG_TAG: &str = "transaction_latency_us";
/// The `Content-Type` of `GET /metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Lowest value the latency HdrHistograms track (µs).
const HDR_LOW_US: u64 = 1;
/// Highest value the latency HdrHistograms track (µs): 60 s; larger values saturate.
const HDR_HIGH_US: u64 = 60_000_000;
const HDR_SIGFIG: u8 = 3;

/// Transaction latency buckets, seconds: 50 µs … 5 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];
/// Store commit (fsync) buckets, seconds: 100 µs … 5 s.
const COMMIT_BUCKETS: [f64; 15] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0,
];

/// Methods with their own series; the last entry, `other`, takes every other method.
const METHODS: [&str; 15] = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "REGISTER",
    "OPTIONS",
    "INFO",
    "UPDATE",
    "PRACK",
    "SUBSCRIBE",
    "NOTIFY",
    "REFER",
    "MESSAGE",
    "PUBLISH",
    "other",
];
const PROTOS: [&str; 4] = ["udp", "tcp", "tls", "other"];
const OTHER: &str = "other";

fn method_index(method: &str) -> usize {
    // SIP method names are case-sensitive (RFC 3261 §7.1).
    METHODS[..METHODS.len() - 1]
        .iter()
        .position(|m| *m == method)
        .unwrap_or(METHODS.len() - 1)
}

fn proto_index(proto: &str) -> usize {
    PROTOS[..PROTOS.len() - 1]
        .iter()
        .position(|p| p.eq_ignore_ascii_case(proto))
        .unwrap_or(PROTOS.len() - 1)
}

/// A label value shared between series without copying the string.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Name(Arc<str>);

impl Name {
    fn new(s: &str) -> Name {
        Name(Arc::from(s))
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

/// A response code label: 100–699, or `other` (stored as 0).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct Code(u16);

impl Code {
    fn new(code: u16) -> Code {
        if (100..=699).contains(&code) {
            Code(code)
        } else {
            Code(0)
        }
    }
}

impl EncodeLabelValue for Code {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        if self.0 == 0 {
            encoder.write_str(OTHER)
        } else {
            write!(encoder, "{}", self.0)
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseLabels {
    method: &'static str,
    code: Code,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegistrationLabels {
    domain: Name,
    policy: Name,
    result: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthFailureLabels {
    domain: Name,
    reason: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeakLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ParseErrorLabels {
    proto: &'static str,
    answered: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtoLabels {
    proto: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectedLabels {
    proto: &'static str,
    reason: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DomainLabels {
    domain: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DomainInfoLabels {
    domain: Name,
    policy: Name,
}

/// Builds histograms with fixed buckets for a [`Family`].
#[derive(Clone, Copy, Debug)]
struct Buckets(&'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

type FloatCounter = Counter<f64, AtomicU64>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether `s` may become a label value as is (no escaping needed, bounded length).
fn plain_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'+' | b'-'))
}

/// Maps free-form strings to shared label values, at most `MAX_FREE_LABELS` of them.
#[derive(Debug)]
struct Interner {
    map: RwLock<HashMap<Box<str>, Name>>,
    other: Name,
}

impl Interner {
    fn new(other: &Name) -> Interner {
        Interner {
            map: RwLock::new(HashMap::new()),
            other: other.clone(),
        }
    }

    fn get(&self, s: &str) -> Name {
        if let Some(v) = self
            .map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(s)
        {
            return v.clone();
        }
        if !plain_label(s) {
            return self.other.clone();
        }
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(v) = map.get(s) {
            return v.clone();
        }
        if map.len() >= MAX_FREE_LABELS {
            return self.other.clone();
        }
        let v = Name::new(s);
        map.insert(Box::from(s), v.clone());
        v
    }
}

/// The per-worker state: load counters and the latency histogram of the current interval.
struct WorkerSlot {
    messages: Counter,
    busy: FloatCounter,
    /// Latency (µs) recorded since the last interval-log drain.
    interval: Mutex<HdrHistogram<u64>>,
}

/// Latency histograms shared with the interval-log thread.
struct Latency {
    slots: RwLock<Vec<Arc<WorkerSlot>>>,
    /// Everything drained from the worker slots so far.
    total: Mutex<HdrHistogram<u64>>,
}

fn new_hdr() -> HdrHistogram<u64> {
    match HdrHistogram::new_with_bounds(HDR_LOW_US, HDR_HIGH_US, HDR_SIGFIG) {
        Ok(h) => h,
        // The bounds are constants that hdrhistogram accepts (1 ≤ low, 2·low ≤ high, sigfig ≤ 5).
        Err(e) => unreachable!("constant HdrHistogram bounds rejected: {e:?}"),
    }
}

impl Latency {
    /// Moves every worker's interval counts into `acc` and into `total`.
    fn drain(&self, acc: &mut HdrHistogram<u64>) -> io::Result<()> {
        let slots: Vec<Arc<WorkerSlot>> = self
            .slots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for slot in &slots {
            let mut h = lock(&slot.interval);
            acc.add(&*h)
                .map_err(|e| io::Error::other(format!("{e:?}")))?;
            h.reset();
        }
        lock(&self.total)
            .add(&*acc)
            .map_err(|e| io::Error::other(format!("{e:?}")))
    }
}

struct Hlog {
    stop: Sender<()>,
    thread: JoinHandle<io::Result<()>>,
}

type TextCollector = Box<dyn Fn(&mut String) + Send + Sync>;

/// The daemon's metrics: Prometheus families plus HdrHistograms of transaction latency.
pub struct Metrics {
    registry: Mutex<Registry>,
    collectors: Mutex<Vec<TextCollector>>,
    other: Name,

    requests: Vec<Counter>,
    responses: Family<ResponseLabels, Counter>,
    registrations: Family<RegistrationLabels, Counter>,
    auth_failures: Family<AuthFailureLabels, Counter>,
    privacy_leaks: Family<LeakLabels, Counter>,
    calls_active: Gauge,
    calls_total: Family<CallResultLabels, Counter>,
    parse_errors: Vec<[Counter; 2]>,
    connections: Vec<Gauge>,
    connections_total: Vec<Counter>,
    connections_rejected: Family<RejectedLabels, Counter>,
    worker_messages: Family<WorkerLabels, Counter>,
    worker_busy: Family<WorkerLabels, FloatCounter>,
    latency_hist: Vec<Histogram>,
    store_commits: Counter,
    store_ops: Counter,
    store_commit_seconds: Histogram,
    bindings: Family<DomainLabels, Gauge>,
    domain_info: Family<DomainInfoLabels, Gauge>,

    /// Registered domains by name (as given to `set_domains`) → label value.
    domains: RwLock<HashMap<Box<str>, Name>>,
    /// Bumped by every `set_domains` (after the map changed): [`WorkerCounters`] drop their
    /// registration handles when it moved.
    domains_gen: AtomicU64,
    policies: Interner,
    results: Interner,
    reasons: Interner,

    latency: Arc<Latency>,
    hlog: Mutex<Option<Hlog>>,
}

/// Counter handles one worker keeps for its per-request series (responses by method and
/// code, registrations by domain, policy and result), so that counting is an atomic add on the
/// series itself. At most [`WorkerCounters::MAX_ENTRIES`] of each; label sets beyond that take
/// the shared path. Use one with one [`Metrics`] only.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    responses: Vec<(u8, u16, Counter)>,
    registrations: Vec<(Box<str>, &'static str, &'static str, Counter)>,
    domains_gen: u64,
}

impl WorkerCounters {
    /// Handles kept per kind.
    pub const MAX_ENTRIES: usize = 64;
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics with one worker slot (more are created on first use or by [`Metrics::set_workers`]).
    pub fn new() -> Arc<Metrics> {
        Metrics::with_workers(1)
    }

    /// Metrics with `workers` worker slots created up front (at most [`MAX_WORKERS`]).
    pub fn with_workers(workers: usize) -> Arc<Metrics> {
        let mut reg = Registry::with_prefix("sipveil");
        let other = Name::new(OTHER);

        let req_family = Family::<MethodLabels, Counter>::default();
        let requests = METHODS
            .iter()
            .map(|m| {
                req_family
                    .get_or_create(&MethodLabels { method: m })
                    .clone()
            })
            .collect();
        reg.register(
            "sip_requests",
            "SIP requests received, by method",
            req_family,
        );

        let responses = Family::<ResponseLabels, Counter>::default();
        reg.register(
            "sip_responses",
            "SIP responses sent, by request method and status code",
            responses.clone(),
        );
        let registrations = Family::<RegistrationLabels, Counter>::default();
        reg.register(
            "registrations",
            "REGISTER requests handled, by domain, policy and result",
            registrations.clone(),
        );
        let auth_failures = Family::<AuthFailureLabels, Counter>::default();
        reg.register(
            "auth_failures",
            "Digest authentication failures, by domain and reason",
            auth_failures.clone(),
        );
        let privacy_leaks = Family::<LeakLabels, Counter>::default();
        reg.register(
            "privacy_leaks",
            "Egress call-signalling messages carrying the other party's identifiers or a foreign private address, by kind (should stay 0)",
            privacy_leaks.clone(),
        );
        let calls_active = Gauge::default();
        reg.register(
            "calls_active",
            "Calls the B2BUA holds now",
            calls_active.clone(),
        );
        let calls_total = Family::<CallResultLabels, Counter>::default();
        reg.register(
            "calls",
            "Calls ended, by result (answered, unanswered, refused)",
            calls_total.clone(),
        );

        let pe_family = Family::<ParseErrorLabels, Counter>::default();
        let parse_errors = PROTOS
            .iter()
            .map(|p| {
                // One at a time: a `get_or_create` guard blocks the family's next insertion.
                let no = pe_family
                    .get_or_create(&ParseErrorLabels {
                        proto: p,
                        answered: "false",
                    })
                    .clone();
                let yes = pe_family
                    .get_or_create(&ParseErrorLabels {
                        proto: p,
                        answered: "true",
                    })
                    .clone();
                [no, yes]
            })
            .collect();
        reg.register(
            "sip_parse_errors",
            "Messages that failed to parse, by transport and whether an error response was sent",
            pe_family,
        );

        let conn_family = Family::<ProtoLabels, Gauge>::default();
        let connections = PROTOS
            .iter()
            .map(|p| conn_family.get_or_create(&ProtoLabels { proto: p }).clone())
            .collect();
        reg.register(
            "transport_connections",
            "Open TCP/TLS connections, by transport",
            conn_family,
        );
        let conn_total_family = Family::<ProtoLabels, Counter>::default();
        let connections_total = PROTOS
            .iter()
            .map(|p| {
                conn_total_family
                    .get_or_create(&ProtoLabels { proto: p })
                    .clone()
            })
            .collect();
        // Not `transport_connections_total`: that would give the gauge's family name a second
        // `# TYPE` line, which OpenMetrics parsers (Prometheus included) reject.
        reg.register(
            "transport_connections_opened",
            "TCP/TLS connections accepted or established, by transport",
            conn_total_family,
        );
        let connections_rejected = Family::<RejectedLabels, Counter>::default();
        reg.register(
            "transport_connections_rejected",
            "TCP/TLS connections refused, by transport and reason",
            connections_rejected.clone(),
        );

        let worker_messages = Family::<WorkerLabels, Counter>::default();
        reg.register(
            "worker_messages",
            "SIP messages handled, by worker thread",
            worker_messages.clone(),
        );
        let worker_busy = Family::<WorkerLabels, FloatCounter>::default();
        reg.register(
            "worker_busy_seconds",
            "Time worker threads spent handling events, by worker thread",
            worker_busy.clone(),
        );

        let lat_family = Family::<MethodLabels, Histogram, Buckets>::new_with_constructor(Buckets(
            &LATENCY_BUCKETS,
        ));
        let latency_hist = METHODS
            .iter()
            .map(|m| {
                lat_family
                    .get_or_create(&MethodLabels { method: m })
                    .clone()
            })
            .collect();
        reg.register(
            "transaction_latency_seconds",
            "Time from receiving a request to sending its final response, by method",
            lat_family,
        );

        let store_commits = Counter::default();
        reg.register(
            "store_commits",
            "Registrar store transactions committed",
            store_commits.clone(),
        );
        let store_ops = Counter::default();
        reg.register(
            "store_ops",
            "Registrar store operations committed",
            store_ops.clone(),
        );
        let store_commit_seconds = Histogram::new(COMMIT_BUCKETS.iter().copied());
        reg.register(
            "store_commit_seconds",
            "Duration of registrar store commits, fsync included",
            store_commit_seconds.clone(),
        );
        let bindings = Family::<DomainLabels, Gauge>::default();
        reg.register(
            "registrar_bindings",
            "Live registrar bindings, by domain",
            bindings.clone(),
        );
        let domain_info = Family::<DomainInfoLabels, Gauge>::default();
        reg.register(
            "domain_info",
            "Configured domains and their policy (value 1)",
            domain_info.clone(),
        );

        let m = Metrics {
            registry: Mutex::new(reg),
            collectors: Mutex::new(Vec::new()),
            policies: Interner::new(&other),
            results: Interner::new(&other),
            reasons: Interner::new(&other),
            other,
            requests,
            responses,
            registrations,
            auth_failures,
            privacy_leaks,
            calls_active,
            calls_total,
            parse_errors,
            connections,
            connections_total,
            connections_rejected,
            worker_messages,
            worker_busy,
            latency_hist,
            store_commits,
            store_ops,
            store_commit_seconds,
            bindings,
            domain_info,
            domains: RwLock::new(HashMap::new()),
            domains_gen: AtomicU64::new(0),
            latency: Arc::new(Latency {
                slots: RwLock::new(Vec::new()),
                total: Mutex::new(new_hdr()),
            }),
            hlog: Mutex::new(None),
        };
        m.set_workers(workers.max(1));
        Arc::new(m)
    }

    /// Makes sure worker slots `0..n` exist (capped at [`MAX_WORKERS`]); never removes slots.
    pub fn set_workers(&self, n: usize) {
        let n = n.min(MAX_WORKERS);
        let mut slots = self
            .latency
            .slots
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        while slots.len() < n {
            let w = WorkerLabels {
                worker: slots.len(),
            };
            slots.push(Arc::new(WorkerSlot {
                messages: self.worker_messages.get_or_create(&w).clone(),
                busy: self.worker_busy.get_or_create(&w).clone(),
                interval: Mutex::new(new_hdr()),
            }));
        }
    }

    /// Runs `f` on the slot of `worker`, creating it first if needed (rare: after that only a
    /// shared read lock is taken).
    fn with_slot<R>(&self, worker: usize, f: impl FnOnce(&WorkerSlot) -> R) -> R {
        let idx = worker.min(MAX_WORKERS - 1);
        {
            let slots = self
                .latency
                .slots
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(s) = slots.get(idx) {
                return f(s);
            }
        }
        self.set_workers(idx + 1);
        let slots = self
            .latency
            .slots
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        match slots.get(idx) {
            Some(s) => f(s),
            None => unreachable!("set_workers({}) created slot {idx}", idx + 1),
        }
    }

    /// Sets the domains that get their own `domain` label: `(name, policy)` pairs from the
    /// config. Replaces the previous set (call again on reload); series of domains no longer
    /// configured are dropped from `registrar_bindings` and `domain_info`. Names are matched
    /// ASCII case-insensitively; a name that is not a plain label value (see module docs) is
    /// counted as `other`.
    pub fn set_domains(&self, domains: &[(&str, &str)]) {
        let mut map = self.domains.write().unwrap_or_else(PoisonError::into_inner);
        let old: Vec<Name> = map.values().cloned().collect();
        map.clear();
        self.domain_info.clear();
        for (name, policy) in domains {
            if !plain_label(name) {
                continue;
            }
            let key: Box<str> = name.to_ascii_lowercase().into();
            let value = Name::new(&key);
            map.insert(key, value.clone());
            self.domain_info
                .get_or_create(&DomainInfoLabels {
                    domain: value,
                    policy: self.policies.get(policy),
                })
                .set(1);
        }
        for name in old {
            if !map.contains_key(&*name) {
                self.bindings.remove(&DomainLabels { domain: name });
            }
        }
        drop(map);
        self.domains_gen
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    fn domain(&self, domain: &str) -> Name {
        let map = self.domains.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(v) = map.get(domain) {
            return v.clone();
        }
        if domain.bytes().any(|b| b.is_ascii_uppercase())
            && let Some(v) = map.values().find(|v| v.eq_ignore_ascii_case(domain))
        {
            return v.clone();
        }
        self.other.clone()
    }

    /// A SIP request was received.
    pub fn request_in(&self, method: &str) {
        self.requests[method_index(method)].inc();
    }

    /// A SIP response to a `method` request was sent with status `code`.
    pub fn response_out(&self, method: &str, code: u16) {
        let labels = ResponseLabels {
            method: METHODS[method_index(method)],
            code: Code::new(code),
        };
        self.responses.get_or_create(&labels).inc();
    }

    /// [`Metrics::response_out`] through a worker's own handles: after the first answer with a
    /// given method and code, no lock is taken and no label set hashed. `c` must be used with
    /// this `Metrics` only.
    pub fn response_out_cached(&self, c: &mut WorkerCounters, method: &str, code: u16) {
        let m = method_index(method);
        let code = Code::new(code).0;
        if let Some((_, _, counter)) = c
            .responses
            .iter()
            .find(|(cm, cc, _)| usize::from(*cm) == m && *cc == code)
        {
            counter.inc();
            return;
        }
        let labels = ResponseLabels {
            method: METHODS[m],
            code: Code(code),
        };
        let counter = self.responses.get_or_create(&labels).clone();
        counter.inc();
        if c.responses.len() < WorkerCounters::MAX_ENTRIES
            && let Ok(cm) = u8::try_from(m)
        {
            c.responses.push((cm, code, counter));
        }
    }

    /// [`Metrics::registration`] through a worker's own handles (no lock, no hashing once a
    /// label set was seen; dropped when [`Metrics::set_domains`] changed the domain labels).
    pub fn registration_cached(
        &self,
        c: &mut WorkerCounters,
        domain: &str,
        policy: &'static str,
        result: &'static str,
    ) {
        let generation = self.domains_gen.load(std::sync::atomic::Ordering::Acquire);
        if c.domains_gen != generation {
            c.registrations.clear();
            c.domains_gen = generation;
        }
        if let Some((_, _, _, counter)) = c
            .registrations
            .iter()
            .find(|(d, p, r, _)| **d == *domain && *p == policy && *r == result)
        {
            counter.inc();
            return;
        }
        let labels = RegistrationLabels {
            domain: self.domain(domain),
            policy: self.policies.get(policy),
            result: self.results.get(result),
        };
        let counter = self.registrations.get_or_create(&labels).clone();
        counter.inc();
        if c.registrations.len() < WorkerCounters::MAX_ENTRIES {
            c.registrations
                .push((domain.into(), policy, result, counter));
        }
    }

    /// A REGISTER was handled for `domain` (`policy`, `result` as the registrar reports them).
    pub fn registration(&self, domain: &str, policy: &str, result: &str) {
        let labels = RegistrationLabels {
            domain: self.domain(domain),
            policy: self.policies.get(policy),
            result: self.results.get(result),
        };
        self.registrations.get_or_create(&labels).inc();
    }

    /// An egress call-signalling message carried something of the other party's: `kind` is
    /// `identifier` or `private_address`.
    pub fn privacy_leak(&self, kind: &'static str) {
        self.privacy_leaks.get_or_create(&LeakLabels { kind }).inc();
    }

    /// The number of calls held now.
    pub fn set_calls_active(&self, n: usize) {
        self.calls_active.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A call ended (or was refused before it started) with `result`.
    pub fn call_ended(&self, result: &'static str) {
        self.calls_total
            .get_or_create(&CallResultLabels { result })
            .inc();
    }

    /// A digest authentication failed in `domain` for `reason`.
    pub fn auth_failure(&self, domain: &str, reason: &str) {
        let labels = AuthFailureLabels {
            domain: self.domain(domain),
            reason: self.reasons.get(reason),
        };
        self.auth_failures.get_or_create(&labels).inc();
    }

    /// A message on `proto` failed to parse; `answered`: an error response was sent.
    pub fn parse_error(&self, proto: &str, answered: bool) {
        self.parse_errors[proto_index(proto)][usize::from(answered)].inc();
    }

    /// A `proto` connection was accepted (or established).
    pub fn connection_opened(&self, proto: &str) {
        let i = proto_index(proto);
        self.connections[i].inc();
        self.connections_total[i].inc();
    }

    /// A `proto` connection was closed (pair every `connection_opened` with one of these).
    pub fn connection_closed(&self, proto: &str) {
        self.connections[proto_index(proto)].dec();
    }

    /// A `proto` connection was refused for `reason` (e.g. `limit`, `per_ip_limit`, `tls`).
    pub fn connection_rejected(&self, proto: &str, reason: &str) {
        let labels = RejectedLabels {
            proto: PROTOS[proto_index(proto)],
            reason: self.reasons.get(reason),
        };
        self.connections_rejected.get_or_create(&labels).inc();
    }

    /// Worker `worker` handled `messages` messages and was busy for `busy` (one loop turn or a
    /// batch of them).
    pub fn worker_loop(&self, worker: usize, messages: u64, busy: Duration) {
        self.with_slot(worker, |slot| {
            slot.messages.inc_by(messages);
            slot.busy.inc_by(busy.as_secs_f64());
        });
    }

    /// A `method` transaction handled on `worker` took `d` (request in → final response out).
    /// Goes to the Prometheus histogram and to the worker's HdrHistogram (µs, 1 µs – 60 s,
    /// saturating).
    pub fn transaction_latency(&self, worker: usize, method: &str, d: Duration) {
        self.latency_hist[method_index(method)].observe(d.as_secs_f64());
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.with_slot(worker, |slot| lock(&slot.interval).saturating_record(us));
    }

    /// The store committed a transaction of `ops` operations in `d` (fsync included).
    pub fn store_commit(&self, ops: usize, d: Duration) {
        self.store_commits.inc();
        self.store_ops
            .inc_by(u64::try_from(ops).unwrap_or(u64::MAX));
        self.store_commit_seconds.observe(d.as_secs_f64());
    }

    /// `domain` has `n` live bindings now. Unregistered domains all share `other` (last write
    /// wins), so report only configured domains.
    pub fn set_bindings(&self, domain: &str, n: i64) {
        self.bindings
            .get_or_create(&DomainLabels {
                domain: self.domain(domain),
            })
            .set(n);
    }

    /// Adds a scrape-time text source: `f` appends complete OpenMetrics lines (`# TYPE`,
    /// `# HELP`, samples, each ending in `\n`) to the buffer at every [`Metrics::render`]. They
    /// are placed before the final `# EOF`; a missing final newline is added. Metric names
    /// should start with `sipveil_` and must not clash with the families here.
    pub fn add_collector(&self, f: Box<dyn Fn(&mut String) + Send + Sync>) {
        lock(&self.collectors).push(f);
    }

    /// Adds a prometheus-client [`Collector`], encoded (with the `sipveil_` prefix) at every
    /// render.
    pub fn register_collector(&self, c: Box<dyn Collector>) {
        lock(&self.registry).register_collector(c);
    }

    /// Everything, as OpenMetrics text (ends with `# EOF\n`).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &lock(&self.registry)) {
            tracing::warn!("metrics: encoding failed: {e}");
        }
        if out.ends_with("# EOF\n") {
            out.truncate(out.len() - "# EOF\n".len());
        }
        for f in lock(&self.collectors).iter() {
            f(&mut out);
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
        }
        out.push_str("# EOF\n");
        out
    }

    /// Serves `GET /metrics` on `addr` from a background thread, one connection at a time, and
    /// returns the bound address (port 0 → the port chosen). Other paths: 404; other methods:
    /// 405; malformed or oversized requests: 400 / 431; a client gets 5 s to send its request.
    /// The thread lives as long as the process.
    pub fn serve(self: &Arc<Self>, addr: SocketAddr) -> io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr)?;
        let local = listener.local_addr()?;
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("sv-metrics-http".into())
            .spawn(move || {
                loop {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            if let Err(e) = me.answer(stream) {
                                tracing::debug!("metrics http: {e}");
                            }
                        }
                        Err(e) => {
                            tracing::debug!("metrics http accept: {e}");
                            // EMFILE and friends: do not spin.
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
            })?;
        Ok(local)
    }

    fn answer(&self, mut stream: TcpStream) -> io::Result<()> {
        const MAX_REQUEST: usize = 8192;
        const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
        stream.set_write_timeout(Some(REQUEST_DEADLINE))?;
        let deadline = Instant::now() + REQUEST_DEADLINE;
        let mut buf = vec![0u8; MAX_REQUEST];
        let mut len = 0;
        let head_end = loop {
            if let Some(end) = find_head_end(&buf[..len]) {
                break Some(end);
            }
            if len == buf.len() {
                break None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            stream.set_read_timeout(Some(left))?;
            match stream.read(&mut buf[len..]) {
                Ok(0) => break None,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        let (status, body) = match head_end {
            None if len == buf.len() => ("431 Request Header Fields Too Large", None),
            None => ("400 Bad Request", None),
            Some(end) => self.route(&buf[..end]),
        };
        let body = body.unwrap_or_else(|| format!("{status}\n"));
        let ctype = if status.starts_with("200") {
            CONTENT_TYPE
        } else {
            "text/plain; charset=utf-8"
        };
        let allow = if status.starts_with("405") {
            "Allow: GET\r\n"
        } else {
            ""
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(body.as_bytes())?;
        stream.flush()
    }

    fn route(&self, head: &[u8]) -> (&'static str, Option<String>) {
        let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
        let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
            return ("400 Bad Request", None);
        };
        let mut parts = line.trim_end_matches('\r').split(' ');
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return ("400 Bad Request", None);
        };
        if method.is_empty() || !version.starts_with("HTTP/1.") {
            return ("400 Bad Request", None);
        }
        let path = target.split_once('?').map_or(target, |(p, _)| p);
        if path != "/metrics" {
            return ("404 Not Found", None);
        }
        if method != "GET" {
            return ("405 Method Not Allowed", None);
        }
        ("200 OK", Some(self.render()))
    }

    /// Starts writing an HdrHistogram interval log of transaction latency (µs) to `path`
    /// (created or truncated): every `interval` the worker histograms are drained into one
    /// interval tagged [`HLOG_TAG`]. The log has `StartTime`/`BaseTime` headers; interval
    /// timestamps are relative to them; the max column is in milliseconds (divisor 1000).
    /// Errors: one is already running (`AlreadyExists`), `interval` is zero (`InvalidInput`),
    /// the file cannot be created.
    pub fn start_hlog(&self, path: &Path, interval: Duration) -> io::Result<()> {
        if interval.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "hlog interval must be positive",
            ));
        }
        let mut hlog = lock(&self.hlog);
        if let Some(h) = hlog.as_ref() {
            if !h.thread.is_finished() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "an hlog is already being written; stop it first",
                ));
            }
            if let Some(old) = hlog.take()
                && let Ok(Err(e)) = old.thread.join()
            {
                tracing::warn!("previous hlog ended with an error: {e}");
            }
        }
        let file = File::create(path)?;
        let (stop, rx) = channel::bounded::<()>(1);
        let latency = Arc::clone(&self.latency);
        let thread = std::thread::Builder::new()
            .name("sv-hlog".into())
            .spawn(move || write_hlog(file, &latency, interval, &rx))?;
        *hlog = Some(Hlog { stop, thread });
        Ok(())
    }

    /// Stops the interval log: writes the last (partial) interval, syncs and closes the file.
    /// Returns the writer's error if it failed; `NotFound` when none is running.
    pub fn stop_hlog(&self) -> io::Result<()> {
        let Some(h) = lock(&self.hlog).take() else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no hlog is being written",
            ));
        };
        // A send error means the thread already ended; join reports why.
        let _ = h.stop.send(());
        match h.thread.join() {
            Ok(r) => r,
            Err(_) => Err(io::Error::other("hlog writer thread panicked")),
        }
    }

    /// Transaction latency since start in µs: `(percentile, value)` for p50, p90, p99, p99.9 and
    /// the max (percentile 100). All zero before anything was recorded.
    pub fn latency_percentiles(&self) -> Vec<(f64, u64)> {
        let mut all = lock(&self.latency.total).clone();
        let slots: Vec<Arc<WorkerSlot>> = self
            .latency
            .slots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for slot in &slots {
            // Same bounds everywhere, so adding cannot fail.
            let _ = all.add(&*lock(&slot.interval));
        }
        let mut out: Vec<(f64, u64)> = [50.0, 90.0, 99.0, 99.9]
            .iter()
            .map(|&p| (p, all.value_at_percentile(p)))
            .collect();
        out.push((100.0, all.max()));
        out
    }
}

impl Drop for Metrics {
    fn drop(&mut self) {
        let running = lock(&self.hlog).is_some();
        if running && let Err(e) = self.stop_hlog() {
            tracing::warn!("hlog: {e}");
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2))
}

/// The interval-log thread: drains every `interval` until told to stop (or the sender is gone).
fn write_hlog(
    mut file: File,
    latency: &Latency,
    interval: Duration,
    stop: &channel::Receiver<()>,
) -> io::Result<()> {
    let start_wall = SystemTime::now();
    let start = Instant::now();
    let mut serializer = V2DeflateSerializer::new();
    {
        let mut log = IntervalLogWriterBuilder::new()
            .add_comment("sipveil transaction latency; values in microseconds, max in milliseconds")
            .with_start_time(start_wall)
            .with_base_time(start_wall)
            .with_max_value_divisor(1000.0)
            .begin_log_with(&mut file, &mut serializer)?;
        let tag = Tag::new(HLOG_TAG);
        let mut acc = new_hdr();
        let mut prev = start;
        loop {
            let stopping = match stop.recv_timeout(interval) {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
                Err(RecvTimeoutError::Timeout) => false,
            };
            let now = Instant::now();
            latency.drain(&mut acc)?;
            log.write_histogram(&acc, prev - start, now - prev, tag)
                .map_err(|e| io::Error::other(format!("hlog: {e}")))?;
            acc.reset();
            prev = now;
            if stopping {
                break;
            }
        }
    }
    file.flush()?;
    file.sync_data()
}

#[cfg(test)]
mod cached_tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<String> {
        text.lines().find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(str::to_owned)
        })
    }

    #[test]
    fn cached_counts_land_in_the_same_series_as_the_shared_path() {
        let m = Metrics::with_workers(2);
        m.set_domains(&[("open.lab", "open")]);
        let (mut w0, mut w1) = (WorkerCounters::default(), WorkerCounters::default());
        m.response_out("REGISTER", 200);
        m.response_out_cached(&mut w0, "REGISTER", 200);
        m.response_out_cached(&mut w0, "REGISTER", 200);
        m.response_out_cached(&mut w1, "REGISTER", 200);
        m.response_out_cached(&mut w1, "INVITE", 42);
        m.response_out_cached(&mut w1, "FROBNICATE", 501);
        m.registration("open.lab", "open", "ok");
        m.registration_cached(&mut w0, "open.lab", "open", "ok");
        m.registration_cached(&mut w0, "OPEN.LAB", "open", "ok");
        m.registration_cached(&mut w1, "open.lab", "open", "ok");
        m.registration_cached(&mut w1, "new.lab", "open", "ok");
        let t = m.render();
        let want = [
            (
                r#"sipveil_sip_responses_total{method="REGISTER",code="200"}"#,
                "4",
            ),
            (
                r#"sipveil_sip_responses_total{method="INVITE",code="other"}"#,
                "1",
            ),
            (
                r#"sipveil_sip_responses_total{method="other",code="501"}"#,
                "1",
            ),
            (
                r#"sipveil_registrations_total{domain="open.lab",policy="open",result="ok"}"#,
                "4",
            ),
            (
                r#"sipveil_registrations_total{domain="other",policy="open",result="ok"}"#,
                "1",
            ),
        ];
        for (series, value) in want {
            assert_eq!(
                sample(&t, series).as_deref(),
                Some(value),
                "{series} in\n{t}"
            );
        }

        // A reload that configures `new.lab`: the worker's handle for it (counting as `other`)
        // is dropped, its next REGISTER counts under its own label.
        m.set_domains(&[("open.lab", "open"), ("new.lab", "open")]);
        m.registration_cached(&mut w1, "new.lab", "open", "ok");
        m.registration_cached(&mut w1, "open.lab", "open", "ok");
        let t = m.render();
        let want = [
            (
                r#"sipveil_registrations_total{domain="new.lab",policy="open",result="ok"}"#,
                "1",
            ),
            (
                r#"sipveil_registrations_total{domain="other",policy="open",result="ok"}"#,
                "1",
            ),
            (
                r#"sipveil_registrations_total{domain="open.lab",policy="open",result="ok"}"#,
                "5",
            ),
        ];
        for (series, value) in want {
            assert_eq!(
                sample(&t, series).as_deref(),
                Some(value),
                "{series} in\n{t}"
            );
        }
    }

    #[test]
    fn worker_handles_are_bounded() {
        let m = Metrics::new();
        let mut w = WorkerCounters::default();
        for code in 100..300 {
            m.response_out_cached(&mut w, "OPTIONS", code);
        }
        assert_eq!(w.responses.len(), WorkerCounters::MAX_ENTRIES);
        m.response_out_cached(&mut w, "OPTIONS", 299);
        let t = m.render();
        assert_eq!(
            sample(
                &t,
                r#"sipveil_sip_responses_total{method="OPTIONS",code="299"}"#
            )
            .as_deref(),
            Some("2")
        );
    }
}
