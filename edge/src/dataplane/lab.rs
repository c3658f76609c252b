//! Lab and benchmark helpers from `LAB_OBJECT`: attach one program to an interface with its link and
//! maps pinned in a directory, detach it, read the counters of a sink.
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use aya::EbpfLoader;
use aya::maps::{DevMapHash, Map, MapData, MapInfo, MapType};
use aya::programs::links::FdLink;
use aya::programs::{Xdp, XdpMode};
use sipveil_abi::lab::{self, CeilingFlow, GenSources, SinkPorts};

use super::loader::{DataplaneError, detach_pinned_link, open_pinned};
use super::objects::LAB_OBJECT;
use crate::sys;

/// Programs of the lab object that may be attached.
pub const LAB_PROGRAMS: [&str; 4] = ["sv_pass", "sv_sink", "sv_ceiling", "sv_gen"];

/// Pin root of the lab helpers.
pub const LAB_PIN_ROOT: &str = "/sys/fs/bpf/sipveil-lab";

/// Default pin directory for a lab program on `iface` in `netns`.
pub fn default_lab_pin(netns: Option<&str>, iface: &str) -> PathBuf {
    Path::new(LAB_PIN_ROOT).join(format!("{}-{iface}", netns.unwrap_or("host")))
}

/// A typed value for a read-only global of a lab program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobalValue {
    pub name: String,
    pub bytes: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum GlobalParseError {
    #[error("global {0:?}: expected NAME=TYPE:VALUE")]
    Shape(String),
    #[error("global {name}: cannot parse {value:?} as {ty}")]
    Value {
        name: String,
        ty: String,
        value: String,
    },
    #[error("global {name}: unknown type {ty:?} (ip, port, mac, ifindex, u8, u16, u32, u64)")]
    Type { name: String, ty: String },
    #[error(transparent)]
    Sys(#[from] sys::SysError),
}

/// Parses `NAME=TYPE:VALUE`. `ifindex:IF` is resolved in the current network namespace, so parse
/// after entering it.
pub fn parse_global(spec: &str) -> Result<GlobalValue, GlobalParseError> {
    let (name, typed) = spec
        .split_once('=')
        .ok_or_else(|| GlobalParseError::Shape(spec.to_owned()))?;
    let (ty, value) = typed
        .split_once(':')
        .ok_or_else(|| GlobalParseError::Shape(spec.to_owned()))?;
    if name.is_empty() {
        return Err(GlobalParseError::Shape(spec.to_owned()));
    }
    let bad = || GlobalParseError::Value {
        name: name.to_owned(),
        ty: ty.to_owned(),
        value: value.to_owned(),
    };
    let bytes = match ty {
        "ip" => value
            .parse::<Ipv4Addr>()
            .map_err(|_| bad())?
            .octets()
            .to_vec(),
        "port" => value
            .parse::<u16>()
            .map_err(|_| bad())?
            .to_be_bytes()
            .to_vec(),
        "mac" => {
            let parts: Vec<&str> = value.split(':').collect();
            if parts.len() != 6 {
                return Err(bad());
            }
            let mut mac = Vec::with_capacity(6);
            for p in parts {
                mac.push(u8::from_str_radix(p, 16).map_err(|_| bad())?);
            }
            mac
        }
        "ifindex" => sys::ifindex(value)?.to_ne_bytes().to_vec(),
        "u8" => vec![value.parse::<u8>().map_err(|_| bad())?],
        "u16" => value
            .parse::<u16>()
            .map_err(|_| bad())?
            .to_ne_bytes()
            .to_vec(),
        "u32" => value
            .parse::<u32>()
            .map_err(|_| bad())?
            .to_ne_bytes()
            .to_vec(),
        "u64" => value
            .parse::<u64>()
            .map_err(|_| bad())?
            .to_ne_bytes()
            .to_vec(),
        _ => {
            return Err(GlobalParseError::Type {
                name: name.to_owned(),
                ty: ty.to_owned(),
            });
        }
    };
    Ok(GlobalValue {
        name: name.to_owned(),
        bytes,
    })
}

/// Typed settings of the lab programs (`sipveil_abi::lab`).
#[derive(Clone, Debug, Default)]
pub struct LabSettings {
    /// `SVL_SINK_PORTS` of `sv_sink`.
    pub sink_ports: Option<SinkPorts>,
    /// `SVL_CEILING_FLOW` of `sv_ceiling`.
    pub ceiling: Option<CeilingFlow>,
    /// `SVL_GEN_FLAGS` of `sv_gen`.
    pub gen_flags: Option<u32>,
    /// `SVL_GEN_SOURCES` of `sv_gen` (with `GEN_F_SRC_ROTATE` in `gen_flags`).
    pub gen_sources: Option<GenSources>,
    /// Interfaces to put into `SVL_TX` (the ceiling's egress).
    pub tx_ifindexes: Vec<u32>,
}

/// Attaches `program` of the lab object to `iface` (current netns), pinning the link at
/// `DIR/link` and every map at `DIR/<name>`. An earlier attachment pinned in DIR is detached first.
pub fn attach(
    program: &str,
    iface: &str,
    dir: &Path,
    generic: bool,
    globals: &[GlobalValue],
    settings: &LabSettings,
) -> Result<(), DataplaneError> {
    sys::ensure_bpffs()?;
    let ifindex = sys::ifindex(iface)?;
    if dir.join("link").exists() {
        detach(dir)?;
    }
    std::fs::create_dir_all(dir).map_err(|source| DataplaneError::Io {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    let result = load_and_attach(program, iface, ifindex, dir, generic, globals, settings);
    if result.is_err() {
        // Leave no half-made pin directory behind (maps pinned, no link).
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

fn load_and_attach(
    program: &str,
    iface: &str,
    ifindex: u32,
    dir: &Path,
    generic: bool,
    globals: &[GlobalValue],
    settings: &LabSettings,
) -> Result<(), DataplaneError> {
    let mut loader = EbpfLoader::new();
    if let Some(p) = &settings.sink_ports {
        loader.override_global(lab::SINK_PORTS_GLOBAL, p, true);
    }
    if let Some(c) = &settings.ceiling {
        loader.override_global(lab::CEILING_FLOW_GLOBAL, c, true);
    }
    if let Some(f) = &settings.gen_flags {
        loader.override_global(lab::GEN_FLAGS_GLOBAL, f, true);
    }
    if let Some(g) = &settings.gen_sources {
        loader.override_global(lab::GEN_SOURCES_GLOBAL, g, true);
    }
    for g in globals {
        loader.override_global(g.name.as_str(), g.bytes.as_slice(), true);
    }
    let mut ebpf = loader
        .load(LAB_OBJECT)
        .map_err(|e| DataplaneError::Load(Box::new(e)))?;
    if !settings.tx_ifindexes.is_empty() {
        let map = ebpf
            .map_mut(lab::CEILING_TX_MAP)
            .ok_or(DataplaneError::MissingMap(lab::CEILING_TX_MAP))?;
        let mut tx: DevMapHash<&mut MapData> =
            DevMapHash::try_from(map).map_err(|source| DataplaneError::Map {
                name: lab::CEILING_TX_MAP,
                source: Box::new(source),
            })?;
        for idx in &settings.tx_ifindexes {
            tx.insert(*idx, *idx, None, 0)
                .map_err(|e| DataplaneError::Io {
                    what: format!("adding ifindex {idx} to {}", lab::CEILING_TX_MAP),
                    source: std::io::Error::other(e.to_string()),
                })?;
        }
    }
    for (name, map) in ebpf.maps() {
        if name.starts_with('.') {
            continue;
        }
        map.pin(dir.join(name)).map_err(|e| DataplaneError::Io {
            what: format!("pinning map {name} in {}", dir.display()),
            source: std::io::Error::other(e.to_string()),
        })?;
    }
    let prog: &mut Xdp = ebpf
        .program_mut(program)
        .ok_or_else(|| DataplaneError::MissingProgram(program.to_owned()))?
        .try_into()
        .map_err(|e| DataplaneError::Program(Box::new(e)))?;
    prog.load()
        .map_err(|e| DataplaneError::Program(Box::new(e)))?;
    let mode = if generic {
        XdpMode::Skb
    } else {
        XdpMode::Driver
    };
    let id = prog
        .attach_to_if_index(ifindex, mode)
        .map_err(|source| DataplaneError::Attach {
            iface: iface.to_owned(),
            mode: if generic { "generic" } else { "driver" },
            source: Box::new(source),
            hint: "",
        })?;
    let link = prog
        .take_link(id)
        .map_err(|e| DataplaneError::Program(Box::new(e)))?;
    let path = dir.join("link");
    let fd_link = FdLink::try_from(link).map_err(|e| DataplaneError::PinLink {
        iface: iface.to_owned(),
        path: path.clone(),
        detail: e.to_string(),
    })?;
    fd_link.pin(&path).map_err(|e| DataplaneError::PinLink {
        iface: iface.to_owned(),
        path,
        detail: e.to_string(),
    })?;
    Ok(())
}

/// Detaches the link pinned in `dir` and removes the directory with its map pins.
pub fn detach(dir: &Path) -> Result<(), DataplaneError> {
    let link = dir.join("link");
    if link.exists() {
        detach_pinned_link(&link)?;
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|source| DataplaneError::Io {
            what: format!("removing {}", dir.display()),
            source,
        })?;
    }
    Ok(())
}

/// Every pinned array / per-CPU array of u64 in `dir`, summed over CPUs.
pub fn read_sink(dir: &Path) -> Result<Vec<(String, Vec<u64>)>, DataplaneError> {
    let entries = std::fs::read_dir(dir).map_err(|source| DataplaneError::Io {
        what: format!("reading {}", dir.display()),
        source,
    })?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "link" {
            continue;
        }
        let path = entry.path();
        let Ok(info) = MapInfo::from_pin(&path) else {
            continue;
        };
        if info.value_size() != 8 || info.key_size() != 4 {
            continue;
        }
        let data = MapData::from_pin(&path).map_err(|source| DataplaneError::Map {
            name: "lab map",
            source: Box::new(source),
        })?;
        let values = match info.map_type() {
            Ok(MapType::PerCpuArray) => {
                let map: aya::maps::PerCpuArray<MapData, u64> =
                    aya::maps::PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(|source| {
                        DataplaneError::Map {
                            name: "lab map",
                            source: Box::new(source),
                        }
                    })?;
                (0..map.len())
                    .map(|i| {
                        map.get(&i, 0)
                            .map(|v| v.iter().copied().fold(0u64, u64::wrapping_add))
                            .unwrap_or(0)
                    })
                    .collect()
            }
            Ok(MapType::Array) => {
                let map: aya::maps::Array<MapData, u64> =
                    aya::maps::Array::try_from(Map::Array(data)).map_err(|source| {
                        DataplaneError::Map {
                            name: "lab map",
                            source: Box::new(source),
                        }
                    })?;
                (0..map.len())
                    .map(|i| map.get(&i, 0).unwrap_or(0))
                    .collect()
            }
            _ => continue,
        };
        out.push((name, values));
    }
    out.sort();
    Ok(out)
}

/// Whether the link pinned in `dir` is still attached (ifindex non-zero).
pub fn is_attached(dir: &Path) -> bool {
    open_pinned(&dir.join("link"))
        .ok()
        .and_then(|fd| sys::xdp_link_target(fd.as_fd()).ok())
        .is_some_and(|(ifindex, _)| ifindex != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globals_parse_typed() {
        let g = parse_global("DST_IP=ip:198.18.2.2").expect("ip");
        assert_eq!(g.name, "DST_IP");
        assert_eq!(g.bytes, vec![198, 18, 2, 2]);
        assert_eq!(
            parse_global("P=port:5000").expect("port").bytes,
            vec![0x13, 0x88]
        );
        assert_eq!(
            parse_global("M=mac:02:00:00:00:00:0a").expect("mac").bytes,
            vec![2, 0, 0, 0, 0, 10]
        );
        assert_eq!(
            parse_global("N=u32:7").expect("u32").bytes,
            7u32.to_ne_bytes().to_vec()
        );
        assert!(parse_global("N=u8:300").is_err());
        assert!(parse_global("N=float:1").is_err());
        assert!(parse_global("N7").is_err());
        assert!(parse_global("M=mac:02:00").is_err());
    }
}
