//! The control socket: one JSON request per line, one JSON answer per line (see README.md).
use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::media::flows::RelayOptions;
use crate::media::{MediaError, MediaRelay};

/// A control request.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    RelayOpen {
        a_peer: SocketAddr,
        b_peer: SocketAddr,
        #[serde(default)]
        latch: bool,
        #[serde(default)]
        strict: bool,
        #[serde(default)]
        rtcp_mux: bool,
        #[serde(default = "one")]
        count: u32,
    },
    RelayUpdate {
        id: SocketAddr,
        a_peer: SocketAddr,
        b_peer: SocketAddr,
        #[serde(default)]
        latch: bool,
        #[serde(default)]
        strict: bool,
        #[serde(default)]
        rtcp_mux: bool,
        #[serde(default)]
        relatch: bool,
    },
    RelayClose {
        #[serde(default)]
        id: Option<SocketAddr>,
        #[serde(default)]
        all: bool,
    },
    RelayList,
    Stats,
    /// Re-read the configuration file: domains, users, limits (not listeners).
    Reload,
    /// The live registrar bindings, optionally of one address of record (`user@domain`).
    Registrations {
        #[serde(default)]
        aor: Option<String>,
    },
    /// Start writing HdrHistogram interval logs of transaction latency to `path`.
    HlogStart {
        path: PathBuf,
        #[serde(default = "default_hlog_interval_ms")]
        interval_ms: u64,
    },
    /// Stop writing the interval log.
    HlogStop,
    /// OPTIONS to every binding of `aor` down the flow it registered on; reports the answers.
    Qualify {
        aor: String,
        #[serde(default = "default_qualify_wait_ms")]
        wait_ms: u64,
    },
    /// The Prometheus text (as served on the metrics address).
    Metrics,
    /// The shield's blocked and allowlisted sources.
    ShieldList,
    /// Blocks a source (IPv4 address, or an IPv6 address for its /64) for `for_secs`.
    ShieldBlock {
        addr: std::net::IpAddr,
        #[serde(default = "default_block_secs")]
        for_secs: u64,
    },
    /// Lifts the block of a source.
    ShieldUnblock {
        addr: std::net::IpAddr,
    },
    /// The shield's drops by reason (XDP counters and userspace).
    ShieldStats,
}

fn default_block_secs() -> u64 {
    3600
}

fn default_qualify_wait_ms() -> u64 {
    5000
}

fn default_hlog_interval_ms() -> u64 {
    1000
}

/// Re-reads and applies the configuration; answers a JSON summary or an error message.
pub type Reload = dyn Fn() -> Result<Value, String> + Send + Sync;

fn one() -> u32 {
    1
}

/// Upper bound of `count` in one request.
pub const MAX_OPEN_COUNT: u32 = 10_000;

/// Supplies the XDP counters for `stats` (None in userspace mode).
pub type XdpCounters = dyn Fn() -> Option<Vec<(&'static str, u64)>> + Send + Sync;

/// Shared state the control server acts on.
pub struct ControlState {
    pub relay: Mutex<MediaRelay>,
    pub xdp_counters: Box<XdpCounters>,
    /// The SIP side, once started (absent when the configuration has no `[sip]`).
    pub sip: OnceLock<Arc<crate::sip::SipEdge>>,
    /// What `reload` does (set by `daemon::run`, which knows the configuration file).
    pub reload: OnceLock<Box<Reload>>,
    /// The flood shield (set by the daemon at start).
    pub shield: OnceLock<Arc<crate::shield::Shield>>,
}

fn error(e: &MediaError) -> Value {
    json!({"ok": false, "error": e.to_string(), "kind": e.kind()})
}

fn bad_request(msg: String) -> Value {
    json!({"ok": false, "error": msg, "kind": "bad_request"})
}

fn counters_json(list: &[(&'static str, u64)]) -> Value {
    Value::Object(
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect(),
    )
}

/// Handles one request line and returns the answer.
pub fn handle_line(state: &ControlState, line: &str) -> Value {
    let req: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("bad request: {e}")),
    };
    match req {
        Request::Reload => match state.reload.get() {
            Some(reload) => match reload() {
                Ok(v) => v,
                Err(e) => json!({"ok": false, "error": e, "kind": "config"}),
            },
            None => bad_request("this daemon cannot reload".to_owned()),
        },
        Request::Registrations { aor } => match state.sip.get() {
            Some(sip) => json!({"ok": true, "bindings": sip.bindings_json(aor.as_deref())}),
            None => no_sip(),
        },
        Request::HlogStart { path, interval_ms } => match state.sip.get() {
            Some(sip) => {
                let interval = Duration::from_millis(interval_ms.max(1));
                match sip.metrics.start_hlog(&path, interval) {
                    Ok(()) => json!({"ok": true, "path": path, "interval_ms": interval_ms}),
                    Err(e) => json!({"ok": false, "error": e.to_string(), "kind": "io"}),
                }
            }
            None => no_sip(),
        },
        Request::HlogStop => match state.sip.get() {
            Some(sip) => match sip.metrics.stop_hlog() {
                Ok(()) => json!({"ok": true}),
                Err(e) => json!({"ok": false, "error": e.to_string(), "kind": "io"}),
            },
            None => no_sip(),
        },
        Request::Qualify { aor, wait_ms } => match state.sip.get() {
            Some(sip) => match sip.qualify(&aor, Duration::from_millis(wait_ms.min(60_000))) {
                Ok(results) => json!({"ok": true, "aor": aor, "probes": results}),
                Err(e) => bad_request(format!("{e:#}")),
            },
            None => no_sip(),
        },
        Request::Metrics => match state.sip.get() {
            Some(sip) => json!({"ok": true, "text": sip.metrics.render()}),
            None => no_sip(),
        },
        Request::ShieldList => match state.shield.get() {
            Some(sh) => sh.list(),
            None => no_shield(),
        },
        Request::ShieldBlock { addr, for_secs } => match state.shield.get() {
            Some(sh) => sh
                .block(addr, for_secs)
                .unwrap_or_else(|e| bad_request(e.to_string())),
            None => no_shield(),
        },
        Request::ShieldUnblock { addr } => match state.shield.get() {
            Some(sh) => sh
                .unblock(addr)
                .unwrap_or_else(|e| bad_request(e.to_string())),
            None => no_shield(),
        },
        Request::ShieldStats => match state.shield.get() {
            Some(sh) => {
                let mut v = sh.stats();
                let xdp: Vec<(&'static str, u64)> = (state.xdp_counters)()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|(k, _)| k.starts_with("shield_"))
                    .collect();
                v["xdp"] = counters_json(&xdp);
                v["blocked_sources"] = json!(sh.blocked_sources());
                v["ok"] = json!(true);
                v
            }
            None => no_shield(),
        },
        relay_request => handle_relay(state, relay_request),
    }
}

fn no_shield() -> Value {
    bad_request("the shield is not running".to_owned())
}

fn no_sip() -> Value {
    bad_request("the SIP side is not running (no [sip] section)".to_owned())
}

fn handle_relay(state: &ControlState, req: Request) -> Value {
    let mut relay = match state.relay.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    match req {
        Request::RelayOpen {
            a_peer,
            b_peer,
            latch,
            strict,
            rtcp_mux,
            count,
        } => {
            if count == 0 || count > MAX_OPEN_COUNT {
                return bad_request(format!("count must be 1..={MAX_OPEN_COUNT}"));
            }
            let opts = RelayOptions {
                latch,
                strict,
                rtcp_mux,
            };
            let mut opened = Vec::new();
            for i in 0..count {
                let step = |a: SocketAddr| -> Option<SocketAddr> {
                    let p = u32::from(a.port()) + 2 * i;
                    u16::try_from(p).ok().map(|p| SocketAddr::new(a.ip(), p))
                };
                let (Some(a), Some(b)) = (step(a_peer), step(b_peer)) else {
                    for info in &opened {
                        let info: &crate::media::RelayInfo = info;
                        let _ = relay.close(info.id);
                    }
                    return bad_request("peer port + 2*count exceeds 65535".to_owned());
                };
                match relay.open(a, b, opts) {
                    Ok(info) => opened.push(info),
                    Err(e) => {
                        for info in &opened {
                            let _ = relay.close(info.id);
                        }
                        return error(&e);
                    }
                }
            }
            json!({"ok": true, "relays": opened})
        }
        Request::RelayUpdate {
            id,
            a_peer,
            b_peer,
            latch,
            strict,
            rtcp_mux,
            relatch,
        } => {
            let opts = RelayOptions {
                latch,
                strict,
                rtcp_mux,
            };
            match relay.update(id, a_peer, b_peer, opts, relatch) {
                Ok(info) => json!({"ok": true, "relays": [info]}),
                Err(e) => error(&e),
            }
        }
        Request::RelayClose { id, all } => {
            if all {
                match relay.close_all() {
                    Ok(n) => json!({"ok": true, "closed": n}),
                    Err(e) => error(&e),
                }
            } else if let Some(id) = id {
                match relay.close(id) {
                    Ok(()) => json!({"ok": true, "closed": 1}),
                    Err(e) => error(&e),
                }
            } else {
                bad_request("relay-close needs \"id\" or \"all\": true".to_owned())
            }
        }
        Request::RelayList => match relay.list() {
            Ok(list) => json!({"ok": true, "relays": list}),
            Err(e) => error(&e),
        },
        Request::Stats => {
            let flows = relay.table().entries().map(|e| e.len()).unwrap_or(0);
            let xdp = (state.xdp_counters)().map(|c| counters_json(&c));
            json!({
                "ok": true,
                "mode": relay.mode(),
                "xdp": xdp,
                "userspace": counters_json(&relay.counters().snapshot()),
                "flows": flows,
                "relays": relay.len(),
            })
        }
        other => bad_request(format!("{other:?} is not a relay request")),
    }
}

/// Binds the control socket (removing a stale one) and serves it on a thread, one thread per
/// connection.
pub fn serve(path: &Path, state: Arc<ControlState>) -> io::Result<std::thread::JoinHandle<()>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is served by a running daemon", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::thread::Builder::new()
        .name("sv-control".to_owned())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        let state = state.clone();
                        let spawned = std::thread::Builder::new()
                            .name("sv-control-conn".to_owned())
                            .spawn(move || {
                                if let Err(e) = connection(stream, &state) {
                                    tracing::debug!("control connection: {e}");
                                }
                            });
                        if let Err(e) = spawned {
                            tracing::warn!("control connection thread: {e}");
                        }
                    }
                    Err(e) => tracing::warn!("control accept: {e}"),
                }
            }
        })
}

fn connection(stream: UnixStream, state: &ControlState) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    let reader = BufReader::new(stream);
    for line in reader.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let answer = handle_line(state, &line);
        writer.write_all(answer.to_string().as_bytes())?;
        writer.write_all(b"\n")?;
    }
    Ok(())
}

/// Client side: sends one request and returns the answer line.
pub fn request(path: &Path, request: &Value, timeout: Duration) -> io::Result<Value> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = request.to_string();
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    serde_json::from_str(&answer).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The socket path of an instance unless given.
pub fn socket_path(socket: Option<PathBuf>, instance: &str) -> PathBuf {
    socket.unwrap_or_else(|| crate::config::default_control_socket(instance))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse() {
        let r: Request = serde_json::from_str(
            r#"{"cmd":"relay-open","a_peer":"198.18.1.2:4000","b_peer":"198.18.2.2:5000","latch":true}"#,
        )
        .expect("open");
        assert_eq!(
            r,
            Request::RelayOpen {
                a_peer: "198.18.1.2:4000".parse().expect("addr"),
                b_peer: "198.18.2.2:5000".parse().expect("addr"),
                latch: true,
                strict: false,
                rtcp_mux: false,
                count: 1
            }
        );
        let r: Request =
            serde_json::from_str(r#"{"cmd":"relay-close","all":true}"#).expect("close");
        assert_eq!(
            r,
            Request::RelayClose {
                id: None,
                all: true
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"relay-open","a_peer":"x"}"#).is_err());
    }
}
