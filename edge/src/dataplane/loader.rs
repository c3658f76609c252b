//! Loading the entry program, checking the ABI, pinning and adopting maps and links.
//!
//! Lifecycle: `Dataplane::open` either creates the maps and pins them under
//! `/sys/fs/bpf/sipveil/<instance>/`, or adopts the pinned ones after checking their definitions
//! and the ABI version in `SV_CONFIG`. Each interface gets a pinned XDP link `link-<ifname>`; an
//! existing pinned link on the same interface is adopted and atomically switched to the freshly
//! loaded program (no gap in forwarding). Nothing here detaches on drop: the program keeps running
//! when the daemon exits. `unload` is the only way to detach.
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use aya::maps::{Array, DevMapHash, HashMap, Map, MapData, MapInfo, MapType, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{ProgramError, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use sipveil_abi::{
    ABI_VERSION, CONFIG_F_RELAY, Config as AbiConfig, Counter, ENTRY_PROGRAM, Flow, FlowKey,
    MAX_FLOWS, MAX_TX_PORTS, maps, shield,
};

use super::objects::ENTRY_OBJECT;
use crate::config::XdpSetting;
use crate::sys;

/// Root of all instances' pins.
pub const PIN_ROOT: &str = "/sys/fs/bpf/sipveil";

/// Pin directory of an instance.
pub fn pin_dir(instance: &str) -> PathBuf {
    Path::new(PIN_ROOT).join(instance)
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Sys(#[from] sys::SysError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("loading the BPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the entry object has no map {0} (is ebpf/ up to date with the ABI?)")]
    MissingMap(&'static str),
    #[error("the object has no program {0}")]
    MissingProgram(String),
    #[error(
        "map {name} ({origin}) does not match ABI {ABI_VERSION}: {detail}; \
         run `sipveil unload --instance <name>` to remove stale pins"
    )]
    MapMismatch {
        name: &'static str,
        origin: &'static str,
        detail: String,
    },
    #[error("pinned maps under {dir} are incomplete (found {found:?}); run `sipveil unload` first")]
    PartialPins {
        dir: PathBuf,
        found: Vec<&'static str>,
    },
    #[error(
        "pinned SV_CONFIG under {dir} has ABI version {found}, this daemon speaks {ABI_VERSION}; \
         run `sipveil unload` to replace the data plane (flows are lost)"
    )]
    AbiMismatch { dir: PathBuf, found: u32 },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: Box<aya::maps::MapError>,
    },
    #[error("program {ENTRY_PROGRAM}: {0}")]
    Program(#[source] Box<ProgramError>),
    #[error("attaching to {iface} in {mode} mode: {source}{hint}")]
    Attach {
        iface: String,
        mode: &'static str,
        source: Box<ProgramError>,
        hint: &'static str,
    },
    #[error("pinning the link of {iface} at {path}: {detail}")]
    PinLink {
        iface: String,
        path: PathBuf,
        detail: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DataplaneError {
    let what = what.into();
    move |source| DataplaneError::Io { what, source }
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map {
        name,
        source: Box::new(source),
    }
}

/// How an interface ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Driver,
    Generic,
    /// A pinned link from a previous run, switched to this run's program.
    Adopted,
}

impl AttachMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Driver => "driver",
            AttachMode::Generic => "generic",
            AttachMode::Adopted => "adopted",
        }
    }
}

#[derive(Clone, Debug)]
pub struct AttachedInterface {
    pub name: String,
    pub ifindex: u32,
    pub mode: AttachMode,
}

/// What `Dataplane::open` needs.
#[derive(Clone, Debug)]
pub struct DataplaneOptions {
    pub instance: String,
    pub interfaces: Vec<String>,
    pub xdp: XdpSetting,
    pub port_min: u16,
    pub port_max: u16,
}

/// The loaded (or adopted) data plane. Dropping it detaches nothing.
pub struct Dataplane {
    pub pin_dir: PathBuf,
    /// True when the maps were found pinned (a restart), false when created now.
    pub adopted_maps: bool,
    pub interfaces: Vec<AttachedInterface>,
    flows: Option<HashMap<MapData, FlowKey, Flow>>,
    counters: PerCpuArray<MapData, u64>,
    // Keeps the program fd open for as long as the daemon runs (the links hold their own ref).
    _ebpf: Ebpf,
}

/// The definition the ABI requires for each map.
struct MapSpec {
    name: &'static str,
    types: &'static [MapType],
    key_size: u32,
    value_sizes: &'static [u32],
    max_entries: u32,
}

const SPECS: [MapSpec; 10] = [
    MapSpec {
        name: maps::FLOWS,
        types: &[MapType::Hash],
        key_size: size_of::<FlowKey>() as u32,
        value_sizes: &[size_of::<Flow>() as u32],
        max_entries: MAX_FLOWS,
    },
    MapSpec {
        name: maps::COUNTERS,
        types: &[MapType::PerCpuArray],
        key_size: 4,
        value_sizes: &[8],
        max_entries: Counter::COUNT,
    },
    MapSpec {
        name: maps::CONFIG,
        types: &[MapType::Array],
        key_size: 4,
        value_sizes: &[size_of::<AbiConfig>() as u32],
        max_entries: 1,
    },
    MapSpec {
        name: maps::TX_PORTS,
        types: &[MapType::DevMapHash],
        key_size: 4,
        // `struct bpf_devmap_val` (ifindex + program fd) or the legacy bare ifindex.
        value_sizes: &[8, 4],
        max_entries: MAX_TX_PORTS,
    },
    // The flood shield's maps (sipveil_abi::shield). The daemon does not drive them yet; they
    // are pinned with the others so blocks, allows and buckets survive a restart.
    MapSpec {
        name: maps::SHIELD_BUCKETS,
        types: &[MapType::LruHash],
        key_size: size_of::<shield::SourceKey>() as u32,
        value_sizes: &[size_of::<shield::SourceBuckets>() as u32],
        max_entries: shield::MAX_SOURCES,
    },
    MapSpec {
        name: maps::SHIELD_GLOBAL,
        types: &[MapType::PerCpuArray],
        key_size: 4,
        value_sizes: &[size_of::<shield::TokenBucket>() as u32],
        max_entries: shield::GLOBAL_BUCKETS,
    },
    MapSpec {
        name: maps::SHIELD_ALLOW,
        types: &[MapType::LpmTrie],
        // The trie key: `prefix_len: u32` and the data.
        key_size: 4 + size_of::<shield::AllowData>() as u32,
        value_sizes: &[size_of::<shield::AllowEntry>() as u32],
        max_entries: shield::MAX_ALLOWED,
    },
    MapSpec {
        name: maps::SHIELD_BLOCK,
        types: &[MapType::Hash],
        key_size: size_of::<shield::SourceKey>() as u32,
        value_sizes: &[size_of::<shield::BlockEntry>() as u32],
        max_entries: shield::MAX_BLOCKED,
    },
    MapSpec {
        name: maps::SHIELD_CONFIG,
        types: &[MapType::Array],
        key_size: 4,
        value_sizes: &[size_of::<shield::ShieldConfig>() as u32],
        max_entries: 1,
    },
    MapSpec {
        name: maps::SHIELD_EVENTS,
        types: &[MapType::RingBuf],
        key_size: 0,
        value_sizes: &[0],
        max_entries: shield::EVENTS_BYTES,
    },
];

fn check_spec(spec: &MapSpec, info: &MapInfo, origin: &'static str) -> Result<(), DataplaneError> {
    let mismatch = |detail: String| DataplaneError::MapMismatch {
        name: spec.name,
        origin,
        detail,
    };
    let ty = info
        .map_type()
        .map_err(|e| mismatch(format!("unknown map type: {e}")))?;
    if !spec.types.contains(&ty) {
        return Err(mismatch(format!("type {ty:?}, expected {:?}", spec.types)));
    }
    if info.key_size() != spec.key_size {
        return Err(mismatch(format!(
            "key size {}, expected {}",
            info.key_size(),
            spec.key_size
        )));
    }
    if !spec.value_sizes.contains(&info.value_size()) {
        return Err(mismatch(format!(
            "value size {}, expected {:?}",
            info.value_size(),
            spec.value_sizes
        )));
    }
    if info.max_entries() != spec.max_entries {
        return Err(mismatch(format!(
            "max entries {}, expected {}",
            info.max_entries(),
            spec.max_entries
        )));
    }
    Ok(())
}

/// Checks the pins of an instance. Returns whether a complete, compatible set exists.
///
/// The ABI version in a pinned `SV_CONFIG` is checked first: pins of another version (which may
/// lack maps this version adds) are refused as an ABI mismatch, not as an incomplete set.
fn check_pins(dir: &Path) -> Result<bool, DataplaneError> {
    let config_path = dir.join(maps::CONFIG);
    if config_path.exists() {
        let spec = SPECS
            .iter()
            .find(|s| s.name == maps::CONFIG)
            .ok_or(DataplaneError::MissingMap(maps::CONFIG))?;
        let info = MapInfo::from_pin(&config_path).map_err(map_err(maps::CONFIG))?;
        check_spec(spec, &info, "pinned")?;
        check_pinned_abi(dir)?;
    }
    let mut found = Vec::new();
    for spec in &SPECS {
        let path = dir.join(spec.name);
        if path.exists() {
            let info = MapInfo::from_pin(&path).map_err(map_err(spec.name))?;
            check_spec(spec, &info, "pinned")?;
            found.push(spec.name);
        }
    }
    if found.is_empty() {
        return Ok(false);
    }
    if found.len() != SPECS.len() {
        return Err(DataplaneError::PartialPins {
            dir: dir.to_owned(),
            found,
        });
    }
    Ok(true)
}

/// Refuses a pinned `SV_CONFIG` written by another ABI version.
fn check_pinned_abi(dir: &Path) -> Result<(), DataplaneError> {
    let data = MapData::from_pin(dir.join(maps::CONFIG)).map_err(map_err(maps::CONFIG))?;
    let config: Array<MapData, AbiConfig> =
        Array::try_from(Map::Array(data)).map_err(map_err(maps::CONFIG))?;
    let current = config.get(&0, 0).map_err(map_err(maps::CONFIG))?;
    // 0 = created but never written (a daemon that died during its first start).
    if current.abi_version != ABI_VERSION && current.abi_version != 0 {
        return Err(DataplaneError::AbiMismatch {
            dir: dir.to_owned(),
            found: current.abi_version,
        });
    }
    Ok(())
}

fn remove_map_pins(dir: &Path) {
    for spec in &SPECS {
        let _ = std::fs::remove_file(dir.join(spec.name));
    }
}

impl Dataplane {
    /// Loads or adopts the data plane of an instance and attaches it to every interface.
    /// `opts.xdp` must not be `Off`.
    pub fn open(opts: &DataplaneOptions) -> Result<Dataplane, DataplaneError> {
        sys::ensure_bpffs()?;
        let dir = pin_dir(&opts.instance);
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let adopted_maps = check_pins(&dir)?;

        let mut loader = EbpfLoader::new();
        let paths: Vec<(&'static str, PathBuf)> =
            SPECS.iter().map(|s| (s.name, dir.join(s.name))).collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = match loader.load(ENTRY_OBJECT) {
            Ok(e) => e,
            Err(e) => {
                if !adopted_maps {
                    remove_map_pins(&dir);
                }
                return Err(DataplaneError::Load(Box::new(e)));
            }
        };
        let checked = (|| {
            for spec in &SPECS {
                if ebpf.map(spec.name).is_none() {
                    return Err(DataplaneError::MissingMap(spec.name));
                }
                // Every required map is pinned now (adopted or created): check what the
                // program will really use.
                let info = MapInfo::from_pin(dir.join(spec.name)).map_err(map_err(spec.name))?;
                check_spec(spec, &info, if adopted_maps { "pinned" } else { "object" })?;
            }
            Ok(())
        })();
        if let Err(e) = checked {
            if !adopted_maps {
                remove_map_pins(&dir);
            }
            return Err(e);
        }
        tracing::info!(
            dir = %dir.display(),
            adopted = adopted_maps,
            "maps ready (ABI {ABI_VERSION})"
        );

        let mut config: Array<MapData, AbiConfig> = take(&mut ebpf, maps::CONFIG)?;
        let mut tx_ports: DevMapHash<MapData> = take(&mut ebpf, maps::TX_PORTS)?;
        let counters: PerCpuArray<MapData, u64> = take(&mut ebpf, maps::COUNTERS)?;
        let flows: HashMap<MapData, FlowKey, Flow> = take(&mut ebpf, maps::FLOWS)?;

        let value = AbiConfig {
            abi_version: ABI_VERSION,
            flags: CONFIG_F_RELAY,
            relay_port_min: opts.port_min,
            relay_port_max: opts.port_max,
            ttl: 64,
            ..AbiConfig::default()
        };
        config.set(0, value, 0).map_err(map_err(maps::CONFIG))?;

        let program: &mut Xdp = ebpf
            .program_mut(ENTRY_PROGRAM)
            .ok_or_else(|| DataplaneError::MissingProgram(ENTRY_PROGRAM.to_owned()))?
            .try_into()
            .map_err(|e| DataplaneError::Program(Box::new(e)))?;
        program
            .load()
            .map_err(|e| DataplaneError::Program(Box::new(e)))?;

        let mut interfaces = Vec::new();
        for iface in &opts.interfaces {
            let ifindex = sys::ifindex(iface)?;
            tx_ports
                .insert(ifindex, ifindex, None, 0)
                .map_err(|e| DataplaneError::Io {
                    what: format!("adding {iface} to {}", maps::TX_PORTS),
                    source: io::Error::other(e.to_string()),
                })?;
            warn_if_not_forwarding(iface);
            let mode = attach_one(program, &dir, iface, ifindex, opts.xdp)?;
            tracing::info!(iface, ifindex, mode = mode.as_str(), "XDP attached");
            interfaces.push(AttachedInterface {
                name: iface.clone(),
                ifindex,
                mode,
            });
        }
        Ok(Dataplane {
            pin_dir: dir,
            adopted_maps,
            interfaces,
            flows: Some(flows),
            counters,
            _ebpf: ebpf,
        })
    }

    /// Hands the flow map to the media relay (once).
    pub fn take_flows(&mut self) -> Option<HashMap<MapData, FlowKey, Flow>> {
        self.flows.take()
    }

    /// XDP counters summed over CPUs, in `Counter::ALL` order.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>, DataplaneError> {
        sum_counters(&self.counters)
    }
}

/// `bpf_fib_lookup` reports "forwarding disabled" on an interface that does not forward IPv4, and
/// the program then passes every relayed packet up to the (much slower) userspace relay.
fn warn_if_not_forwarding(iface: &str) {
    let path = format!("/proc/sys/net/ipv4/conf/{iface}/forwarding");
    if let Ok(v) = std::fs::read_to_string(&path)
        && v.trim() == "0"
    {
        tracing::warn!(
            iface,
            "IPv4 forwarding is off: XDP cannot relay (FIB lookups fail), the userspace relay \
             will carry the media; set net.ipv4.conf.{iface}.forwarding=1"
        );
    }
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DataplaneError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(DataplaneError::MissingMap(name))?;
    T::try_from(map).map_err(map_err(name))
}

fn attach_one(
    program: &mut Xdp,
    dir: &Path,
    iface: &str,
    ifindex: u32,
    setting: XdpSetting,
) -> Result<AttachMode, DataplaneError> {
    let link_path = dir.join(format!("link-{iface}"));
    if link_path.exists() {
        match adopt_link(program, &link_path, iface, ifindex) {
            Ok(true) => return Ok(AttachMode::Adopted),
            Ok(false) => {}
            Err(e) => tracing::warn!(iface, "cannot adopt pinned link, attaching anew: {e}"),
        }
        let _ = std::fs::remove_file(&link_path);
    }
    let modes: &[(XdpMode, AttachMode)] = match setting {
        XdpSetting::Driver => &[(XdpMode::Driver, AttachMode::Driver)],
        XdpSetting::Generic => &[(XdpMode::Skb, AttachMode::Generic)],
        XdpSetting::Auto | XdpSetting::Off => &[
            (XdpMode::Driver, AttachMode::Driver),
            (XdpMode::Skb, AttachMode::Generic),
        ],
    };
    let mut last_err = None;
    for (i, (mode, label)) in modes.iter().enumerate() {
        match program.attach_to_if_index(ifindex, *mode) {
            Ok(id) => {
                if *label == AttachMode::Generic && i > 0 {
                    tracing::warn!(
                        iface,
                        "driver has no native XDP: attached in generic (SKB) mode, which is slow"
                    );
                }
                let link = program
                    .take_link(id)
                    .map_err(|e| DataplaneError::Program(Box::new(e)))?;
                let fd_link = FdLink::try_from(link).map_err(|e| DataplaneError::PinLink {
                    iface: iface.to_owned(),
                    path: link_path.clone(),
                    detail: format!("the kernel gave a netlink attachment, not a BPF link: {e}"),
                })?;
                fd_link
                    .pin(&link_path)
                    .map_err(|e| DataplaneError::PinLink {
                        iface: iface.to_owned(),
                        path: link_path.clone(),
                        detail: e.to_string(),
                    })?;
                return Ok(*label);
            }
            Err(e) => {
                if i + 1 < modes.len() {
                    tracing::debug!(iface, "attach in {} mode failed: {e}", label.as_str());
                }
                last_err = Some((e, label.as_str()));
            }
        }
    }
    let (source, mode) =
        last_err.ok_or_else(|| DataplaneError::MissingProgram(ENTRY_PROGRAM.to_owned()))?;
    let busy = matches!(
        &source,
        ProgramError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::EBUSY)
    ) || source.to_string().contains("busy");
    Err(DataplaneError::Attach {
        iface: iface.to_owned(),
        mode,
        source: Box::new(source),
        hint: if busy {
            " (another XDP program is attached: `sipveil unload` or `ip link set dev IF xdp off`)"
        } else {
            ""
        },
    })
}

/// Adopts a pinned link: checks it still sits on `ifindex` and switches it to `program`.
/// Ok(false) = stale pin (interface gone or another one), to be replaced.
fn adopt_link(
    program: &mut Xdp,
    link_path: &Path,
    iface: &str,
    ifindex: u32,
) -> Result<bool, DataplaneError> {
    let (target, old_prog) = {
        let fd = open_pinned(link_path)?;
        sys::xdp_link_target(fd.as_fd())
            .map_err(io_err(format!("inspecting {}", link_path.display())))?
    };
    if target != ifindex {
        tracing::warn!(
            iface,
            pinned_ifindex = target,
            ifindex,
            "pinned link is not attached to this interface (any more); replacing it"
        );
        return Ok(false);
    }
    let pinned = PinnedLink::from_pin(link_path).map_err(|e| DataplaneError::PinLink {
        iface: iface.to_owned(),
        path: link_path.to_owned(),
        detail: e.to_string(),
    })?;
    let fd_link: FdLink = pinned.into();
    let xdp_link =
        aya::programs::xdp::XdpLink::try_from(fd_link).map_err(|e| DataplaneError::PinLink {
            iface: iface.to_owned(),
            path: link_path.to_owned(),
            detail: e.to_string(),
        })?;
    let id = program
        .attach_to_link(xdp_link)
        .map_err(|e| DataplaneError::Program(Box::new(e)))?;
    // Take the link back out of the program so dropping the program never detaches it; dropping
    // the FdLink only closes our fd, the pin keeps the link.
    let link = program
        .take_link(id)
        .map_err(|e| DataplaneError::Program(Box::new(e)))?;
    drop(link);
    tracing::info!(
        iface,
        old_prog,
        "adopted pinned XDP link, switched to the new program"
    );
    Ok(true)
}

fn sum_counters(map: &PerCpuArray<MapData, u64>) -> Result<Vec<(Counter, u64)>, DataplaneError> {
    let mut out = Vec::with_capacity(Counter::ALL.len());
    for c in Counter::ALL {
        let values = map.get(&(c as u32), 0).map_err(map_err(maps::COUNTERS))?;
        out.push((c, values.iter().copied().fold(0u64, u64::wrapping_add)));
    }
    Ok(out)
}

/// Reads the pinned counters of an instance without a daemon. `Ok(None)` when nothing is pinned.
pub fn read_pinned_counters(instance: &str) -> Result<Option<Vec<(Counter, u64)>>, DataplaneError> {
    let path = pin_dir(instance).join(maps::COUNTERS);
    if !path.exists() {
        return Ok(None);
    }
    let data = MapData::from_pin(&path).map_err(map_err(maps::COUNTERS))?;
    let map: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(map_err(maps::COUNTERS))?;
    sum_counters(&map).map(Some)
}

/// Number of flows in the pinned SV_FLOWS of an instance (`None` when not pinned).
pub fn read_pinned_flow_count(instance: &str) -> Result<Option<usize>, DataplaneError> {
    let path = pin_dir(instance).join(maps::FLOWS);
    if !path.exists() {
        return Ok(None);
    }
    let data = MapData::from_pin(&path).map_err(map_err(maps::FLOWS))?;
    let map: HashMap<MapData, FlowKey, Flow> =
        HashMap::try_from(Map::HashMap(data)).map_err(map_err(maps::FLOWS))?;
    Ok(Some(map.keys().filter(|k| k.is_ok()).count()))
}

/// What `unload` did.
#[derive(Debug, Default)]
pub struct UnloadReport {
    pub detached: Vec<String>,
    pub removed_pins: bool,
}

/// Detaches and unpins the links of an instance (all, or only `ifaces`); without `ifaces` also
/// removes the maps and the pin directory.
pub fn unload(instance: &str, ifaces: &[String]) -> Result<UnloadReport, DataplaneError> {
    sys::ensure_bpffs()?;
    let dir = pin_dir(instance);
    let mut report = UnloadReport::default();
    if !dir.exists() {
        return Ok(report);
    }
    let mut links = Vec::new();
    if ifaces.is_empty() {
        let entries =
            std::fs::read_dir(&dir).map_err(io_err(format!("reading {}", dir.display())))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(iface) = name.strip_prefix("link-") {
                links.push(iface.to_owned());
            }
        }
    } else {
        links.extend(ifaces.iter().cloned());
    }
    for iface in &links {
        let path = dir.join(format!("link-{iface}"));
        if !path.exists() {
            tracing::warn!(iface, "no pinned link at {}", path.display());
            continue;
        }
        detach_pinned_link(&path)?;
        report.detached.push(iface.clone());
    }
    if ifaces.is_empty() {
        remove_map_pins(&dir);
        std::fs::remove_dir(&dir).map_err(io_err(format!("removing {}", dir.display())))?;
        report.removed_pins = true;
    } else {
        let path = dir.join(maps::TX_PORTS);
        if path.exists() {
            let data = MapData::from_pin(&path).map_err(map_err(maps::TX_PORTS))?;
            let mut ports: DevMapHash<MapData> =
                DevMapHash::try_from(Map::DevMapHash(data)).map_err(map_err(maps::TX_PORTS))?;
            for iface in ifaces {
                if let Ok(idx) = sys::ifindex(iface) {
                    let _ = ports.remove(idx);
                }
            }
        }
    }
    Ok(report)
}

/// Detaches a pinned link (BPF_LINK_DETACH) and removes its pin.
pub fn detach_pinned_link(path: &Path) -> Result<(), DataplaneError> {
    let fd = open_pinned(path)?;
    match sys::bpf_link_detach(fd.as_fd()) {
        Ok(()) => {}
        // Already detached (interface deleted): only the pin is left.
        Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => {}
        Err(e) => return Err(io_err(format!("detaching {}", path.display()))(e)),
    }
    std::fs::remove_file(path).map_err(io_err(format!("removing {}", path.display())))
}

/// BPF_OBJ_GET on a pinned path.
pub fn open_pinned(path: &Path) -> Result<std::os::fd::OwnedFd, DataplaneError> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
        DataplaneError::Io {
            what: format!("bad pin path {}", path.display()),
            source: io::Error::from(io::ErrorKind::InvalidInput),
        }
    })?;
    #[repr(C)]
    struct Attr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        _pad: [u8; 48],
    }
    let attr = Attr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        _pad: [0; 48],
    };
    const BPF_OBJ_GET: libc::c_long = 7;
    // SAFETY: `attr` and the path it points to are valid for the call; on success the kernel
    // returns a new fd that we own.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const Attr,
            size_of::<Attr>() as u32,
        )
    };
    if rc < 0 {
        return Err(io_err(format!("opening pin {}", path.display()))(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: the syscall returned a fresh fd owned by nobody else.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(rc as i32) })
}
