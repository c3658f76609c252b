//! Userspace relay counters: the same reasons as the XDP program's, plus the control-plane events.
use std::sync::atomic::{AtomicU64, Ordering};

/// One counter per outcome or reason of the userspace relay and of `MediaRelay`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum UserCounter {
    /// Datagrams received on relay sockets.
    Rx = 0,
    /// Relayed by userspace (in XDP mode: what the program passed up).
    Relayed = 1,
    RelayedRtcp = 2,
    /// IP datagram length, like the program's `relayed_bytes`.
    RelayedBytes = 3,
    Latched = 4,
    /// Received on a relay socket without a flow: dropped.
    NoFlowDrop = 5,
    StrictDrop = 6,
    SendError = 7,
    /// Larger than a receive buffer: dropped.
    TruncatedDrop = 8,
    /// `relay-open` failed: no free port pair.
    PortsExhausted = 9,
    /// `relay-open` failed: the flow map is full.
    MapFull = 10,
    /// Relays removed by idle expiry.
    Expired = 11,
    /// RTCP datagrams forwarded after scrubbing (see `media::rtcp`).
    RtcpScrubbed = 12,
    /// SDES items removed or replaced by the pseudonymous CNAME.
    RtcpSdesItems = 13,
    /// RTCP datagrams that lost more than SDES items (APP, unknown types, BYE reasons, padding,
    /// extensions, an unreadable tail) and were forwarded.
    RtcpStripped = 14,
    /// RTCP datagrams with nothing forwardable (broken framing, encrypted, only APP): dropped.
    RtcpDropped = 15,
}

impl UserCounter {
    pub const COUNT: usize = 16;
    pub const ALL: [UserCounter; UserCounter::COUNT] = [
        UserCounter::Rx,
        UserCounter::Relayed,
        UserCounter::RelayedRtcp,
        UserCounter::RelayedBytes,
        UserCounter::Latched,
        UserCounter::NoFlowDrop,
        UserCounter::StrictDrop,
        UserCounter::SendError,
        UserCounter::TruncatedDrop,
        UserCounter::PortsExhausted,
        UserCounter::MapFull,
        UserCounter::Expired,
        UserCounter::RtcpScrubbed,
        UserCounter::RtcpSdesItems,
        UserCounter::RtcpStripped,
        UserCounter::RtcpDropped,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            UserCounter::Rx => "rx",
            UserCounter::Relayed => "relayed",
            UserCounter::RelayedRtcp => "relayed_rtcp",
            UserCounter::RelayedBytes => "relayed_bytes",
            UserCounter::Latched => "latched",
            UserCounter::NoFlowDrop => "no_flow_drop",
            UserCounter::StrictDrop => "strict_source_drop",
            UserCounter::SendError => "send_error",
            UserCounter::TruncatedDrop => "truncated_drop",
            UserCounter::PortsExhausted => "ports_exhausted",
            UserCounter::MapFull => "map_full",
            UserCounter::Expired => "expired",
            UserCounter::RtcpScrubbed => "rtcp_scrubbed",
            UserCounter::RtcpSdesItems => "rtcp_sdes_items_removed",
            UserCounter::RtcpStripped => "rtcp_stripped",
            UserCounter::RtcpDropped => "rtcp_dropped",
        }
    }
}

/// Shared, lock-free counters.
#[derive(Debug, Default)]
pub struct UserCounters {
    values: [AtomicU64; UserCounter::COUNT],
}

impl UserCounters {
    pub fn add(&self, c: UserCounter, n: u64) {
        self.values[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(&self, c: UserCounter) {
        self.add(c, 1);
    }

    pub fn get(&self, c: UserCounter) -> u64 {
        self.values[c as usize].load(Ordering::Relaxed)
    }

    /// Every counter with its name, in index order.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        UserCounter::ALL
            .iter()
            .map(|c| (c.name(), self.get(*c)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_match_all() {
        for (i, c) in UserCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
        let c = UserCounters::default();
        c.inc(UserCounter::StrictDrop);
        c.add(UserCounter::RelayedBytes, 40);
        assert_eq!(c.get(UserCounter::StrictDrop), 1);
        assert_eq!(c.snapshot()[3], ("relayed_bytes", 40));
    }
}
