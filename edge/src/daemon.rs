//! The running edge: data plane (or not), flow table, relay workers, `MediaRelay`, control socket,
//! signal handling and idle expiry.
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use nix::sys::signal::{SigSet, Signal};
use sipveil_abi::Counter;

use crate::config::{Config, XdpSetting};
use crate::control::{self, ControlState};
use crate::dataplane::{Dataplane, DataplaneOptions, ShieldMaps};
use crate::media::counters::UserCounters;
use crate::media::table::{BpfFlowTable, FlowTable, UserFlowTable};
use crate::media::{MediaRelay, SocketHost};
use crate::relay::RelayWorkers;
use crate::shield::{Shield, ShieldPorts};
use crate::sip::SipEdge;

/// The data plane and the media relay, without the control socket and the signal loop (tests use
/// this directly).
pub struct Edge {
    pub state: Arc<ControlState>,
    pub mode: &'static str,
    pub adopted_flows: usize,
    pub dataplane: Option<Arc<Dataplane>>,
}

impl Edge {
    /// Loads or adopts the data plane (unless `no_xdp` or `xdp = "off"`), starts the relay
    /// workers and rebuilds the relay state from the flow table.
    pub fn start(cfg: &Config, no_xdp: bool) -> anyhow::Result<Edge> {
        let counters = Arc::new(UserCounters::default());
        let use_xdp = !no_xdp && cfg.xdp != XdpSetting::Off;
        let (table, dataplane): (Arc<dyn FlowTable>, Option<Arc<Dataplane>>) = if use_xdp {
            let mut dp = Dataplane::open(&DataplaneOptions {
                instance: cfg.instance.clone(),
                interfaces: cfg.interfaces.clone(),
                xdp: cfg.xdp,
                port_min: cfg.media.port_min,
                port_max: cfg.media.port_max,
            })
            .context("starting the XDP data plane")?;
            let flows = dp.take_flows().context("the flow map was already taken")?;
            (Arc::new(BpfFlowTable::new(flows)), Some(Arc::new(dp)))
        } else {
            tracing::warn!("XDP is off: the userspace relay forwards all media");
            (Arc::new(UserFlowTable::new()), None)
        };
        let mode = table.kind();
        let workers = RelayWorkers::start(
            usize::from(cfg.media.workers),
            table.clone(),
            counters.clone(),
        )
        .context("starting the io_uring relay workers")?;
        let host: Arc<dyn SocketHost> = Arc::new(workers);
        let relay = MediaRelay::new(cfg.media.clone(), table, host, counters)
            .context("rebuilding the relay state from the flow table")?;
        let adopted_flows = relay.table().entries().map(|e| e.len()).unwrap_or(0);
        let dp_for_counters = dataplane.clone();
        let xdp_counters = Box::new(move || {
            let dp = dp_for_counters.as_ref()?;
            match dp.counters() {
                Ok(list) => Some(list.into_iter().map(|(c, v)| (c.name(), v)).collect()),
                Err(e) => {
                    tracing::warn!("reading XDP counters: {e}");
                    None
                }
            }
        });
        let shield = start_shield(cfg, dataplane.as_deref());
        let state = Arc::new(ControlState {
            relay: Mutex::new(relay),
            xdp_counters,
            sip: std::sync::OnceLock::new(),
            reload: std::sync::OnceLock::new(),
            shield: std::sync::OnceLock::new(),
        });
        let _ = state.shield.set(shield);
        Ok(Edge {
            state,
            mode,
            adopted_flows,
            dataplane,
        })
    }

    /// Runs idle expiry once (and the shield's expiries and XDP events).
    pub fn expire(&self) {
        if let Some(sh) = self.state.shield.get() {
            sh.tick();
        }
        let now = crate::sys::monotonic_ns();
        if let Ok(mut r) = self.state.relay.lock() {
            r.expire_idle(now);
        }
    }
}

/// The shield: with XDP, on the pinned maps (a failure to open them leaves the XDP shield
/// unconfigured, logged, and the userspace limiter off); without, the userspace limiter.
fn start_shield(cfg: &Config, dp: Option<&Dataplane>) -> Arc<Shield> {
    let ports = ShieldPorts {
        udp: cfg.sip.udp.iter().map(|a| a.port()).collect(),
        tcp: cfg
            .sip
            .tcp
            .iter()
            .chain(cfg.sip.tls.iter())
            .map(|a| a.port())
            .collect(),
    };
    let maps = dp.and_then(|d| match ShieldMaps::open(&d.pin_dir) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::error!("shield: opening the pinned maps: {e}; the XDP shield stays as it is");
            None
        }
    });
    if dp.is_some() && maps.is_none() {
        // XDP is on but its shield maps are unusable: do not double-enforce in userspace.
        let mut off = cfg.shield.clone();
        off.limits.enabled = false;
        let shield = Arc::new(Shield::new(&off, ports, None));
        crate::shield::feed::install(shield.clone());
        return shield;
    }
    let shield = Arc::new(Shield::new(&cfg.shield, ports, maps));
    crate::shield::feed::install(shield.clone());
    shield
}

/// `sipveil run`: blocks SIGTERM/SIGINT (before any thread starts, so every thread inherits the
/// mask), starts the edge and the control socket, prints the ready line, then waits for a signal
/// while expiring idle relays once a second. Returns on a signal, leaving XDP attached.
pub fn run(cfg: &Config, config_path: &Path, no_xdp: bool) -> anyhow::Result<()> {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGHUP);
    signals
        .thread_block()
        .context("blocking SIGTERM/SIGINT/SIGHUP")?;

    // Refuse early, before touching the data plane, when another daemon serves this instance.
    if std::os::unix::net::UnixStream::connect(&cfg.control_socket).is_ok() {
        anyhow::bail!(
            "another sipveil daemon serves {} (instance {})",
            cfg.control_socket.display(),
            cfg.instance
        );
    }
    let edge = Edge::start(cfg, no_xdp)?;
    let sip = if cfg.sip.enabled() {
        let sip = SipEdge::start(cfg).context("starting the SIP side")?;
        let _ = edge.state.sip.set(sip.clone());
        if let Some(shield) = edge.state.shield.get().cloned() {
            let state = edge.state.clone();
            sip.metrics.add_collector(Box::new(move |out| {
                shield.render_metrics(out, (state.xdp_counters)());
            }));
        }
        Some(sip)
    } else {
        None
    };
    let running = Arc::new(Mutex::new(cfg.clone()));
    {
        let path = config_path.to_path_buf();
        let running = running.clone();
        let sip = sip.clone();
        let shield = edge.state.shield.get().cloned();
        let reload = move || reload_config(&path, &running, sip.as_deref(), shield.as_deref());
        let _ = edge.state.reload.set(Box::new(reload));
    }
    control::serve(&cfg.control_socket, edge.state.clone()).with_context(|| {
        format!(
            "serving the control socket {}",
            cfg.control_socket.display()
        )
    })?;
    let ready = serde_json::json!({
        "ready": true,
        "instance": cfg.instance,
        "mode": edge.mode,
        "control": cfg.control_socket,
        "adopted_flows": edge.adopted_flows,
        "sip": sip.as_ref().map(|s| serde_json::json!({
            "listen": s.local_addrs.iter().map(|(p, a)| format!("{}:{a}", crate::sip::transport::proto_label(*p))).collect::<Vec<_>>(),
            "restored_bindings": s.restored(),
        })),
        "interfaces": edge.dataplane.as_ref().map(|d| d.interfaces.iter().map(|i| {
            serde_json::json!({"name": i.name, "ifindex": i.ifindex, "mode": i.mode.as_str()})
        }).collect::<Vec<_>>()),
    });
    println!("{ready}");
    tracing::info!(mode = edge.mode, instance = %cfg.instance, "sipveil running");

    let signal = loop {
        match wait_signal(&signals, 1) {
            Some(sig) if sig == Signal::SIGHUP as i32 => {
                match edge.state.reload.get().map(|reload| reload()) {
                    Some(Ok(summary)) => {
                        tracing::info!(%summary, "configuration reloaded (SIGHUP)")
                    }
                    Some(Err(e)) => {
                        tracing::error!("reload refused, the running configuration stays: {e}")
                    }
                    None => {}
                }
            }
            Some(sig) => break sig,
            None => {
                edge.expire();
                if let Some(sip) = &sip {
                    sip.update_binding_gauges();
                }
            }
        }
    };
    tracing::info!(
        signal,
        "shutting down; the XDP program stays attached and flows stay in place"
    );
    if let Some(sip) = &sip {
        // Workers stop first, then the store drains: every 200 OK sent was durable already.
        sip.shutdown();
    }
    let _ = std::fs::remove_file(&cfg.control_socket);
    Ok(())
}

/// Re-reads the configuration file and applies what can change while running (domains, users,
/// limits, settings). The instance and control socket stay those of the running daemon. A bad file
/// changes nothing.
fn reload_config(
    path: &Path,
    running: &Mutex<Config>,
    sip: Option<&SipEdge>,
    shield: Option<&Shield>,
) -> Result<serde_json::Value, String> {
    let new_cfg = Config::load(path).map_err(|e| e.to_string())?;
    if let Some(sh) = shield {
        sh.reload(&new_cfg.shield);
    }
    let mut new = new_cfg;
    let mut current = running
        .lock()
        .map_err(|_| "configuration lock poisoned".to_owned())?;
    new.instance = current.instance.clone();
    new.control_socket = current.control_socket.clone();
    let answer = match sip {
        Some(sip) => sip.reload(&current, &new),
        None => {
            serde_json::json!({"ok": true, "note": "no SIP side running; [sip] listeners need a restart"})
        }
    };
    *current = new;
    Ok(answer)
}

/// Waits up to `secs` for one of `set`; returns the signal number.
fn wait_signal(set: &SigSet, secs: i64) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    let raw: &libc::sigset_t = set.as_ref();
    // SAFETY: `raw` and `ts` are valid for the call; a null siginfo pointer is allowed.
    let rc = unsafe { libc::sigtimedwait(raw, std::ptr::null_mut(), &ts) };
    (rc > 0).then_some(rc)
}

/// Names and values of XDP counters for printing.
pub fn counter_pairs(list: &[(Counter, u64)]) -> Vec<(&'static str, u64)> {
    list.iter().map(|(c, v)| (c.name(), *v)).collect()
}
