//! `convoy-server deploy`: installs the agent on boards over SSH, checks that
//! it came up (service active, and its status with this deployment's label
//! seen on the broker) and rolls back to the previous binary and config when
//! it did not.
//!
//! Every step is a plain `ssh` command (OpenSSH client, batch mode), so what
//! `--dry-run` prints is exactly what a real run executes.

use convoy_agent::mqtt::{self, BrokerConfig, LinkEvent};
use convoy_shared::messages::{AgentState, Status};
use convoy_shared::topics;
use convoy_shared::wire::{self, Kind};
use serde::Deserialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// `deploy` command line.
#[derive(Debug, Clone, clap::Args)]
pub struct DeployOptions {
    /// Inventory TOML: a `[defaults]` table and one `[[board]]` table per
    /// board (see cross/inventory.example.toml).
    #[arg(long, short)]
    pub inventory: PathBuf,
    /// Print every step (the exact ssh commands) and touch nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Deploy only these boards (names, comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Boards deployed at the same time.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Deployment label written into each agent's config and expected back
    /// in its status [default: deploy-<unix seconds>].
    // clap prints this text verbatim in --help, so it stays plain, not HTML.
    #[allow(rustdoc::invalid_html_tags)]
    #[arg(long)]
    pub label: Option<String>,
}

/// Why a deploy could not start.
#[derive(Debug, Error)]
pub enum DeployError {
    /// The inventory cannot be read or is wrong.
    #[error("inventory {path}: {message}")]
    Inventory {
        /// File.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

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
    /// Broker the deployer watches for the agent's status (default: the
    /// agent's own broker URL).
    pub status_broker_url: Option<String>,
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

fn default_port() -> u16 {
    22
}
fn default_user() -> String {
    "root".into()
}
fn default_root() -> String {
    "/".into()
}
fn default_bin_path() -> String {
    "/usr/bin/convoy-agent".into()
}
fn default_config_path() -> String {
    "/etc/convoy-agent/agent.toml".into()
}
fn default_unit_path() -> String {
    "/etc/systemd/system/convoy-agent.service".into()
}
fn default_verify_secs() -> u64 {
    60
}

/// Inventory file: defaults shared by all boards, and the boards.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InventoryFile {
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
    fn check(&self) -> Result<(), String> {
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
    fn on_board(&self, path: &str) -> String {
        match self.root.trim_end_matches('/') {
            "" => path.to_string(),
            root => format!("{root}{path}"),
        }
    }

    fn unit_name(&self) -> &str {
        self.unit_path
            .rsplit('/')
            .next()
            .unwrap_or("convoy-agent.service")
    }

    /// A service command with `{root}`, `{bin}` and `{config}` filled in.
    fn command(&self, template: &str) -> String {
        template
            .replace("{root}", &self.root)
            .replace("{bin}", &self.on_board(&self.bin_path))
            .replace("{config}", &self.on_board(&self.config_path))
    }

    fn ssh_args(&self) -> Vec<String> {
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

    fn password(&self) -> Result<Option<String>, String> {
        match (&self.password_env, &self.password_file) {
            (Some(var), _) => std::env::var(var)
                .map(Some)
                .map_err(|_| format!("password_env {var} is not set on this machine")),
            (None, Some(file)) => std::fs::read_to_string(file)
                .map(|t| Some(t.lines().next().unwrap_or_default().to_string()))
                .map_err(|e| format!("cannot read password_file {}: {e}", file.display())),
            (None, None) => Ok(None),
        }
    }
}

/// Quotes `s` for a POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// What one step does.
#[derive(Debug, Clone)]
enum Action {
    /// Runs a script on the board; `expect` checks its output.
    Remote { script: String },
    /// Streams `bytes` into `remote` (through `cat`), then sets its mode.
    Upload {
        bytes: Vec<u8>,
        source: String,
        remote: String,
        mode: &'static str,
    },
    /// Polls the service's "active" check.
    WaitActive { script: String },
    /// Waits for the agent's status carrying this deployment label.
    WaitStatus { url: String, fleet: String },
}

#[derive(Debug, Clone)]
struct Step {
    what: String,
    action: Action,
}

/// How one board's deploy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Installed and verified.
    Ok,
    /// Did not come up; the previous binary and config are back.
    RolledBack,
    /// Failed before anything changed on the board, or the rollback failed.
    Failed,
    /// `--dry-run`.
    DryRun,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Ok => "ok",
            Outcome::RolledBack => "rolled back",
            Outcome::Failed => "FAILED",
            Outcome::DryRun => "dry run",
        })
    }
}

/// One row of the result table.
#[derive(Debug, Clone)]
pub struct BoardResult {
    /// Board name.
    pub board: String,
    /// `user@host:port`.
    pub target: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Steps completed.
    pub steps: usize,
    /// Wall seconds.
    pub seconds: f64,
    /// What happened last (the error, or what was verified).
    pub detail: String,
}

/// The per-board result table.
pub fn table(results: &[BoardResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:<28} {:<12} {:>5} {:>7}  detail",
        "board", "target", "result", "steps", "secs"
    );
    for r in results {
        let _ = writeln!(
            out,
            "{:<16} {:<28} {:<12} {:>5} {:>7.1}  {}",
            r.board,
            r.target,
            r.outcome.to_string(),
            r.steps,
            r.seconds,
            r.detail
        );
    }
    out
}

/// The agent config for `board`: the template with its identity filled in.
/// The agent config for `board` as TOML, and as the agent will read it.
fn render_config(
    board: &Board,
    label: &str,
    has_password: bool,
) -> Result<(String, convoy_agent::config::AgentConfig), String> {
    let text = std::fs::read_to_string(&board.config).map_err(|e| {
        format!(
            "cannot read config template {}: {e}",
            board.config.display()
        )
    })?;
    let mut config: toml::Table = toml::from_str(&text)
        .map_err(|e| format!("config template {}: {e}", board.config.display()))?;
    config.insert("client_id".into(), board.client_id.clone().into());
    // Below a temporary root, the agent's own absolute paths move too.
    let below_root = |value: &mut toml::Value| {
        if let toml::Value::String(p) = value
            && p.starts_with('/')
        {
            *p = board.on_board(p);
        }
    };
    if let Some(v) = config.get_mut("state_dir") {
        below_root(v);
    }
    if let Some(v) = config
        .get_mut("data")
        .and_then(|d| d.as_table_mut())
        .and_then(|d| d.get_mut("path"))
    {
        below_root(v);
    }
    config.insert("deployment".into(), label.into());
    if let Some(fleet) = &board.fleet {
        config.insert("fleet".into(), fleet.clone().into());
    }
    let broker = config
        .entry("broker")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .ok_or("config template: [broker] is not a table")?;
    if let Some(url) = &board.broker_url {
        broker.insert("url".into(), url.clone().into());
    }
    broker.remove("password");
    if has_password {
        let user = board
            .username
            .clone()
            .unwrap_or_else(|| board.client_id.clone());
        broker.insert("username".into(), user.into());
        if board.service == ServiceManager::Command {
            broker.insert("password_file".into(), password_path(board).into());
        }
    }
    let rendered = toml::to_string(&config).map_err(|e| e.to_string())?;
    // The agent must accept what it is given.
    let parsed: convoy_agent::config::AgentConfig =
        toml::from_str(&rendered).map_err(|e| format!("rendered config is invalid: {e}"))?;
    parsed
        .validate()
        .map_err(|e| format!("rendered config is invalid: {e}"))?;
    Ok((rendered, parsed))
}

/// Where the vehicle's broker password lives on the board (not below `root`:
/// it is what the agent itself opens).
fn password_path(board: &Board) -> String {
    let dir = board.config_path.rsplit_once('/').map_or("", |(d, _)| d);
    board.on_board(&format!("{dir}/broker-password"))
}

/// The ELF machine of the artifact as `uname -m` names it.
fn elf_arch(bytes: &[u8]) -> Option<&'static str> {
    if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" {
        return None;
    }
    let machine = match bytes[5] {
        1 => u16::from_le_bytes([bytes[18], bytes[19]]),
        _ => u16::from_be_bytes([bytes[18], bytes[19]]),
    };
    match machine {
        0xb7 => Some("aarch64"),
        0x28 => Some("armv7l"),
        0x3e => Some("x86_64"),
        _ => None,
    }
}

/// The steps that install and start the agent on `board`.
/// Also returns the index of the swap step: a failure after it rolls back.
fn plan(board: &Board, label: &str) -> Result<(Vec<Step>, usize), String> {
    let artifact = std::fs::read(&board.artifact)
        .map_err(|e| format!("cannot read artifact {}: {e}", board.artifact.display()))?;
    let password = board.password()?;
    let (config, agent) = render_config(board, label, password.is_some())?;
    let bin = board.on_board(&board.bin_path);
    let cfg = board.on_board(&board.config_path);
    let unit = board.on_board(&board.unit_path);
    let dir = |p: &str| p.rsplit_once('/').map_or("/", |(d, _)| d).to_string();
    let mut steps = Vec::new();
    let arch = elf_arch(&artifact);
    let check = match arch {
        // armv7 binaries also run on armv8l kernels in 32-bit mode
        Some("armv7l") => {
            "case $(uname -m) in armv7*|armv8l) echo ok;; *) uname -m; exit 1;; esac".to_string()
        }
        Some(a) => format!("test \"$(uname -m)\" = {a} || {{ uname -m; exit 1; }}"),
        None => "uname -m".to_string(),
    };
    steps.push(Step {
        what: format!("check the board is {}", arch.unwrap_or("reachable")),
        action: Action::Remote { script: check },
    });
    let mut dirs = vec![
        dir(&bin),
        dir(&cfg),
        board.on_board("/var/lib/convoy-agent"),
    ];
    if board.service == ServiceManager::Systemd {
        dirs.push(dir(&unit));
    }
    steps.push(Step {
        what: "create install folders".into(),
        action: Action::Remote {
            script: format!(
                "mkdir -p {}",
                dirs.iter()
                    .map(|d| sh_quote(d))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        },
    });
    steps.push(Step {
        what: format!("upload agent binary ({} bytes)", artifact.len()),
        action: Action::Upload {
            bytes: artifact,
            source: board.artifact.display().to_string(),
            remote: format!("{bin}.new"),
            mode: "0755",
        },
    });
    steps.push(Step {
        what: format!("upload config for {}", board.client_id),
        action: Action::Upload {
            bytes: config.clone().into_bytes(),
            source: format!("{} (rendered)", board.config.display()),
            remote: format!("{cfg}.new"),
            mode: "0644",
        },
    });
    if let Some(password) = &password {
        steps.push(Step {
            what: "upload broker password (mode 0600)".into(),
            action: Action::Upload {
                bytes: format!("{password}\n").into_bytes(),
                source: match (&board.password_env, &board.password_file) {
                    (Some(var), _) => format!("${var}"),
                    (None, Some(file)) => file.display().to_string(),
                    (None, None) => String::new(),
                },
                remote: password_path(board),
                mode: "0600",
            },
        });
    }
    if let (ServiceManager::Systemd, Some(unit_file)) = (board.service, &board.unit) {
        let text = std::fs::read(unit_file)
            .map_err(|e| format!("cannot read unit {}: {e}", unit_file.display()))?;
        steps.push(Step {
            what: "upload systemd unit".into(),
            action: Action::Upload {
                bytes: text,
                source: unit_file.display().to_string(),
                remote: unit.clone(),
                mode: "0644",
            },
        });
        if password.is_some() {
            steps.push(Step {
                what: "upload credential drop-in".into(),
                action: Action::Upload {
                    bytes: format!(
                        "[Service]\nLoadCredential=broker-password:{}\n",
                        password_path(board)
                    )
                    .into_bytes(),
                    source: "(generated)".into(),
                    remote: format!("{unit}.d/identity.conf"),
                    mode: "0644",
                },
            });
        }
    }
    // Keep what runs now as .prev, then move the new files into place.
    let swap = [&bin, &cfg]
        .iter()
        .map(|f| {
            let q = sh_quote(f);
            let n = sh_quote(&format!("{f}.new"));
            let p = sh_quote(&format!("{f}.prev"));
            format!("if [ -e {q} ]; then cp -p {q} {p}; fi && mv -f {n} {q}")
        })
        .collect::<Vec<_>>()
        .join(" && ");
    let swap_index = steps.len();
    steps.push(Step {
        what: "keep the running version as .prev and swap in the new one".into(),
        action: Action::Remote { script: swap },
    });
    steps.push(Step {
        what: "restart the agent".into(),
        action: Action::Remote {
            script: restart_script(board),
        },
    });
    steps.push(Step {
        what: "verify the service is active".into(),
        action: Action::WaitActive {
            script: active_script(board),
        },
    });
    let url = board.status_broker_url.clone().unwrap_or(agent.broker.url);
    steps.push(Step {
        what: format!("verify the agent reports deployment {label} on the broker"),
        action: Action::WaitStatus {
            url,
            fleet: agent.fleet,
        },
    });
    Ok((steps, swap_index))
}

fn restart_script(board: &Board) -> String {
    match board.service {
        ServiceManager::Systemd => {
            let unit = sh_quote(board.unit_name());
            format!(
                "systemctl daemon-reload && systemctl enable {unit} && systemctl restart {unit}"
            )
        }
        ServiceManager::Command => {
            let stop = board.stop_command.as_deref().map(|c| board.command(c));
            let start = board.command(board.start_command.as_deref().unwrap_or_default());
            match stop {
                Some(stop) => format!("{{ {stop} ; }} >/dev/null 2>&1; {start}"),
                None => start,
            }
        }
    }
}

fn active_script(board: &Board) -> String {
    match board.service {
        ServiceManager::Systemd => {
            format!(
                "systemctl is-active --quiet {}",
                sh_quote(board.unit_name())
            )
        }
        ServiceManager::Command => {
            board.command(board.active_command.as_deref().unwrap_or_default())
        }
    }
}

fn rollback_script(board: &Board) -> String {
    let bin = board.on_board(&board.bin_path);
    let cfg = board.on_board(&board.config_path);
    let restore = [&bin, &cfg]
        .iter()
        .map(|f| {
            let q = sh_quote(f);
            let p = sh_quote(&format!("{f}.prev"));
            format!("mv -f {p} {q}")
        })
        .collect::<Vec<_>>()
        .join(" && ");
    let bq = sh_quote(&format!("{bin}.prev"));
    format!(
        "if [ ! -e {bq} ]; then echo 'no previous version to roll back to'; exit 3; fi; {restore} && {}",
        restart_script(board)
    )
}

/// Runs `script` on the board through `sh -c`; the output, or why it failed.
async fn ssh(board: &Board, script: &str, stdin: Option<&[u8]>) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new("ssh");
    cmd.args(board.ssh_args())
        .arg(format!("sh -c {}", sh_quote(script)))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run ssh (install the OpenSSH client): {e}"))?;
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(bytes)
            .await
            .map_err(|e| format!("ssh input: {e}"))?;
        drop(pipe);
    }
    let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .map_err(|_| "ssh did not finish within 300 s".to_string())?
        .map_err(|e| format!("ssh: {e}"))?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        let mut why = text(&out.stderr);
        if why.is_empty() {
            why = text(&out.stdout);
        }
        Err(format!("exit {}: {why}", out.status.code().unwrap_or(-1)))
    }
}

/// Shows a step the way it runs, for `--dry-run`.
fn describe(board: &Board, step: &Step) -> String {
    let ssh = format!("ssh {}", board.ssh_args().join(" "));
    match &step.action {
        Action::Remote { script } | Action::WaitActive { script } => {
            format!("{ssh} {}", sh_quote(&format!("sh -c {}", sh_quote(script))))
        }
        Action::Upload {
            source,
            remote,
            mode,
            ..
        } => format!(
            "{ssh} {} < {source}",
            sh_quote(&format!("sh -c {}", sh_quote(&upload_script(remote, mode))))
        ),
        Action::WaitStatus { url, fleet } => format!(
            "subscribe {url} {}: wait for a status with this deployment label, not offline",
            topics::client(fleet, topics::ClientTopic::Status, &board.client_id)
        ),
    }
}

fn upload_script(remote: &str, mode: &str) -> String {
    let tmp = sh_quote(&format!("{remote}.part"));
    let q = sh_quote(remote);
    let dir = sh_quote(remote.rsplit_once('/').map_or("/", |(d, _)| d));
    format!("mkdir -p {dir} && umask 077 && cat > {tmp} && chmod {mode} {tmp} && mv -f {tmp} {q}")
}

async fn wait_active(board: &Board, script: &str) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(board.verify_timeout_secs);
    loop {
        // Active twice a second apart: a crash loop shows as inactive.
        if ssh(board, script, None).await.is_ok() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if ssh(board, script, None).await.is_ok() {
                return Ok("service active".into());
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "service not active after {} s",
                board.verify_timeout_secs
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until the agent publishes a status carrying `label`.
async fn wait_status(board: &Board, url: &str, fleet: &str, label: &str) -> Result<String, String> {
    let config = BrokerConfig {
        url: url.to_string(),
        max_packet_size: 1024 * 1024,
        ..Default::default()
    };
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    let watcher_id = format!("convoy-deploy-{}", std::process::id());
    let mut link = mqtt::open(&config, &watcher_id, None, &tracker, stop.clone())
        .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(board.verify_timeout_secs);
    let topic = topics::client(fleet, topics::ClientTopic::Status, &board.client_id);
    loop {
        let event = tokio::time::timeout_at(deadline, link.events.recv())
            .await
            .map_err(|_| {
                format!(
                    "no status with deployment {label} from {} within {} s",
                    board.client_id, board.verify_timeout_secs
                )
            })?
            .ok_or("broker link closed")?;
        match event {
            LinkEvent::Connected => link
                .client
                .subscribe(topic.as_str())
                .await
                .map_err(|e| e.to_string())?,
            LinkEvent::Message {
                topic: t, payload, ..
            } if t == topic.as_str() => {
                let Ok(status) = wire::decode::<Status>(&payload, Kind::Status, 4096) else {
                    continue;
                };
                if status.deployment.as_str() == label && status.state != AgentState::Offline {
                    return Ok(format!(
                        "agent {} up ({:?}, deployment {label})",
                        status.version, status.state
                    ));
                }
            }
            LinkEvent::Message { .. } => {}
        }
    }
}

async fn deploy_board(board: Board, label: String, dry_run: bool) -> BoardResult {
    let started = Instant::now();
    let mut result = BoardResult {
        board: board.name.clone(),
        target: format!("{}@{}:{}", board.user, board.host, board.port),
        outcome: Outcome::Failed,
        steps: 0,
        seconds: 0.0,
        detail: String::new(),
    };
    let (steps, swap_index) = match plan(&board, &label) {
        Ok(plan) => plan,
        Err(e) => {
            result.detail = e;
            return result;
        }
    };
    for (i, step) in steps.iter().enumerate() {
        let tag = format!("[{}] {}/{}", board.name, i + 1, steps.len());
        if dry_run {
            println!("{tag} {}\n    {}", step.what, describe(&board, step));
            result.steps += 1;
            continue;
        }
        println!("{tag} {}", step.what);
        let done = match &step.action {
            Action::Remote { script } => ssh(&board, script, None).await,
            Action::Upload {
                bytes,
                remote,
                mode,
                ..
            } => ssh(&board, &upload_script(remote, mode), Some(bytes)).await,
            Action::WaitActive { script } => wait_active(&board, script).await,
            Action::WaitStatus { url, fleet } => wait_status(&board, url, fleet, &label).await,
        };
        match done {
            Ok(out) => {
                result.steps += 1;
                result.detail = out;
            }
            Err(why) => {
                println!("{tag} failed: {why}");
                result.detail = format!("{}: {why}", step.what);
                if i > swap_index {
                    println!("[{}] rolling back to the previous version", board.name);
                    let back = ssh(&board, &rollback_script(&board), None).await;
                    let up = match back {
                        Ok(_) => wait_active(&board, &active_script(&board)).await,
                        Err(e) => Err(e),
                    };
                    match up {
                        Ok(_) => result.outcome = Outcome::RolledBack,
                        Err(e) => result.detail.push_str(&format!("; rollback failed: {e}")),
                    }
                } else if steps[..=i]
                    .iter()
                    .any(|s| matches!(s.action, Action::Upload { .. }))
                {
                    // Nothing was swapped in; leave no half-uploaded files.
                    let bin = board.on_board(&board.bin_path);
                    let cfg = board.on_board(&board.config_path);
                    let _ = ssh(
                        &board,
                        &format!(
                            "rm -f {} {}",
                            sh_quote(&format!("{bin}.new")),
                            sh_quote(&format!("{cfg}.new"))
                        ),
                        None,
                    )
                    .await;
                }
                result.seconds = started.elapsed().as_secs_f64();
                return result;
            }
        }
    }
    result.outcome = if dry_run {
        Outcome::DryRun
    } else {
        Outcome::Ok
    };
    if dry_run {
        result.detail = "nothing changed".into();
    }
    result.seconds = started.elapsed().as_secs_f64();
    result
}

/// Deploys to every board of the inventory (or those in `--only`), at most
/// `--parallel` at once; one result per board, in inventory order.
pub async fn run(options: &DeployOptions) -> Result<Vec<BoardResult>, DeployError> {
    let mut boards = load_inventory(&options.inventory)?;
    if !options.only.is_empty() {
        let unknown: Vec<&String> = options
            .only
            .iter()
            .filter(|n| !boards.iter().any(|b| &&b.name == n))
            .collect();
        if !unknown.is_empty() {
            return Err(DeployError::Inventory {
                path: options.inventory.clone(),
                message: format!("no board named {unknown:?}"),
            });
        }
        boards.retain(|b| options.only.contains(&b.name));
    }
    let label = match &options.label {
        Some(l) if topics::valid_id(l) => l.clone(),
        Some(l) => {
            return Err(DeployError::Inventory {
                path: options.inventory.clone(),
                message: format!("--label {l:?} must be 1-64 characters of A-Z a-z 0-9 _ . -"),
            });
        }
        None => format!(
            "deploy-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        ),
    };
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(options.parallel.max(1)));
    let mut tasks = Vec::new();
    for board in boards {
        let limit = limit.clone();
        let label = label.clone();
        let dry_run = options.dry_run;
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await;
            deploy_board(board, label, dry_run).await
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        match task.await {
            Ok(r) => results.push(r),
            Err(e) => results.push(BoardResult {
                board: "?".into(),
                target: String::new(),
                outcome: Outcome::Failed,
                steps: 0,
                seconds: 0.0,
                detail: format!("deploy task failed: {e}"),
            }),
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes_and_spaces() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn elf_machine_is_read_from_the_header() {
        let mut h = vec![0u8; 20];
        h[..4].copy_from_slice(b"\x7fELF");
        h[5] = 1;
        h[18] = 0xb7;
        assert_eq!(elf_arch(&h), Some("aarch64"));
        h[18] = 0x28;
        assert_eq!(elf_arch(&h), Some("armv7l"));
        assert_eq!(elf_arch(b"#!/bin/sh\nexit 1\n"), None);
    }

    #[test]
    fn inventory_defaults_apply_and_errors_name_the_board() {
        let dir = tempfile::tempdir().unwrap();
        let inv = dir.path().join("fleet.toml");
        std::fs::write(
            &inv,
            r#"
[defaults]
artifact = "agent"
config = "agent.toml"
unit = "convoy-agent.service"
port = 2222

[[board]]
name = "a"
host = "10.0.0.1"
client_id = "truck-1"

[[board]]
name = "b"
host = "10.0.0.2"
client_id = "truck-2"
port = 22
"#,
        )
        .unwrap();
        let boards = load_inventory(&inv).unwrap();
        assert_eq!(boards[0].port, 2222);
        assert_eq!(boards[1].port, 22);
        assert_eq!(boards[0].artifact, dir.path().join("agent"));
        std::fs::write(
            &inv,
            "[[board]]\nname = \"a\"\nhost = \"h\"\nclient_id = \"bad id\"\nartifact = \"x\"\nconfig = \"y\"\nunit = \"z\"\n",
        )
        .unwrap();
        let err = load_inventory(&inv).unwrap_err().to_string();
        assert!(
            err.contains("board \"a\"") && err.contains("client_id"),
            "{err}"
        );
    }
}
