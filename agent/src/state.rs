//! The agent's state directory: what must survive reboots and power loss.
//!
//! | file | holds |
//! |---|---|
//! | `model.bin` | the base model the agent last fetched (manifest, spec, parameters) |
//! | `pending.bin` | a trained, encoded update not yet acknowledged by the server |
//! | `progress.bin` | the last round whose update the server acknowledged |
//! | `residual.bin` | error feedback: what lossy codecs have not yet delivered |
//! | `checkpoint.bin` | a training run the policy paused, to resume exactly |
//!
//! Every write goes to a temporary file, is fsynced, renamed over the old
//! one and the directory fsynced, so a file is either the old or the new
//! version, never a torn mix.

use convoy_runtime::fs::{FsError, sync_dir, write_atomic};
use convoy_shared::params::ParamSet;
use convoy_shared::spec::ModelSpec;
use convoy_shared::spec::Recipe;
use convoy_shared::version::{Manifest, VersionId};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// State-directory failures.
#[derive(Debug, Error)]
pub enum StateError {
    /// Filesystem trouble.
    #[error("state dir {path}: {cause}")]
    Io {
        /// file involved
        path: PathBuf,
        /// cause
        cause: std::io::Error,
    },
    /// A value could not be serialised.
    #[error("cannot serialise {path}: {message}")]
    Encode {
        /// file it was meant for
        path: PathBuf,
        /// serialiser message
        message: String,
    },
    /// A file exists but does not decode; it is moved aside.
    #[error("state file {path} is corrupt ({message}); moved aside to {path}.corrupt")]
    Corrupt {
        /// file involved
        path: PathBuf,
        /// decoder message
        message: String,
    },
}

/// A personalised model: the fleet's model of `base_version` with its
/// output head fine-tuned on this vehicle's rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredPersonal {
    /// The fleet model it was tuned from.
    pub base_version: VersionId,
    /// Its parameters (the base's layout).
    pub params: ParamSet,
}

/// The base model the agent holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredModel {
    /// Its manifest (version id, chunk hashes).
    pub manifest: Manifest,
    /// Architecture and features.
    pub spec: ModelSpec,
    /// Training recipe it was published with.
    pub task: Recipe,
    /// Parameters.
    pub params: ParamSet,
}

/// A trained update waiting for the server's receipt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingUpdate {
    /// Round it answers.
    pub round: u64,
    /// Base version it is relative to.
    pub base_version: VersionId,
    /// Serialised `UpdateBody`, exactly the bytes that are chunked and sent.
    pub body: Vec<u8>,
    /// Chunk size it is sent with.
    pub chunk_size: u32,
    /// Error-feedback residual after this update (lossy codecs): becomes
    /// the stored residual once the server acknowledges the update.
    pub residual: Option<ParamSet>,
}

/// A training run the policy paused, with what it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredCheckpoint {
    /// Round being trained.
    pub round: u64,
    /// Base version being trained from.
    pub base_version: VersionId,
    /// Where training stands.
    pub checkpoint: crate::trainer::Checkpoint,
}

/// The SCAFFOLD control a pending update leaves, kept apart from the
/// update so `pending.bin` keeps its layout across releases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PendingControl {
    round: u64,
    control: ParamSet,
}

const PENDING_CONTROL: &str = "control-pending.bin";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
struct Progress {
    last_acked_round: Option<u64>,
}

/// Handle on the state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating if needed) the directory, and moves every corrupt
    /// state file aside at once (each with a warning), so one start deals
    /// with all of them instead of one per restart.
    pub fn open(root: &Path) -> Result<Self, StateError> {
        std::fs::create_dir_all(root).map_err(|cause| StateError::Io {
            path: root.to_path_buf(),
            cause,
        })?;
        let dir = Self {
            root: root.to_path_buf(),
        };
        for moved in dir.sweep()? {
            tracing::warn!(error = %moved, "state file moved aside");
        }
        Ok(dir)
    }

    /// Reads every state file once; returns the corrupt ones it moved aside.
    /// Only I/O trouble (not corruption) is an error.
    pub fn sweep(&self) -> Result<Vec<StateError>, StateError> {
        type Check = fn(&StateDir) -> Result<bool, StateError>;
        let checks: [Check; 7] = [
            |d| d.model().map(|v| v.is_some()),
            |d| d.pending().map(|v| v.is_some()),
            |d| d.read::<Progress>("progress.bin").map(|v| v.is_some()),
            |d| d.residual().map(|v| v.is_some()),
            |d| d.checkpoint().map(|v| v.is_some()),
            |d| d.control().map(|v| v.is_some()),
            |d| {
                d.read::<PendingControl>(PENDING_CONTROL)
                    .map(|v| v.is_some())
            },
        ];
        let mut moved = Vec::new();
        for check in checks {
            match check(self) {
                Ok(_) => {}
                Err(e @ StateError::Corrupt { .. }) => moved.push(e),
                Err(e) => return Err(e),
            }
        }
        Ok(moved)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn write<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        let path = self.path(name);
        let bytes = postcard::to_allocvec(value).map_err(|e| StateError::Encode {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&path, &bytes)?;
        Ok(())
    }

    fn read<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StateError> {
        let path = self.path(name);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(cause) => return Err(StateError::Io { path, cause }),
        };
        match postcard::from_bytes(&bytes) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                move_aside(&path);
                Err(StateError::Corrupt {
                    path,
                    message: e.to_string(),
                })
            }
        }
    }

    fn remove(&self, name: &str) -> Result<(), StateError> {
        let path = self.path(name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(sync_dir(&self.root)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(cause) => Err(StateError::Io { path, cause }),
        }
    }

    /// Proves the directory takes writes (a probe file, written atomically
    /// and removed), so a read-only or full disk is found before any round.
    pub fn check_writable(&self) -> Result<(), StateError> {
        write_atomic(&self.path(".probe"), b"convoy")?;
        self.remove(".probe")
    }

    /// The stored base model.
    /// A model whose parameters do not hash to its stored version (a
    /// flipped bit, an overwritten float) is corrupt: moved aside, never used.
    pub fn model(&self) -> Result<Option<StoredModel>, StateError> {
        let Some(model) = self.read::<StoredModel>("model.bin")? else {
            return Ok(None);
        };
        if !model
            .manifest
            .verifies(&model.params, &model.spec, &model.task)
        {
            let path = self.path("model.bin");
            move_aside(&path);
            return Err(StateError::Corrupt {
                path,
                message: "its parameters do not hash to its version id".into(),
            });
        }
        Ok(Some(model))
    }

    /// Replaces the stored base model.
    pub fn save_model(&self, model: &StoredModel) -> Result<(), StateError> {
        self.write("model.bin", model)
    }

    /// The vehicle's personalised model: the base `version` with its head
    /// fine-tuned locally (`training.personal_steps`).
    pub fn personal(&self) -> Result<Option<StoredPersonal>, StateError> {
        self.read("personal.bin")
    }

    /// Replaces the personalised model.
    pub fn save_personal(&self, personal: &StoredPersonal) -> Result<(), StateError> {
        self.write("personal.bin", personal)
    }

    /// The unacknowledged update, if any.
    pub fn pending(&self) -> Result<Option<PendingUpdate>, StateError> {
        self.read("pending.bin")
    }

    /// Persists an update before any of it is sent.
    pub fn save_pending(&self, update: &PendingUpdate) -> Result<(), StateError> {
        self.write("pending.bin", update)
    }

    /// A paused training run, if any.
    pub fn checkpoint(&self) -> Result<Option<StoredCheckpoint>, StateError> {
        self.read("checkpoint.bin")
    }

    /// Persists a paused training run.
    pub fn save_checkpoint(&self, checkpoint: &StoredCheckpoint) -> Result<(), StateError> {
        self.write("checkpoint.bin", checkpoint)
    }

    /// Drops the paused training run.
    pub fn clear_checkpoint(&self) -> Result<(), StateError> {
        self.remove("checkpoint.bin")
    }

    /// The error-feedback residual, if any.
    pub fn residual(&self) -> Result<Option<ParamSet>, StateError> {
        self.read("residual.bin")
    }

    /// The vehicle's SCAFFOLD control `cᵢ`, if it has taken part in a
    /// SCAFFOLD round the server acknowledged.
    pub fn control(&self) -> Result<Option<ParamSet>, StateError> {
        self.read("control.bin")
    }

    /// Persists the control `cᵢ⁺` that round `round`'s update leaves (before
    /// the update itself): it becomes [`Self::control`] with the receipt.
    pub fn save_pending_control(&self, round: u64, control: &ParamSet) -> Result<(), StateError> {
        self.write(
            PENDING_CONTROL,
            &PendingControl {
                round,
                control: control.clone(),
            },
        )
    }

    /// Records the server's receipt for `round`: the pending update's
    /// residual (and SCAFFOLD control of that round) becomes the stored
    /// one, then the update is dropped. Each
    /// step is atomic and repeating them is harmless, so a crash in between
    /// only leads to a re-send the server recognises.
    pub fn acknowledge(&self, round: u64) -> Result<(), StateError> {
        if let Some(residual) = self.pending()?.and_then(|p| p.residual) {
            self.write("residual.bin", &residual)?;
        }
        if let Some(pending) = self.read::<PendingControl>(PENDING_CONTROL)? {
            if pending.round == round {
                self.write("control.bin", &pending.control)?;
            }
            self.remove(PENDING_CONTROL)?;
        }
        self.write(
            "progress.bin",
            &Progress {
                last_acked_round: Some(round),
            },
        )?;
        self.remove("pending.bin")
    }

    /// Drops a pending update the server refused for good (late, stale).
    pub fn discard_pending(&self) -> Result<(), StateError> {
        self.remove(PENDING_CONTROL)?;
        self.remove("pending.bin")
    }

    /// The last round the server acknowledged.
    pub fn last_acked_round(&self) -> Result<Option<u64>, StateError> {
        Ok(self
            .read::<Progress>("progress.bin")?
            .and_then(|p| p.last_acked_round))
    }
}

/// Renames a corrupt file to `<name>.corrupt`, keeping it for inspection.
fn move_aside(path: &Path) {
    let aside = PathBuf::from(format!("{}.corrupt", path.display()));
    if let Err(e) = std::fs::rename(path, &aside) {
        tracing::error!(path = %path.display(), error = %e, "cannot move a corrupt state file aside");
    }
}

impl From<FsError> for StateError {
    fn from(e: FsError) -> Self {
        StateError::Io {
            path: e.path,
            cause: e.cause,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_survives_reopen_and_ack_clears_it() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        assert_eq!(state.pending().unwrap(), None);
        let update = PendingUpdate {
            round: 3,
            base_version: [1; 32],
            body: vec![1, 2, 3],
            chunk_size: 1024,
            residual: Some(ParamSet::default()),
        };
        state.save_pending(&update).unwrap();
        let reopened = StateDir::open(dir.path()).unwrap();
        assert_eq!(reopened.pending().unwrap(), Some(update));
        reopened.acknowledge(3).unwrap();
        assert_eq!(reopened.pending().unwrap(), None);
        assert_eq!(reopened.last_acked_round().unwrap(), Some(3));
        assert_eq!(reopened.residual().unwrap(), Some(ParamSet::default()));
    }

    #[test]
    fn corrupt_file_is_reported_and_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("pending.bin"), [0xff; 3]).unwrap();
        assert!(matches!(state.pending(), Err(StateError::Corrupt { .. })));
        assert_eq!(state.pending().unwrap(), None);
        assert!(dir.path().join("pending.bin.corrupt").exists());
    }

    #[test]
    fn one_open_moves_every_corrupt_file_aside() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["pending.bin", "residual.bin", "checkpoint.bin"] {
            std::fs::write(dir.path().join(name), [0xff; 3]).unwrap();
        }
        let state = StateDir::open(dir.path()).expect("corruption is not fatal at start");
        for name in ["pending.bin", "residual.bin", "checkpoint.bin"] {
            assert!(
                dir.path().join(format!("{name}.corrupt")).exists(),
                "{name}"
            );
        }
        assert_eq!(state.pending().unwrap(), None);
        assert_eq!(state.residual().unwrap(), None);
        assert_eq!(state.checkpoint().unwrap(), None);
    }

    #[test]
    fn a_model_that_does_not_hash_to_its_version_is_never_used() {
        use convoy_shared::spec::{ModelSpec, Recipe};
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let spec = ModelSpec::classifier(
            ["a".to_string()],
            "y",
            ["0".to_string(), "1".to_string()],
            vec![3],
            1,
        );
        let task = Recipe::default();
        let params = spec.init_params();
        let mut model = StoredModel {
            manifest: convoy_shared::version::manifest_of(
                &params,
                &spec,
                &task,
                &Default::default(),
            ),
            spec,
            task,
            params,
        };
        state.save_model(&model).unwrap();
        assert_eq!(state.model().unwrap(), Some(model.clone()));
        model.params.tensors[0].data[0] += 1.0; // overwritten float, old manifest
        state.save_model(&model).unwrap();
        assert!(matches!(state.model(), Err(StateError::Corrupt { .. })));
        assert!(dir.path().join("model.bin.corrupt").exists());
        assert_eq!(state.model().unwrap(), None);
    }
}
