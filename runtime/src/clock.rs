//! Time behind a trait: the state machines ask a [`Clock`] instead of the
//! system, so deadlines and ack timeouts can be tested with a clock that
//! only moves when the test says so (or with `tokio::time::pause`).

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Wall-clock and monotonic time.
pub trait Clock: Send + Sync + Debug {
    /// Unix time in milliseconds (deadlines exchanged with other machines).
    fn now_ms(&self) -> u64;
    /// Monotonic time (local timeouts); tokio's, so `tokio::time::pause`
    /// governs it.
    fn instant(&self) -> Instant;
}

/// A shareable clock.
pub type SharedClock = Arc<dyn Clock>;

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        now_ms()
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// Current Unix time in milliseconds (0 if the system clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A clock that moves only when told to: for unit tests of timeouts.
#[derive(Debug)]
pub struct ManualClock {
    start_ms: u64,
    start: Instant,
    elapsed_ms: AtomicU64,
}

impl ManualClock {
    /// A clock reading `start_ms` on the wall.
    pub fn new(start_ms: u64) -> Arc<Self> {
        Arc::new(Self {
            start_ms,
            start: Instant::now(),
            elapsed_ms: AtomicU64::new(0),
        })
    }

    /// Moves both readings forward.
    pub fn advance(&self, by: Duration) {
        self.elapsed_ms
            .fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.start_ms + self.elapsed_ms.load(Ordering::SeqCst)
    }

    fn instant(&self) -> Instant {
        self.start + Duration::from_millis(self.elapsed_ms.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(1_000);
        let t0 = clock.instant();
        assert_eq!(clock.now_ms(), 1_000);
        clock.advance(Duration::from_secs(2));
        assert_eq!(clock.now_ms(), 3_000);
        assert_eq!(clock.instant() - t0, Duration::from_secs(2));
    }
}
