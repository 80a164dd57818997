//! Provisioned vehicles: the public key that verifies what each signs, and
//! the hash of its broker password.

use super::{Store, StoreError};
use rusqlite::{OptionalExtension, params};

/// One provisioned vehicle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VehicleRow {
    /// Client id.
    pub client: String,
    /// ed25519 public key, hex.
    pub public_key: String,
    /// BLAKE3 of the broker password, hex.
    pub password_hash: String,
    /// When it was provisioned (Unix ms).
    pub created_ms: u64,
    /// After a key rotation: the previous public key (hex) and until when
    /// (Unix ms) what it signed still counts.
    pub previous_key: Option<(String, u64)>,
}

impl Store {
    /// Records (or, with `replace`, re-keys) a vehicle; `false` when it
    /// exists and `replace` is off.
    pub fn add_vehicle(&self, row: &VehicleRow, replace: bool) -> Result<bool, StoreError> {
        let verb = if replace {
            "INSERT OR REPLACE"
        } else {
            "INSERT OR IGNORE"
        };
        let n = self.conn.execute(
            &format!(
                "{verb} INTO vehicles (client, public_key, password_hash, created_ms) VALUES (?1, ?2, ?3, ?4)"
            ),
            params![row.client, row.public_key, row.password_hash, row.created_ms as i64],
        )?;
        Ok(n == 1)
    }

    /// Every provisioned vehicle, by id.
    pub fn vehicles(&self) -> Result<Vec<VehicleRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT client, public_key, password_hash, created_ms, previous_key, previous_until_ms
             FROM vehicles ORDER BY client",
        )?;
        let rows = stmt
            .query_map([], |r| {
                let previous: Option<String> = r.get(4)?;
                let until: Option<i64> = r.get(5)?;
                Ok(VehicleRow {
                    client: r.get(0)?,
                    public_key: r.get(1)?,
                    password_hash: r.get(2)?,
                    created_ms: r.get::<_, i64>(3)? as u64,
                    previous_key: previous.zip(until.map(|u| u.max(0) as u64)),
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Rotates a vehicle's key: `public_key` (hex) becomes its key, and the
    /// one it had is trusted until `until_ms` (`false`: no such vehicle).
    /// Its broker password stays.
    pub fn rotate_vehicle_key(
        &self,
        client: &str,
        public_key: &str,
        until_ms: u64,
    ) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "UPDATE vehicles SET previous_key = public_key, previous_until_ms = ?3,
                 public_key = ?2 WHERE client = ?1",
            params![client, public_key, until_ms as i64],
        )?;
        Ok(n == 1)
    }

    /// The password hash of one vehicle; `None` also for a blocked one.
    pub fn vehicle_password_hash(&self, client: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT password_hash FROM vehicles WHERE client = ?1 AND blocked_ms IS NULL",
                [client],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Blocks a provisioned vehicle: its key and broker login stop
    /// working (`false`: no such vehicle). Provisioning it again with
    /// `--replace` gives it new credentials and lifts the block.
    pub fn block_vehicle(
        &self,
        client: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "UPDATE vehicles SET blocked_ms = ?2, blocked_reason = ?3 WHERE client = ?1",
            params![client, now_ms as i64, reason],
        )?;
        Ok(n == 1)
    }

    /// Lifts a block (`false`: no such vehicle).
    pub fn unblock_vehicle(&self, client: &str) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "UPDATE vehicles SET blocked_ms = NULL, blocked_reason = NULL WHERE client = ?1",
            [client],
        )?;
        Ok(n == 1)
    }

    /// Blocked vehicles: id, when (Unix ms) and why.
    pub fn blocked_vehicles(&self) -> Result<Vec<(String, u64, String)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT client, blocked_ms, COALESCE(blocked_reason, '') FROM vehicles
             WHERE blocked_ms IS NOT NULL ORDER BY client",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
