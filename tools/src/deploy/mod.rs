//! `convoy-server deploy`: installs the agent on boards over SSH, checks that
//! it came up (service active, and its status with this deployment's label
//! seen on the broker) and rolls back to the previous binary and config when
//! it did not.
//!
//! Every step is a plain `ssh` command (OpenSSH client, batch mode), so what
//! `--dry-run` prints is exactly what a real run executes.
//!
//! | file | idea |
//! |---|---|
//! | `inventory.rs` | the inventory: boards, their service manager, defaults |
//! | `plan.rs` | the steps for one board: scripts, config rendering, architecture check |
//! | `remote.rs` | running a step: ssh, waiting for the service and the agent's status |

mod inventory;
mod plan;
mod remote;

#[cfg(test)]
mod tests;

pub use inventory::{Board, ServiceManager, load_inventory};

use convoy_shared::topics;
use plan::*;
use remote::*;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;
use thiserror::Error;

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
            Action::WaitStatus {
                url,
                fleet,
                ca_file,
            } => wait_status(&board, url, fleet, ca_file.clone(), &label).await,
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
