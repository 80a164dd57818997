//! Who signed a message: ed25519 key pairs for the server and each vehicle,
//! and the signature every [`crate::wire`] envelope carries.
//!
//! A signature covers the envelope header, the MQTT topic it was published
//! on and the body, hashed with BLAKE3 in its own key-derivation context and
//! signed with ed25519. The topic is part of it, so a message signed for
//! `update/car-1` cannot be replayed on `update/car-2`, nor an
//! acknowledgement for one vehicle on another's topic.
//!
//! Key files are one line of lowercase hex: 64 characters for a public key,
//! the same for a secret key (its 32-byte seed), written with mode 0600.

use ed25519_dalek::{Signer, Verifier};
use std::fmt;
use std::path::Path;
use thiserror::Error;

/// Bytes of a signature on the wire.
pub const SIGNATURE_LEN: usize = 64;

/// The key-derivation context of the signed digest (never reused elsewhere).
const CONTEXT: &str = "convoy 2026 wire envelope v2 signature";

/// A secret signing key (the server's or one vehicle's).
#[derive(Clone)]
pub struct SecretKey(ed25519_dalek::SigningKey);

/// A public key that verifies one signer's messages.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

/// A key could not be read or parsed.
#[derive(Debug, Error)]
pub enum KeyError {
    /// Not 64 hex characters, or not a valid point.
    #[error("{what}: expected 64 hex characters (an ed25519 key), {detail}")]
    Format {
        /// which key
        what: String,
        /// what was wrong
        detail: String,
    },
    /// The file could not be read or written.
    #[error("{path}: {message}")]
    File {
        /// the key file
        path: String,
        /// the OS error
        message: String,
    },
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {})", self.public())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(self.0.as_bytes()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(text: &str, what: &str) -> Result<[u8; 32], KeyError> {
    let text = text.trim();
    let err = |detail: String| KeyError::Format {
        what: what.to_string(),
        detail,
    };
    if !text.is_ascii() {
        return Err(err("found a character that is not hex".into()));
    }
    if text.len() != 64 {
        return Err(err(format!("got {} characters", text.len())));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
            .map_err(|_| err("found a character that is not hex".into()))?;
    }
    Ok(out)
}

/// The 32-byte digest a signature covers.
fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(CONTEXT);
    for part in parts {
        // Length-prefixed, so moving bytes between parts changes the digest.
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    *h.finalize().as_bytes()
}

impl SecretKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        let seed: [u8; 32] = rand::random();
        Self(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// The key whose seed is `seed` (tests and simulations that want the same
    /// fleet every run).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs the concatenation of `parts` (each length-prefixed).
    pub fn sign(&self, parts: &[&[u8]]) -> [u8; SIGNATURE_LEN] {
        self.0.sign(&digest(parts)).to_bytes()
    }

    /// Parses the hex seed.
    pub fn from_hex(text: &str, what: &str) -> Result<Self, KeyError> {
        Ok(Self::from_seed(unhex32(text, what)?))
    }

    /// The hex seed, as key files hold it.
    pub fn to_hex(&self) -> String {
        hex(self.0.as_bytes())
    }

    /// Reads a secret key file.
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let text = read_key_file(path)?;
        Self::from_hex(&text, &path.display().to_string())
    }

    /// Writes this key to `path` (mode 0600), refusing to replace a file.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        write_key_file(path, &self.to_hex(), true)
    }
}

impl PublicKey {
    /// Parses hex text.
    pub fn from_hex(text: &str, what: &str) -> Result<Self, KeyError> {
        let bytes = unhex32(text, what)?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map(Self)
            .map_err(|_| KeyError::Format {
                what: what.to_string(),
                detail: "the bytes are not an ed25519 public key".into(),
            })
    }

    /// True when `signature` is this key's over `parts`.
    pub fn verify(&self, parts: &[&[u8]], signature: &[u8; SIGNATURE_LEN]) -> bool {
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        self.0.verify(&digest(parts), &signature).is_ok()
    }

    /// Reads a public key file.
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let text = read_key_file(path)?;
        Self::from_hex(&text, &path.display().to_string())
    }

    /// Writes this key to `path` (mode 0644), replacing what is there.
    pub fn write(&self, path: &Path) -> Result<(), KeyError> {
        write_key_file(path, &self.to_string(), false)
    }
}

/// The keys that verify one signer: its current key and, during a key
/// rotation's overlap, its previous key until a moment (Unix ms). A message
/// signed by the previous key (a retained announcement, an update stored on
/// a vehicle before it got its new key) is accepted until then, and refused
/// after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trusted {
    /// The key the signer signs with now.
    pub current: PublicKey,
    /// The key it signed with before, and until when (Unix ms) that still
    /// counts.
    pub previous: Option<(PublicKey, u64)>,
}

impl From<PublicKey> for Trusted {
    fn from(current: PublicKey) -> Self {
        Self {
            current,
            previous: None,
        }
    }
}

impl Trusted {
    /// The previous key, while its overlap lasts at `now_ms`.
    pub fn previous_at(&self, now_ms: u64) -> Option<&PublicKey> {
        self.previous
            .as_ref()
            .filter(|(_, until)| now_ms < *until)
            .map(|(key, _)| key)
    }

    /// Reads a public key file: the current key on its first line and,
    /// optionally, the previous one on a second line as `<hex> until=<Unix
    /// ms>` (what a rotation writes; `#` lines are comments).
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let what = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::File {
            path: what.clone(),
            message: e.to_string(),
        })?;
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let current = PublicKey::from_hex(lines.next().unwrap_or(""), &what)?;
        let previous = match lines.next() {
            None => None,
            Some(line) => {
                let bad = || KeyError::Format {
                    what: what.clone(),
                    detail: format!(
                        "the second key line must read `<hex> until=<Unix ms>`, not {line:?}"
                    ),
                };
                let (key, until) = line.split_once(char::is_whitespace).ok_or_else(bad)?;
                let until: u64 = until
                    .trim()
                    .strip_prefix("until=")
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(bad)?;
                Some((PublicKey::from_hex(key, &what)?, until))
            }
        };
        Ok(Self { current, previous })
    }

    /// Writes the file [`Trusted::read`] reads (mode 0644, replacing it).
    pub fn write(&self, path: &Path) -> Result<(), KeyError> {
        let mut text = self.current.to_string();
        if let Some((key, until)) = &self.previous {
            text.push_str(&format!(
                "\n# the previous key, trusted until the Unix time in ms below\n{key} until={until}"
            ));
        }
        write_key_file(path, &text, false)
    }
}

/// Reads a key file: its first non-empty line that is not a `#` comment.
fn read_key_file(path: &Path) -> Result<String, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|e| KeyError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("")
        .to_string())
}

/// Writes one line of `text` to a new file at `path` with mode 0600 (a
/// secret: key, password), refusing to replace a file.
pub fn write_secret_file(path: &Path, text: &str) -> Result<(), KeyError> {
    write_key_file(path, text, true)
}

fn write_key_file(path: &Path, hex: &str, secret: bool) -> Result<(), KeyError> {
    use std::io::Write;
    let err = |e: std::io::Error| KeyError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if secret {
        options.create_new(true);
    } else {
        options.create(true).truncate(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path).map_err(err)?;
    writeln!(file, "{hex}").map_err(err)?;
    file.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotated_key_file_trusts_the_previous_key_until_its_time() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (SecretKey::generate(), SecretKey::generate());
        let path = dir.path().join("server.pub");
        let trusted = Trusted {
            current: new.public(),
            previous: Some((old.public(), 5_000)),
        };
        trusted.write(&path).unwrap();
        assert_eq!(Trusted::read(&path).unwrap(), trusted);
        // a reader of one key sees the current one
        assert_eq!(PublicKey::read(&path).unwrap(), new.public());
        assert_eq!(trusted.previous_at(4_999), Some(&old.public()));
        assert_eq!(trusted.previous_at(5_000), None);
        // a file of one key is a key with no overlap
        new.public().write(&path).unwrap();
        assert_eq!(Trusted::read(&path).unwrap(), Trusted::from(new.public()));
        std::fs::write(&path, format!("{}\n{} soon\n", new.public(), old.public())).unwrap();
        let e = Trusted::read(&path).unwrap_err().to_string();
        assert!(e.contains("until="), "{e}");
    }

    #[test]
    fn signs_and_verifies_only_the_same_parts() {
        let key = SecretKey::from_seed([7; 32]);
        let other = SecretKey::from_seed([8; 32]);
        let sig = key.sign(&[b"topic", b"body"]);
        assert!(key.public().verify(&[b"topic", b"body"], &sig));
        assert!(!key.public().verify(&[b"topic", b"bodz"], &sig));
        // moving a byte between parts is a different message
        assert!(!key.public().verify(&[b"topicb", b"ody"], &sig));
        assert!(!other.public().verify(&[b"topic", b"body"], &sig));
    }

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        let key = SecretKey::generate();
        let back = SecretKey::from_hex(&key.to_hex(), "k").unwrap();
        assert_eq!(back.public(), key.public());
        let public = PublicKey::from_hex(&key.public().to_string(), "p").unwrap();
        assert_eq!(public, key.public());
        assert!(PublicKey::from_hex("abc", "p").is_err());
        assert!(PublicKey::from_hex(&"zz".repeat(32), "p").is_err());
        // 64 bytes whose second character is two bytes long: an error
        // naming the cause, not a slice off a character boundary
        let accented = format!("a\u{e9}{}", "0".repeat(61));
        assert_eq!(accented.len(), 64);
        let e = PublicKey::from_hex(&accented, "p").unwrap_err().to_string();
        assert!(e.contains("not hex"), "{e}");
        assert!(SecretKey::from_hex(&accented, "k").is_err());
    }

    #[test]
    fn key_files_round_trip_and_secret_files_are_private() {
        let dir = tempfile_dir();
        let key = SecretKey::generate();
        let path = dir.join("vehicle.key");
        key.write_new(&path).unwrap();
        assert!(
            key.write_new(&path).is_err(),
            "a secret key is never overwritten"
        );
        assert_eq!(SecretKey::read(&path).unwrap().public(), key.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let pub_path = dir.join("server.pub");
        key.public().write(&pub_path).unwrap();
        assert_eq!(PublicKey::read(&pub_path).unwrap(), key.public());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "convoy-identity-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
