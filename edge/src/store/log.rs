//! The binding log: two preallocated files written with `O_DIRECT|O_DSYNC` (buffered `O_DSYNC`
//! where the file system has no direct I/O), one record per commit group.
//!
//! Record layout (little endian), starting at a multiple of [`ALIGN`]:
//! `magic u32 | payload length u32 | seq u64 | crc32 u32 | payload`, where the CRC covers the
//! length, the sequence number and the payload. The payload is `count u32` followed by `count`
//! operations, each `1 | key length u32 | key | value length u32 | value` (put) or
//! `2 | key length u32 | key` (delete).
//!
//! A file is scanned from offset 0 while records are whole (magic, bounds and CRC check) and their
//! sequence numbers are consecutive; the first record that fails ends the file's chain. Because a
//! file is reused only after everything in it has been checkpointed into redb, and sequence numbers
//! only grow, whatever stale record follows the chain has a number at or below the checkpoint and
//! is ignored by the replay.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sipveil_registrar::StoreOp;

/// Records start at multiples of this, so concurrent writes of different groups never share a
/// page.
pub(super) const ALIGN: u64 = 4096;
/// Default size of each of the two log files.
pub const DEFAULT_LOG_BYTES: u64 = 16 << 20;
const MAGIC: u32 = 0x314c_5653; // "SVL1"
const HEADER: usize = 20;
const PUT: u8 = 1;
const DELETE: u8 = 2;

/// The two log files beside the database: `<db>.wal0`, `<db>.wal1`.
pub(super) fn paths(db: &Path) -> [PathBuf; 2] {
    let with = |suffix: &str| {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    [with(".wal0"), with(".wal1")]
}

/// Encodes one group as a record into `buf` (cleared first), padded to [`ALIGN`].
pub(super) fn encode<'a>(seq: u64, ops: impl Iterator<Item = &'a StoreOp>, buf: &mut Vec<u8>) {
    buf.clear();
    buf.resize(HEADER, 0);
    buf.extend_from_slice(&0u32.to_le_bytes());
    let mut count: u32 = 0;
    for op in ops {
        count = count.wrapping_add(1);
        match op {
            StoreOp::Put { key, value } => {
                buf.push(PUT);
                push_bytes(buf, key);
                push_bytes(buf, value);
            }
            StoreOp::Delete { key } => {
                buf.push(DELETE);
                push_bytes(buf, key);
            }
        }
    }
    buf[HEADER..HEADER + 4].copy_from_slice(&count.to_le_bytes());
    let len = u32::try_from(buf.len() - HEADER).unwrap_or(u32::MAX);
    buf[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    buf[4..8].copy_from_slice(&len.to_le_bytes());
    buf[8..16].copy_from_slice(&seq.to_le_bytes());
    let crc = checksum(&buf[4..16], &buf[HEADER..]);
    buf[16..20].copy_from_slice(&crc.to_le_bytes());
    let padded = align_up(buf.len() as u64);
    buf.resize(usize::try_from(padded).unwrap_or(buf.len()), 0);
}

fn push_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    // Keys and values are registrar records of a few hundred bytes; the u32 length cannot overflow
    // for anything that fits in a log file, and `Committer` refuses groups larger than the file.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(bytes);
}

fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header);
    h.update(payload);
    h.finalize()
}

pub(super) fn align_up(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

/// A record whose CRC is right but whose payload does not parse: written by something else, or a
/// bug. Never silently skipped, since records after it may have been acknowledged.
#[derive(Debug, thiserror::Error)]
#[error("record {seq} at offset {offset} has a valid checksum but does not decode")]
pub(super) struct Undecodable {
    seq: u64,
    offset: u64,
}

/// The whole contents of a log file, read once for [`scan`] and [`highest_seq`].
pub(super) fn read_all(file: &File) -> io::Result<Vec<u8>> {
    let size = usize::try_from(file.metadata()?.len()).map_err(io::Error::other)?;
    let mut buf = vec![0u8; size];
    file.read_exact_at(&mut buf, 0)?;
    Ok(buf)
}

/// The highest sequence number of any whole record anywhere in `data` (a log file's contents,
/// at any [`ALIGN`] offset, chained or not), 0 if none. Replay moves the log past it, so a stale
/// record left after a torn one can never carry the number the chain expects next.
pub(super) fn highest_seq(data: &[u8]) -> u64 {
    (0..data.len())
        .step_by(ALIGN as usize)
        .filter_map(|offset| record_at(data, offset))
        .map(|(seq, _)| seq)
        .max()
        .unwrap_or(0)
}

/// The whole record at `offset` of `data`: its sequence number and payload.
fn record_at(data: &[u8], offset: usize) -> Option<(u64, &[u8])> {
    let header: &[u8; HEADER] = data
        .get(offset..offset.checked_add(HEADER)?)?
        .try_into()
        .ok()?;
    let (magic, len, seq, crc) = parse_header(header);
    if magic != MAGIC {
        return None;
    }
    let start = offset + HEADER;
    let payload = data.get(start..start.checked_add(usize::try_from(len).ok()?)?)?;
    (checksum(&header[4..16], payload) == crc).then_some((seq, payload))
}

fn parse_header(h: &[u8; HEADER]) -> (u32, u64, u64, u32) {
    let word = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&h[8..16]);
    (
        word(0),
        u64::from(word(4)),
        u64::from_le_bytes(seq),
        word(16),
    )
}

/// Reads the chain of whole, consecutive records from the start of `data` (a log file's
/// contents).
pub(super) fn scan(data: &[u8]) -> io::Result<Vec<(u64, Vec<StoreOp>)>> {
    let mut out: Vec<(u64, Vec<StoreOp>)> = Vec::new();
    let mut offset = 0usize;
    while let Some((seq, payload)) = record_at(data, offset) {
        if let Some((prev, _)) = out.last()
            && prev.checked_add(1) != Some(seq)
        {
            break;
        }
        let ops = decode(payload).ok_or_else(|| {
            io::Error::other(Undecodable {
                seq,
                offset: offset as u64,
            })
        })?;
        out.push((seq, ops));
        offset = usize::try_from(align_up((offset + HEADER + payload.len()) as u64))
            .map_err(io::Error::other)?;
    }
    Ok(out)
}

fn decode(mut p: &[u8]) -> Option<Vec<StoreOp>> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if p.len() < n {
            return None;
        }
        let (head, tail) = p.split_at(n);
        *p = tail;
        Some(head)
    }
    fn u32_of(p: &mut &[u8]) -> Option<usize> {
        let b = take(p, 4)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(b);
        usize::try_from(u32::from_le_bytes(a)).ok()
    }
    fn bytes(p: &mut &[u8]) -> Option<Vec<u8>> {
        let n = u32_of(p)?;
        take(p, n).map(<[u8]>::to_vec)
    }
    let count = u32_of(&mut p)?;
    // Every op takes at least 5 bytes: do not trust `count` for the allocation.
    let mut ops = Vec::with_capacity(count.min(p.len() / 5));
    for _ in 0..count {
        let tag = take(&mut p, 1)?.first().copied()?;
        let key = bytes(&mut p)?;
        ops.push(match tag {
            PUT => StoreOp::Put {
                key,
                value: bytes(&mut p)?,
            },
            DELETE => StoreOp::Delete { key },
            _ => return None,
        });
    }
    p.is_empty().then_some(ops)
}

/// Makes `path` a zero-filled file of exactly `size` bytes whose blocks are all written (so later
/// overwrites change no metadata and an `O_DSYNC` write journals nothing), and opens it for
/// `O_DSYNC` writing. A file of another size is rewritten from scratch: call only after its records
/// were replayed and checkpointed.
pub(super) fn prepare(path: &Path, size: u64) -> io::Result<File> {
    let current = match std::fs::metadata(path) {
        Ok(m) => Some(m.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    if current != Some(size) {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        let zeros = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < size {
            let n =
                usize::try_from((size - at).min(zeros.len() as u64)).map_err(io::Error::other)?;
            f.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        f.sync_all()?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
    }
    // Direct I/O: an O_DSYNC direct overwrite of allocated blocks is one write with FUA (or a
    // write and a cache flush), without the page cache's writeback or the inode's timestamps that a
    // buffered O_DSYNC write syncs too. File systems without O_DIRECT (tmpfs) get buffered
    // O_DSYNC.
    let direct = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DSYNC | libc::O_DIRECT)
        .open(path);
    match direct {
        Ok(f) => Ok(f),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DSYNC)
            .open(path),
        Err(e) => Err(e),
    }
}

/// A reusable buffer whose contents start at an [`ALIGN`]-aligned address, as direct I/O needs.
#[derive(Default)]
pub(super) struct Aligned {
    raw: Vec<u8>,
}

impl Aligned {
    /// `bytes` copied to an aligned address (a plain copy if alignment is impossible, which for a
    /// byte buffer it is not; the write then fails with EINVAL rather than misbehaving).
    pub(super) fn copy_of(&mut self, bytes: &[u8]) -> &[u8] {
        let need = bytes.len() + ALIGN as usize;
        if self.raw.len() < need {
            self.raw.resize(need, 0);
        }
        let off = self.raw.as_ptr().align_offset(ALIGN as usize);
        let off = if off < ALIGN as usize { off } else { 0 };
        let out = &mut self.raw[off..off + bytes.len()];
        out.copy_from_slice(bytes);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_follows_the_chain_and_highest_seq_sees_every_whole_record() {
        let op = |k: &[u8]| StoreOp::Delete { key: k.to_vec() };
        let mut data = Vec::new();
        let mut rec = Vec::new();
        for (seq, key) in [(5u64, b"a"), (6, b"b"), (9, b"c")] {
            encode(seq, [op(key)].iter(), &mut rec);
            data.extend_from_slice(&rec);
        }
        // A torn tail: half a record, then zeros.
        encode(7, [op(b"d")].iter(), &mut rec);
        data.extend_from_slice(&rec[..HEADER + 2]);
        data.resize(data.len() + 3 * ALIGN as usize, 0);
        let chain = scan(&data).expect("scans");
        assert_eq!(
            chain.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![5, 6],
            "the gap before 9 ends the chain"
        );
        assert_eq!(chain[1].1, vec![op(b"b")]);
        assert_eq!(
            highest_seq(&data),
            9,
            "the stale record past the gap counts"
        );
        // A flipped payload byte breaks the CRC: the chain ends before that record.
        let mut bad = data.clone();
        bad[ALIGN as usize + HEADER + 1] ^= 1;
        assert_eq!(scan(&bad).expect("scans").len(), 1);
        assert_eq!(highest_seq(&[]), 0);
        assert!(scan(&data[..HEADER - 1]).expect("scans").is_empty());
    }

    #[test]
    fn encode_decode_round_trip() {
        let ops = vec![
            StoreOp::Put {
                key: b"k".to_vec(),
                value: vec![0, 1, 2],
            },
            StoreOp::Delete { key: Vec::new() },
        ];
        let mut buf = Vec::new();
        encode(7, ops.iter(), &mut buf);
        assert_eq!(buf.len() as u64 % ALIGN, 0);
        let len = usize::try_from(u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]])).unwrap();
        let got = decode(&buf[HEADER..HEADER + len]).expect("decodes");
        assert_eq!(got, ops);
        // Truncated payloads and trailing bytes do not decode.
        assert!(decode(&buf[HEADER..HEADER + len - 1]).is_none());
        let mut longer = buf[HEADER..HEADER + len].to_vec();
        longer.push(0);
        assert!(decode(&longer).is_none());
    }
}
