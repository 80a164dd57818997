//! Running a step: one `ssh` command, or waiting on the service or the broker.

use super::Board;
use super::plan::*;
use convoy_runtime::link::{self, BrokerConfig, BrokerUrl, LinkEvent, Session};
use convoy_shared::identity::PublicKey;
use convoy_shared::messages::{AgentState, Status};
use convoy_shared::topics;
use convoy_shared::wire::{self, Kind};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Runs `script` on the board through `sh -c`; the output, or why it failed.
pub(super) async fn ssh(
    board: &Board,
    script: &str,
    stdin: Option<&[u8]>,
) -> Result<String, String> {
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

pub(super) async fn wait_active(board: &Board, script: &str) -> Result<String, String> {
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

/// The lock that makes status watchers with login `user` take turns.
fn login_turn(user: &str) -> std::sync::Arc<tokio::sync::Mutex<()>> {
    static TURNS: std::sync::LazyLock<
        std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
    > = std::sync::LazyLock::new(Default::default);
    TURNS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(user.to_string())
        .or_default()
        .clone()
}

/// Waits until the agent publishes a status carrying `label`.
pub(super) async fn wait_status(
    board: &Board,
    url: &str,
    fleet: &str,
    ca_file: Option<std::path::PathBuf>,
    label: &str,
) -> Result<String, String> {
    let url: BrokerUrl = url.parse().map_err(|e: link::BadUrl| e.to_string())?;
    let login = board.status_login()?;
    let config = BrokerConfig {
        max_packet_size: 1024 * 1024,
        username: login.as_ref().map(|l| l.0.clone()),
        password: login.as_ref().map(|l| l.1.clone()),
        ca_file,
        ..BrokerConfig::at(url)
    };
    // With the vehicle's public key at hand, only its own signature counts.
    let signer = match board.vehicle_keys() {
        Some(dir) => Some(
            PublicKey::read(&dir.join(convoy_server::identity::VEHICLE_PUB))
                .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    let topic = topics::client(fleet, topics::ClientTopic::Status, &board.client_id);
    // A broker lets one connection hold a client id: boards watched with
    // the same login take turns; without a login each watcher has its own id.
    static WATCHERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let _turn = match &login {
        Some((user, _)) => Some(login_turn(user).lock_owned().await),
        None => None,
    };
    let session = Session {
        client_id: match &login {
            Some((user, _)) => user.clone(),
            None => format!(
                "convoy-deploy-{}-{}",
                std::process::id(),
                WATCHERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
        },
        subscriptions: vec![topic.as_str().to_string()],
        will: None,
    };
    let mut link = link::open(&config, session).map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(board.verify_timeout_secs);
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
            LinkEvent::Connected => {}
            LinkEvent::Message {
                topic: t, payload, ..
            } if t == topic.as_str() => {
                let Ok(envelope) = wire::open(&payload, 4096) else {
                    continue;
                };
                if envelope.kind != Kind::Status {
                    continue;
                }
                // Without keys_dir the status is only a liveness hint: its
                // signature is then not checked here.
                if let Some(key) = &signer
                    && envelope
                        .verify(topic.as_str(), key, &board.client_id)
                        .is_err()
                {
                    continue;
                }
                let Ok(status) = postcard::from_bytes::<Status>(envelope.body) else {
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
