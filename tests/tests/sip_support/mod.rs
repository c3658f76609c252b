//! Shared by the SIP end-to-end tests (`tests/sip_registrar*.rs`): the lab, the daemon with a
//! configuration written per test, certificates, users, the SIP client, digest, SIPp.
//!
//! Every test holds the lab lock for its whole run (`Lab::session`: another engineer's
//! benchmarks use the same lab), writes its files under `target/<profile>/sip-tests/<test>/`
//! (configuration, users file, certificates, its own redb database, the daemon's log, SIPp's
//! files), and runs the daemon with `--no-xdp` (these are SIP tests; the media relay is not
//! involved). The lab is the two-arm shape: the edge listens on 198.18.1.1 (UDP and TCP 5060,
//! TLS 5061) in sv-edge, clients run in sv-a (198.18.1.2).

pub mod call;
pub mod capture;
pub mod client;
pub mod digest;
pub mod sipp;
pub mod ua;

#[path = "../../../xtask/src/certs.rs"]
pub mod certs;

use client::{Register, Response, SipClient, TlsTrust, Transport};
use serde_json::Value;
use sipveil_loadtest::lab::{Daemon, LAB_CONTROL_SOCKET, Lab, LabSession, NS_A, Shape};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The namespace the clients run in.
pub const CLIENT_NS: &str = NS_A;
/// Users of auth.lab: (name, password).
pub const AUTH_USERS: [(&str, &str); 3] = [
    ("alice", "alice's secret"),
    ("bob", "correct horse battery staple"),
    ("carol", "c4r0l-pw"),
];
/// SIPp's users of auth.lab: `sipp<i>` with password `sipp-pw-<i>`, i < this.
pub const SIPP_AUTH_USERS: usize = 200;

/// The release `sipveil` binary: `SIPVEIL_BIN_DIR` when set (`cargo xtask test` sets it after
/// building), otherwise built here with cargo.
pub fn sipveil() -> &'static Path {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = BINARY.get_or_init(|| {
        let dir = match std::env::var_os("SIPVEIL_BIN_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => build_release()?,
        };
        let path = dir.join("sipveil");
        if path.exists() {
            Ok(path)
        } else {
            Err(format!("{} does not exist", path.display()))
        }
    });
    match found {
        Ok(path) => path,
        Err(error) => panic!("the SIP tests cannot find the daemon: {error}"),
    }
}

fn build_release() -> Result<PathBuf, String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(env!("CARGO"))
        .current_dir(&workspace)
        .args(["build", "--release", "-p", "sipveil-edge", "--bins"])
        .status()
        .map_err(|error| format!("cannot run cargo: {error}"))?;
    if !status.success() {
        return Err(format!("cargo build --release failed ({status})"));
    }
    let profile = sipveil_loadtest::lab::profile_dir_of_current_exe()
        .ok_or("cannot tell the target directory from the test executable")?;
    let target = profile
        .parent()
        .ok_or("the profile directory has no parent")?;
    Ok(target.join("release"))
}

/// Panics with a clear message unless running as root.
pub fn require_root() {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").map(|meta| meta.uid());
    assert!(
        matches!(uid, Ok(0)),
        "the SIP end-to-end tests need root (network namespaces, veth pairs): run them as root"
    );
}

/// `name` found on PATH.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A fresh directory for `test`'s files.
pub fn test_dir(test: &str) -> PathBuf {
    let profile =
        sipveil_loadtest::lab::profile_dir_of_current_exe().unwrap_or_else(std::env::temp_dir);
    let dir = profile.join("sip-tests").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|error| panic!("{}: {error}", dir.display()));
    dir
}

/// What a test's daemon configuration varies.
#[derive(Clone, Debug)]
pub struct EdgeOptions {
    pub min_expires: u32,
    pub max_expires: u32,
    pub nonce_ttl_secs: u64,
    pub max_message_bytes: usize,
    pub workers: usize,
    /// auth.lab's `digest` key (the challenges offered, in order); `None`: the default
    /// (SHA-256, then MD5).
    pub auth_digest: Option<&'static str>,
    /// More configuration appended as is (e.g. another `[[domain]]`).
    pub extra_config: &'static str,
}

impl Default for EdgeOptions {
    fn default() -> Self {
        EdgeOptions {
            min_expires: 60,
            max_expires: 3600,
            nonce_ttl_secs: 300,
            max_message_bytes: 65535,
            workers: 2,
            auth_digest: None,
            extra_config: "",
        }
    }
}

/// The daemon's configuration: the lab's (dataplane, media, control) and the SIP side.
pub fn config_text(options: &EdgeOptions) -> String {
    format!(
        "{lab}\n\
         [sip]\n\
         workers = {workers}\n\
         udp = [\"198.18.1.1:5060\"]\n\
         tcp = [\"198.18.1.1:5060\"]\n\
         tls = [\"198.18.1.1:5061\"]\n\
         tls_cert = \"certs/edge.pem\"\n\
         tls_key = \"certs/edge.key\"\n\
         edge_names = [\"edge.lab\"]\n\
         server = \"sipveil\"\n\
         max_connections = 1000\n\
         max_connections_per_ip = 64\n\
         idle_timeout_secs = 60\n\
         max_message_bytes = {max_message_bytes}\n\
         \n\
         [registrar]\n\
         database = \"registrar.redb\"\n\
         min_expires = {min_expires}\n\
         max_expires = {max_expires}\n\
         default_expires = {default_expires}\n\
         max_contacts = 8\n\
         nonce_ttl_secs = {nonce_ttl_secs}\n\
         \n\
         [[domain]]\n\
         name = \"open.lab\"\n\
         policy = \"open\"\n\
         \n\
         [[domain]]\n\
         name = \"auth.lab\"\n\
         policy = \"authenticated\"\n\
         users = \"auth.lab.users\"\n\
         {auth_digest}\
         \n\
         [[domain]]\n\
         name = \"closed.lab\"\n\
         policy = \"closed\"\n\
         {extra_config}",
        lab = Shape::TwoArm.daemon_config("auto"),
        workers = options.workers,
        max_message_bytes = options.max_message_bytes,
        min_expires = options.min_expires,
        max_expires = options.max_expires,
        default_expires = options.max_expires.min(600).max(options.min_expires),
        nonce_ttl_secs = options.nonce_ttl_secs,
        extra_config = options.extra_config,
        auth_digest = options
            .auth_digest
            .map(|list| format!("digest = {list}\n"))
            .unwrap_or_default(),
    )
}

/// The users file of auth.lab: [`AUTH_USERS`] and SIPp's users.
pub fn users_text() -> String {
    let mut text = String::from("# auth.lab users (written by the SIP tests)\n");
    for (user, password) in AUTH_USERS {
        text.push_str(&digest::users_line(user, "auth.lab", password));
        text.push('\n');
    }
    for i in 0..SIPP_AUTH_USERS {
        let (user, password) = sipp_auth_user(i);
        text.push_str(&digest::users_line(&user, "auth.lab", &password));
        text.push('\n');
    }
    text
}

/// SIPp's `i`th auth.lab user and password.
pub fn sipp_auth_user(i: usize) -> (String, String) {
    (format!("sipp{i}"), format!("sipp-pw-{i}"))
}

/// The lab, its daemon and the test's files.
pub struct Edge {
    /// Dropped first: killed before the lab goes down.
    pub daemon: Option<Daemon>,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub tls: TlsTrust,
    /// The CA the edge certificate is signed by (PEM file).
    pub ca_pem: PathBuf,
    /// Extra `sipveil run` arguments: `--no-xdp` for the SIP-only tests, none for the call
    /// tests (media relayed in XDP).
    pub daemon_args: &'static [&'static str],
    _lab: LabSession,
}

impl Edge {
    /// Takes the lab (waiting for the lock), writes certificates, users and configuration into
    /// a fresh directory for `test`, and starts the daemon.
    pub fn start(test: &str, options: &EdgeOptions) -> Edge {
        Edge::start_args(test, options, &["--no-xdp"])
    }

    /// As [`Edge::start`], with XDP on (`xdp = "auto"` from the lab's configuration): the call
    /// tests, whose media the XDP program relays.
    pub fn start_xdp(test: &str, options: &EdgeOptions) -> Edge {
        Edge::start_args(test, options, &[])
    }

    fn start_args(test: &str, options: &EdgeOptions, daemon_args: &'static [&'static str]) -> Edge {
        require_root();
        let sipveil = sipveil();
        let lab = Lab::session(Shape::TwoArm, sipveil)
            .unwrap_or_else(|error| panic!("lab up (two-arm): {error}"));
        let dir = test_dir(test);
        let bundle = certs::generate(&certs::EDGE_SANS)
            .unwrap_or_else(|error| panic!("generating certificates: {error}"));
        let files = certs::write(&bundle, &dir.join("certs"))
            .unwrap_or_else(|error| panic!("writing certificates: {error}"));
        let tls =
            TlsTrust::new(&bundle.ca_der, "edge.lab").unwrap_or_else(|error| panic!("{error}"));
        write(&dir.join("auth.lab.users"), &users_text());
        let config = dir.join("sipveil.toml");
        write(&config, &config_text(options));
        let mut edge = Edge {
            daemon: None,
            dir,
            config,
            tls,
            ca_pem: files.ca,
            daemon_args,
            _lab: lab,
        };
        edge.start_daemon();
        edge
    }

    /// Takes the lab and starts the daemon with an existing configuration (`config`, e.g. the
    /// repository's edge/lab.toml) whose certificate is signed by the CA in `ca_pem`.
    pub fn start_with_config(test: &str, config: &Path, ca_pem: &Path) -> Edge {
        use rustls::pki_types::pem::PemObject;
        require_root();
        let lab = Lab::session(Shape::TwoArm, sipveil())
            .unwrap_or_else(|error| panic!("lab up (two-arm): {error}"));
        let ca = rustls::pki_types::CertificateDer::from_pem_file(ca_pem)
            .unwrap_or_else(|error| panic!("{}: {error}", ca_pem.display()));
        let tls = TlsTrust::new(&ca, "edge.lab").unwrap_or_else(|error| panic!("{error}"));
        let mut edge = Edge {
            daemon: None,
            dir: test_dir(test),
            config: config.to_path_buf(),
            tls,
            ca_pem: ca_pem.to_path_buf(),
            daemon_args: &["--no-xdp"],
            _lab: lab,
        };
        edge.start_daemon();
        edge
    }

    /// Starts the daemon (again) with this test's configuration and database.
    pub fn start_daemon(&mut self) {
        assert!(self.daemon.is_none(), "a daemon is already running");
        let log = self.dir.join("sipveil.log");
        let daemon = Daemon::start(
            sipveil(),
            &self.config,
            self.daemon_args,
            Duration::from_secs(30),
            Some(&log),
        )
        .unwrap_or_else(|error| {
            panic!(
                "{error}\n--- {}:\n{}",
                log.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        println!("daemon ready: {}", daemon.ready);
        self.daemon = Some(daemon);
    }

    /// SIGKILL: nothing of the daemon's shutdown runs.
    pub fn kill(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.kill();
        }
    }

    /// SIGTERM; true when it exited with status 0 in time.
    pub fn terminate(&mut self) -> bool {
        self.daemon
            .take()
            .is_some_and(|daemon| daemon.terminate(Duration::from_secs(15)))
    }

    /// Panics unless the daemon process is running (not exited, not a zombie).
    pub fn assert_alive(&self, after: &str) {
        let daemon = self.daemon.as_ref().expect("no daemon was started");
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", daemon.pid()));
        let state = stat.as_deref().ok().and_then(|stat| {
            let after_name = stat.rfind(')')?;
            stat[after_name + 1..].split_whitespace().next()
        });
        assert!(
            matches!(state, Some(state) if state != "Z" && state != "X"),
            "the daemon is gone after {after} (state {state:?}); its log: {}",
            self.log_tail()
        );
    }

    /// The end of the daemon's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("sipveil.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// A client in sv-a.
    pub fn client(&self, transport: Transport) -> SipClient {
        SipClient::connect(CLIENT_NS, transport, Some(&self.tls))
            .unwrap_or_else(|error| panic!("{transport} client in {CLIENT_NS}: {error}"))
    }

    /// `sipveil registrations --socket S --json`, parsed.
    pub fn registrations(&self) -> Value {
        let out = Command::new(sipveil())
            .args(["registrations", "--socket", LAB_CONTROL_SOCKET, "--json"])
            .output()
            .unwrap_or_else(|error| panic!("running sipveil registrations: {error}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "sipveil registrations failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(stdout.trim()).unwrap_or_else(|error| {
            panic!("sipveil registrations --json printed {stdout:?}: {error}")
        })
    }

    /// The bindings `sipveil registrations --json` lists.
    pub fn bindings(&self) -> Vec<BindingView> {
        bindings(&self.registrations())
    }

    /// The bindings of `aor` (`user@host`).
    pub fn bindings_of(&self, aor: &str) -> Vec<BindingView> {
        self.bindings()
            .into_iter()
            .filter(|binding| binding.aor == aor)
            .collect()
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
}

/// One binding as `sipveil registrations --json` shows it (the fields the tests use; `raw`
/// is the whole entry).
#[derive(Clone, Debug)]
pub struct BindingView {
    /// `user@host`.
    pub aor: String,
    /// The contact URI.
    pub contact: String,
    /// The flow's transport as the daemon names it (lower case here).
    pub proto: Option<String>,
    /// Absolute expiry (ms since the UNIX epoch) when the daemon shows it.
    pub expires_at_ms: Option<u64>,
    /// Seconds left when the daemon shows them.
    pub expires_in: Option<u64>,
    pub raw: Value,
}

fn str_field(value: &Value, keys: &[&str]) -> Option<String> {
    keys.iter()
        .find_map(|key| value.get(*key).and_then(Value::as_str).map(str::to_owned))
}

fn u64_field(value: &Value, keys: &[&str]) -> Option<u64> {
    keys.iter()
        .find_map(|key| value.get(*key).and_then(Value::as_u64))
}

/// The bindings in a `registrations --json` answer: a list of bindings, or of AORs with their
/// bindings, at the top or under `registrations` / `bindings`.
pub fn bindings(answer: &Value) -> Vec<BindingView> {
    let list = answer
        .as_array()
        .or_else(|| answer.get("registrations").and_then(Value::as_array))
        .or_else(|| answer.get("bindings").and_then(Value::as_array))
        .unwrap_or_else(|| panic!("registrations --json: no list of bindings in {answer}"));
    let mut found = Vec::new();
    for entry in list {
        let aor = str_field(entry, &["aor", "address_of_record"]).or_else(|| {
            let user = str_field(entry, &["user"])?;
            let host = str_field(entry, &["host", "domain"])?;
            Some(format!("{user}@{host}"))
        });
        let aor = aor
            .map(|aor| aor.trim_start_matches("sip:").to_owned())
            .unwrap_or_else(|| panic!("registrations --json: an entry without an AOR: {entry}"));
        let nested = entry
            .get("bindings")
            .or_else(|| entry.get("contacts"))
            .and_then(Value::as_array);
        let items: Vec<&Value> = match nested {
            Some(items) => items.iter().collect(),
            None => vec![entry],
        };
        for item in items {
            let contact =
                str_field(item, &["contact", "uri", "contact_uri"]).unwrap_or_else(|| {
                    panic!("registrations --json: a binding without a contact: {item}")
                });
            let flow = item.get("flow").unwrap_or(&Value::Null);
            let proto = str_field(item, &["proto", "transport"])
                .or_else(|| str_field(flow, &["proto", "transport"]))
                .map(|proto| proto.to_ascii_lowercase());
            found.push(BindingView {
                aor: aor.clone(),
                contact: contact.trim_matches(['<', '>']).to_owned(),
                proto,
                expires_at_ms: u64_field(item, &["expires_at_ms", "expires_at", "expiry_ms"]),
                expires_in: u64_field(item, &["expires_in", "expires", "expires_secs"]),
                raw: item.clone(),
            });
        }
    }
    found
}

/// REGISTERs `user@domain` with `contact` for `expires` from `client` and expects 200.
pub fn register_ok(client: &mut SipClient, register: &Register) -> Response {
    let request = client.register(register);
    let response = client
        .transact(&request)
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(
        response.status, 200,
        "REGISTER of {}@{} over {}:\n{request}\nanswered:\n{response}",
        register.user, register.domain, client.transport
    );
    response
}

/// Sends `request` and returns the answer, panicking on silence.
pub fn transact(client: &mut SipClient, request: &str) -> Response {
    client
        .transact(request)
        .unwrap_or_else(|error| panic!("{error}"))
}
