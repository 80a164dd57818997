//! Atomic file writes: a file is either its old or its new version, never a
//! torn mix, even across power loss.

use std::io::Write;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A file could not be written or synced.
#[derive(Debug, Error)]
#[error("{path}: {cause}")]
pub struct FsError {
    /// File involved.
    pub path: PathBuf,
    /// Cause.
    pub cause: std::io::Error,
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    let io = |cause| FsError {
        path: path.to_path_buf(),
        cause,
    };
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if let Err(cause) = written {
        // A full or read-only disk must not leave half-written temp files.
        let _ = std::fs::remove_file(&tmp);
        return Err(io(cause));
    }
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// Makes a rename or removal in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), FsError> {
    // Not all filesystems allow opening a directory, so failing to open it
    // is not fatal; failing to sync an opened one is.
    if let Ok(d) = std::fs::File::open(dir) {
        d.sync_all().map_err(|cause| FsError {
            path: dir.to_path_buf(),
            cause,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new contents").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new contents");
        assert!(!dir.path().join("f.bin.tmp").exists());
    }

    #[test]
    fn failure_names_the_file_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("f.bin");
        let err = write_atomic(&path, b"x").unwrap_err();
        assert!(err.to_string().contains("f.bin"));
        // the temp file is written, then the rename fails (a folder with
        // something in it sits where the file goes): the temp file goes
        let path = dir.path().join("g.bin");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("occupied"), b"").unwrap();
        let err = write_atomic(&path, b"x").unwrap_err();
        assert!(err.to_string().contains("g.bin"), "{err}");
        assert!(
            !dir.path().join("g.bin.tmp").exists(),
            "temp file left behind"
        );
    }
}
