//! BPF_PROG_TEST_RUN fixtures for the XDP programs: a throwaway network namespace with routes and
//! neighbours for `bpf_fib_lookup`, a private bpffs for the pinned-by-name maps, frame builders
//! and from-scratch checksum checks. Used by `tests/tests/xdp_*.rs` and `benches/benches/xdp_relay.rs`
//! (through `sipveil_tests::xdp`).
//!
//! Everything here needs root and BPF; [`require_root`] fails loudly otherwise.

use std::{
    ffi::CString,
    fs::File,
    os::fd::AsRawFd,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, DevMapHash, HashMap, LpmTrie, PerCpuArray, PerCpuValues, RingBuf, lpm_trie::Key,
    },
    programs::{TestRun, TestRunOptions, Xdp},
};
use sipveil_abi::{
    ABI_VERSION, CONFIG_F_RELAY, Config, Counter, Flow, FlowKey, maps,
    shield::{
        AllowData, AllowEntry, BlockEntry, ShieldConfig, ShieldEvent, SourceBuckets, SourceKey,
        TokenBucket,
    },
};

/// XDP return codes.
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// Lab addresses inside the throwaway namespace (two-arm shape of docs/contracts.md).
pub const EA: [u8; 4] = [198, 18, 1, 1];
pub const EB: [u8; 4] = [198, 18, 2, 1];
pub const A: [u8; 4] = [198, 18, 1, 2];
/// A second host on A's side: relaying A -> A2 is a hairpin out of the same interface (XDP_TX).
pub const A2: [u8; 4] = [198, 18, 1, 3];
pub const B: [u8; 4] = [198, 18, 2, 2];
/// A second host on B's side (benches relay B <-> B2 in a cycle).
pub const B2: [u8; 4] = [198, 18, 2, 3];
/// On B's subnet but without a neighbour entry: `bpf_fib_lookup` answers NO_NEIGH.
pub const B_NO_NEIGH: [u8; 4] = [198, 18, 2, 99];
pub const MAC_EA: [u8; 6] = [0x02, 0, 0, 0, 1, 1];
pub const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 1, 2];
pub const MAC_A2: [u8; 6] = [0x02, 0, 0, 0, 1, 3];
pub const MAC_EB: [u8; 6] = [0x02, 0, 0, 0, 2, 1];
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 2, 2];
pub const MAC_B2: [u8; 6] = [0x02, 0, 0, 0, 2, 3];

/// Relay port range used by the fixtures.
pub const PORT_MIN: u16 = 20_000;
pub const PORT_MAX: u16 = 29_999;
/// TTL the fixtures' config writes into relayed packets.
pub const RELAY_TTL: u8 = 60;

/// Fails the test with a clear message when not root (CI runs as root: failing is right).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these XDP tests need root (BPF_PROG_TEST_RUN, network namespaces, bpffs); run them as root"
    );
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

static SEQ: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace this test created, entered by the current thread (setns affects only the
/// calling thread). Dropping it returns the thread to its old namespace and deletes this one.
pub struct Netns {
    pub name: String,
    old: File,
}

impl Netns {
    /// Creates `sv-xdpt-<pid>-<n>` with the two-arm edge: `ea0` 198.18.1.1/24 (peer `a0`), `eb0`
    /// 198.18.2.1/24 (peer `b0`), permanent neighbours A, A2, B and B2, forwarding on; and enters it.
    pub fn two_arm() -> Netns {
        require_root();
        let name = unique("sv-xdpt");
        run(Command::new("ip").args(["netns", "add", &name]));
        let old = File::open("/proc/thread-self/ns/net").expect("open own netns");
        let ns = Netns { name, old };
        let batch = format!(
            "link set lo up\n\
             link add ea0 address {mea} type veth peer name a0 address {ma}\n\
             link add eb0 address {meb} type veth peer name b0 address {mb}\n\
             addr add 198.18.1.1/24 dev ea0\n\
             addr add 198.18.2.1/24 dev eb0\n\
             link set ea0 up\nlink set a0 up\nlink set eb0 up\nlink set b0 up\n\
             neigh add 198.18.1.2 lladdr {ma} dev ea0 nud permanent\n\
             neigh add 198.18.1.3 lladdr {ma2} dev ea0 nud permanent\n\
             neigh add 198.18.2.2 lladdr {mb} dev eb0 nud permanent\n\
             neigh add 198.18.2.3 lladdr {mb2} dev eb0 nud permanent\n",
            mea = mac_str(MAC_EA),
            ma = mac_str(MAC_A),
            meb = mac_str(MAC_EB),
            mb = mac_str(MAC_B),
            ma2 = mac_str(MAC_A2),
            mb2 = mac_str(MAC_B2),
        );
        let path = std::env::temp_dir().join(format!("{}.ipbatch", ns.name));
        std::fs::write(&path, batch).expect("write ip batch");
        run(Command::new("ip")
            .args(["-n", &ns.name, "-batch"])
            .arg(&path));
        let _ = std::fs::remove_file(&path);
        // bpf_fib_lookup answers FWD_DISABLED unless the ingress device forwards.
        run(Command::new("ip").args([
            "netns",
            "exec",
            &ns.name,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]));
        let target = File::open(format!("/run/netns/{}", ns.name)).expect("open new netns");
        // SAFETY: both fds are valid namespace files; setns only changes this thread's netns.
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        ns
    }

    /// The ifindex of a device in this namespace.
    pub fn ifindex(&self, dev: &str) -> u32 {
        let c = CString::new(dev).expect("device name");
        // SAFETY: a valid C string; the thread is inside this namespace.
        let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
        assert_ne!(index, 0, "no device {dev} in {}", self.name);
        index
    }

    /// Deletes a neighbour entry (to provoke NO_NEIGH).
    pub fn del_neigh(&self, addr: [u8; 4], dev: &str) {
        let a = format!("{}.{}.{}.{}", addr[0], addr[1], addr[2], addr[3]);
        run(Command::new("ip").args(["-n", &self.name, "neigh", "del", &a, "dev", dev]));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // SAFETY: `old` is the namespace this thread started in.
        unsafe { libc::setns(self.old.as_raw_fd(), libc::CLONE_NEWNET) };
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn mac_str(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// A private bpffs instance mounted at a fresh directory under the temp dir. The entry program's
/// maps are pinned by name (the daemon picks the directory) and aya 0.14 always pins such maps, so
/// tests give them a throwaway bpffs instead of `/sys/fs/bpf`: nothing is shared with a daemon or
/// another test, and unmounting frees the pins.
pub struct PrivateBpffs {
    pub dir: PathBuf,
}

impl PrivateBpffs {
    pub fn mount() -> PrivateBpffs {
        require_root();
        let dir = std::env::temp_dir().join(unique("sv-xdpt-bpffs"));
        std::fs::create_dir(&dir).expect("create bpffs mount point");
        let target = CString::new(dir.as_os_str().as_encoded_bytes()).expect("path");
        let fstype = CString::new("bpf").expect("fstype");
        // SAFETY: valid C strings; mounting a new bpffs instance at a directory we created.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mount bpffs at {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
        PrivateBpffs { dir }
    }
}

impl Drop for PrivateBpffs {
    fn drop(&mut self) {
        if let Ok(target) = CString::new(self.dir.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid C string naming our own mount point.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The entry program loaded (not attached) with its maps in a private bpffs.
pub struct Entry {
    pub ebpf: Ebpf,
    _bpffs: PrivateBpffs,
}

impl Entry {
    pub fn load() -> Entry {
        let bpffs = PrivateBpffs::mount();
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&bpffs.dir)
            .load(sipveil_edge::dataplane::objects::ENTRY_OBJECT)
            .unwrap_or_else(|e| panic!("loading ENTRY_OBJECT failed (is BPF available?): {e}"));
        for name in maps::REQUIRED {
            assert!(
                ebpf.map(name).is_some(),
                "map {name} missing from the object"
            );
        }
        let prog: &mut Xdp = ebpf
            .program_mut(sipveil_abi::ENTRY_PROGRAM)
            .expect("sipveil_entry in the object")
            .try_into()
            .expect("sipveil_entry is XDP");
        prog.load()
            .unwrap_or_else(|e| panic!("the verifier rejected sipveil_entry: {e:?}"));
        Entry {
            ebpf,
            _bpffs: bpffs,
        }
    }

    pub fn set_config(&mut self, cfg: Config) {
        let mut a: Array<_, Config> = self
            .ebpf
            .map_mut(maps::CONFIG)
            .expect("config map")
            .try_into()
            .expect("config is an array");
        a.set(0, cfg, 0).expect("write config");
    }

    pub fn put_flow(&mut self, key: FlowKey, flow: Flow) {
        let mut m: HashMap<_, FlowKey, Flow> = self
            .ebpf
            .map_mut(maps::FLOWS)
            .expect("flows map")
            .try_into()
            .expect("flows is a hash map");
        m.insert(key, flow, 0).expect("insert flow");
    }

    pub fn flow(&self, key: FlowKey) -> Flow {
        let m: HashMap<_, FlowKey, Flow> = self
            .ebpf
            .map(maps::FLOWS)
            .expect("flows map")
            .try_into()
            .expect("flows is a hash map");
        m.get(&key, 0).expect("flow present")
    }

    pub fn add_tx_port(&mut self, ifindex: u32) {
        let mut m: DevMapHash<_> = self
            .ebpf
            .map_mut(maps::TX_PORTS)
            .expect("tx ports map")
            .try_into()
            .expect("tx ports is a devmap hash");
        m.insert(ifindex, ifindex, None, 0).expect("insert tx port");
    }

    /// Every counter summed over the CPUs, in `Counter` order.
    pub fn counters(&self) -> [u64; Counter::COUNT as usize] {
        let a: PerCpuArray<_, u64> = self
            .ebpf
            .map(maps::COUNTERS)
            .expect("counters map")
            .try_into()
            .expect("counters is a per-CPU array");
        let mut out = [0u64; Counter::COUNT as usize];
        for c in Counter::ALL {
            let values = a.get(&(c as u32), 0).expect("read counter");
            out[c as usize] = values.iter().sum();
        }
        out
    }

    /// Expires, on every CPU, the program's cache of the last source it dropped
    /// (`SV_SHIELD_LAST`, internal to ebpf/src/shield.rs: a `LastDrop` of 40 bytes whose fourth
    /// word is `until_ns`), keeping its key and hit count.
    ///
    /// The helpers below that change what the daemon changes (settings, blocks, allows) or move
    /// a bucket's time call it: the cache holds a verdict for at most 1/rate s (a block 20 ms),
    /// which is how long such a change takes to reach a source the CPU is dropping, and that is
    /// the time these fixtures skip.
    pub fn expire_last_drop(&mut self) {
        let mut a: PerCpuArray<_, [u64; 5]> = self
            .ebpf
            .map_mut("SV_SHIELD_LAST")
            .expect("SV_SHIELD_LAST in the object")
            .try_into()
            .expect("SV_SHIELD_LAST is a per-CPU array");
        let mut values: Vec<[u64; 5]> = a
            .get(&0, 0)
            .expect("read SV_SHIELD_LAST")
            .iter()
            .copied()
            .collect();
        for v in &mut values {
            v[3] = 0;
        }
        let values = PerCpuValues::try_from(values).expect("per-CPU values");
        a.set(0, values, 0).expect("write SV_SHIELD_LAST");
    }

    /// The rate drops the program's per-CPU cache decided for `key` and has not yet added to
    /// its buckets' count, summed over the CPUs (`LastDrop`: key in the first 12 bytes, `hits`
    /// in the fifth word).
    pub fn last_drop_hits(&self, key: SourceKey) -> u64 {
        let a: PerCpuArray<_, [u64; 5]> = self
            .ebpf
            .map("SV_SHIELD_LAST")
            .expect("SV_SHIELD_LAST in the object")
            .try_into()
            .expect("SV_SHIELD_LAST is a per-CPU array");
        let mut want = [0u8; 12];
        want[0..4].copy_from_slice(&key.prefix[0].to_ne_bytes());
        want[4..8].copy_from_slice(&key.prefix[1].to_ne_bytes());
        want[8] = key.family;
        a.get(&0, 0)
            .expect("read SV_SHIELD_LAST")
            .iter()
            .filter(|v| {
                let mut k = [0u8; 12];
                k[0..8].copy_from_slice(&v[0].to_ne_bytes());
                k[8..12].copy_from_slice(&v[1].to_ne_bytes()[0..4]);
                k == want
            })
            .map(|v| v[4])
            .sum()
    }

    /// Writes the shield's settings (`SV_SHIELD_CFG` entry 0).
    pub fn set_shield_config(&mut self, cfg: ShieldConfig) {
        self.expire_last_drop();
        let mut a: Array<_, ShieldConfig> = self
            .ebpf
            .map_mut(maps::SHIELD_CONFIG)
            .expect("shield config map")
            .try_into()
            .expect("shield config is an array");
        a.set(0, cfg, 0).expect("write shield config");
    }

    pub fn block(&mut self, key: SourceKey, entry: BlockEntry) {
        self.expire_last_drop();
        let mut m: HashMap<_, SourceKey, BlockEntry> = self
            .ebpf
            .map_mut(maps::SHIELD_BLOCK)
            .expect("blocklist map")
            .try_into()
            .expect("blocklist is a hash map");
        m.insert(key, entry, 0).expect("insert block");
    }

    /// Allowlists `data` with an address prefix of `addr_bits`.
    pub fn allow(&mut self, data: AllowData, addr_bits: u32, entry: AllowEntry) {
        self.expire_last_drop();
        let mut m: LpmTrie<_, AllowData, AllowEntry> = self
            .ebpf
            .map_mut(maps::SHIELD_ALLOW)
            .expect("allowlist map")
            .try_into()
            .expect("allowlist is an LPM trie");
        m.insert(&Key::new(AllowData::prefix_len(addr_bits), data), entry, 0)
            .expect("insert allow");
    }

    fn bucket_map(&self) -> HashMap<&aya::maps::MapData, SourceKey, SourceBuckets> {
        self.ebpf
            .map(maps::SHIELD_BUCKETS)
            .expect("buckets map")
            .try_into()
            .expect("buckets is an LRU hash map")
    }

    /// A source's buckets, if the program created them.
    pub fn buckets(&self, key: SourceKey) -> Option<SourceBuckets> {
        self.bucket_map().get(&key, 0).ok()
    }

    /// Number of sources with buckets.
    pub fn bucket_count(&self) -> usize {
        self.bucket_map().keys().filter(|k| k.is_ok()).count()
    }

    pub fn put_buckets(&mut self, key: SourceKey, value: SourceBuckets) {
        self.expire_last_drop();
        let mut m: HashMap<_, SourceKey, SourceBuckets> = self
            .ebpf
            .map_mut(maps::SHIELD_BUCKETS)
            .expect("buckets map")
            .try_into()
            .expect("buckets is an LRU hash map");
        m.insert(key, value, 0).expect("write buckets");
    }

    /// The global ceiling's bucket of every CPU.
    pub fn global_buckets(&self) -> Vec<TokenBucket> {
        self.ceiling_buckets(0)
    }

    /// The bucket of every CPU of `SV_GLOBAL_BKT` entry `index` (0: the global ceiling, 1 + a
    /// class index: that class's ceiling).
    pub fn ceiling_buckets(&self, index: u32) -> Vec<TokenBucket> {
        let a: PerCpuArray<_, TokenBucket> = self
            .ebpf
            .map(maps::SHIELD_GLOBAL)
            .expect("global bucket map")
            .try_into()
            .expect("global bucket is a per-CPU array");
        a.get(&index, 0)
            .expect("read global bucket")
            .iter()
            .copied()
            .collect()
    }

    /// Sets the global ceiling's bucket of every CPU.
    pub fn set_global_buckets(&mut self, b: TokenBucket) {
        self.set_ceiling_bucket(0, b);
    }

    /// Sets `SV_GLOBAL_BKT` entry `index` of every CPU.
    pub fn set_ceiling_bucket(&mut self, index: u32, b: TokenBucket) {
        let mut a: PerCpuArray<_, TokenBucket> = self
            .ebpf
            .map_mut(maps::SHIELD_GLOBAL)
            .expect("global bucket map")
            .try_into()
            .expect("global bucket is a per-CPU array");
        let n = aya::util::nr_cpus().expect("number of CPUs");
        let values = PerCpuValues::try_from(vec![b; n]).expect("per-CPU values");
        a.set(index, values, 0).expect("write global bucket");
    }

    /// Everything in the event ring buffer now, oldest first (what the daemon will read).
    pub fn drain_events(&mut self) -> Vec<ShieldEvent> {
        let mut ring =
            RingBuf::try_from(self.ebpf.map_mut(maps::SHIELD_EVENTS).expect("events map"))
                .expect("events is a ring buffer");
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            assert_eq!(
                item.len(),
                size_of::<ShieldEvent>(),
                "event record of the wrong size"
            );
            // SAFETY: the record holds exactly one ShieldEvent (checked above), a plain
            // #[repr(C)] value; read_unaligned makes no alignment assumption.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<ShieldEvent>()) });
        }
        out
    }

    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(sipveil_abi::ENTRY_PROGRAM)
            .expect("program")
            .try_into()
            .expect("xdp")
    }

    /// Runs one frame through the program as if received on `ingress_ifindex`.
    pub fn run(&self, frame: &[u8], ingress_ifindex: u32) -> Run {
        run_xdp(self.program(), frame, ingress_ifindex)
    }
}

/// The standard relay config of the fixtures.
pub fn relay_config() -> Config {
    Config {
        abi_version: ABI_VERSION,
        flags: CONFIG_F_RELAY,
        relay_port_min: PORT_MIN,
        relay_port_max: PORT_MAX,
        ttl: RELAY_TTL,
        ..Default::default()
    }
}

/// What one BPF_PROG_TEST_RUN returned.
#[derive(Debug)]
pub struct Run {
    pub action: u32,
    pub out: Vec<u8>,
    pub duration_ns: u128,
}

/// The `xdp_md` context for BPF_PROG_TEST_RUN: data 0, data_end = frame length, the ingress
/// device (the kernel looks it up in the calling thread's namespace, and `bpf_fib_lookup` uses it).
pub fn xdp_md(frame_len: usize, ingress_ifindex: u32) -> [u8; 24] {
    let fields: [u32; 6] = [0, frame_len as u32, 0, ingress_ifindex, 0, 0];
    let mut ctx = [0u8; 24];
    for (i, f) in fields.iter().enumerate() {
        ctx[i * 4..i * 4 + 4].copy_from_slice(&f.to_ne_bytes());
    }
    ctx
}

/// Runs `frame` once through an XDP program and returns its action and output frame.
pub fn run_xdp(prog: &Xdp, frame: &[u8], ingress_ifindex: u32) -> Run {
    run_xdp_repeat(prog, frame, ingress_ifindex, 1)
}

/// As [`run_xdp`], `repeat` times in the kernel (the duration is the kernel's average per run).
pub fn run_xdp_repeat(prog: &Xdp, frame: &[u8], ingress_ifindex: u32, repeat: u32) -> Run {
    let ctx = xdp_md(frame.len(), ingress_ifindex);
    let mut out = vec![0u8; frame.len() + 256];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat,
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN failed: {e:?}"));
    out.truncate(r.data_size_out as usize);
    Run {
        action: r.return_value,
        out,
        duration_ns: r.duration.as_nanos(),
    }
}

/// Asserts that exactly the listed counters moved by the listed amounts.
pub fn assert_deltas(
    before: &[u64; Counter::COUNT as usize],
    after: &[u64; Counter::COUNT as usize],
    expected: &[(Counter, u64)],
) {
    for c in Counter::ALL {
        let want = expected
            .iter()
            .filter(|(e, _)| *e == c)
            .map(|(_, n)| *n)
            .sum::<u64>();
        let got = after[c as usize] - before[c as usize];
        assert_eq!(
            got,
            want,
            "counter {} moved by {got}, expected {want}",
            c.name()
        );
    }
}

/// An IPv4/UDP frame description; [`UdpFrame::build`] fills in lengths and both checksums.
#[derive(Clone, Debug)]
pub struct UdpFrame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub ttl: u8,
    pub tos: u8,
    pub id: u16,
    /// Host-order flags+fragment offset field.
    pub frag_off: u16,
    /// IPv4 options (a multiple of 4 bytes).
    pub options: Vec<u8>,
    pub payload: Vec<u8>,
    /// false: send UDP checksum 0 (none).
    pub udp_csum: bool,
}

impl UdpFrame {
    /// A 172-byte RTP-like frame (160 bytes of payload, PCMU 20 ms) from `src:sport` to
    /// `dst:dport`, with a UDP checksum.
    pub fn rtp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> UdpFrame {
        let mut payload = vec![0u8; 172];
        payload[0] = 0x80; // RTP version 2
        payload[1] = 0; // PT 0 (PCMU)
        payload[2..4].copy_from_slice(&1234u16.to_be_bytes());
        payload[4..8].copy_from_slice(&160_000u32.to_be_bytes());
        payload[8..12].copy_from_slice(&0x5356_4549u32.to_be_bytes());
        for (i, b) in payload[12..].iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        UdpFrame {
            src_mac: MAC_A,
            dst_mac: MAC_EA,
            src,
            dst,
            sport,
            dport,
            ttl: 64,
            tos: 0xb8, // EF
            id: 0x1c46,
            frag_off: 0x4000, // DF
            options: Vec::new(),
            payload,
            udp_csum: true,
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let ihl = 20 + self.options.len();
        let udp_len = 8 + self.payload.len();
        let tot_len = ihl + udp_len;
        let mut f = Vec::with_capacity(14 + tot_len);
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        f.push(0x40 | (ihl / 4) as u8);
        f.push(self.tos);
        f.extend_from_slice(&(tot_len as u16).to_be_bytes());
        f.extend_from_slice(&self.id.to_be_bytes());
        f.extend_from_slice(&self.frag_off.to_be_bytes());
        f.push(self.ttl);
        f.push(17);
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&self.src);
        f.extend_from_slice(&self.dst);
        f.extend_from_slice(&self.options);
        f.extend_from_slice(&self.sport.to_be_bytes());
        f.extend_from_slice(&self.dport.to_be_bytes());
        f.extend_from_slice(&(udp_len as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&self.payload);
        let ip_csum = ipv4_checksum(&f[14..14 + ihl]);
        f[24..26].copy_from_slice(&ip_csum.to_be_bytes());
        if self.udp_csum {
            let c = udp_checksum(&f[14..]);
            let at = 14 + ihl + 6;
            f[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        f
    }
}

fn sum16(bytes: &[u8]) -> u64 {
    bytes
        .chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The IPv4 header checksum computed from scratch (the checksum field counted as zero).
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut h = header.to_vec();
    h[10] = 0;
    h[11] = 0;
    !fold(sum16(&h))
}

/// The UDP checksum of an IPv4 datagram computed from scratch (0 is sent as 0xffff).
pub fn udp_checksum(ip_datagram: &[u8]) -> u16 {
    let ihl = usize::from(ip_datagram[0] & 0x0f) * 4;
    let tot_len = usize::from(u16::from_be_bytes([ip_datagram[2], ip_datagram[3]]));
    let mut udp = ip_datagram[ihl..tot_len].to_vec();
    udp[6] = 0;
    udp[7] = 0;
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&ip_datagram[12..20]);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
    match !fold(sum16(&pseudo) + sum16(&udp)) {
        0 => 0xffff,
        c => c,
    }
}

/// Checks both checksums of an Ethernet/IPv4/UDP frame against a from-scratch computation.
pub fn assert_checksums(frame: &[u8]) {
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let stored_ip = u16::from_be_bytes([ip[10], ip[11]]);
    assert_eq!(
        stored_ip,
        ipv4_checksum(&ip[..ihl]),
        "IPv4 header checksum is wrong"
    );
    let stored_udp = u16::from_be_bytes([ip[ihl + 6], ip[ihl + 7]]);
    if stored_udp != 0 {
        assert_eq!(stored_udp, udp_checksum(ip), "UDP checksum is wrong");
    }
}

/// A flow pair between A (a_addr:a_port) at the edge's EA:pa and B (b_addr:b_port) at EB:pb, as
/// the daemon writes it (docs/contracts.md).
pub fn flow_pair(
    ea: ([u8; 4], u16),
    a: ([u8; 4], u16),
    eb: ([u8; 4], u16),
    b: ([u8; 4], u16),
    flags: u16,
) -> [(FlowKey, Flow); 2] {
    let ka = FlowKey::v4(ea.0, ea.1);
    let kb = FlowKey::v4(eb.0, eb.1);
    let mk = |dst: ([u8; 4], u16), src: ([u8; 4], u16), expect: ([u8; 4], u16), reverse| Flow {
        dst_addr: [sipveil_abi::ip4(dst.0), 0, 0, 0],
        src_addr: [sipveil_abi::ip4(src.0), 0, 0, 0],
        expect_addr: [sipveil_abi::ip4(expect.0), 0, 0, 0],
        reverse,
        dst_port: sipveil_abi::port(dst.1),
        src_port: sipveil_abi::port(src.1),
        expect_port: sipveil_abi::port(expect.1),
        flags,
        ..Default::default()
    };
    [(ka, mk(b, eb, a, kb)), (kb, mk(a, ea, b, ka))]
}

impl UdpFrame {
    /// `payload` (a SIP message, or junk) over IPv4/UDP from `src:sport` to `dst:dport`, with a
    /// UDP checksum.
    pub fn sip(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> UdpFrame {
        UdpFrame {
            tos: 0,
            payload: payload.to_vec(),
            ..UdpFrame::rtp(src, sport, dst, dport)
        }
    }
}

/// A UDP header and payload (checksum 0: the programs never check it).
pub fn udp_bytes(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// A 20-byte TCP header without options (checksum 0).
pub fn tcp_bytes(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = Vec::with_capacity(20);
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&0x1000_0000u32.to_be_bytes()); // sequence
    t.extend_from_slice(&0u32.to_be_bytes()); // acknowledgement
    t.push(5 << 4); // data offset: 5 words
    t.push(flags);
    t.extend_from_slice(&64_240u16.to_be_bytes()); // window
    t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    t
}

/// An Ethernet/IPv4 frame (no options, DF) carrying `l4` as protocol `proto`.
pub fn ipv4_frame(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    let tot_len = 20 + l4.len();
    let mut f = Vec::with_capacity(14 + tot_len);
    f.extend_from_slice(&MAC_EA);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&(tot_len as u16).to_be_bytes());
    f.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(l4);
    let c = ipv4_checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

/// An Ethernet/IPv6 frame: the fixed header with `next` as its next header, then `rest`
/// (extension headers, if any, and the transport header with its payload).
pub fn ipv6_frame(src: [u8; 16], dst: [u8; 16], next: u8, rest: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(54 + rest.len());
    f.extend_from_slice(&MAC_EA);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(rest.len() as u16).to_be_bytes());
    f.push(next);
    f.push(64);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(rest);
    f
}

/// `CLOCK_MONOTONIC_COARSE` now, in ns: the clock of `bpf_ktime_get_coarse_ns`, which the shield
/// compares expiries and refill times against.
pub fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write into.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime: {}", std::io::Error::last_os_error());
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Pins the calling thread to one CPU, so every BPF_PROG_TEST_RUN of a test uses the same
/// per-CPU map slots (the shield's global ceiling is per CPU). Dropping the guard restores the
/// thread's previous CPU set.
pub fn pin_to_cpu(cpu: usize) -> CpuPin {
    // SAFETY: zeroed cpu_set_t values are valid empty sets; the calls read/write only them.
    let (rc, old) = unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        let rc = libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut old);
        assert_eq!(
            rc,
            0,
            "sched_getaffinity: {}",
            std::io::Error::last_os_error()
        );
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        (
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            old,
        )
    };
    assert_eq!(
        rc,
        0,
        "sched_setaffinity: {}",
        std::io::Error::last_os_error()
    );
    CpuPin { old }
}

/// See [`pin_to_cpu`].
pub struct CpuPin {
    old: libc::cpu_set_t,
}

impl Drop for CpuPin {
    fn drop(&mut self) {
        // SAFETY: restores the set read by pin_to_cpu for this same thread.
        unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &self.old) };
    }
}
