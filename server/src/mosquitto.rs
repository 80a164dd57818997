//! Files for an external Mosquitto broker: a password file and an ACL file
//! under which a vehicle may publish only on its own topics (update,
//! status, fetch, failure, schema, stats) and read only the fleet's round
//! and align topics and its own model and receipt topics, while the server
//! account reads and writes all of the fleet's topics. `convoy-server
//! provision --mosquitto` writes them beside the vehicles' folders; point
//! Mosquitto's `password_file` and `acl_file` at them.
//!
//! Passwords are stored in Mosquitto's salted SHA-512 form (`$6$`); the
//! passwords `provision` makes are 32 random characters, so the hash's
//! speed is no weakness.

use convoy_shared::topics::{ClientTopic, TopicId};
use sha2::{Digest, Sha512};
use std::path::Path;

/// The password file's name.
pub const PASSWD: &str = "mosquitto.passwd";
/// The ACL file's name.
pub const ACL: &str = "mosquitto.acl";

/// One password file line: `user:$6$<salt>$<SHA-512(password, salt)>`.
pub fn password_line(user: &str, password: &str, salt: [u8; 12]) -> String {
    let mut hash = Sha512::new();
    hash.update(password.as_bytes());
    hash.update(salt);
    format!(
        "{user}:$6${}${}",
        base64(&salt),
        base64(hash.finalize().as_slice())
    )
}

/// The ACL file for `fleet`: the server account `server` reads and writes
/// the fleet's topics; each of `readers` (`broker.status_readers`) may read
/// the vehicles' statuses; every user (`%u`, its user name, which for a
/// vehicle is its client id) its own topics.
pub fn acl(fleet: &TopicId, server: &str, readers: &[String]) -> String {
    let root = format!("convoy/v1/{fleet}");
    let mut out = format!(
        "# convoy fleet {fleet}: written by `convoy-server provision --mosquitto`\n\
         # the server publishes announcements and models, and reads everything\n\
         user {server}\ntopic readwrite {root}/#\n\n"
    );
    for reader in readers {
        out.push_str(&format!(
            "# a status reader (broker.status_readers)\nuser {reader}\ntopic read {root}/status/+\n\n"
        ));
    }
    out.push_str("# each vehicle (user name = client id): its own topics only\n");
    // the same rule as convoy_shared::topics::vehicle_may_publish/subscribe
    for own in ClientTopic::ALL
        .into_iter()
        .filter(|t| t.written_by_vehicle())
    {
        out.push_str(&format!("pattern write {root}/{}/%u\n", own.segment()));
    }
    for fleet_wide in ["round", "align"] {
        out.push_str(&format!("pattern read {root}/{fleet_wide}\n"));
    }
    for own in ClientTopic::ALL
        .into_iter()
        .filter(|t| !t.written_by_vehicle())
    {
        out.push_str(&format!("pattern read {root}/{}/%u\n", own.segment()));
    }
    out
}

/// Writes [`ACL`] for `fleet` and adds (or replaces) the password lines of
/// `accounts` (`(user, password)`) in [`PASSWD`] under `dir`; other users'
/// lines are kept. Both files are made readable by their owner only.
pub fn write(
    dir: &Path,
    fleet: &TopicId,
    (server, readers): (&str, &[String]),
    accounts: &[(String, String)],
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let passwd = dir.join(PASSWD);
    let kept = match std::fs::read_to_string(&passwd) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let mut lines: Vec<String> = kept
        .lines()
        .filter(|line| {
            let user = line.split(':').next().unwrap_or("");
            !line.is_empty() && !accounts.iter().any(|(u, _)| u == user)
        })
        .map(str::to_string)
        .collect();
    for (user, password) in accounts {
        lines.push(password_line(user, password, rand::random()));
    }
    lines.sort();
    write_private(&passwd, &(lines.join("\n") + "\n"))?;
    write_private(&dir.join(ACL), &acl(fleet, server, readers))
}

/// Writes `text` to `path`, readable by its owner only from the start.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        // an older file keeps its mode on open: narrow it first
        if path.exists() {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    options.open(path)?.write_all(text.as_bytes())
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_vectors() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), coded);
        }
    }

    #[test]
    fn password_lines_are_salted_sha512_and_replaced_in_place() {
        let line = password_line("car-1", "secret", [7; 12]);
        let parts: Vec<&str> = line.split('$').collect();
        assert_eq!(parts[0], "car-1:");
        assert_eq!((parts[1], parts[2].len(), parts[3].len()), ("6", 16, 88));
        let dir = tempfile::tempdir().unwrap();
        let fleet: TopicId = "f".parse().unwrap();
        let accounts = |p: &str| vec![("car-1".to_string(), p.to_string())];
        let server = ("convoy-server", &["deployer".to_string()][..]);
        write(dir.path(), &fleet, server, &accounts("a")).unwrap();
        write(dir.path(), &fleet, server, &[("car-2".into(), "b".into())]).unwrap();
        write(dir.path(), &fleet, server, &accounts("c")).unwrap();
        let text = std::fs::read_to_string(dir.path().join(PASSWD)).unwrap();
        let users: Vec<&str> = text.lines().map(|l| l.split(':').next().unwrap()).collect();
        assert_eq!(users, ["car-1", "car-2"]);
        let acl = std::fs::read_to_string(dir.path().join(ACL)).unwrap();
        assert!(acl.contains("pattern write convoy/v1/f/update/%u"));
        assert!(acl.contains("pattern read convoy/v1/f/round"));
        assert!(acl.contains("user deployer\ntopic read convoy/v1/f/status/+"));
        assert!(!acl.contains("pattern write convoy/v1/f/round"));
    }
}
