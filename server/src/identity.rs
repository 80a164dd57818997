//! Who may connect and who signed what: the server's own key pair, the
//! keyring of provisioned vehicles, and `provision`, which creates a
//! vehicle's credentials and key pair and records its public key.
//!
//! A vehicle's broker password is a random 256-bit token, so the store
//! keeps its plain BLAKE3 hash (no slow KDF is needed against guessing).

pub use crate::credentials::{new_password, password_hash, same_digest};
use crate::error::ServerError;
use convoy_shared::identity::{KeyError, PublicKey, SecretKey};
use convoy_shared::topics::TopicId;
use convoy_store::{Store, VehicleRow};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// File names inside one vehicle's provisioning folder.
pub const VEHICLE_KEY: &str = "vehicle.key";
/// The vehicle's public key (for tools that check its status, e.g. `deploy`).
pub const VEHICLE_PUB: &str = "vehicle.pub";
/// The server's public key, installed on every vehicle.
pub const SERVER_PUB: &str = "server.pub";
/// The vehicle's broker password (0600).
pub const BROKER_PASSWORD: &str = "broker-password";

impl From<KeyError> for ServerError {
    fn from(e: KeyError) -> Self {
        ServerError::Config(format!("identity: {e}"))
    }
}

/// The server's key pair at `path`: read, or created on first start (with
/// the public half written beside it as `server.pub`).
pub fn server_key(path: &Path) -> Result<SecretKey, ServerError> {
    if path.exists() {
        return Ok(SecretKey::read(path)?);
    }
    let key = SecretKey::generate();
    key.write_new(path)?;
    key.public().write(&path.with_file_name(SERVER_PUB))?;
    tracing::info!(key = %path.display(), public = %key.public(), "server key pair created");
    Ok(key)
}

/// Is `payload` on `topic` empty (a cleared retained message) or a `T`
/// the server itself signed? Anything else on a topic only the server
/// publishes on is a forgery.
pub fn own_or_empty<T: serde::de::DeserializeOwned>(
    key: &SecretKey,
    kind: convoy_shared::wire::Kind,
    topic: &str,
    payload: &[u8],
) -> bool {
    payload.is_empty()
        || convoy_shared::wire::decode::<T>(
            payload,
            kind,
            usize::MAX,
            topic,
            &key.public(),
            "the server",
        )
        .is_ok()
}

/// Public keys of provisioned vehicles. They are reloaded only when another
/// connection (`convoy-server provision`) has committed to the store since
/// the last load: SQLite's `data_version` says so without reading a table,
/// so a flood of made-up ids costs one pragma each and no reload, and a
/// vehicle provisioned while the server runs is known from its first
/// message. Known keys are re-checked every two seconds, so a re-keyed
/// vehicle (`provision --replace`) is not refused for long.
#[derive(Debug, Default)]
pub struct Keyring {
    keys: HashMap<String, PublicKey>,
    /// Store's data version at the last load.
    version: Option<i64>,
    checked: Option<Instant>,
}

impl Keyring {
    const RECHECK_EVERY: Duration = Duration::from_secs(2);

    /// The keyring as the store holds it now.
    pub fn load(store: &Store) -> Result<Self, ServerError> {
        let mut ring = Self::default();
        ring.reload(store)?;
        Ok(ring)
    }

    fn reload(&mut self, store: &Store) -> Result<(), ServerError> {
        let version = store.data_version()?;
        // a blocked vehicle's key verifies nothing from the moment it is blocked
        let blocked: std::collections::HashSet<String> = store
            .blocked_vehicles()?
            .into_iter()
            .map(|(client, ..)| client)
            .collect();
        self.keys = store
            .vehicles()?
            .into_iter()
            .filter(|v| !blocked.contains(&v.client))
            .filter_map(|v| {
                PublicKey::from_hex(&v.public_key, &v.client)
                    .map_err(|e| tracing::error!(client = %v.client, error = %e, "stored key unreadable"))
                    .ok()
                    .map(|k| (v.client, k))
            })
            .collect();
        self.version = Some(version);
        self.checked = Some(Instant::now());
        Ok(())
    }

    /// Reloads when the store changed since the last load.
    fn refresh(&mut self, store: &Store) {
        self.checked = Some(Instant::now());
        let changed = match store.data_version() {
            Ok(v) => Some(v) != self.version,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the store's data version");
                false
            }
        };
        if changed && let Err(e) = self.reload(store) {
            tracing::error!(error = %e, "cannot reload vehicle keys");
        }
    }

    /// The key of `client`, if provisioned.
    pub fn get(&mut self, client: &str, store: &Store) -> Option<PublicKey> {
        let due = self
            .checked
            .is_none_or(|t| t.elapsed() >= Self::RECHECK_EVERY);
        if due || !self.keys.contains_key(client) {
            self.refresh(store);
        }
        self.keys.get(client).copied()
    }

    /// Decodes what `client` must have signed for `topic`; a vehicle that
    /// was never provisioned is refused before its bytes are looked at
    /// further.
    pub fn decode<T: serde::de::DeserializeOwned>(
        &mut self,
        store: &Store,
        client: &str,
        topic: &str,
        payload: &[u8],
        (kind, max): (convoy_shared::wire::Kind, usize),
    ) -> Result<T, crate::rejection::Rejection> {
        use crate::rejection::Rejection;
        let key = self.get(client, store).ok_or(Rejection::UnknownVehicle)?;
        convoy_shared::wire::decode(payload, kind, max, topic, &key, client)
            .map_err(|e| Rejection::decode(e.reason(), e))
    }

    /// No vehicle known.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Vehicles known.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The trusted vehicles' ids, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.keys.keys().cloned().collect();
        ids.sort();
        ids
    }
}

/// One vehicle's credentials, as written by [`provision`].
#[derive(Debug, Clone)]
pub struct Provisioned {
    /// Client id.
    pub client: TopicId,
    /// Folder holding `vehicle.key`, `vehicle.pub`, `server.pub`, `broker-password`.
    pub dir: PathBuf,
    /// Its public key.
    pub public_key: PublicKey,
    /// Its broker password.
    pub password: String,
}

/// Creates credentials and a key pair for each of `ids` under `out/<id>/`,
/// and records each public key and password hash in `store`. A vehicle
/// already provisioned is refused unless `replace` (which re-keys it: its
/// old key and password stop working).
pub fn provision(
    store: &Store,
    server: &PublicKey,
    ids: &[TopicId],
    out: &Path,
    replace: bool,
) -> Result<Vec<Provisioned>, ServerError> {
    let existing: Vec<String> = store.vehicles()?.into_iter().map(|v| v.client).collect();
    if !replace
        && let Some(id) = ids
            .iter()
            .find(|id| existing.iter().any(|e| e == id.as_str()))
    {
        return Err(ServerError::Config(format!(
            "vehicle {id} is already provisioned; pass --replace to re-key it (its old key and password stop working)"
        )));
    }
    let mut done = Vec::with_capacity(ids.len());
    for id in ids {
        let dir = out.join(id.as_str());
        let key = SecretKey::generate();
        let password = new_password();
        if replace {
            for name in [VEHICLE_KEY, BROKER_PASSWORD] {
                let _ = std::fs::remove_file(dir.join(name));
            }
        }
        key.write_new(&dir.join(VEHICLE_KEY))?;
        key.public().write(&dir.join(VEHICLE_PUB))?;
        server.write(&dir.join(SERVER_PUB))?;
        convoy_shared::identity::write_secret_file(&dir.join(BROKER_PASSWORD), &password)?;
        store.add_vehicle(
            &VehicleRow {
                client: id.to_string(),
                public_key: key.public().to_string(),
                password_hash: password_hash(&password),
                created_ms: convoy_runtime::clock::now_ms(),
            },
            true,
        )?;
        done.push(Provisioned {
            client: id.clone(),
            dir,
            public_key: key.public(),
            password,
        });
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provisioning_records_keys_and_refuses_a_second_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.db")).unwrap();
        let server = server_key(&dir.path().join("server.key")).unwrap();
        assert_eq!(
            server_key(&dir.path().join("server.key")).unwrap().public(),
            server.public(),
            "created once, then read"
        );
        let ids: Vec<TopicId> = ["car-1", "car-2"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let out = dir.path().join("out");
        let made = provision(&store, &server.public(), &ids, &out, false).unwrap();
        assert_eq!(made.len(), 2);
        let key = SecretKey::read(&out.join("car-1").join(VEHICLE_KEY)).unwrap();
        assert_eq!(key.public(), made[0].public_key);
        let pass = std::fs::read_to_string(out.join("car-1").join(BROKER_PASSWORD)).unwrap();
        let stored = store.vehicle_password_hash("car-1").unwrap().unwrap();
        assert!(same_digest(&password_hash(pass.trim()), &stored));
        assert!(!same_digest(&password_hash("guess"), &stored));
        let mut ring = Keyring::load(&store).unwrap();
        assert_eq!(ring.get("car-2", &store), Some(made[1].public_key));
        assert_eq!(ring.get("car-9", &store), None);
        // Provisioned by another process while the server runs: known from
        // its first message, with no wait.
        let other = Store::open(&dir.path().join("c.db")).unwrap();
        let late: TopicId = "car-9".parse().unwrap();
        let nine = provision(&other, &server.public(), &[late], &out, false).unwrap();
        assert_eq!(ring.get("car-9", &store), Some(nine[0].public_key));
        assert_eq!(ring.len(), 3);
        let again = provision(&store, &server.public(), &ids[..1], &out, false);
        assert!(again.unwrap_err().to_string().contains("--replace"));
        let rekeyed = provision(&store, &server.public(), &ids[..1], &out, true).unwrap();
        assert_ne!(rekeyed[0].public_key, made[0].public_key);
    }
}
