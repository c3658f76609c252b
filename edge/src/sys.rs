//! Small system helpers: network namespaces, bpffs, a few raw BPF commands aya does not expose,
//! the monotonic clock.
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

/// Where `ip netns add` creates its namespace handles.
pub const NETNS_RUN_DIR: &str = "/var/run/netns";
/// The bpffs mount point.
pub const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("network namespace {name:?}: {source} (create it with `ip netns add {name}`)")]
    Netns { name: String, source: io::Error },
    #[error("bad network namespace name {0:?}")]
    NetnsName(String),
    #[error("cannot mount bpffs at {BPFFS}: {0}")]
    Bpffs(io::Error),
    #[error("interface {name:?} not found in this network namespace")]
    NoInterface { name: String },
}

/// Enters the network namespace `/var/run/netns/NAME` with setns(CLONE_NEWNET) only, keeping the
/// mount namespace (and so the host's bpffs pins). Call it before any thread is started: setns
/// only moves the calling thread.
pub fn enter_netns(name: &str) -> Result<(), SysError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(SysError::NetnsName(name.to_owned()));
    }
    let path = Path::new(NETNS_RUN_DIR).join(name);
    let file = std::fs::File::open(&path).map_err(|source| SysError::Netns {
        name: name.to_owned(),
        source,
    })?;
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
        SysError::Netns {
            name: name.to_owned(),
            source: io::Error::from(e),
        }
    })
}

/// Mounts bpffs at /sys/fs/bpf when it is not mounted there.
pub fn ensure_bpffs() -> Result<(), SysError> {
    if is_bpffs(Path::new(BPFFS)) {
        return Ok(());
    }
    std::fs::create_dir_all(BPFFS).map_err(SysError::Bpffs)?;
    nix::mount::mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        Some("mode=0700"),
    )
    .map_err(|e| SysError::Bpffs(io::Error::from(e)))?;
    tracing::info!("mounted bpffs at {BPFFS}");
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    match nix::sys::statfs::statfs(path) {
        Ok(st) => st.filesystem_type().0 == BPF_FS_MAGIC,
        Err(_) => false,
    }
}

/// The index of an interface in the current network namespace.
pub fn ifindex(name: &str) -> Result<u32, SysError> {
    let c = CString::new(name).map_err(|_| SysError::NoInterface {
        name: name.to_owned(),
    })?;
    // SAFETY: `c` is a valid NUL-terminated string that lives across the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(SysError::NoInterface {
            name: name.to_owned(),
        })
    } else {
        Ok(idx)
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_DETACH: libc::c_long = 34;

/// Forcibly detaches a BPF link (BPF_LINK_DETACH): the program leaves the interface even if other
/// file descriptors or pins still refer to the link.
pub fn bpf_link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct Attr {
        link_fd: u32,
        _pad: [u8; 60],
    }
    let attr = Attr {
        link_fd: link.as_raw_fd() as u32,
        _pad: [0; 60],
    };
    // SAFETY: BPF_LINK_DETACH reads `size` bytes of `attr`, which is a valid, initialised struct
    // living across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            &attr as *const Attr,
            std::mem::size_of::<Attr>() as u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The interface index an XDP link is attached to (0 when the interface went away), and the id of
/// the program it runs.
pub fn xdp_link_target(link: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    // struct bpf_link_info: type, id, prog_id (u32 each), then an 8-aligned union; for XDP links
    // the union starts with `__u32 ifindex`.
    #[repr(C, align(8))]
    struct LinkInfo {
        type_: u32,
        id: u32,
        prog_id: u32,
        _pad: u32,
        ifindex: u32,
        _rest: [u8; 60],
    }
    #[repr(C)]
    struct Attr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
        _pad: [u8; 48],
    }
    let mut info = LinkInfo {
        type_: 0,
        id: 0,
        prog_id: 0,
        _pad: 0,
        ifindex: 0,
        _rest: [0; 60],
    };
    let attr = Attr {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: std::mem::size_of::<LinkInfo>() as u32,
        info: &mut info as *mut LinkInfo as u64,
        _pad: [0; 48],
    };
    // SAFETY: the kernel writes at most `info_len` bytes into `info`, which is valid and writable
    // for the call; `attr` is a valid, initialised struct.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const Attr,
            std::mem::size_of::<Attr>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    const BPF_LINK_TYPE_XDP: u32 = 6;
    if info.type_ != BPF_LINK_TYPE_XDP {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("pinned link is of type {}, not XDP", info.type_),
        ));
    }
    Ok((info.ifindex, info.prog_id))
}

/// Whether the process runs with root privileges (euid 0).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
