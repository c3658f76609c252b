//! The daemon's SIP side: the io_uring transport pool and the transaction user (registrar, OPTIONS,
//! later the privacy B2BUA) that runs on it.
pub mod calls;
pub mod service;
pub mod transport;

use sipveil_registrar::{Report, ReportResult};

/// Metric labels of a registrar report: domain, policy, result, and the auth failure reason.
pub(crate) fn report_labels(
    report: &Report,
) -> (&str, &'static str, &'static str, Option<&'static str>) {
    let domain = report.domain.as_deref().unwrap_or("other");
    let policy = report.policy.map(|p| p.as_str()).unwrap_or("none");
    let failure = match report.result {
        ReportResult::AuthFailed(why) => Some(why.as_str()),
        _ => None,
    };
    (domain, policy, report.result.as_str(), failure)
}

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde_json::{Value, json};
use sipveil_registrar::Registrar;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{Committer, Store};
use service::{ServiceSettings, ServiceShared, Worker};
use transport::{Pool, Proto, TransportConfig};

/// Bindings per store transaction at most (group commit).
const COMMIT_BATCH: usize = 4096;
/// Commits waiting for the store at most; beyond it REGISTERs get 503 (backpressure).
const COMMIT_QUEUE: usize = 16384;

/// Stops glibc from shrinking and regrowing each thread's heap.
///
/// Every REGISTER allocates and frees a few KiB on the worker and store threads; with glibc's
/// default trim threshold each thread arena gave the top of its heap back after a burst and
/// grew it again on the next one: an `mprotect` and fresh zeroed pages about every second
/// REGISTER (profile at 2 000 REGISTER/s: ~5 400 `mprotect`s in 5 s; with these settings 15).
/// Keeping up to 64 MiB per arena costs resident memory only up to what the threads used.
fn keep_heaps() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes allocator parameters; it is called before the worker and
    // store threads start, and glibc serialises it against allocation.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TOP_PAD, 16 << 20);
    }
}

/// Wall-clock milliseconds since the UNIX epoch (binding expiry survives restarts).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The running SIP side: transport pool, registrar, store, metrics.
pub struct SipEdge {
    /// Counters, histograms, interval logs.
    pub metrics: Arc<Metrics>,
    /// What the workers share (registrar, settings).
    pub shared: Arc<ServiceShared>,
    /// The addresses the pool listens on.
    pub local_addrs: Vec<(Proto, SocketAddr)>,
    pool: Mutex<Option<Pool>>,
    committer: Committer,
    restored: usize,
}

fn settings_of(cfg: &Config) -> ServiceSettings {
    let sip = &cfg.sip;
    let mut edge_addrs: Vec<std::net::IpAddr> = sip
        .udp
        .iter()
        .chain(&sip.tcp)
        .chain(&sip.tls)
        .map(|a| a.ip())
        .collect();
    edge_addrs.sort();
    edge_addrs.dedup();
    ServiceSettings {
        server: sip
            .server
            .as_ref()
            .filter(|s| !s.is_empty())
            .map(|s| bytes::Bytes::from(s.clone())),
        edge_names: sip
            .edge_names
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect(),
        edge_addrs,
    }
}

/// The registrar writes `[sip] server` into its answers itself (see [`Registrar::set_server`]).
fn set_registrar_server(registrar: &mut Registrar, cfg: &Config) {
    let server = cfg.sip.server.as_deref().filter(|s| !s.is_empty());
    if let Err(e) = registrar.set_server(server) {
        // The config check refuses such values; should one get here, answers go without it.
        tracing::warn!("[sip] server is not usable as a header value: {e}");
        let _ = registrar.set_server(None);
    }
}

/// Gives the metrics the configured domains (their labels) and returns them, name and policy.
fn publish_domains(metrics: &Metrics, cfg: &Config) -> Vec<(String, &'static str)> {
    let labels: Vec<(String, &'static str)> = cfg
        .registrar
        .config
        .domains
        .iter()
        .map(|d| (d.name.clone(), d.policy.as_str()))
        .collect();
    let refs: Vec<(&str, &str)> = labels.iter().map(|(n, p)| (n.as_str(), *p)).collect();
    metrics.set_domains(&refs);
    labels
}

impl SipEdge {
    /// Opens the store, restores the bindings it holds, starts the group-commit thread, the
    /// worker pool and (if configured) the metrics endpoint.
    pub fn start(
        cfg: &Config,
        relay: Option<Arc<Mutex<crate::media::MediaRelay>>>,
    ) -> anyhow::Result<Arc<SipEdge>> {
        let sip = &cfg.sip;
        let workers = sip.workers.max(1);
        keep_heaps();
        let metrics = Metrics::with_workers(workers);
        publish_domains(&metrics, cfg);
        let mut store = Store::open(&cfg.registrar.database).with_context(|| {
            format!(
                "opening the registrar database {}",
                cfg.registrar.database.display()
            )
        })?;
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret)
            .map_err(|e| anyhow::anyhow!("drawing the registrar's secret: {e}"))?;
        let mut registrar = Registrar::new(cfg.registrar.config.clone(), secret);
        set_registrar_server(&mut registrar, cfg);
        let now = unix_ms();
        let mut restored = 0;
        for (key, value) in store.load().context("loading the registrar database")? {
            match registrar.restore(&key, &value, now) {
                Ok(()) => restored += 1,
                Err(e) => tracing::warn!("skipping a stored binding that does not decode: {e:?}"),
            }
        }
        let observer = metrics.clone();
        store.on_commit(move |ops, took| observer.store_commit(ops, took));
        store.set_min_commit_interval(cfg.registrar.commit_interval, cfg.registrar.commit_group);
        let committer = store
            .try_start(COMMIT_BATCH, COMMIT_QUEUE)
            .context("starting the registrar store's commit thread")?;
        let tls_config = if sip.tls.is_empty() {
            None
        } else {
            let (cert, key) = sip
                .tls_cert
                .as_ref()
                .zip(sip.tls_key.as_ref())
                .context("TLS listeners need tls_cert and tls_key")?;
            Some(transport::load_tls_config(cert, key).context("loading the TLS certificate")?)
        };
        let limits = sipveil_sip::Limits {
            max_message_size: sip.max_message_bytes,
            ..sipveil_sip::Limits::default()
        };
        let tcfg = TransportConfig {
            udp: sip.udp.clone(),
            tcp: sip.tcp.clone(),
            tls: sip.tls.clone(),
            tls_config,
            workers,
            max_connections: sip.max_connections,
            max_connections_per_ip: sip.max_connections_per_ip,
            idle_timeout: sip.idle_timeout,
            write_queue_bytes: sip.write_queue_bytes,
            limits,
        };
        let shared = ServiceShared::new(
            registrar,
            committer.clone(),
            metrics.clone(),
            settings_of(cfg),
            limits,
            workers,
            service::CallsShared {
                relay,
                media: (cfg.media.addr_a, cfg.media.addr_b),
                settings: std::sync::RwLock::new(Arc::new(cfg.calls.clone())),
                udp_local: std::sync::RwLock::new(Vec::new()),
                view: Mutex::new(Vec::new()),
            },
        );
        let for_workers = shared.clone();
        let pool = Pool::start(tcfg, metrics.clone(), move |index, handle| {
            Worker::new(index, for_workers.clone(), handle)
        })
        .context("starting the SIP worker pool")?;
        let local_addrs = pool.local_addrs();
        if let Ok(mut udp) = shared.calls.udp_local.write() {
            *udp = local_addrs
                .iter()
                .filter(|(p, _)| *p == Proto::Udp)
                .map(|(_, a)| *a)
                .collect();
        }
        if let Some(addr) = cfg.metrics_listen {
            let bound = metrics
                .serve(addr)
                .with_context(|| format!("serving metrics on {addr}"))?;
            tracing::info!("metrics on http://{bound}/metrics");
        }
        let edge = Arc::new(SipEdge {
            metrics,
            shared,
            local_addrs,
            pool: Mutex::new(Some(pool)),
            committer,
            restored,
        });
        edge.update_binding_gauges();
        Ok(edge)
    }

    /// Bindings restored from the database at start.
    pub fn restored(&self) -> usize {
        self.restored
    }

    /// Applies a reloaded configuration: domains, users, limits and settings. Listener changes
    /// need a restart (reported in the answer).
    pub fn reload(&self, old: &Config, new: &Config) -> Value {
        if let Ok(mut r) = self.shared.registrar.lock() {
            r.reconfigure(new.registrar.config.clone());
            set_registrar_server(&mut r, new);
        }
        self.shared.set_settings(settings_of(new));
        if let Ok(mut c) = self.shared.calls.settings.write() {
            *c = Arc::new(new.calls.clone());
        }
        let labels = publish_domains(&self.metrics, new);
        let listeners_changed = old.sip.udp != new.sip.udp
            || old.sip.tcp != new.sip.tcp
            || old.sip.tls != new.sip.tls
            || old.sip.workers != new.sip.workers;
        if listeners_changed {
            tracing::warn!("listener or worker changes take effect at the next restart");
        }
        let commit_changed = old.registrar.commit_interval != new.registrar.commit_interval
            || old.registrar.commit_group != new.registrar.commit_group
            || old.registrar.database != new.registrar.database;
        if commit_changed {
            tracing::warn!("[registrar] database/commit changes take effect at the next restart");
        }
        let mut restart_needed_for = Vec::new();
        if listeners_changed {
            restart_needed_for.push("listeners/workers");
        }
        if commit_changed {
            restart_needed_for.push("registrar database/commit");
        }
        json!({
            "ok": true,
            "domains": labels.iter().map(|(n, p)| json!({"name": n, "policy": p})).collect::<Vec<_>>(),
            "restart_needed_for": restart_needed_for,
        })
    }

    /// Refreshes the per-domain binding gauges.
    pub fn update_binding_gauges(&self) {
        if let Ok(r) = self.shared.registrar.lock() {
            for c in r.counts() {
                self.metrics
                    .set_bindings(&c.domain, i64::try_from(c.bindings).unwrap_or(i64::MAX));
            }
        }
    }

    /// The live bindings as JSON (never the Call-ID: it is the owner's claim secret).
    pub fn bindings_json(&self, aor: Option<&str>) -> Value {
        let now = unix_ms();
        let Ok(r) = self.shared.registrar.lock() else {
            return json!([]);
        };
        let wanted = aor.map(|a| a.to_ascii_lowercase());
        let list: Vec<Value> = r
            .bindings()
            .filter(|b| b.expires_at_ms > now)
            .filter(|b| wanted.as_deref().is_none_or(|w| b.aor == w))
            .map(|b| {
                json!({
                    "aor": b.aor,
                    "contact": b.contact,
                    "q": f64::from(b.q) / 1000.0,
                    "expires_in_s": (b.expires_at_ms - now) / 1000,
                    "expires_at_ms": b.expires_at_ms,
                    "registered_at_ms": b.registered_at_ms,
                    "instance": b.instance,
                    "reg_id": b.reg_id,
                    "proto": format!("{:?}", b.flow.proto).to_ascii_lowercase(),
                    "peer": b.flow.peer,
                    "local": b.flow.local,
                })
            })
            .collect();
        Value::Array(list)
    }

    /// Sends OPTIONS to every live binding of `aor` down the flow it registered on and waits (at
    /// most `wait`) for the answers.
    pub fn qualify(
        &self,
        aor: &str,
        wait: std::time::Duration,
    ) -> anyhow::Result<Vec<service::QualifyResult>> {
        let aor = aor.to_ascii_lowercase();
        let (user, host) = aor
            .split_once('@')
            .context("an address of record is user@domain")?;
        let bindings = match self.shared.registrar.lock() {
            Ok(r) => r.lookup(user, host, unix_ms()),
            Err(_) => anyhow::bail!("registrar lock poisoned"),
        };
        let handle = match self.pool.lock() {
            Ok(p) => p.as_ref().map(|p| p.handle()),
            Err(_) => None,
        }
        .context("the SIP workers are stopped")?;
        let (tx, rx) = crossbeam::channel::bounded(bindings.len().max(1));
        for b in &bindings {
            let flow = transport::FlowId::from(b.flow);
            let worker = usize::from(flow.worker);
            let command = service::Command::Qualify {
                aor: b.aor.clone(),
                contact: b.contact.clone(),
                flow,
                reply: tx.clone(),
            };
            if self.shared.push_command(worker, command) {
                handle.wake(worker);
            }
        }
        drop(tx);
        let deadline = std::time::Instant::now() + wait;
        let mut results = Vec::new();
        while results.len() < bindings.len() {
            match rx.recv_deadline(deadline) {
                Ok(r) => results.push(r),
                Err(_) => break,
            }
        }
        Ok(results)
    }

    /// The active calls (id, state, age, relay ports; no party addresses).
    pub fn calls_json(&self) -> Value {
        let view = match self.shared.calls.view.lock() {
            Ok(v) => v.clone(),
            Err(p) => p.into_inner().clone(),
        };
        json!(view)
    }

    /// Stops the workers, then drains the store queue (nothing acknowledged is lost: a 200 OK
    /// only ever left after its commit).
    pub fn shutdown(&self) {
        if let Ok(mut p) = self.pool.lock()
            && let Some(pool) = p.take()
        {
            pool.shutdown();
        }
        self.committer.shutdown();
    }
}
