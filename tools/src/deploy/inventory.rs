//! The deploy inventory: `[defaults]` plus one `[[board]]` per vehicle.

use super::DeployError;
use convoy_shared::topics;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// How the board runs the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ServiceManager {
    /// `systemctl` with the unit file from `unit`.
    #[default]
    Systemd,
    /// Boards without systemd: `start_command`, `stop_command` and
    /// `active_command`, run through `sh -c` on the board.
    Command,
}

/// One board, after `[defaults]` were applied.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    /// Name in the result table.
    pub name: String,
    /// SSH host name or address.
    pub host: String,
    /// SSH port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// SSH user (needs to write the install paths).
    #[serde(default = "default_user")]
    pub user: String,
    /// Private key for SSH.
    pub identity_file: Option<PathBuf>,
    /// Extra `ssh -o` options, e.g. `"StrictHostKeyChecking=accept-new"`.
    #[serde(default)]
    pub ssh_options: Vec<String>,
    /// Agent binary to install (built by cross/build.sh).
    pub artifact: PathBuf,
    /// Agent config template; `client_id`, `fleet`, `broker.url`,
    /// `broker.username` and `deployment` are filled in per board.
    pub config: PathBuf,
    /// systemd unit to install (service = "systemd").
    pub unit: Option<PathBuf>,
    /// The vehicle's identity.
    pub client_id: String,
    /// Fleet (else the template's).
    pub fleet: Option<String>,
    /// Broker the agent connects to (else the template's).
    pub broker_url: Option<String>,
    /// Broker user name of the vehicle (default: its client id when a
    /// password is given).
    pub username: Option<String>,
    /// Environment variable on this machine holding the vehicle's broker
    /// password; installed on the board as a 0600 file, never in the config.
    pub password_env: Option<String>,
    /// File on this machine holding the password (first line), instead.
    pub password_file: Option<PathBuf>,
    /// Folder `convoy-server provision --out` wrote: `<keys_dir>/<client_id>/`
    /// holds the vehicle's keys. Its `vehicle.key` (0600) and `server.pub`
    /// are installed beside the config, its `broker-password` is used when
    /// neither `password_env` nor `password_file` is set, and its
    /// `vehicle.pub` verifies the status the deployer waits for.
    pub keys_dir: Option<PathBuf>,
    /// Broker the deployer watches for the agent's status (default: the
    /// agent's own broker URL).
    pub status_broker_url: Option<String>,
    /// Who the deployer logs in as to watch (an authenticated broker needs a
    /// provisioned id, e.g. `convoy-server provision deployer`; it connects
    /// with this as client id and user name).
    pub status_username: Option<String>,
    /// File on this machine with that login's password (first line).
    pub status_password_file: Option<PathBuf>,
    /// CA (PEM) the deployer verifies an `mqtts://` status broker with
    /// (default: the agent template's `broker.ca_file`).
    pub status_ca_file: Option<PathBuf>,
    /// Install prefix on the board ("/" on a real board).
    #[serde(default = "default_root")]
    pub root: String,
    /// Binary path on the board (below `root`).
    #[serde(default = "default_bin_path")]
    pub bin_path: String,
    /// Config path on the board (below `root`).
    #[serde(default = "default_config_path")]
    pub config_path: String,
    /// Unit path on the board (below `root`).
    #[serde(default = "default_unit_path")]
    pub unit_path: String,
    /// How the agent is started.
    #[serde(default)]
    pub service: ServiceManager,
    /// service = "command": starts the agent in the background.
    pub start_command: Option<String>,
    /// service = "command": stops it (failure ignored).
    pub stop_command: Option<String>,
    /// service = "command": exits 0 while it runs.
    pub active_command: Option<String>,
    /// Seconds to wait for the agent to come up.
    #[serde(default = "default_verify_secs")]
    pub verify_timeout_secs: u64,
}

pub(super) fn default_port() -> u16 {
    22
}
pub(super) fn default_user() -> String {
    "root".into()
}
pub(super) fn default_root() -> String {
    "/".into()
}
pub(super) fn default_bin_path() -> String {
    "/usr/bin/convoy-agent".into()
}
pub(super) fn default_config_path() -> String {
    "/etc/convoy-agent/agent.toml".into()
}
pub(super) fn default_unit_path() -> String {
    "/etc/systemd/system/convoy-agent.service".into()
}
pub(super) fn default_verify_secs() -> u64 {
    60
}

/// Inventory file: defaults shared by all boards, and the boards.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InventoryFile {
    #[serde(default)]
    defaults: toml::Table,
    #[serde(default)]
    board: Vec<toml::Table>,
}

/// Reads an inventory: each board table over the defaults, paths relative
/// to the inventory's folder.
pub fn load_inventory(path: &Path) -> Result<Vec<Board>, DeployError> {
    let bad = |message: String| DeployError::Inventory {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let file: InventoryFile = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if file.board.is_empty() {
        return Err(bad("no [[board]] tables".into()));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let mut boards = Vec::new();
    for (i, table) in file.board.into_iter().enumerate() {
        let mut merged = file.defaults.clone();
        merged.extend(table);
        let mut board: Board = merged
            .try_into()
            .map_err(|e: toml::de::Error| bad(format!("board {}: {}", i + 1, e.message())))?;
        for p in [&mut board.artifact, &mut board.config]
            .into_iter()
            .chain(board.unit.as_mut())
            .chain(board.identity_file.as_mut())
            .chain(board.password_file.as_mut())
            .chain(board.keys_dir.as_mut())
            .chain(board.status_password_file.as_mut())
            .chain(board.status_ca_file.as_mut())
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        board
            .check()
            .map_err(|m| bad(format!("board {:?}: {m}", board.name)))?;
        boards.push(board);
    }
    let mut names: Vec<&str> = boards.iter().map(|b| b.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(bad(format!("board name {:?} is used twice", w[0])));
    }
    Ok(boards)
}

impl Board {
    pub(super) fn check(&self) -> Result<(), String> {
        if !topics::valid_id(&self.client_id) {
            return Err(format!(
                "client_id {:?} must be 1-64 characters of A-Z a-z 0-9 _ . -",
                self.client_id
            ));
        }
        for p in [
            &self.bin_path,
            &self.config_path,
            &self.unit_path,
            &self.root,
        ] {
            if !p.starts_with('/') {
                return Err(format!("{p:?} must be an absolute path on the board"));
            }
        }
        match self.service {
            ServiceManager::Systemd if self.unit.is_none() => {
                Err("service = \"systemd\" needs `unit` (e.g. systemd/convoy-agent.service)".into())
            }
            ServiceManager::Command
                if self.start_command.is_none() || self.active_command.is_none() =>
            {
                Err("service = \"command\" needs start_command and active_command".into())
            }
            _ => Ok(()),
        }
    }

    /// `path` below the board's install root.
    pub(super) fn on_board(&self, path: &str) -> String {
        match self.root.trim_end_matches('/') {
            "" => path.to_string(),
            root => format!("{root}{path}"),
        }
    }

    pub(super) fn unit_name(&self) -> &str {
        self.unit_path
            .rsplit('/')
            .next()
            .unwrap_or("convoy-agent.service")
    }

    /// A service command with `{root}`, `{bin}` and `{config}` filled in.
    pub(super) fn command(&self, template: &str) -> String {
        template
            .replace("{root}", &self.root)
            .replace("{bin}", &self.on_board(&self.bin_path))
            .replace("{config}", &self.on_board(&self.config_path))
    }

    pub(super) fn ssh_args(&self) -> Vec<String> {
        let mut args = vec![
            "-p".to_string(),
            self.port.to_string(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "ConnectTimeout=10".into(),
        ];
        if let Some(key) = &self.identity_file {
            args.extend(["-i".into(), key.display().to_string()]);
        }
        for o in &self.ssh_options {
            args.extend(["-o".into(), o.clone()]);
        }
        args.push(format!("{}@{}", self.user, self.host));
        args
    }

    pub(super) fn password(&self) -> Result<Option<String>, String> {
        match (&self.password_env, &self.password_file) {
            (Some(var), _) => std::env::var(var)
                .map(Some)
                .map_err(|_| format!("password_env {var} is not set on this machine")),
            (None, Some(file)) => std::fs::read_to_string(file)
                .map(|t| Some(t.lines().next().unwrap_or_default().to_string()))
                .map_err(|e| format!("cannot read password_file {}: {e}", file.display())),
            (None, None) => match self.vehicle_keys() {
                Some(dir) => std::fs::read_to_string(dir.join("broker-password"))
                    .map(|t| Some(t.lines().next().unwrap_or_default().to_string()))
                    .map_err(|e| format!("cannot read {}/broker-password: {e}", dir.display())),
                None => Ok(None),
            },
        }
    }

    /// This board's folder below `keys_dir`.
    pub(super) fn vehicle_keys(&self) -> Option<PathBuf> {
        self.keys_dir.as_ref().map(|d| d.join(&self.client_id))
    }

    /// The watcher's login, if configured.
    pub(super) fn status_login(&self) -> Result<Option<(String, String)>, String> {
        let (Some(user), Some(file)) = (&self.status_username, &self.status_password_file) else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read status_password_file {}: {e}", file.display()))?;
        Ok(Some((
            user.clone(),
            text.lines().next().unwrap_or_default().to_string(),
        )))
    }
}
