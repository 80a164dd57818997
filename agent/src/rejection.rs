//! What the vehicle refuses, counted by reason, with at most one warning a
//! minute per (message, reason): someone flooding a vehicle with forged
//! receipts fills no disk with log lines.

use crate::inbound::Refused;
use std::collections::BTreeMap;

/// Refusals since start, and the rate limit on their warnings.
#[derive(Debug, Default)]
pub struct Rejections {
    /// Count by (what, reason).
    counts: BTreeMap<(&'static str, &'static str), u64>,
    /// Per (what, reason): the minute of the last warning and the
    /// refusals since.
    warned: BTreeMap<(&'static str, &'static str), (u64, u64)>,
}

impl Rejections {
    /// Counts `refused` and logs it unless a warning for the same message
    /// kind and reason went out this minute (`now_ms` / 60 000).
    pub fn refuse(&mut self, refused: &Refused, now_ms: u64) {
        let key = (refused.what, refused.error.reason());
        *self.counts.entry(key).or_default() += 1;
        let minute = now_ms / 60_000;
        let entry = self.warned.entry(key).or_insert((u64::MAX, 0));
        if entry.0 == minute {
            entry.1 += 1;
            return;
        }
        let suppressed = std::mem::take(&mut entry.1);
        entry.0 = minute;
        tracing::warn!(
            what = refused.what,
            reason = key.1,
            error = %refused.error,
            suppressed,
            "message refused"
        );
    }

    /// Refusals of `what` for `reason` so far.
    pub fn count(&self, what: &str, reason: &str) -> u64 {
        self.counts
            .iter()
            .filter(|((w, r), _)| *w == what && *r == reason)
            .map(|(_, n)| n)
            .sum()
    }

    /// Refusals so far, all reasons.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use convoy_shared::wire::WireError;

    fn forged() -> Refused {
        Refused {
            what: "receipt",
            error: WireError::BadMagic(*b"junk"),
        }
    }

    #[test]
    fn every_refusal_counts_and_one_warning_a_minute_is_logged() {
        let mut r = Rejections::default();
        for i in 0..5_000 {
            r.refuse(&forged(), 1_000 + i);
        }
        assert_eq!(r.count("receipt", "bad_magic"), 5_000);
        assert_eq!(r.total(), 5_000);
        let (minute, suppressed) = r.warned[&("receipt", "bad_magic")];
        assert_eq!((minute, suppressed), (0, 4_999));
        r.refuse(&forged(), 61_000);
        assert_eq!(r.warned[&("receipt", "bad_magic")], (1, 0));
    }
}
