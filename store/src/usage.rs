//! Per-vehicle figures across the ledger and the data each vehicle used
//! per UTC day and month: what the dashboard, the HTTP API, `report
//! --vehicles` and the data budgets read.

use super::rows::{LEDGER_COLUMNS, ROUND_COLUMNS, client_from_sql, round_from_sql};
use super::{ClientRow, RoundRow, RoundStatus, Store, StoreError, iso8601};
use rusqlite::params;
use serde::{Deserialize, Serialize};

const DAY_MS: u64 = 86_400_000;

/// Start (Unix ms) of the UTC day holding `ms`.
pub fn day_start_ms(ms: u64) -> u64 {
    ms - ms % DAY_MS
}

/// Start (Unix ms) of the UTC calendar month holding `ms`.
pub fn month_start_ms(ms: u64) -> u64 {
    let (year, month, _) = civil_from_days((ms / DAY_MS) as i64);
    days_from_civil(year, month, 1) as u64 * DAY_MS
}

/// (year, month 1-12, day 1-31) of days since 1970-01-01 (H. Hinnant).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Days since 1970-01-01 of a civil date (H. Hinnant).
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// One vehicle across the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct VehicleSummary {
    /// Client id.
    pub client: String,
    /// Rounds it has a ledger row in (selected, or skipped for its budget).
    pub rounds: u64,
    /// Updates folded in.
    pub accepted: u64,
    /// Updates refused.
    pub rejected: u64,
    /// Updates that came after their round closed.
    pub late: u64,
    /// Rounds it reported it could not serve.
    pub failed: u64,
    /// Selected rounds it sent nothing for.
    pub dropped: u64,
    /// Rounds it sat out for its data budget.
    pub skipped: u64,
    /// Accepted update payload bytes.
    pub bytes_up: u64,
    /// Model payload bytes sent to it.
    pub bytes_down: u64,
    /// MQTT bytes it sent, framing and re-sends included.
    pub wire_bytes_up: u64,
    /// MQTT bytes sent to it.
    pub wire_bytes_down: u64,
    /// Training seconds it reported.
    pub train_seconds: f64,
    /// Its newest round in the ledger.
    pub last_round: Option<u64>,
    /// When it last sent a status (ISO-8601 UTC).
    pub last_seen: Option<String>,
    /// Training device and backend of its newest update.
    pub device: Option<String>,
    /// Model version it last said it holds (hex).
    pub model_version: Option<String>,
    /// Messages of its the server rejected (any reason).
    pub rejections: u64,
    /// Its ledger rows the server flagged as suspected (clipped, capped,
    /// far from the round's aggregate, a copy).
    pub suspected: u64,
    /// Blocked by the operator (`convoy-server vehicles block`).
    pub blocked: bool,
    /// MQTT bytes (up + down) in the current UTC day.
    pub bytes_today: u64,
    /// MQTT bytes (up + down) in the current UTC month.
    pub bytes_this_month: u64,
    /// The daily cap, bytes (none: no cap).
    pub daily_cap: Option<u64>,
    /// The monthly cap, bytes.
    pub monthly_cap: Option<u64>,
    /// The larger of today's and this month's use over its cap (none: no caps).
    pub budget_used: Option<f64>,
}

/// Data one vehicle used in the current day and month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// MQTT bytes up + down since the UTC day began.
    pub today: u64,
    /// MQTT bytes up + down since the UTC month began.
    pub month: u64,
}

impl Store {
    /// MQTT bytes (up + down) each vehicle used in rounds that started at
    /// or after `day_start_ms(now)` and `month_start_ms(now)`.
    pub fn usage(
        &self,
        now_ms: u64,
    ) -> Result<std::collections::HashMap<String, Usage>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT l.client,
                SUM(CASE WHEN r.started_ms >= ?1 THEN l.wire_bytes_up + l.wire_bytes_down ELSE 0 END),
                SUM(l.wire_bytes_up + l.wire_bytes_down)
             FROM ledger l JOIN rounds r ON r.round = l.round
             WHERE r.started_ms >= ?2 GROUP BY l.client",
        )?;
        let rows = stmt.query_map(
            params![day_start_ms(now_ms) as i64, month_start_ms(now_ms) as i64],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Usage {
                        today: r.get::<_, i64>(1)? as u64,
                        month: r.get::<_, i64>(2)? as u64,
                    },
                ))
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every vehicle the ledger, the inventory or the provisioning table
    /// knows, by id, with its budget use against `caps` (daily, monthly).
    pub fn vehicle_summaries(
        &self,
        now_ms: u64,
        caps: (Option<u64>, Option<u64>),
    ) -> Result<Vec<VehicleSummary>, StoreError> {
        let mut by_id: std::collections::BTreeMap<String, VehicleSummary> = Default::default();
        let mut stmt = self.conn.prepare(
            "SELECT client, COUNT(*),
                SUM(status = 'accepted'), SUM(status = 'rejected'), SUM(status = 'late'),
                SUM(status = 'failed'), SUM(status = 'dropped'), SUM(status = 'skipped'),
                SUM(bytes_up), SUM(bytes_down), SUM(wire_bytes_up), SUM(wire_bytes_down),
                SUM(train_seconds), MAX(round),
                (SELECT device FROM ledger d WHERE d.client = l.client AND d.device != ''
                 ORDER BY d.round DESC LIMIT 1),
                SUM(suspect IS NOT NULL)
             FROM ledger l GROUP BY client",
        )?;
        let rows = stmt.query_map([], |r| {
            let n = |i: usize| r.get::<_, i64>(i).map(|v| v as u64);
            Ok(VehicleSummary {
                client: r.get(0)?,
                rounds: n(1)?,
                accepted: n(2)?,
                rejected: n(3)?,
                late: n(4)?,
                failed: n(5)?,
                dropped: n(6)?,
                skipped: n(7)?,
                bytes_up: n(8)?,
                bytes_down: n(9)?,
                wire_bytes_up: n(10)?,
                wire_bytes_down: n(11)?,
                train_seconds: r.get(12)?,
                last_round: r.get::<_, Option<i64>>(13)?.map(|v| v as u64),
                device: r.get(14)?,
                suspected: n(15)?,
                ..Default::default()
            })
        })?;
        for row in rows {
            let row = row?;
            by_id.insert(row.client.clone(), row);
        }
        let named = |by_id: &mut std::collections::BTreeMap<String, VehicleSummary>, id: &str| {
            by_id.entry(id.to_string()).or_default();
        };
        for v in self.vehicles()? {
            named(&mut by_id, &v.client);
        }
        for (client, ..) in self.blocked_vehicles()? {
            if let Some(s) = by_id.get_mut(&client) {
                s.blocked = true;
            }
        }
        for (client, version, _since, seen) in self.inventory()? {
            named(&mut by_id, &client);
            if let Some(s) = by_id.get_mut(&client) {
                s.model_version = Some(version);
                s.last_seen = Some(iso8601(seen));
            }
        }
        let mut stmt = self.conn.prepare(
            "SELECT client, SUM(count) FROM rejection_counts WHERE client != '' GROUP BY client",
        )?;
        let rejected = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })?;
        for row in rejected {
            let (client, n) = row?;
            if let Some(s) = by_id.get_mut(&client) {
                s.rejections = n;
            }
        }
        let usage = self.usage(now_ms)?;
        let (daily, monthly) = caps;
        Ok(by_id
            .into_iter()
            .map(|(id, mut s)| {
                s.client = id;
                let used = usage.get(&s.client).copied().unwrap_or_default();
                s.bytes_today = used.today;
                s.bytes_this_month = used.month;
                s.daily_cap = daily;
                s.monthly_cap = monthly;
                s.budget_used = budget_share(used, caps);
                s
            })
            .collect())
    }

    /// One vehicle's ledger rows, oldest round first.
    pub fn vehicle_rows(&self, client: &str) -> Result<Vec<ClientRow>, StoreError> {
        let sql = format!("SELECT {LEDGER_COLUMNS} FROM ledger WHERE client = ?1 ORDER BY round");
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([client], client_from_sql)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Rounds that started at or after `since_ms`, oldest first; only the
    /// newest `last` of them when given.
    pub fn rounds_window(
        &self,
        since_ms: Option<u64>,
        last: Option<u64>,
    ) -> Result<Vec<RoundRow>, StoreError> {
        let sql = format!(
            "SELECT {ROUND_COLUMNS} FROM (SELECT * FROM rounds WHERE started_ms >= ?1
             ORDER BY round DESC LIMIT ?2) ORDER BY round"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let limit = last.map_or(-1, |n| n.min(i64::MAX as u64) as i64);
        let rows = stmt.query_map(
            params![since_ms.unwrap_or(0).min(i64::MAX as u64) as i64, limit],
            round_from_sql,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One round, if it exists.
    pub fn round(&self, round: u64) -> Result<Option<RoundRow>, StoreError> {
        use rusqlite::OptionalExtension;
        let sql = format!("SELECT {ROUND_COLUMNS} FROM rounds WHERE round = ?1");
        Ok(self
            .conn
            .query_row(&sql, [round as i64], round_from_sql)
            .optional()?)
    }
}

/// Sums over every round in the ledger, in SQL (what `/metrics` exports as
/// counters, at any ledger size).
#[derive(Debug, Clone, Default)]
pub struct LedgerTotals {
    /// Rounds per status.
    pub by_status: Vec<(RoundStatus, u64)>,
    /// The newest round's number.
    pub newest_round: Option<u64>,
    /// Every count, byte and second column summed (other fields default).
    pub sums: RoundRow,
    /// The newest closed round.
    pub last_closed: Option<RoundRow>,
    /// The newest server-side accuracy and RMSE.
    pub accuracy: Option<f64>,
    /// See `accuracy`.
    pub rmse: Option<f64>,
    /// Closed rounds lasting at most each bound (seconds), cumulative.
    pub duration_buckets: Vec<u64>,
    /// Summed duration of closed rounds, seconds.
    pub duration_sum: f64,
    /// Closed rounds with a duration.
    pub duration_count: u64,
    /// Versions stored.
    pub versions: u64,
}

impl LedgerTotals {
    /// Rounds with `status`.
    pub fn count(&self, status: RoundStatus) -> u64 {
        self.by_status
            .iter()
            .filter(|(s, _)| *s == status)
            .map(|(_, n)| n)
            .sum()
    }

    /// Rounds of any status.
    pub fn rounds(&self) -> u64 {
        self.by_status.iter().map(|(_, n)| n).sum()
    }

    /// Rounds no longer open.
    pub fn closed(&self) -> u64 {
        self.rounds() - self.count(RoundStatus::Open)
    }
}

impl Store {
    /// `limit` rounds from the `offset`-th, oldest first, and how many
    /// rounds there are.
    pub fn rounds_page(&self, offset: u64, limit: u64) -> Result<(u64, Vec<RoundRow>), StoreError> {
        let total: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM rounds", [], |r| r.get(0))?;
        let sql = format!("SELECT {ROUND_COLUMNS} FROM rounds ORDER BY round LIMIT ?1 OFFSET ?2");
        let mut stmt = self.conn.prepare(&sql)?;
        let cap = |v: u64| v.min(i64::MAX as u64) as i64;
        let rows = stmt.query_map(params![cap(limit), cap(offset)], round_from_sql)?;
        Ok((total as u64, rows.collect::<Result<_, _>>()?))
    }

    /// [`LedgerTotals`], with a duration histogram over `bounds` (seconds).
    pub fn ledger_totals(&self, bounds: &[f64]) -> Result<LedgerTotals, StoreError> {
        let mut totals = LedgerTotals::default();
        let mut stmt = self
            .conn
            .prepare("SELECT status, COUNT(*) FROM rounds GROUP BY status")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        totals.by_status = rows.collect::<Result<_, _>>()?;
        totals.sums = self.conn.query_row(
            "SELECT MAX(round), COALESCE(SUM(clients_selected), 0), COALESCE(SUM(clients_reported), 0),
                COALESCE(SUM(clients_late), 0), COALESCE(SUM(clients_failed), 0),
                COALESCE(SUM(bytes_up), 0), COALESCE(SUM(bytes_down), 0),
                COALESCE(SUM(wire_bytes_up), 0), COALESCE(SUM(wire_bytes_down), 0),
                COALESCE(SUM(bytes_up_raw), 0), COALESCE(SUM(bytes_down_raw), 0),
                COALESCE(SUM(train_seconds_sum), 0), COALESCE(SUM(decode_seconds), 0)
             FROM rounds",
            [],
            |r| {
                let n = |i: usize| r.get::<_, i64>(i).map(|v| v as u64);
                Ok(RoundRow {
                    round: r.get::<_, Option<i64>>(0)?.unwrap_or(0) as u64,
                    clients_selected: n(1)?,
                    clients_reported: n(2)?,
                    clients_late: n(3)?,
                    clients_failed: n(4)?,
                    bytes_up: n(5)?,
                    bytes_down: n(6)?,
                    wire_bytes_up: n(7)?,
                    wire_bytes_down: n(8)?,
                    bytes_up_raw: n(9)?,
                    bytes_down_raw: n(10)?,
                    train_seconds_sum: r.get(11)?,
                    decode_seconds: r.get(12)?,
                    ..Default::default()
                })
            },
        )?;
        totals.newest_round = (totals.sums.round > 0).then_some(totals.sums.round);
        use rusqlite::OptionalExtension;
        let sql = format!(
            "SELECT {ROUND_COLUMNS} FROM rounds WHERE status != 'open' ORDER BY round DESC LIMIT 1"
        );
        totals.last_closed = self.conn.query_row(&sql, [], round_from_sql).optional()?;
        let newest = |column: &str| -> Result<Option<f64>, StoreError> {
            Ok(self
                .conn
                .query_row(
                    &format!(
                        "SELECT {column} FROM rounds WHERE {column} IS NOT NULL ORDER BY round DESC LIMIT 1"
                    ),
                    [],
                    |r| r.get(0),
                )
                .optional()?)
        };
        totals.accuracy = newest("accuracy")?;
        totals.rmse = newest("rmse")?;
        let buckets: Vec<String> = bounds
            .iter()
            .map(|b| format!("COALESCE(SUM(d <= {}), 0)", (b * 1000.0) as i64))
            .collect();
        let sql = format!(
            "SELECT COUNT(d), COALESCE(SUM(d), 0){}{} FROM (SELECT finished_ms - started_ms AS d
             FROM rounds WHERE status != 'open' AND finished_ms IS NOT NULL)",
            if buckets.is_empty() { "" } else { ", " },
            buckets.join(", ")
        );
        self.conn.query_row(&sql, [], |r| {
            totals.duration_count = r.get::<_, i64>(0)? as u64;
            totals.duration_sum = r.get::<_, i64>(1)? as f64 / 1000.0;
            totals.duration_buckets = (0..bounds.len())
                .map(|i| r.get::<_, i64>(i + 2).map(|v| v as u64))
                .collect::<Result<_, _>>()?;
            Ok(())
        })?;
        totals.versions = self
            .conn
            .query_row("SELECT COUNT(*) FROM versions", [], |r| r.get::<_, i64>(0))?
            as u64;
        Ok(totals)
    }

    /// The newest `n` closed rounds, oldest first (the dashboard's charts).
    pub fn newest_closed_rounds(&self, n: u64) -> Result<Vec<RoundRow>, StoreError> {
        let sql = format!(
            "SELECT {ROUND_COLUMNS} FROM (SELECT * FROM rounds WHERE status != 'open'
             ORDER BY round DESC LIMIT ?1) ORDER BY round"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([n.min(i64::MAX as u64) as i64], round_from_sql)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// The larger of the day's and the month's use over their caps.
pub fn budget_share(used: Usage, (daily, monthly): (Option<u64>, Option<u64>)) -> Option<f64> {
    let share = |used: u64, cap: Option<u64>| cap.map(|c| used as f64 / c.max(1) as f64);
    match (share(used.today, daily), share(used.month, monthly)) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_boundaries_are_utc_days_and_months() {
        // 2026-12-02T15:20:54Z
        let ms = 1_796_224_854_000;
        assert_eq!(iso8601(day_start_ms(ms)), "2026-12-02T00:00:00.000Z");
        assert_eq!(iso8601(month_start_ms(ms)), "2026-12-01T00:00:00.000Z");
        // 2024-02-29 (leap day) is in February
        let leap = days_from_civil(2024, 2, 29) as u64 * DAY_MS + 5;
        assert_eq!(iso8601(month_start_ms(leap)), "2024-02-01T00:00:00.000Z");
        assert_eq!(iso8601(month_start_ms(0)), "1970-01-01T00:00:00.000Z");
        for days in [0, 59, 365, 10_957, 20_789] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn budget_share_takes_the_tighter_cap() {
        let used = Usage {
            today: 50,
            month: 300,
        };
        assert_eq!(budget_share(used, (None, None)), None);
        assert_eq!(budget_share(used, (Some(100), None)), Some(0.5));
        assert_eq!(budget_share(used, (Some(100), Some(1000))), Some(0.5));
        assert_eq!(budget_share(used, (Some(100), Some(200))), Some(1.5));
    }
}
