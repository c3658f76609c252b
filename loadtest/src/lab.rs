//! The lab: network namespaces joined by veth pairs, exactly as docs/contracts.md ("Lab") fixes
//! them, built and torn down with `ip` commands.
//!
//! Used by `cargo xtask lab`, the demo, the end-to-end tests and the benchmark harness. This file
//! depends on `std` only: xtask includes it by path (`#[path]`) so that it builds on a fresh machine
//! before `cargo xtask setup` has installed the eBPF toolchain that the rest of this crate needs.
//!
//! - [`Lab::up`] is idempotent: a lab of the same shape that verifies is left as it is; a lab of
//!   another shape (or a broken one) is torn down and rebuilt; a failure midway tears down what was
//!   made, so the machine is never left with half a lab.
//! - [`Lab::session`] brings a lab up for the lifetime of a guard that tears it down on drop (also
//!   on panic) and holds [`LOCK_PATH`] meanwhile, so two test runs never share or break one lab.
//! - Every veth end that is not the edge's gets `sv_pass` in driver mode through
//!   `sipveil lab-xdp attach` (frames that XDP_TX/XDP_REDIRECT push into a veth are only received
//!   when the peer end has an XDP program).

use std::fmt;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The appliance.
pub const NS_EDGE: &str = "sv-edge";
/// Caller side.
pub const NS_A: &str = "sv-a";
/// Callee side.
pub const NS_B: &str = "sv-b";
/// Hostile source.
pub const NS_X: &str = "sv-x";
/// Router (one-arm shape only).
pub const NS_R: &str = "sv-r";
/// Every namespace the lab may create, in creation order.
pub const ALL_NAMESPACES: [&str; 5] = [NS_EDGE, NS_A, NS_B, NS_X, NS_R];

/// A's address (on `a0`), in both shapes.
pub const A_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// B's address (on `b0`), in both shapes.
pub const B_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
/// X's address (on `x0`), in both shapes.
pub const X_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 2);
/// Spoofed sources from X's side are routed back to X: 198.19.0.0/16.
pub const X_ROUTED: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 19, 0, 0), 16);

/// The daemon instance the lab uses (pins under `/sys/fs/bpf/sipveil/lab/`).
pub const LAB_INSTANCE: &str = "lab";
/// Where the daemon of [`LAB_INSTANCE`] pins its maps and links.
pub const LAB_INSTANCE_PIN_DIR: &str = "/sys/fs/bpf/sipveil/lab";
/// Where `sipveil lab-xdp attach` pins the `sv_pass` links of the lab's veth peers.
pub const LAB_PIN_DIR: &str = "/sys/fs/bpf/sipveil-lab";
/// Held (flock) by a [`LabSession`] for its lifetime and by [`Lab::up`]/[`Lab::down`] while they run.
pub const LOCK_PATH: &str = "/run/sipveil-lab.lock";
/// The XDP program attached to every veth end that is not the edge's.
pub const PEER_PROGRAM: &str = "sv_pass";

/// The two lab topologies of docs/contracts.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shape {
    /// The edge has one leg per peer (`ea0`, `eb0`, `ex0`); relay = XDP_REDIRECT through the devmap.
    TwoArm,
    /// The edge has one interface `e0` behind the router `sv-r`; relay = XDP_TX out of `e0`.
    OneArm,
}

/// One end of a veth pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct End {
    pub ns: &'static str,
    pub iface: &'static str,
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

/// A veth pair; `inner` is the edge's or router's end, `outer` the peer's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair {
    pub inner: End,
    pub outer: End,
}

/// A route the lab installs: in `ns`, `dest` (None = default) via `via`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub ns: &'static str,
    pub dest: Option<(Ipv4Addr, u8)>,
    pub via: Ipv4Addr,
}

const fn end(ns: &'static str, iface: &'static str, addr: [u8; 4]) -> End {
    End {
        ns,
        iface,
        addr: Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]),
        prefix: 24,
    }
}

const A0: End = end(NS_A, "a0", [198, 18, 1, 2]);
const B0: End = end(NS_B, "b0", [198, 18, 2, 2]);
const X0: End = end(NS_X, "x0", [198, 18, 3, 2]);

const TWO_ARM_PAIRS: [Pair; 3] = [
    Pair {
        inner: end(NS_EDGE, "ea0", [198, 18, 1, 1]),
        outer: A0,
    },
    Pair {
        inner: end(NS_EDGE, "eb0", [198, 18, 2, 1]),
        outer: B0,
    },
    Pair {
        inner: end(NS_EDGE, "ex0", [198, 18, 3, 1]),
        outer: X0,
    },
];

const ONE_ARM_PAIRS: [Pair; 4] = [
    Pair {
        inner: end(NS_EDGE, "e0", [198, 18, 0, 1]),
        outer: end(NS_R, "r0", [198, 18, 0, 254]),
    },
    Pair {
        inner: end(NS_R, "ra", [198, 18, 1, 1]),
        outer: A0,
    },
    Pair {
        inner: end(NS_R, "rb", [198, 18, 2, 1]),
        outer: B0,
    },
    Pair {
        inner: end(NS_R, "rx", [198, 18, 3, 1]),
        outer: X0,
    },
];

impl Shape {
    /// Both shapes.
    pub const ALL: [Shape; 2] = [Shape::TwoArm, Shape::OneArm];

    /// The name used on the command line: `two-arm` or `one-arm`.
    pub fn name(self) -> &'static str {
        match self {
            Shape::TwoArm => "two-arm",
            Shape::OneArm => "one-arm",
        }
    }

    /// The namespaces of this shape.
    pub fn namespaces(self) -> &'static [&'static str] {
        match self {
            Shape::TwoArm => &[NS_EDGE, NS_A, NS_B, NS_X],
            Shape::OneArm => &[NS_EDGE, NS_A, NS_B, NS_X, NS_R],
        }
    }

    /// The veth pairs of this shape.
    pub fn pairs(self) -> &'static [Pair] {
        match self {
            Shape::TwoArm => &TWO_ARM_PAIRS,
            Shape::OneArm => &ONE_ARM_PAIRS,
        }
    }

    /// The edge's interfaces (what the daemon attaches to).
    pub fn edge_ifaces(self) -> Vec<&'static str> {
        self.ends()
            .filter(|end| end.ns == NS_EDGE)
            .map(|end| end.iface)
            .collect()
    }

    /// The veth ends that get [`PEER_PROGRAM`]: every end that is not the edge's.
    pub fn peer_ends(self) -> Vec<End> {
        self.ends().filter(|end| end.ns != NS_EDGE).collect()
    }

    /// The edge's media/SIP address toward A.
    pub fn edge_toward_a(self) -> Ipv4Addr {
        match self {
            Shape::TwoArm => Ipv4Addr::new(198, 18, 1, 1),
            Shape::OneArm => Ipv4Addr::new(198, 18, 0, 1),
        }
    }

    /// The edge's media/SIP address toward B.
    pub fn edge_toward_b(self) -> Ipv4Addr {
        match self {
            Shape::TwoArm => Ipv4Addr::new(198, 18, 2, 1),
            Shape::OneArm => Ipv4Addr::new(198, 18, 0, 1),
        }
    }

    /// The edge's address toward X.
    pub fn edge_toward_x(self) -> Ipv4Addr {
        match self {
            Shape::TwoArm => Ipv4Addr::new(198, 18, 3, 1),
            Shape::OneArm => Ipv4Addr::new(198, 18, 0, 1),
        }
    }

    /// Namespaces that forward: the router, and the edge (`bpf_fib_lookup` answers
    /// "forwarding disabled" on an interface whose namespace does not forward).
    pub fn forwarding(self) -> &'static [&'static str] {
        match self {
            Shape::TwoArm => &[NS_EDGE],
            Shape::OneArm => &[NS_EDGE, NS_R],
        }
    }

    /// The routes of this shape.
    pub fn routes(self) -> Vec<Route> {
        let default = |ns, via: [u8; 4]| Route {
            ns,
            dest: None,
            via: Ipv4Addr::from(via),
        };
        let mut routes = vec![
            default(NS_A, [198, 18, 1, 1]),
            default(NS_B, [198, 18, 2, 1]),
            default(NS_X, [198, 18, 3, 1]),
        ];
        match self {
            Shape::TwoArm => routes.push(Route {
                ns: NS_EDGE,
                dest: Some(X_ROUTED),
                via: X_ADDR,
            }),
            Shape::OneArm => {
                routes.push(default(NS_EDGE, [198, 18, 0, 254]));
                routes.push(Route {
                    ns: NS_R,
                    dest: Some(X_ROUTED),
                    via: X_ADDR,
                });
            }
        }
        routes
    }

    fn ends(self) -> impl Iterator<Item = End> {
        self.pairs()
            .iter()
            .flat_map(|pair| [pair.inner, pair.outer])
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Shape {
    type Err = LabError;

    fn from_str(text: &str) -> Result<Self, LabError> {
        Shape::ALL
            .into_iter()
            .find(|shape| shape.name() == text)
            .ok_or_else(|| LabError::UnknownShape(text.to_owned()))
    }
}

/// Why a lab operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum LabError {
    /// The lab needs root (namespaces, veth, XDP).
    NotRoot,
    /// Neither `two-arm` nor `one-arm`.
    UnknownShape(String),
    /// A command could not be started.
    Spawn {
        command: String,
        source: std::io::Error,
    },
    /// A command exited unsuccessfully.
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    /// A file operation failed.
    Io {
        what: String,
        source: std::io::Error,
    },
    /// The lab was built but does not verify.
    Verify(Vec<String>),
    /// The daemon did not start, or its control socket misbehaved.
    Daemon(String),
    /// An sv-rtp process did not start, bind or finish.
    Rtp(String),
}

impl fmt::Display for LabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabError::NotRoot => f.write_str("the lab needs root (network namespaces, veth, XDP)"),
            LabError::UnknownShape(text) => {
                write!(f, "unknown lab shape {text:?} (two-arm or one-arm)")
            }
            LabError::Spawn { command, source } => write!(f, "cannot start `{command}`: {source}"),
            LabError::Command {
                command,
                status,
                stderr,
            } => write!(f, "`{command}` failed ({status}): {stderr}"),
            LabError::Io { what, source } => write!(f, "{what}: {source}"),
            LabError::Verify(problems) => {
                write!(f, "the lab does not verify: {}", problems.join("; "))
            }
            LabError::Daemon(text) => write!(f, "sipveil daemon: {text}"),
            LabError::Rtp(text) => write!(f, "sv-rtp: {text}"),
        }
    }
}

impl std::error::Error for LabError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LabError::Spawn { source, .. } | LabError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// What [`Lab::up`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpOutcome {
    /// A lab of that shape was already up and verified.
    AlreadyUp,
    /// The lab was built (after tearing down whatever lab state was there).
    Built,
}

/// One veth end as found on the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndStatus {
    pub end: End,
    pub present: bool,
    pub up: bool,
    pub has_addr: bool,
    /// An XDP program is attached in driver mode.
    pub xdp: bool,
}

/// What [`Lab::status`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// Lab namespaces that exist.
    pub namespaces: Vec<&'static str>,
    /// The shape the namespaces suggest (None: no lab namespace exists).
    pub shape: Option<Shape>,
    /// The ends of that shape.
    pub ends: Vec<EndStatus>,
    /// Everything that differs from a complete lab of that shape.
    pub problems: Vec<String>,
}

impl Status {
    /// A complete lab of `shape` is up.
    pub fn is_up(&self, shape: Shape) -> bool {
        self.shape == Some(shape) && self.problems.is_empty()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(shape) = self.shape else {
            return writeln!(f, "lab: down (no sv-* namespace)");
        };
        let verdict = if self.problems.is_empty() {
            "up"
        } else {
            "BROKEN"
        };
        writeln!(f, "lab: {verdict}, shape {shape}")?;
        writeln!(
            f,
            "{:<8} {:<5} {:<18} {:<5} {:<5}",
            "netns", "iface", "address", "state", "xdp"
        )?;
        for status in &self.ends {
            let end = status.end;
            let state = match (status.present, status.up) {
                (false, _) => "gone",
                (true, false) => "down",
                (true, true) => "up",
            };
            let xdp = if status.xdp { "drv" } else { "-" };
            writeln!(
                f,
                "{:<8} {:<5} {:<18} {:<5} {:<5}",
                end.ns,
                end.iface,
                format!("{}/{}", end.addr, end.prefix),
                state,
                xdp
            )?;
        }
        for problem in &self.problems {
            writeln!(f, "problem: {problem}")?;
        }
        Ok(())
    }
}

/// The lab operations. All need root.
pub struct Lab;

impl Lab {
    /// Makes the whole flood range (198.19.0.0/16, [`X_ROUTED`]) local to `sv-x`, so a flooder
    /// there can bind any address of it as a source (one `local` route on `lo`; the edge already
    /// routes the range back via `sv-x`). Additive and idempotent; call it only for many-source
    /// floods.
    pub fn route_flood_range() -> Result<(), LabError> {
        let range = format!("{}/{}", X_ROUTED.0, X_ROUTED.1);
        ip(&["-n", NS_X, "route", "replace", "local", &range, "dev", "lo"])
    }

    /// Brings up a lab of `shape`; `sipveil` is the daemon binary (for `sipveil lab-xdp attach`).
    ///
    /// Idempotent, and never leaves half a lab: see the module documentation.
    pub fn up(shape: Shape, sipveil: &Path) -> Result<UpOutcome, LabError> {
        require_root()?;
        let _lock = LabLock::acquire()?;
        up_locked(shape, sipveil)
    }

    /// Tears the lab down: stops processes left inside its namespaces, deletes the namespaces
    /// (and so their veths), and removes [`LAB_PIN_DIR`] and [`LAB_INSTANCE_PIN_DIR`], whose
    /// links and flows refer to interfaces that no longer exist. Nothing to do is not an error.
    pub fn down() -> Result<(), LabError> {
        require_root()?;
        let _lock = LabLock::acquire()?;
        down_locked()
    }

    /// Reports what exists of the lab and what is missing from it.
    pub fn status() -> Result<Status, LabError> {
        status()
    }

    /// Brings a lab of `shape` up for as long as the returned guard lives, holding
    /// [`LOCK_PATH`] meanwhile (waiting for another session to end first). The guard tears the
    /// lab down when dropped, also when a test panics.
    pub fn session(shape: Shape, sipveil: &Path) -> Result<LabSession, LabError> {
        require_root()?;
        let lock = LabLock::acquire()?;
        up_locked(shape, sipveil)?;
        Ok(LabSession { shape, _lock: lock })
    }
}

/// A lab that exists while this guard lives (see [`Lab::session`]).
pub struct LabSession {
    shape: Shape,
    _lock: LabLock,
}

impl LabSession {
    /// The shape of this lab.
    pub fn shape(&self) -> Shape {
        self.shape
    }
}

impl Drop for LabSession {
    fn drop(&mut self) {
        if let Err(error) = down_locked() {
            eprintln!("lab: tearing down after the session failed: {error}");
        }
    }
}

/// An exclusive flock on [`LOCK_PATH`], released on drop (or when the process dies).
struct LabLock {
    _file: File,
}

impl LabLock {
    fn acquire() -> Result<Self, LabError> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_PATH)
            .map_err(|source| LabError::Io {
                what: format!("opening {LOCK_PATH}"),
                source,
            })?;
        if file.try_lock().is_err() {
            eprintln!("lab: waiting for {LOCK_PATH} (another lab session is running)");
            file.lock().map_err(|source| LabError::Io {
                what: format!("locking {LOCK_PATH}"),
                source,
            })?;
        }
        Ok(LabLock { _file: file })
    }
}

fn require_root() -> Result<(), LabError> {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the effective uid of the process that looks at it.
    match std::fs::metadata("/proc/self") {
        Ok(meta) if meta.uid() == 0 => Ok(()),
        _ => Err(LabError::NotRoot),
    }
}

fn up_locked(shape: Shape, sipveil: &Path) -> Result<UpOutcome, LabError> {
    let found = status()?;
    if found.is_up(shape) {
        return Ok(UpOutcome::AlreadyUp);
    }
    if !found.namespaces.is_empty() {
        match found.shape {
            Some(other) if other != shape => {
                eprintln!("lab: replacing the {other} lab with a {shape} lab")
            }
            _ => eprintln!(
                "lab: rebuilding an incomplete lab: {}",
                found.problems.join("; ")
            ),
        }
        down_locked()?;
    }
    match build(shape, sipveil).and_then(|()| verify(shape)) {
        Ok(()) => Ok(UpOutcome::Built),
        Err(error) => {
            if let Err(cleanup) = down_locked() {
                eprintln!("lab: cleaning up after a failed build also failed: {cleanup}");
            }
            Err(error)
        }
    }
}

fn verify(shape: Shape) -> Result<(), LabError> {
    let found = status()?;
    if found.is_up(shape) {
        Ok(())
    } else if found.shape != Some(shape) {
        Err(LabError::Verify(vec![format!(
            "expected a {shape} lab, found {:?}",
            found.shape.map(Shape::name)
        )]))
    } else {
        Err(LabError::Verify(found.problems))
    }
}

fn build(shape: Shape, sipveil: &Path) -> Result<(), LabError> {
    for ns in shape.namespaces() {
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        // Before any veth exists, so that every interface inherits `default`.
        sysctl(ns, "net.ipv4.conf.all.rp_filter", "0")?;
        sysctl(ns, "net.ipv4.conf.default.rp_filter", "0")?;
        // The lab is IPv4: no router solicitations or MLD reports in captures and counters.
        sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1")?;
        sysctl(ns, "net.ipv6.conf.default.disable_ipv6", "1")?;
    }
    for ns in shape.forwarding() {
        sysctl(ns, "net.ipv4.ip_forward", "1")?;
    }
    for pair in shape.pairs() {
        let (inner, outer) = (pair.inner, pair.outer);
        ip(&[
            "link",
            "add",
            inner.iface,
            "netns",
            inner.ns,
            "type",
            "veth",
            "peer",
            "name",
            outer.iface,
            "netns",
            outer.ns,
        ])?;
        for end in [inner, outer] {
            let cidr = format!("{}/{}", end.addr, end.prefix);
            ip(&["-n", end.ns, "addr", "add", &cidr, "dev", end.iface])?;
            // Checksums complete in every frame: an XDP program that rewrites IP/UDP and
            // redirects cannot finish a CHECKSUM_PARTIAL frame, its receiver would drop it.
            run(Command::new("ip").args([
                "netns", "exec", end.ns, "ethtool", "-K", end.iface, "tx", "off",
            ]))?;
            ip(&["-n", end.ns, "link", "set", end.iface, "up"])?;
        }
    }
    for route in shape.routes() {
        let dest = match route.dest {
            Some((net, prefix)) => format!("{net}/{prefix}"),
            None => "default".to_owned(),
        };
        ip(&[
            "-n",
            route.ns,
            "route",
            "add",
            &dest,
            "via",
            &route.via.to_string(),
        ])?;
    }
    for end in shape.peer_ends() {
        attach_peer_program(sipveil, end)?;
    }
    Ok(())
}

/// Attaches [`PEER_PROGRAM`] in driver mode to one veth end (the daemon's `lab-xdp` command).
fn attach_peer_program(sipveil: &Path, end: End) -> Result<(), LabError> {
    run(Command::new(sipveil).args([
        "lab-xdp",
        "attach",
        "--netns",
        end.ns,
        "--iface",
        end.iface,
        "--program",
        PEER_PROGRAM,
    ]))
    .map(drop)
}

fn down_locked() -> Result<(), LabError> {
    let present: Vec<&str> = existing_namespaces();
    for ns in &present {
        stop_processes_in(ns)?;
    }
    for ns in &present {
        ip(&["netns", "del", ns])?;
    }
    for dir in [LAB_PIN_DIR, LAB_INSTANCE_PIN_DIR] {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(LabError::Io {
                    what: format!("removing {dir}"),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Processes still inside a lab namespace (daemons, generators a crashed run left behind) would
/// keep the namespace and its veths alive after `ip netns del`: SIGTERM, then SIGKILL after 3 s.
fn stop_processes_in(ns: &str) -> Result<(), LabError> {
    let pids = |ns: &str| -> Result<Vec<String>, LabError> {
        Ok(run(Command::new("ip").args(["netns", "pids", ns]))?
            .split_whitespace()
            .map(str::to_owned)
            .collect())
    };
    let found = pids(ns)?;
    if found.is_empty() {
        return Ok(());
    }
    eprintln!("lab: stopping processes left in {ns}: {}", found.join(" "));
    // A process may exit between listing and signalling: ignore kill's status.
    let _ = run(Command::new("kill").arg("-TERM").args(&found));
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if pids(ns)?.is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = pids(ns)?;
    if !left.is_empty() {
        let _ = run(Command::new("kill").arg("-KILL").args(&left));
    }
    Ok(())
}

fn existing_namespaces() -> Vec<&'static str> {
    ALL_NAMESPACES
        .into_iter()
        .filter(|ns| Path::new("/run/netns").join(ns).exists())
        .collect()
}

fn status() -> Result<Status, LabError> {
    let namespaces = existing_namespaces();
    let shape = if namespaces.contains(&NS_R) {
        Some(Shape::OneArm)
    } else if namespaces.is_empty() {
        None
    } else {
        Some(Shape::TwoArm)
    };
    let Some(shape) = shape else {
        return Ok(Status {
            namespaces,
            shape,
            ends: Vec::new(),
            problems: Vec::new(),
        });
    };
    let mut problems = Vec::new();
    for ns in shape.namespaces() {
        if !namespaces.contains(ns) {
            problems.push(format!("namespace {ns} is missing"));
        }
    }
    let mut ends = Vec::new();
    for end in shape.ends() {
        let status = end_status(end, namespaces.contains(&end.ns));
        let name = format!("{}:{}", end.ns, end.iface);
        if !status.present {
            problems.push(format!("{name} is missing"));
        } else {
            if !status.up {
                problems.push(format!("{name} is down"));
            }
            if !status.has_addr {
                problems.push(format!("{name} lacks {}/{}", end.addr, end.prefix));
            }
            if end.ns != NS_EDGE && !status.xdp {
                problems.push(format!("{name} has no {PEER_PROGRAM} (driver mode)"));
            }
        }
        ends.push(status);
    }
    for route in shape.routes() {
        if !namespaces.contains(&route.ns) {
            continue;
        }
        let dest = match route.dest {
            Some((net, prefix)) => format!("{net}/{prefix}"),
            None => "default".to_owned(),
        };
        let found = run(Command::new("ip").args(["-n", route.ns, "-o", "route", "show", &dest]))
            .unwrap_or_default();
        if !found.contains(&format!("via {}", route.via)) {
            problems.push(format!("{}: no route {dest} via {}", route.ns, route.via));
        }
    }
    for ns in shape.forwarding() {
        if namespaces.contains(ns) {
            let value = run(Command::new("ip").args([
                "netns",
                "exec",
                ns,
                "sysctl",
                "-n",
                "net.ipv4.ip_forward",
            ]))
            .unwrap_or_default();
            if value.trim() != "1" {
                problems.push(format!("{ns}: forwarding is off"));
            }
        }
    }
    Ok(Status {
        namespaces,
        shape: Some(shape),
        ends,
        problems,
    })
}

fn end_status(end: End, ns_present: bool) -> EndStatus {
    let mut status = EndStatus {
        end,
        present: false,
        up: false,
        has_addr: false,
        xdp: false,
    };
    if !ns_present {
        return status;
    }
    let Ok(link) =
        run(Command::new("ip").args(["-n", end.ns, "-o", "link", "show", "dev", end.iface]))
    else {
        return status;
    };
    status.present = true;
    status.up = link_flags(&link).is_some_and(|flags| flags.split(',').any(|flag| flag == "UP"));
    // Driver mode shows as the `xdp` keyword (generic mode would be `xdpgeneric`).
    status.xdp = link.split_whitespace().any(|word| word == "xdp");
    let cidr = format!("inet {}/{} ", end.addr, end.prefix);
    status.has_addr =
        run(Command::new("ip").args(["-n", end.ns, "-o", "-4", "addr", "show", "dev", end.iface]))
            .is_ok_and(|addrs| addrs.contains(&cidr));
    status
}

/// The flags between `<` and `>` in `ip -o link show` output.
fn link_flags(line: &str) -> Option<&str> {
    let start = line.find('<')? + 1;
    let len = line.get(start..)?.find('>')?;
    line.get(start..start + len)
}

fn ip(args: &[&str]) -> Result<(), LabError> {
    run(Command::new("ip").args(args)).map(drop)
}

fn sysctl(ns: &str, key: &str, value: &str) -> Result<(), LabError> {
    let setting = format!("{key}={value}");
    run(Command::new("ip").args(["netns", "exec", ns, "sysctl", "-q", "-w", &setting])).map(drop)
}

/// A command line for messages.
fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs a command quietly and returns its stdout; an unsuccessful exit is an error with stderr.
fn run(cmd: &mut Command) -> Result<String, LabError> {
    let command = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(LabError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The daemon's control socket for [`LAB_INSTANCE`].
pub const LAB_CONTROL_SOCKET: &str = "/run/sipveil/lab.sock";
/// The relay port range the lab configuration gives the daemon (even/odd pairs).
pub const LAB_PORTS: (u16, u16) = (30000, 39999);

impl Shape {
    /// A daemon configuration (edge/README.md "Config") for this shape: the edge's interfaces and
    /// addresses, instance [`LAB_INSTANCE`], ports [`LAB_PORTS`]. `xdp` is `auto`, `driver`,
    /// `generic` or `off`.
    pub fn daemon_config(self, xdp: &str) -> String {
        let interfaces: Vec<String> = self
            .edge_ifaces()
            .iter()
            .map(|iface| format!("\"{iface}\""))
            .collect();
        let addresses = match self {
            Shape::TwoArm => format!(
                "{{ a = \"{}\", b = \"{}\" }}",
                self.edge_toward_a(),
                self.edge_toward_b()
            ),
            Shape::OneArm => format!("[\"{}\"]", self.edge_toward_a()),
        };
        format!(
            "# sipveil configuration for the {shape} lab (written by the lab module)\n\
             [dataplane]\n\
             interfaces = [{interfaces}]\n\
             xdp = \"{xdp}\"\n\
             instance = \"{LAB_INSTANCE}\"\n\
             \n\
             [media]\n\
             port_min = {port_min}\n\
             port_max = {port_max}\n\
             idle_timeout_secs = 120\n\
             addresses = {addresses}\n\
             workers = 1\n\
             \n\
             [control]\n\
             socket = \"{LAB_CONTROL_SOCKET}\"\n",
            shape = self,
            interfaces = interfaces.join(", "),
            port_min = LAB_PORTS.0,
            port_max = LAB_PORTS.1,
        )
    }
}

/// Deletes a registrar database and its binding log (`<db>.wal0`, `<db>.wal1`: the names the
/// daemon's store gives them, edge/src/store/log.rs), so that a daemon started next begins with
/// an empty registrar. Returns the files that existed; a missing file is no error.
pub fn remove_registrar_files(db: &Path) -> std::io::Result<Vec<PathBuf>> {
    let with = |suffix: &str| {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    let mut removed = Vec::new();
    for path in [db.to_path_buf(), with(".wal0"), with(".wal1")] {
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("removing {}: {e}", path.display()),
                ));
            }
        }
    }
    Ok(removed)
}

/// A `sipveil run` process started in [`NS_EDGE`] (the daemon enters the namespace itself).
///
/// Dropping it kills the process (SIGKILL): the XDP program and the flows stay, as after a crash.
pub struct Daemon {
    child: std::process::Child,
    /// The daemon's ready line (`{"ready":true,...}`).
    pub ready: String,
}

impl Daemon {
    /// Starts `sipveil run --config CONFIG --netns sv-edge EXTRA...` and waits up to `timeout`
    /// for its ready line on stdout. Its log (stderr) is appended to `log` when given, else
    /// inherited.
    pub fn start(
        sipveil: &Path,
        config: &Path,
        extra: &[&str],
        timeout: Duration,
        log: Option<&Path>,
    ) -> Result<Daemon, LabError> {
        let mut cmd = Command::new(sipveil);
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .args(["--netns", NS_EDGE])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        if let Some(log) = log {
            let file = File::options()
                .create(true)
                .append(true)
                .open(log)
                .map_err(|source| LabError::Io {
                    what: format!("opening {}", log.display()),
                    source,
                })?;
            cmd.stderr(file);
        }
        let mut command = describe(&cmd);
        if let Some(log) = log {
            command.push_str(&format!(" 2>>{}", log.display()));
        }
        let mut child = cmd.spawn().map_err(|source| LabError::Spawn {
            command: command.clone(),
            source,
        })?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(LabError::Daemon(format!("`{command}`: no stdout pipe")));
        };
        let (lines, ready_line) = std::sync::mpsc::channel();
        // Reads the ready line, then keeps draining stdout so the daemon never blocks on it.
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut reader = std::io::BufReader::new(stdout);
            let mut line = String::new();
            let mut sent = false;
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                if !sent && line.contains("\"ready\":true") {
                    sent = lines.send(line.trim().to_owned()).is_ok();
                }
                line.clear();
            }
        });
        let failure = match ready_line.recv_timeout(timeout) {
            Ok(ready) => return Ok(Daemon { child, ready }),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                format!("`{command}` printed no ready line within {timeout:?}")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                format!("`{command}` exited before it was ready (its log says why)")
            }
        };
        let _ = child.kill();
        let _ = child.wait();
        Err(LabError::Daemon(failure))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then SIGKILL when it has not exited within `timeout`. True when it exited on
    /// SIGTERM with status 0.
    pub fn terminate(mut self, timeout: Duration) -> bool {
        let pid = self.child.id().to_string();
        let _ = run(Command::new("kill").args(["-TERM", &pid]));
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }

    /// SIGKILL, as a crash would: nothing of the daemon's shutdown runs.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A client of the daemon's control socket: one JSON request per line, one answer per line.
pub struct Control {
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
}

impl Control {
    /// Connects to `socket` (usually [`LAB_CONTROL_SOCKET`]).
    pub fn connect(socket: &Path) -> Result<Control, LabError> {
        let stream =
            std::os::unix::net::UnixStream::connect(socket).map_err(|source| LabError::Io {
                what: format!("connecting to {}", socket.display()),
                source,
            })?;
        Ok(Control {
            reader: std::io::BufReader::new(stream),
        })
    }

    /// Sends one request (a JSON object without the newline) and returns the answer line.
    pub fn request(&mut self, json: &str) -> Result<String, LabError> {
        use std::io::{BufRead, Write};
        let io = |source| LabError::Io {
            what: "control socket".to_owned(),
            source,
        };
        let stream = self.reader.get_mut();
        stream.write_all(json.as_bytes()).map_err(io)?;
        stream.write_all(b"\n").map_err(io)?;
        let mut answer = String::new();
        if self.reader.read_line(&mut answer).map_err(io)? == 0 {
            return Err(LabError::Daemon(
                "the control socket closed without an answer".to_owned(),
            ));
        }
        Ok(answer.trim().to_owned())
    }
}

/// `ip netns exec NS sv-rtp recv ...`: receives `streams` streams on `bind` for at most
/// `seconds` (plus sv-rtp's grace), ending early once every stream has sent its end packets.
pub fn rtp_recv(
    sv_rtp: &Path,
    ns: &str,
    bind: std::net::SocketAddrV4,
    streams: usize,
    seconds: u32,
    json: &Path,
) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(sv_rtp)
        .args(["recv", "--bind", &bind.to_string()])
        .args(["--expect-streams", &streams.to_string()])
        .args(["--recv-duration", &seconds.to_string()])
        .arg("--json")
        .arg(json);
    cmd
}

/// `ip netns exec NS sv-rtp send ...`: stream *i* to `dsts[i]` from `bind` for `seconds`.
pub fn rtp_send(
    sv_rtp: &Path,
    ns: &str,
    bind: std::net::SocketAddrV4,
    dsts: &[std::net::SocketAddrV4],
    seconds: u32,
    tag: u32,
    json: &Path,
) -> Command {
    let dsts: Vec<String> = dsts.iter().map(ToString::to_string).collect();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(sv_rtp)
        .args(["send", "--bind", &bind.to_string()])
        .args(["--dst", &dsts.join(",")])
        .args(["--streams", &dsts.len().to_string()])
        .args(["--duration", &seconds.to_string()])
        .args(["--tag", &tag.to_string()])
        .arg("--json")
        .arg(json);
    cmd
}

/// Waits until a UDP socket is bound to `addr` inside `ns` (a receiver is ready): false when
/// none is after `timeout`.
pub fn wait_udp_bound(ns: &str, addr: std::net::SocketAddrV4, timeout: Duration) -> bool {
    let filter = format!("sport = :{}", addr.port());
    let deadline = Instant::now() + timeout;
    loop {
        let listed = run(Command::new("ip").args(["netns", "exec", ns, "ss", "-Hnul", &filter]))
            .unwrap_or_default();
        if listed.contains(&addr.to_string()) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One bidirectional sv-rtp run between sv-a and sv-b through the edge: a receiver on
/// `port` and a sender from `port + 2` on each side. Both receivers are bound before either
/// sender starts, so no packet reaches a side that is not listening yet. Reports go to
/// `DIR/{a,b}-{send,recv}.json` ([`RtpRun::report`]), human summaries to the same names `.log`.
/// Dropping it kills what still runs.
pub struct RtpRun {
    children: Vec<(&'static str, std::process::Child)>,
    dir: PathBuf,
    deadline: Instant,
}

/// What one side of an [`RtpRun`] sends: stream *i* goes to `dsts[i]` (the edge's ports).
pub struct RtpSide<'a> {
    pub dsts: &'a [std::net::SocketAddrV4],
    /// Run tag in its packets.
    pub tag: u32,
}

impl RtpRun {
    /// Starts the four processes; `pps` packets/s per stream for `seconds`.
    pub fn start(
        sv_rtp: &Path,
        port: u16,
        (a, b): (RtpSide<'_>, RtpSide<'_>),
        seconds: u32,
        pps: u32,
        dir: &Path,
    ) -> Result<RtpRun, LabError> {
        let mut run = RtpRun {
            children: Vec::new(),
            dir: dir.to_path_buf(),
            deadline: Instant::now() + Duration::from_secs(u64::from(seconds) + 60),
        };
        let sides = [
            (NS_A, A_ADDR, ["a-recv", "a-send"], a),
            (NS_B, B_ADDR, ["b-recv", "b-send"], b),
        ];
        for (ns, addr, [name, _], send) in &sides {
            let bind = std::net::SocketAddrV4::new(*addr, port);
            let cmd = rtp_recv(
                sv_rtp,
                ns,
                bind,
                send.dsts.len(),
                seconds + 15,
                &run.report(name),
            );
            run.spawn(name, cmd)?;
        }
        for (ns, addr, _, _) in &sides {
            let bind = std::net::SocketAddrV4::new(*addr, port);
            if !wait_udp_bound(ns, bind, Duration::from_secs(10)) {
                return Err(LabError::Rtp(format!(
                    "the receiver in {ns} did not bind {bind}"
                )));
            }
        }
        for (ns, addr, [_, name], send) in &sides {
            let bind = std::net::SocketAddrV4::new(*addr, port + 2);
            let mut cmd = rtp_send(
                sv_rtp,
                ns,
                bind,
                send.dsts,
                seconds,
                send.tag,
                &run.report(name),
            );
            cmd.args(["--pps", &pps.to_string()]);
            run.spawn(name, cmd)?;
        }
        Ok(run)
    }

    /// The JSON report of `name` (`a-send`, `a-recv`, `b-send`, `b-recv`).
    pub fn report(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    fn spawn(&mut self, name: &'static str, mut cmd: Command) -> Result<(), LabError> {
        let log = self.dir.join(format!("{name}.log"));
        let file = File::create(&log).map_err(|source| LabError::Io {
            what: format!("creating {}", log.display()),
            source,
        })?;
        let command = describe(&cmd);
        let child = cmd
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .map_err(|source| LabError::Spawn { command, source })?;
        self.children.push((name, child));
        Ok(())
    }

    /// Waits for every process, at most until the run's deadline (`seconds` + 60 s).
    pub fn wait(&mut self) -> Result<(), LabError> {
        for (name, child) in &mut self.children {
            let status = loop {
                let status = child.try_wait().map_err(|source| LabError::Io {
                    what: format!("waiting for sv-rtp {name}"),
                    source,
                })?;
                if let Some(status) = status {
                    break status;
                }
                if Instant::now() > self.deadline {
                    return Err(LabError::Rtp(format!(
                        "sv-rtp {name} did not finish in time"
                    )));
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            if !status.success() {
                let log = self.dir.join(format!("{name}.log"));
                return Err(LabError::Rtp(format!(
                    "sv-rtp {name} failed ({status}), see {}",
                    log.display()
                )));
            }
        }
        Ok(())
    }
}

impl Drop for RtpRun {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The directory of the running executable's profile (`target/<profile>/`), where cargo puts
/// the workspace binaries: tests run from `target/<profile>/deps/`.
pub fn profile_dir_of_current_exe() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.parent().map(Path::to_path_buf)
    } else {
        Some(dir.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrar_files_go_together_and_missing_ones_are_no_error() {
        let dir = std::env::temp_dir().join(format!("sv-lab-regfiles-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let db = dir.join("registrar.redb");
        for name in [
            "registrar.redb",
            "registrar.redb.wal0",
            "registrar.redb.wal1",
            "other",
        ] {
            std::fs::write(dir.join(name), b"x").expect("file");
        }
        let removed = remove_registrar_files(&db).expect("removes");
        assert_eq!(removed.len(), 3);
        assert!(!db.exists() && !dir.join("registrar.redb.wal1").exists());
        assert!(dir.join("other").exists(), "only the registrar's files");
        assert!(
            remove_registrar_files(&db)
                .expect("nothing left")
                .is_empty()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn shapes_match_the_contract() {
        assert_eq!(Shape::TwoArm.edge_ifaces(), ["ea0", "eb0", "ex0"]);
        assert_eq!(Shape::OneArm.edge_ifaces(), ["e0"]);
        let peers: Vec<&str> = Shape::OneArm
            .peer_ends()
            .iter()
            .map(|end| end.iface)
            .collect();
        assert_eq!(peers, ["r0", "ra", "a0", "rb", "b0", "rx", "x0"]);
        let peers: Vec<&str> = Shape::TwoArm
            .peer_ends()
            .iter()
            .map(|end| end.iface)
            .collect();
        assert_eq!(peers, ["a0", "b0", "x0"]);
        assert_eq!(Shape::OneArm.edge_toward_a(), Shape::OneArm.edge_toward_b());
        assert_eq!(Shape::TwoArm.edge_toward_b(), Ipv4Addr::new(198, 18, 2, 1));
        for shape in Shape::ALL {
            assert_eq!(shape.name().parse::<Shape>().ok(), Some(shape));
            // Every address of the lab is in the benchmarking range 198.18.0.0/15.
            for end in shape.ends() {
                assert_eq!(end.addr.octets()[0], 198);
                assert!(matches!(end.addr.octets()[1], 18 | 19), "{end:?}");
            }
        }
        assert!("three-arm".parse::<Shape>().is_err());
    }

    #[test]
    fn link_flags_are_read_from_ip_output() {
        let line = "5: a0@if4: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 xdp qdisc noqueue";
        assert_eq!(link_flags(line), Some("BROADCAST,MULTICAST,UP,LOWER_UP"));
        assert_eq!(link_flags("no flags here"), None);
    }
}
