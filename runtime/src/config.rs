//! Config loading shared by both binaries: TOML with errors naming the file
//! and key, paths relative to the config file, one environment-override
//! routine, one [`ConfigError`].

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use thiserror::Error;

/// A configuration that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// File unreadable.
    #[error("cannot read config {path}: {cause}")]
    Read {
        /// file
        path: PathBuf,
        /// cause
        cause: std::io::Error,
    },
    /// TOML invalid.
    #[error("config {path} is invalid: {message}")]
    Parse {
        /// file
        path: PathBuf,
        /// parser message (names the line and key)
        message: String,
    },
    /// A value out of range.
    #[error("config: {0}")]
    Invalid(String),
}

/// Reads and parses a TOML config file, with errors naming the file.
pub fn load_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
        path: path.to_path_buf(),
        cause,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Makes `path` relative to the folder of the config file `config_file`
/// (not the working directory) when it is relative.
pub fn resolve(config_file: &Path, path: &mut PathBuf) {
    if path.is_relative() {
        let base = config_file.parent().unwrap_or(Path::new("."));
        *path = base.join(&*path);
    }
}

/// Overrides `slot` with environment variable `var` when it is set; a value
/// that does not parse is an error naming the variable.
pub fn env_override<T>(var: &str, slot: &mut T) -> Result<(), ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    match std::env::var(var) {
        Ok(text) => {
            *slot = text
                .parse()
                .map_err(|e| ConfigError::Invalid(format!("{var}={text:?}: {e}")))?;
            Ok(())
        }
        Err(std::env::VarError::NotPresent) => Ok(()),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(ConfigError::Invalid(format!("{var} is not valid UTF-8")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_follow_the_config_file() {
        let mut p = PathBuf::from("data.csv");
        resolve(Path::new("/etc/convoy/agent.toml"), &mut p);
        assert_eq!(p, PathBuf::from("/etc/convoy/data.csv"));
        let mut abs = PathBuf::from("/var/x");
        resolve(Path::new("/etc/convoy/agent.toml"), &mut abs);
        assert_eq!(abs, PathBuf::from("/var/x"));
    }

    #[test]
    fn parse_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "x = [").unwrap();
        let err = load_toml::<toml::Value>(&path).unwrap_err().to_string();
        assert!(err.contains("c.toml"), "{err}");
        let err = load_toml::<toml::Value>(&dir.path().join("none.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
    }
}
