//! The config file: the shipped configs load, and every validation error names the file, the line
//! and the key. No root needed: files go to a private temporary directory.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use sipveil_edge::config::{Config, ConfigError};
use sipveil_registrar::Policy;

static DIRS: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory under the temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let n = DIRS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("svt-config-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, text).expect("write");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// HA1 lines made here with sha2/md-5 directly (not with the registrar's helpers).
fn user_line(name: &str, realm: &str, password: &str) -> String {
    use md5::Digest as _;
    let a1 = format!("{name}:{realm}:{password}");
    let sha = sha2::Sha256::digest(a1.as_bytes());
    let md = md5::Md5::digest(a1.as_bytes());
    format!("{name} sha256:{} md5:{}", hex(&sha), hex(&md))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const USERS: &str = "# test users\nalice sha256:7c2c0edd11bbd3c91969610e3ac0465e6ab2751c8625d3c57c524bc75b1203c9\n\nbob sha256:4a1e694253d2106b860362a811f88bb2bf835e81734411a11da1494cfcd64c96 refuse-anonymous\n";

/// A valid config with every SIP section; tests break one thing at a time.
const BASE: &str = r#"[media]
port_min = 30000
port_max = 30099
addresses = ["198.18.0.1"]

[sip]
workers = 2
udp = ["198.18.0.1:5060"]
tcp = ["198.18.0.1:5060"]
tls = ["198.18.0.1:5061"]
tls_cert = "certs/edge.pem"
tls_key = "certs/edge.key"
edge_names = ["Edge.Lab"]
max_connections = 100
max_connections_per_ip = 10

[registrar]
database = "db/registrar.redb"
min_expires = 60
max_expires = 3600
default_expires = 600

[[domain]]
name = "open.lab"
policy = "open"

[[domain]]
name = "auth.lab"
policy = "authenticated"
users = "users/auth.lab.users"
max_expires = 7200

[[domain]]
name = "closed.lab"
policy = "closed"

[metrics]
listen = "127.0.0.1:9090"
"#;

/// 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{needle:?} not in the config"))
}

/// Writes `text` as `edge.toml` (with the users file) and loads it.
fn load(dir: &TempDir, text: &str) -> Result<Config, ConfigError> {
    dir.write("users/auth.lab.users", USERS);
    let path = dir.write("edge.toml", text);
    Config::load(&path)
}

/// Loads `text`, expects an error, and checks it names the config file, `line` and `key`.
fn refused(text: &str, line: usize, key: &str) -> String {
    let dir = TempDir::new();
    let err = load(&dir, text).expect_err("the config must be refused");
    let msg = err.to_string();
    assert!(msg.contains("edge.toml"), "names the file: {msg}");
    assert!(
        msg.contains(&format!("line {line}")),
        "names line {line}: {msg}"
    );
    assert!(msg.contains(key), "names key {key}: {msg}");
    msg
}

fn replace(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from:?} not in BASE");
    BASE.replacen(from, to, 1)
}

#[test]
fn base_config_loads_with_resolved_paths_and_users() {
    let dir = TempDir::new();
    let cfg = load(&dir, BASE).expect("base config");
    let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
    assert!(cfg.sip.enabled());
    assert_eq!(cfg.sip.workers, 2);
    assert_eq!(cfg.sip.udp, vec![a("198.18.0.1:5060")]);
    assert_eq!(cfg.sip.tls, vec![a("198.18.0.1:5061")]);
    assert_eq!(cfg.sip.tls_cert, Some(dir.0.join("certs/edge.pem")));
    assert_eq!(cfg.sip.tls_key, Some(dir.0.join("certs/edge.key")));
    assert_eq!(cfg.sip.edge_names, vec!["edge.lab"]);
    assert_eq!(cfg.sip.server.as_deref(), Some("sipveil"));
    assert_eq!(cfg.sip.max_connections, 100);
    assert_eq!(cfg.sip.max_connections_per_ip, 10);
    assert_eq!(cfg.sip.idle_timeout.as_secs(), 300);
    assert_eq!(cfg.registrar.database, dir.0.join("db/registrar.redb"));
    let r = &cfg.registrar.config;
    assert_eq!(r.max_bindings, 100_000);
    assert_eq!(r.nonce_ttl_secs, 300);
    assert_eq!(cfg.registrar.commit_interval.as_millis(), 5);
    assert_eq!(cfg.registrar.commit_group, 20);
    let names: Vec<&str> = r.domains.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["open.lab", "auth.lab", "closed.lab"]);
    let auth = &r.domains[1];
    assert_eq!(auth.policy, Policy::Authenticated);
    assert_eq!(auth.realm, "auth.lab", "realm defaults to the name");
    assert_eq!(auth.users.len(), 2);
    assert_eq!(auth.users[1].refuse_anonymous, Some(true));
    assert_eq!(auth.expires.max, 7200, "domain override");
    assert_eq!(auth.expires.min, 60, "inherited");
    assert_eq!(r.domains[0].expires.max, 3600);
    assert!(r.domains[0].anonymous_callers, "default true");
    assert!(!r.domains[0].refuse_anonymous, "default false");
    assert_eq!(
        cfg.registrar.users_files,
        vec![("auth.lab".to_owned(), dir.0.join("users/auth.lab.users"))]
    );
    assert_eq!(cfg.metrics_listen, Some(a("127.0.0.1:9090")));
}

#[test]
fn old_config_without_sip_still_loads_with_sip_off() {
    let dir = TempDir::new();
    let cfg = load(
        &dir,
        "[media]\nport_min = 40000\nport_max = 40010\naddresses = [\"198.18.0.1\"]\n",
    )
    .expect("issue 2 config");
    assert!(!cfg.sip.enabled());
    assert!(cfg.registrar.config.domains.is_empty());
    assert_eq!(cfg.metrics_listen, None);
    assert_eq!(
        cfg.registrar.database,
        PathBuf::from("/var/lib/sipveil/default/registrar.redb")
    );
    assert_eq!(cfg.check_files().expect("nothing to check"), 0);
}

#[test]
fn example_config_loads() {
    let cfg = Config::load(&manifest().join("sipveil.example.toml")).expect("example config");
    assert!(cfg.sip.enabled());
    assert_eq!(cfg.registrar.config.domains.len(), 3);
    let auth = &cfg.registrar.config.domains[1];
    assert_eq!(auth.policy, Policy::Authenticated);
    assert_eq!(auth.users.len(), 1);
    assert!(cfg.metrics_listen.is_some());
}

fn check_lab(file: &str, edge: &str) {
    let cfg = Config::load(&manifest().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let a = |s: String| s.parse::<SocketAddr>().expect("addr");
    assert_eq!(cfg.instance, "lab");
    assert_eq!(cfg.sip.udp, vec![a(format!("{edge}:5060"))]);
    assert_eq!(cfg.sip.tcp, vec![a(format!("{edge}:5060"))]);
    assert_eq!(cfg.sip.tls, vec![a(format!("{edge}:5061"))]);
    assert_eq!(
        cfg.sip.tls_cert,
        Some(PathBuf::from("/run/sipveil-lab/certs/edge.pem"))
    );
    assert_eq!(
        cfg.sip.tls_key,
        Some(PathBuf::from("/run/sipveil-lab/certs/edge.key"))
    );
    assert_eq!(
        cfg.registrar.database,
        PathBuf::from("/run/sipveil-lab/registrar.redb")
    );
    assert_eq!(cfg.metrics_listen, Some(a("127.0.0.1:9090".to_owned())));
    let d = &cfg.registrar.config.domains;
    let policies: Vec<(&str, Policy)> = d.iter().map(|d| (d.name.as_str(), d.policy)).collect();
    assert_eq!(
        policies,
        [
            ("open.lab", Policy::Open),
            ("auth.lab", Policy::Authenticated),
            ("closed.lab", Policy::Closed)
        ]
    );
    assert!(d[0].anonymous_callers);
    let users = &d[1].users;
    let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["alice", "bob", "carol"]);
    // The documented passwords match the hashes (computed here with sha2 / md-5 directly).
    for u in users {
        let expected = user_line(&u.name, "auth.lab", &format!("{}-secret", u.name));
        let got = format!(
            "{} sha256:{} md5:{}",
            u.name,
            hex(&u.ha1_sha256),
            hex(&u.ha1_md5.expect("md5 HA1 for SIPp"))
        );
        assert_eq!(got, expected, "{}", u.name);
    }
    assert_eq!(
        users[1].refuse_anonymous,
        Some(true),
        "bob refuses anonymous"
    );
    assert_eq!(users[0].refuse_anonymous, None);
}

#[test]
fn lab_configs_load() {
    check_lab("lab.toml", "198.18.1.1");
    check_lab("lab-one-arm.toml", "198.18.0.1");
}

#[test]
fn unknown_keys_and_sections_are_refused() {
    let t = replace("workers = 2", "worker = 2");
    let msg = refused(&t, line_of(&t, "worker = 2"), "sip.worker");
    assert!(msg.contains("expected one of"), "says what is valid: {msg}");
    let t = replace("min_expires = 60", "min_expire = 60");
    refused(&t, line_of(&t, "min_expire ="), "registrar.min_expire");
    let t = replace(
        "policy = \"closed\"",
        "policy = \"closed\"\nrefuse_anon = true",
    );
    refused(&t, line_of(&t, "refuse_anon ="), "domain.refuse_anon");
    let t = replace("listen = ", "port = 9\nlisten = ");
    refused(&t, line_of(&t, "port = 9"), "metrics.port");
    let t = format!("{BASE}\n[sipp]\nudp = []\n");
    refused(&t, line_of(&t, "[sipp]"), "sipp");
}

#[test]
fn wrong_types_name_the_key() {
    let t = replace("workers = 2", "workers = \"two\"");
    refused(&t, line_of(&t, "workers ="), "sip.workers");
    let t = replace("policy = \"open\"", "policy = 1");
    refused(&t, line_of(&t, "policy = 1"), "domain.policy");
}

#[test]
fn duplicate_domain_names_are_refused_case_insensitively() {
    let t = replace("name = \"closed.lab\"", "name = \"Open.LAB\"");
    let msg = refused(&t, line_of(&t, "Open.LAB"), "domain.name");
    assert!(
        msg.contains(&format!("line {}", line_of(&t, "\"open.lab\""))),
        "names the first definition: {msg}"
    );
}

#[test]
fn policy_and_users_must_agree() {
    // authenticated without users
    let t = replace("users = \"users/auth.lab.users\"\n", "");
    let msg = refused(&t, line_of(&t, "\"authenticated\""), "domain.users");
    assert!(msg.contains("auth.lab"), "names the domain: {msg}");
    // open / closed with users
    let t = replace(
        "policy = \"open\"",
        "policy = \"open\"\nusers = \"users/auth.lab.users\"",
    );
    refused(&t, line_of(&t, "policy = \"open\"") + 1, "domain.users");
    let t = replace(
        "policy = \"closed\"",
        "policy = \"closed\"\nusers = \"users/auth.lab.users\"",
    );
    refused(&t, line_of(&t, "policy = \"closed\"") + 1, "domain.users");
    // a realm only for authenticated domains
    let t = replace("policy = \"open\"", "policy = \"open\"\nrealm = \"x\"");
    refused(&t, line_of(&t, "realm = \"x\""), "domain.realm");
    // unknown policy
    let t = replace("policy = \"closed\"", "policy = \"private\"");
    let msg = refused(&t, line_of(&t, "\"private\""), "domain.policy");
    assert!(msg.contains("authenticated"), "lists the valid ones: {msg}");
}

#[test]
fn expires_limits_must_be_ordered() {
    let t = replace("default_expires = 600", "default_expires = 30");
    refused(
        &t,
        line_of(&t, "default_expires = 30"),
        "registrar.default_expires",
    );
    let t = replace("max_expires = 3600", "max_expires = 50");
    refused(&t, line_of(&t, "max_expires = 50"), "registrar.max_expires");
    let t = replace("max_expires = 7200", "max_expires = 30");
    refused(&t, line_of(&t, "max_expires = 30"), "domain.max_expires");
    let t = replace("min_expires = 60", "min_expires = 0");
    refused(&t, line_of(&t, "min_expires = 0"), "registrar.min_expires");
    let t = replace("max_expires = 7200", "max_expires = -1");
    refused(&t, line_of(&t, "max_expires = -1"), "domain.max_expires");
}

#[test]
fn listen_addresses_must_parse() {
    let t = replace("udp = [\"198.18.0.1:5060\"]", "udp = [\"198.18.0.1\"]");
    let msg = refused(&t, line_of(&t, "udp ="), "sip.udp");
    assert!(msg.contains("IP:PORT"), "says what is valid: {msg}");
    let t = replace("udp = [\"198.18.0.1:5060\"]", "udp = [\"198.18.0.1:0\"]");
    refused(&t, line_of(&t, "udp ="), "sip.udp");
    let t = replace(
        "udp = [\"198.18.0.1:5060\"]",
        "udp = [\"198.18.0.1:5060\", \"198.18.0.1:5060\"]",
    );
    refused(&t, line_of(&t, "udp ="), "sip.udp");
    let t = replace("tls = [\"198.18.0.1:5061\"]", "tls = [\"198.18.0.1:5060\"]");
    refused(&t, line_of(&t, "tls ="), "sip.tls");
    let t = replace("udp = [\"198.18.0.1:5060\"]", "udp = [\"0.0.0.0:30010\"]");
    let msg = refused(&t, line_of(&t, "udp ="), "sip.udp");
    assert!(msg.contains("media relay"), "{msg}");
    let t = replace("listen = \"127.0.0.1:9090\"", "listen = \"localhost:9090\"");
    refused(&t, line_of(&t, "listen ="), "metrics.listen");
}

#[test]
fn tls_listeners_need_cert_and_key() {
    let t = replace("tls_cert = \"certs/edge.pem\"\n", "");
    refused(&t, line_of(&t, "tls ="), "sip.tls_cert");
    let t = replace("tls_key = \"certs/edge.key\"\n", "");
    refused(&t, line_of(&t, "tls ="), "sip.tls_key");
    // Without TLS listeners neither is needed.
    let t = replace("tls = [\"198.18.0.1:5061\"]\n", "")
        .replace("tls_cert = \"certs/edge.pem\"\n", "")
        .replace("tls_key = \"certs/edge.key\"\n", "");
    let dir = TempDir::new();
    let cfg = load(&dir, &t).expect("no TLS");
    assert_eq!(cfg.check_files().expect("nothing to check"), 0);
}

const PEM_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n";
const PEM_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIBAA==\n-----END PRIVATE KEY-----\n";

/// `check_files` error for the base config with the given cert and key files (None = absent).
fn tls_error(cert: Option<&str>, key: Option<&str>) -> Option<String> {
    let dir = TempDir::new();
    if let Some(c) = cert {
        dir.write("certs/edge.pem", c);
    }
    if let Some(k) = key {
        dir.write("certs/edge.key", k);
    }
    let cfg = load(&dir, BASE).expect("base config");
    cfg.check_files().err().map(|e| e.to_string())
}

#[test]
fn tls_files_must_exist_and_be_pem() {
    assert_eq!(tls_error(Some(PEM_CERT), Some(PEM_KEY)), None);
    let cert_line = format!("line {}", line_of(BASE, "tls_cert ="));
    let key_line = format!("line {}", line_of(BASE, "tls_key ="));
    let msg = tls_error(None, Some(PEM_KEY)).expect("missing cert");
    assert!(msg.contains("certs/edge.pem"), "names the file: {msg}");
    assert!(
        msg.contains("sip.tls_cert") && msg.contains(&cert_line),
        "{msg}"
    );
    assert!(msg.contains("edge.toml"), "{msg}");
    let msg = tls_error(Some(PEM_CERT), None).expect("missing key");
    assert!(msg.contains("certs/edge.key"), "names the file: {msg}");
    assert!(
        msg.contains("sip.tls_key") && msg.contains(&key_line),
        "{msg}"
    );
    let msg = tls_error(Some("not pem\n"), Some(PEM_KEY)).expect("not PEM");
    assert!(
        msg.contains("certs/edge.pem") && msg.contains("PEM"),
        "{msg}"
    );
    let msg = tls_error(Some(PEM_CERT), Some(PEM_CERT)).expect("a cert is no key");
    assert!(
        msg.contains("certs/edge.key") && msg.contains("private key"),
        "{msg}"
    );
}

#[test]
fn numeric_ranges_are_checked() {
    let t = replace("workers = 2", "workers = 0");
    let msg = refused(&t, line_of(&t, "workers = 0"), "sip.workers");
    assert!(msg.contains("1..="), "says what is valid: {msg}");
    let t = replace(
        "max_connections_per_ip = 10",
        "max_connections_per_ip = 101",
    );
    refused(
        &t,
        line_of(&t, "per_ip = 101"),
        "sip.max_connections_per_ip",
    );
    let t = replace(
        "max_connections = 100",
        "max_connections = 100\nidle_timeout_secs = 0",
    );
    refused(
        &t,
        line_of(&t, "idle_timeout_secs"),
        "sip.idle_timeout_secs",
    );
    let t = replace(
        "max_connections = 100",
        "max_connections = 100\nmax_message_bytes = 100",
    );
    refused(
        &t,
        line_of(&t, "max_message_bytes"),
        "sip.max_message_bytes",
    );
    let t = replace(
        "max_connections = 100",
        "max_connections = 100\nwrite_queue_bytes = 2000",
    );
    refused(
        &t,
        line_of(&t, "write_queue_bytes"),
        "sip.write_queue_bytes",
    );
    let t = replace(
        "default_expires = 600",
        "default_expires = 600\nmax_bindings = 0",
    );
    refused(&t, line_of(&t, "max_bindings"), "registrar.max_bindings");
    let t = replace(
        "default_expires = 600",
        "default_expires = 600\ncommit_interval_ms = 101",
    );
    refused(
        &t,
        line_of(&t, "commit_interval_ms"),
        "registrar.commit_interval_ms",
    );
    let t = replace(
        "default_expires = 600",
        "default_expires = 600\ncommit_group = 0",
    );
    refused(&t, line_of(&t, "commit_group"), "registrar.commit_group");
    let t = replace(
        "default_expires = 600",
        "default_expires = 600\nmax_contacts = 0",
    );
    refused(&t, line_of(&t, "max_contacts"), "registrar.max_contacts");
    let t = replace(
        "default_expires = 600",
        "default_expires = 600\nnonce_ttl_secs = 0",
    );
    refused(
        &t,
        line_of(&t, "nonce_ttl_secs"),
        "registrar.nonce_ttl_secs",
    );
}

#[test]
fn names_and_texts_are_checked() {
    let t = replace("name = \"open.lab\"", "name = \"open lab\"");
    refused(&t, line_of(&t, "open lab"), "domain.name");
    let t = replace(
        "edge_names = [\"Edge.Lab\"]",
        "edge_names = [\"edge_lab!\"]",
    );
    refused(&t, line_of(&t, "edge_names"), "sip.edge_names");
    let t = replace("workers = 2", "workers = 2\nserver = \"x\\\"y\"");
    refused(&t, line_of(&t, "server ="), "sip.server");
    let t = replace("database = \"db/registrar.redb\"", "database = \"\"");
    refused(&t, line_of(&t, "database ="), "registrar.database");
}

#[test]
fn users_file_errors_name_both_files_and_lines() {
    let dir = TempDir::new();
    let path = dir.write("edge.toml", BASE);
    // Missing users file.
    let msg = Config::load(&path).expect_err("no users file").to_string();
    assert!(
        msg.contains("users/auth.lab.users"),
        "names the file: {msg}"
    );
    let users_key_line = format!("line {}", line_of(BASE, "users = "));
    assert!(
        msg.contains("domain.users") && msg.contains(&users_key_line),
        "{msg}"
    );
    // A bad line (line 3).
    dir.write(
        "users/auth.lab.users",
        &format!(
            "# users\n{}\ncarol sha256:abcd\n",
            user_line("alice", "auth.lab", "pw")
        ),
    );
    let msg = Config::load(&path).expect_err("bad users line").to_string();
    assert!(
        msg.contains("users/auth.lab.users"),
        "names the users file: {msg}"
    );
    assert!(msg.contains("line 3"), "names the users file's line: {msg}");
    assert!(
        msg.contains("edge.toml") && msg.contains(&users_key_line),
        "{msg}"
    );
    assert!(msg.contains("domain.users"), "{msg}");
    // The same user twice (line 3).
    let alice = user_line("alice", "auth.lab", "pw");
    dir.write("users/auth.lab.users", &format!("{alice}\n\n{alice}\n"));
    let msg = Config::load(&path).expect_err("duplicate user").to_string();
    assert!(
        msg.contains("users/auth.lab.users") && msg.contains("line 3"),
        "{msg}"
    );
}

#[test]
fn absent_file_is_named() {
    let err = Config::load(Path::new("/nonexistent/sipveil.toml"))
        .expect_err("no file")
        .to_string();
    assert!(err.contains("/nonexistent/sipveil.toml"), "{err}");
}

#[test]
fn digest_algorithms_are_ordered_and_checked() {
    use sipveil_registrar::DigestAlgorithm;
    let dir = TempDir::new();
    let t = replace(
        "max_expires = 7200",
        "max_expires = 7200\ndigest = [\"MD5\", \"SHA-256\"]",
    );
    let cfg = load(&dir, &t).expect("loads");
    let auth = cfg
        .registrar
        .config
        .domains
        .iter()
        .find(|d| d.name == "auth.lab")
        .expect("auth.lab");
    assert_eq!(
        auth.offered_algorithms(),
        &[DigestAlgorithm::Md5, DigestAlgorithm::Sha256]
    );
    // Not given: SHA-256 then MD5.
    let cfg = load(&dir, BASE).expect("loads");
    let auth = &cfg.registrar.config.domains[1];
    assert_eq!(
        auth.offered_algorithms(),
        &[DigestAlgorithm::Sha256, DigestAlgorithm::Md5]
    );
    // Unknown, repeated, empty, or on a domain without digest.
    for bad in [r#"["SHA-512"]"#, r#"["MD5", "md5"]"#, "[]"] {
        let t = replace(
            "max_expires = 7200",
            &format!("max_expires = 7200\ndigest = {bad}"),
        );
        let msg = refused(&t, line_of(&t, "digest = "), "domain.digest");
        assert!(msg.contains("auth.lab"), "names the domain: {msg}");
    }
    let t = replace("policy = \"open\"", "policy = \"open\"\ndigest = [\"MD5\"]");
    refused(&t, line_of(&t, "digest = "), "domain.digest");
}
