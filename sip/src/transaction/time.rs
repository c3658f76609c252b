//! Time as a value the caller passes in, and the RFC 3261 timer settings.

use core::fmt;
use core::ops::{Add, Sub};
use core::time::Duration;

/// A point in time: nanoseconds since an epoch the caller chooses.
///
/// The transaction layer never reads a clock. The driver maps its monotonic
/// clock onto this type (for example `Instant::from_duration(start.elapsed())`)
/// and tests drive a virtual clock. Arithmetic saturates instead of wrapping,
/// so a far-future deadline never becomes a past one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(u64);

impl Instant {
    /// The caller's epoch.
    pub const ZERO: Instant = Instant(0);

    /// `nanos` nanoseconds after the epoch.
    pub const fn from_nanos(nanos: u64) -> Self {
        Instant(nanos)
    }

    /// `millis` milliseconds after the epoch (saturating).
    pub const fn from_millis(millis: u64) -> Self {
        Instant(millis.saturating_mul(1_000_000))
    }

    /// `since_epoch` after the epoch (saturating at about 584 years).
    pub fn from_duration(since_epoch: Duration) -> Self {
        Instant(u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX))
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time since the epoch.
    pub const fn as_duration(self) -> Duration {
        Duration::from_nanos(self.0)
    }

    /// `self + d`, saturating at the end of representable time.
    pub fn saturating_add(self, d: Duration) -> Self {
        let add = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_add(add))
    }

    /// How long after `earlier` this instant is; zero when `earlier` is later.
    pub const fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, rhs: Duration) -> Instant {
        self.saturating_add(rhs)
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, rhs: Instant) -> Duration {
        self.saturating_duration_since(rhs)
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Instant({:?})", self.as_duration())
    }
}

/// RFC 3261 timer values (§17.1.1.1, table 4). All derived timers follow
/// from these: A=E=G start at T1, E and G cap at T2, B=F=H=J=64·T1,
/// I=K=T4, D as configured; and the RFC 6026 timers L=M=64·T1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// RTT estimate; first retransmit interval. Default 500 ms.
    pub t1: Duration,
    /// Maximum retransmit interval for non-INVITE requests and INVITE
    /// responses. Default 4 s.
    pub t2: Duration,
    /// Maximum time a message stays in the network. Default 5 s.
    pub t4: Duration,
    /// Timer D: how long a client INVITE transaction absorbs retransmitted
    /// non-2xx finals on an unreliable transport. RFC 3261 asks for at least
    /// 32 s. Default 32 s.
    pub timer_d: Duration,
    /// When a server INVITE transaction sends `100 Trying` by itself if the
    /// TU has not responded yet (§17.2.1 says 200 ms). `None` leaves every
    /// provisional response to the TU. Default `Some(200 ms)`.
    pub auto_trying: Option<Duration>,
    /// Whether a server INVITE transaction retransmits its 2xx (T1 doubling
    /// to T2, unreliable transports only) until the ACK arrives, doing the
    /// UAS core's job of RFC 3261 §13.3.1.4 for the TU. With `false` the TU
    /// retransmits by calling `send_response` again (RFC 6026 §8.5).
    /// Default `true`.
    pub retransmit_2xx: bool,
    /// Live transactions at most. A request beyond it starts no server
    /// transaction (`Incoming::Overloaded`, answer 503 statelessly) and
    /// `send_request` fails, so a request flood cannot grow the table
    /// without bound (each transaction lingers up to 64·T1 after its final
    /// response). Default 262 144.
    pub max_transactions: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            timer_d: Duration::from_secs(32),
            auto_trying: Some(Duration::from_millis(200)),
            retransmit_2xx: true,
            max_transactions: 1 << 18,
        }
    }
}

/// Why a [`Config`] was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// T1 is zero: retransmissions would never advance time.
    ZeroT1,
    /// T2 is smaller than T1.
    T2BelowT1,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::ZeroT1 => f.write_str("T1 must be greater than zero"),
            ConfigError::T2BelowT1 => f.write_str("T2 must not be smaller than T1"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Defaults with the given T1, T2 and T4.
    pub fn with_timers(t1: Duration, t2: Duration, t4: Duration) -> Self {
        Config {
            t1,
            t2,
            t4,
            ..Config::default()
        }
    }

    /// Checks that the values cannot stall the timer loop.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.t1.is_zero() {
            return Err(ConfigError::ZeroT1);
        }
        if self.t2 < self.t1 {
            return Err(ConfigError::T2BelowT1);
        }
        Ok(())
    }

    /// 64·T1: timers B, F, H, J, L and M.
    pub fn t1_x64(&self) -> Duration {
        self.t1.saturating_mul(64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instant_arithmetic_saturates() {
        let t = Instant::from_millis(1500);
        assert_eq!(t.as_nanos(), 1_500_000_000);
        assert_eq!(t + Duration::from_millis(500), Instant::from_millis(2000));
        assert_eq!(Instant::from_millis(2000) - t, Duration::from_millis(500));
        assert_eq!(t - Instant::from_millis(2000), Duration::ZERO);
        assert_eq!(
            Instant::from_nanos(u64::MAX - 1) + Duration::from_secs(1),
            Instant::from_nanos(u64::MAX)
        );
        assert_eq!(
            Instant::from_duration(Duration::from_secs(u64::MAX)),
            Instant::from_nanos(u64::MAX)
        );
    }

    #[test]
    fn config_validation() {
        assert_eq!(Config::default().validate(), Ok(()));
        assert_eq!(Config::default().t1_x64(), Duration::from_secs(32));
        let zero = Config::with_timers(Duration::ZERO, Duration::from_secs(4), Duration::ZERO);
        assert_eq!(zero.validate(), Err(ConfigError::ZeroT1));
        let low = Config::with_timers(
            Duration::from_secs(2),
            Duration::from_secs(1),
            Duration::ZERO,
        );
        assert_eq!(low.validate(), Err(ConfigError::T2BelowT1));
    }
}
