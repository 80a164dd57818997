//! Who may connect and who signed what: the server's own key pair, the
//! keyring of provisioned vehicles, and `provision`, which creates a
//! vehicle's credentials and key pair and records its public key.
//!
//! A vehicle's broker password is a random 256-bit token, so the store
//! keeps its plain BLAKE3 hash (no slow KDF is needed against guessing).

pub use crate::credentials::{new_password, password_hash, same_digest};
use crate::error::ServerError;
use convoy_shared::identity::{KeyError, PublicKey, SecretKey, Trusted};
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

/// What vehicles should trust for the server whose key is at `path`: the
/// `server.pub` beside it (with the previous key, after a rotation) when it
/// names this key, else this key alone.
pub fn server_trusted(key: &SecretKey, path: &Path) -> Trusted {
    match Trusted::read(&path.with_file_name(SERVER_PUB)) {
        Ok(t) if t.current == key.public() => t,
        _ => key.public().into(),
    }
}

/// Rotates the server's key pair at `path`: a new key takes its place (the
/// old one is kept as `<path>.previous`), and `server.pub` beside it names
/// the new key and trusts the old one until `until_ms`. A running server
/// signs with the new key from its next start; install the new
/// `server.pub` on the vehicles first (it trusts both).
pub fn rotate_server_key(path: &Path, until_ms: u64) -> Result<Trusted, ServerError> {
    let old = SecretKey::read(path)?;
    let new = SecretKey::generate();
    let staged = path.with_extension("next");
    let _ = std::fs::remove_file(&staged);
    new.write_new(&staged)?;
    let previous = path.with_extension("previous");
    let io = |e: std::io::Error| ServerError::Config(format!("rotating {}: {e}", path.display()));
    let _ = std::fs::remove_file(&previous);
    // the old key stays at `path` until the new one replaces it in one step
    std::fs::hard_link(path, &previous).map_err(io)?;
    std::fs::rename(&staged, path).map_err(io)?;
    let trusted = Trusted {
        current: new.public(),
        previous: Some((old.public(), until_ms)),
    };
    trusted.write(&path.with_file_name(SERVER_PUB))?;
    tracing::info!(key = %path.display(), public = %new.public(), "server key rotated");
    Ok(trusted)
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
    keys: HashMap<String, Trusted>,
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
                let unreadable =
                    |e: KeyError| tracing::error!(client = %v.client, error = %e, "stored key unreadable");
                let current = PublicKey::from_hex(&v.public_key, &v.client)
                    .map_err(unreadable)
                    .ok()?;
                let previous = v.previous_key.as_ref().and_then(|(hex, until)| {
                    PublicKey::from_hex(hex, &v.client)
                        .map_err(unreadable)
                        .ok()
                        .map(|k| (k, *until))
                });
                Some((v.client, Trusted { current, previous }))
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

    /// The keys of `client`, if provisioned.
    pub fn get(&mut self, client: &str, store: &Store) -> Option<Trusted> {
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
        let now = convoy_runtime::clock::now_ms();
        convoy_shared::wire::decode_trusted(payload, kind, max, topic, &key, now, client)
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

/// A new vehicle key pair in `dir` (`vehicle.key`, which must not exist
/// yet, and `vehicle.pub`), with the server's keys beside it (`server.pub`).
fn new_key_pair(dir: &Path, server: &Trusted) -> Result<SecretKey, ServerError> {
    let key = SecretKey::generate();
    key.write_new(&dir.join(VEHICLE_KEY))?;
    key.public().write(&dir.join(VEHICLE_PUB))?;
    server.write(&dir.join(SERVER_PUB))?;
    Ok(key)
}

/// Rotates the keys of the provisioned vehicles `ids`: each gets a new key
/// pair under `out/<id>/` (`vehicle.key`, `vehicle.pub`, and `server.pub`
/// again), its broker password stays, and what its old key signed counts
/// until `until_ms`. Install the new `vehicle.key`; an update the vehicle
/// signed before is still accepted during the overlap.
pub fn rotate_vehicles(
    store: &Store,
    server: &Trusted,
    ids: &[TopicId],
    out: &Path,
    until_ms: u64,
) -> Result<Vec<Provisioned>, ServerError> {
    let existing: Vec<String> = store.vehicles()?.into_iter().map(|v| v.client).collect();
    if let Some(id) = ids
        .iter()
        .find(|id| !existing.iter().any(|e| e == id.as_str()))
    {
        return Err(ServerError::Config(format!(
            "vehicle {id} is not provisioned: `convoy-server provision {id}` first"
        )));
    }
    let mut done = Vec::with_capacity(ids.len());
    for id in ids {
        let dir = out.join(id.as_str());
        let _ = std::fs::remove_file(dir.join(VEHICLE_KEY));
        let key = new_key_pair(&dir, server)?;
        store.rotate_vehicle_key(id.as_str(), &key.public().to_string(), until_ms)?;
        let password = std::fs::read_to_string(dir.join(BROKER_PASSWORD))
            .map(|p| p.trim().to_string())
            .unwrap_or_default();
        done.push(Provisioned {
            client: id.clone(),
            dir,
            public_key: key.public(),
            password,
        });
    }
    Ok(done)
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
    server: &Trusted,
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
        let password = new_password();
        if replace {
            for name in [VEHICLE_KEY, BROKER_PASSWORD] {
                let _ = std::fs::remove_file(dir.join(name));
            }
        }
        let key = new_key_pair(&dir, server)?;
        convoy_shared::identity::write_secret_file(&dir.join(BROKER_PASSWORD), &password)?;
        store.add_vehicle(
            &VehicleRow {
                client: id.to_string(),
                public_key: key.public().to_string(),
                password_hash: password_hash(&password),
                created_ms: convoy_runtime::clock::now_ms(),
                previous_key: None,
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
        let made = provision(&store, &server.public().into(), &ids, &out, false).unwrap();
        assert_eq!(made.len(), 2);
        let key = SecretKey::read(&out.join("car-1").join(VEHICLE_KEY)).unwrap();
        assert_eq!(key.public(), made[0].public_key);
        let pass = std::fs::read_to_string(out.join("car-1").join(BROKER_PASSWORD)).unwrap();
        let stored = store.vehicle_password_hash("car-1").unwrap().unwrap();
        assert!(same_digest(&password_hash(pass.trim()), &stored));
        assert!(!same_digest(&password_hash("guess"), &stored));
        let mut ring = Keyring::load(&store).unwrap();
        assert_eq!(ring.get("car-2", &store), Some(made[1].public_key.into()));
        assert_eq!(ring.get("car-9", &store), None);
        // Provisioned by another process while the server runs: known from
        // its first message, with no wait.
        let other = Store::open(&dir.path().join("c.db")).unwrap();
        let late: TopicId = "car-9".parse().unwrap();
        let nine = provision(&other, &server.public().into(), &[late], &out, false).unwrap();
        assert_eq!(ring.get("car-9", &store), Some(nine[0].public_key.into()));
        assert_eq!(ring.len(), 3);
        let again = provision(&store, &server.public().into(), &ids[..1], &out, false);
        assert!(again.unwrap_err().to_string().contains("--replace"));
        let rekeyed = provision(&store, &server.public().into(), &ids[..1], &out, true).unwrap();
        assert_ne!(rekeyed[0].public_key, made[0].public_key);
    }

    /// A message signed with a rotated-out key, on a vehicle's topic.
    fn signed_status(key: &SecretKey, client: &str) -> (String, Vec<u8>) {
        use convoy_shared::messages::{AgentState, Status, id};
        let topic =
            convoy_shared::topics::client("f", convoy_shared::topics::ClientTopic::Status, client);
        let status = Status::new(id(client).unwrap(), AgentState::Idle, (1, 1));
        let payload =
            convoy_shared::wire::encode(convoy_shared::wire::Kind::Status, &status, &topic, key)
                .unwrap();
        (topic.to_string(), payload)
    }

    #[test]
    fn a_rotated_vehicle_key_counts_during_the_overlap_then_is_refused() {
        use convoy_shared::messages::Status;
        use convoy_shared::wire::Kind;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.db")).unwrap();
        let server = server_key(&dir.path().join("server.key")).unwrap();
        let ids: Vec<TopicId> = ["car-1", "car-2"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let out = dir.path().join("out");
        let trusted: Trusted = server.public().into();
        provision(&store, &trusted, &ids, &out, false).unwrap();
        let old = |id: &str| SecretKey::read(&out.join(id).join(VEHICLE_KEY)).unwrap();
        let (old1, old2) = (old("car-1"), old("car-2"));
        let password = std::fs::read_to_string(out.join("car-1").join(BROKER_PASSWORD)).unwrap();
        let now = convoy_runtime::clock::now_ms();
        // car-1 rotates with an hour's overlap, car-2 with one that is over
        let rotated = rotate_vehicles(&store, &trusted, &ids[..1], &out, now + 3_600_000).unwrap();
        rotate_vehicles(&store, &trusted, &ids[1..], &out, now - 1).unwrap();
        assert_eq!(rotated[0].password, password.trim(), "the password stays");
        let new1 = SecretKey::read(&out.join("car-1").join(VEHICLE_KEY)).unwrap();
        assert_eq!(new1.public(), rotated[0].public_key);
        let mut ring = Keyring::load(&store).unwrap();
        let limit = (Kind::Status, 1 << 16);
        let decode = |ring: &mut Keyring, key: &SecretKey, client: &str| {
            let (topic, payload) = signed_status(key, client);
            ring.decode::<Status>(&store, client, &topic, &payload, limit)
        };
        assert!(decode(&mut ring, &new1, "car-1").is_ok(), "the new key");
        assert!(
            decode(&mut ring, &old1, "car-1").is_ok(),
            "the old key, within the overlap"
        );
        let refused = decode(&mut ring, &old2, "car-2").unwrap_err();
        assert_eq!(
            refused.reason(),
            "bad_signature",
            "the old key after the overlap"
        );
        let stranger = decode(&mut ring, &SecretKey::generate(), "car-1").unwrap_err();
        assert_eq!(stranger.reason(), "bad_signature");
        // an unknown vehicle cannot be rotated
        let ghost: TopicId = "car-9".parse().unwrap();
        let e = rotate_vehicles(&store, &trusted, &[ghost], &out, now).unwrap_err();
        assert!(e.to_string().contains("not provisioned"), "{e}");
    }

    #[test]
    fn a_rotated_server_key_is_written_with_the_old_one_trusted_until_the_overlap_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.key");
        let old = server_key(&path).unwrap();
        let trusted = rotate_server_key(&path, 42).unwrap();
        let new = server_key(&path).unwrap();
        assert_ne!(new.public(), old.public());
        assert_eq!(trusted.current, new.public());
        assert_eq!(trusted.previous, Some((old.public(), 42)));
        assert_eq!(
            Trusted::read(&dir.path().join(SERVER_PUB)).unwrap(),
            trusted
        );
        assert_eq!(server_trusted(&new, &path), trusted);
        assert_eq!(
            SecretKey::read(&path.with_extension("previous"))
                .unwrap()
                .public(),
            old.public()
        );
        // a server.pub that names another key is not trusted for this one
        assert_eq!(server_trusted(&old, &path), Trusted::from(old.public()));
    }
}
