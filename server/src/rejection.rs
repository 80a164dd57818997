//! Everything the server refuses, in one place: a typed [`Rejection`] per
//! reason, counted by reason, recorded in the store and logged at most once
//! a minute per (vehicle, reason). The keyring, the aligner and the
//! coordinator all refuse through here.

use convoy_store::Store;
use std::collections::BTreeMap;
use std::fmt;

/// Counts of rejected messages by reason, since start.
pub type RejectionCounts = BTreeMap<String, u64>;

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    /// It did not decode: envelope, chunk, codec or parameter error, with
    /// that layer's own reason.
    Decode {
        /// Stable reason, e.g. `bad_crc`.
        reason: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// It names another client than its topic.
    ClientMismatch(&'static str),
    /// The update is relative to another model version.
    WrongBase,
    /// The client was not selected this round.
    NotSelected,
    /// A round that has not started.
    WrongRound(u64),
    /// Asynchronous rounds: trained on a model too many versions old.
    Stale {
        /// Versions between its model and the current one.
        staleness: u64,
        /// `rounds.max_staleness`.
        bound: u64,
    },
    /// The update uses another codec than the round asked for.
    WrongCodec {
        /// Codec of the update.
        got: String,
        /// Codec of the round.
        want: String,
    },
    /// The claimed sample count is 0 or absurd.
    BadSamples(u64),
    /// More samples than the vehicle declared, or than `rounds.max_samples`.
    TooManySamples {
        /// claimed
        claimed: u64,
        /// the bound
        bound: u64,
    },
    /// The same encoded update another vehicle already sent this round.
    Copied(String),
    /// From a client id no vehicle was provisioned with.
    UnknownVehicle,
    /// A status not newer than the last one of its session.
    Replayed,
    /// Two live processes share one vehicle's identity.
    DuplicateIdentity,
    /// Someone else published on the round topic.
    ForgedAnnouncement,
    /// Training statistics are NaN, infinite or negative.
    NonFiniteStats,
    /// A fetch for a version that is not the current one.
    UnknownVersion,
    /// The update names a head the model does not have.
    UnknownHead(u32),
    /// It decoded, but what it says cannot be used (a schema or statistics
    /// that fail their checks, an answer to another alignment).
    Invalid {
        /// Stable reason, e.g. `bad_schema`.
        reason: &'static str,
        /// What was wrong.
        detail: String,
    },
}

impl Rejection {
    /// A decode failure with its layer's reason.
    pub fn decode(reason: &'static str, detail: impl fmt::Display) -> Self {
        Rejection::Decode {
            reason,
            detail: detail.to_string(),
        }
    }

    /// Decoded but unusable content, with a stable reason.
    pub fn invalid(reason: &'static str, detail: impl fmt::Display) -> Self {
        Rejection::Invalid {
            reason,
            detail: detail.to_string(),
        }
    }

    /// The stable reason recorded and counted.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Decode { reason, .. } | Rejection::Invalid { reason, .. } => reason,
            Rejection::ClientMismatch(_) => "client_mismatch",
            Rejection::WrongBase => "wrong_base",
            Rejection::NotSelected => "not_selected",
            Rejection::WrongRound(_) => "wrong_round",
            Rejection::Stale { .. } => "stale",
            Rejection::WrongCodec { .. } => "wrong_codec",
            Rejection::BadSamples(_) => "bad_samples",
            Rejection::TooManySamples { .. } => "too_many_samples",
            Rejection::Copied(_) => "copied",
            Rejection::UnknownVehicle => "unknown_vehicle",
            Rejection::Replayed => "replayed",
            Rejection::DuplicateIdentity => "duplicate_identity",
            Rejection::ForgedAnnouncement => "forged_announcement",
            Rejection::NonFiniteStats => "non_finite",
            Rejection::UnknownVersion => "unknown_version",
            Rejection::UnknownHead(_) => "unknown_head",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Decode { detail, .. } | Rejection::Invalid { detail, .. } => {
                f.write_str(detail)
            }
            Rejection::ClientMismatch(what) => f.write_str(what),
            Rejection::WrongBase => f.write_str("update is relative to another model version"),
            Rejection::NotSelected => f.write_str("client was not selected this round"),
            Rejection::WrongRound(round) => write!(f, "round {round} has not started"),
            Rejection::Stale { staleness, bound } => write!(
                f,
                "trained on a model {staleness} versions old, over rounds.max_staleness {bound}"
            ),
            Rejection::WrongCodec { got, want } => {
                write!(f, "update uses {got}, the round asked for {want}")
            }
            Rejection::BadSamples(n) => write!(f, "sample count {n} out of range"),
            Rejection::TooManySamples { claimed, bound } => write!(
                f,
                "claims {claimed} samples, more than the {bound} its vehicle declared or rounds.max_samples allows"
            ),
            Rejection::Copied(of) => write!(
                f,
                "the same update {of} sent this round: a copy earns no weight"
            ),
            Rejection::UnknownVehicle => f.write_str(
                "no vehicle with this id is provisioned (convoy-server provision); message ignored",
            ),
            Rejection::Replayed => f.write_str("status is not newer than one already seen (replayed)"),
            Rejection::DuplicateIdentity => f.write_str(
                "two agent processes are using this vehicle's identity; give each vehicle its own client_id and keys",
            ),
            Rejection::ForgedAnnouncement => f.write_str(
                "a message on the round or align topic that the server did not publish; replaced",
            ),
            Rejection::NonFiniteStats => f.write_str("training stats are not finite"),
            Rejection::UnknownVersion => f.write_str("fetch for a version that is not current"),
            Rejection::UnknownHead(head) => write!(f, "update trained head {head}, which the model does not have"),
        }
    }
}

/// Rejections counted since start, and the rate limit on their warnings.
#[derive(Debug, Default)]
pub struct Rejections {
    counts: RejectionCounts,
    warnings: WarningLimiter,
}

impl Rejections {
    /// Starts from `counts` (what an earlier stage counted).
    pub fn from_counts(counts: RejectionCounts) -> Self {
        Self {
            counts,
            warnings: WarningLimiter::default(),
        }
    }

    /// Counts by reason.
    pub fn counts(&self) -> &RejectionCounts {
        &self.counts
    }

    /// Counts `why`, records it in `store` and logs it (rate-limited).
    pub fn reject(
        &mut self,
        store: &Store,
        now_ms: u64,
        round: Option<u64>,
        client: Option<&str>,
        why: &Rejection,
    ) {
        let reason = why.reason();
        *self.counts.entry(reason.to_string()).or_default() += 1;
        let detail = why.to_string();
        let minute = now_ms / 60_000;
        if let Some(suppressed) = self.warnings.admit(client.unwrap_or(""), reason, minute) {
            tracing::warn!(
                ?round,
                client,
                reason,
                detail,
                suppressed,
                "message rejected"
            );
        }
        if let Err(e) = store.record_rejection(round, client, reason, &detail, now_ms) {
            tracing::error!(error = %e, "cannot record rejection");
        }
    }
}

/// One warning per (client, reason) a minute, however many messages are
/// rejected; the next warning says how many were not logged.
#[derive(Debug, Default)]
struct WarningLimiter {
    /// Per (client, reason): the minute of its last warning and the
    /// rejections since.
    seen: std::collections::HashMap<(String, &'static str), (u64, u64)>,
}

impl WarningLimiter {
    /// Keys kept before the table starts afresh (bounds memory under a
    /// flood of made-up client ids).
    const MAX_KEYS: usize = 10_000;

    /// `Some(suppressed since the last warning)` when this one is logged.
    fn admit(&mut self, client: &str, reason: &'static str, minute: u64) -> Option<u64> {
        let key = (client.to_string(), reason);
        if self.seen.len() >= Self::MAX_KEYS && !self.seen.contains_key(&key) {
            self.seen.clear();
        }
        let entry = self.seen.entry(key).or_insert((u64::MAX, 0));
        if entry.0 == minute {
            entry.1 += 1;
            return None;
        }
        let suppressed = std::mem::take(&mut entry.1);
        entry.0 = minute;
        Some(suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_vehicle_and_reason_a_minute_then_the_count_suppressed() {
        let mut limiter = WarningLimiter::default();
        assert_eq!(limiter.admit("car-1", "bad_crc", 7), Some(0));
        assert_eq!(limiter.admit("car-1", "bad_crc", 7), None);
        assert_eq!(limiter.admit("car-1", "bad_crc", 7), None);
        assert_eq!(limiter.admit("car-2", "bad_crc", 7), Some(0));
        assert_eq!(limiter.admit("car-1", "bad_crc", 8), Some(2));
    }
}
