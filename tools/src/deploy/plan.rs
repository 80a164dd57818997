//! The steps that install, restart, verify and roll back one board.

use super::{Board, ServiceManager};
use convoy_server::identity::{SERVER_PUB, VEHICLE_KEY};
use convoy_shared::topics;
use std::path::PathBuf;

/// Quotes `s` for a POSIX shell.
pub(super) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// What one step does.
#[derive(Debug, Clone)]
pub(super) enum Action {
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
    WaitStatus {
        url: String,
        fleet: String,
        ca_file: Option<PathBuf>,
    },
}

#[derive(Debug, Clone)]
pub(super) struct Step {
    pub(super) what: String,
    pub(super) action: Action,
}

/// The agent config for `board`: the template with its identity filled in.
/// The agent config for `board` as TOML, and as the agent will read it.
pub(super) fn render_config(
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
    if board.keys_dir.is_some() {
        let identity = config
            .entry("identity")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or("config template: [identity] is not a table")?;
        identity.insert("key_file".into(), key_path(board, VEHICLE_KEY).into());
        identity.insert("server_key_file".into(), key_path(board, SERVER_PUB).into());
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

/// Where key file `name` goes on the board: beside the config.
pub(super) fn key_path(board: &Board, name: &str) -> String {
    let dir = board.config_path.rsplit_once('/').map_or("", |(d, _)| d);
    board.on_board(&format!("{dir}/{name}"))
}

/// Where the vehicle's broker password lives on the board (not below `root`:
/// it is what the agent itself opens).
pub(super) fn password_path(board: &Board) -> String {
    let dir = board.config_path.rsplit_once('/').map_or("", |(d, _)| d);
    board.on_board(&format!("{dir}/broker-password"))
}

/// The ELF machine of the artifact as `uname -m` names it.
pub(super) fn elf_arch(bytes: &[u8]) -> Option<&'static str> {
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
pub(super) fn plan(board: &Board, label: &str) -> Result<(Vec<Step>, usize), String> {
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
                    (None, None) => board
                        .vehicle_keys()
                        .map(|d| d.join("broker-password").display().to_string())
                        .unwrap_or_default(),
                },
                remote: password_path(board),
                mode: "0600",
            },
        });
    }
    if let Some(dir) = board.vehicle_keys() {
        for (name, mode) in [(VEHICLE_KEY, "0600"), (SERVER_PUB, "0644")] {
            let file = dir.join(name);
            let bytes = std::fs::read(&file).map_err(|e| {
                format!(
                    "cannot read {} (run `convoy-server provision {}`): {e}",
                    file.display(),
                    board.client_id
                )
            })?;
            steps.push(Step {
                what: format!("upload {name} (mode {mode})"),
                action: Action::Upload {
                    bytes,
                    source: file.display().to_string(),
                    remote: key_path(board, name),
                    mode,
                },
            });
        }
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
    let url = board
        .status_broker_url
        .clone()
        .unwrap_or_else(|| agent.broker.url_or_local().to_string());
    steps.push(Step {
        what: format!("verify the agent reports deployment {label} on the broker"),
        action: Action::WaitStatus {
            url,
            fleet: agent.fleet.to_string(),
            ca_file: board
                .status_ca_file
                .clone()
                .or_else(|| agent.broker.ca_file.clone()),
        },
    });
    Ok((steps, swap_index))
}

pub(super) fn restart_script(board: &Board) -> String {
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

pub(super) fn active_script(board: &Board) -> String {
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

pub(super) fn rollback_script(board: &Board) -> String {
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

/// Shows a step the way it runs, for `--dry-run`.
pub(super) fn describe(board: &Board, step: &Step) -> String {
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
        Action::WaitStatus { url, fleet, .. } => format!(
            "subscribe {url} {}: wait for a status with this deployment label, not offline",
            topics::client(fleet, topics::ClientTopic::Status, &board.client_id)
        ),
    }
}

pub(super) fn upload_script(remote: &str, mode: &str) -> String {
    let tmp = sh_quote(&format!("{remote}.part"));
    let q = sh_quote(remote);
    let dir = sh_quote(remote.rsplit_once('/').map_or("/", |(d, _)| d));
    format!("mkdir -p {dir} && umask 077 && cat > {tmp} && chmod {mode} {tmp} && mv -f {tmp} {q}")
}
