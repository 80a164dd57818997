//! One file per `convoy-server` command: its arguments and its `run`.

use anyhow::Context;
use convoy_server::config::ServerConfig;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

#[cfg(feature = "tools")]
pub mod demo;
#[cfg(feature = "tools")]
pub mod deploy;
pub mod keys;
pub mod models;
pub mod plan;
pub mod provision;
pub mod report;
pub mod run;
#[cfg(feature = "tools")]
pub mod simulate;
pub mod tls;
pub mod vehicles;

/// Where a command finds the fleet's database and the server's config,
/// taken the same way by every command and before or after a subcommand
/// (`models --db D list` and `models list --db D` are the same).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DbArgs {
    /// The fleet's database (written by `run`, `demo` or `simulate`);
    /// default: the `db` of --config.
    #[arg(long, env = "CONVOY_DB", global = true)]
    pub db: Option<PathBuf>,
    /// The server's TOML config (see systemd/server.example.toml): its
    /// database when --db is not given, its keys and its `[budget]` caps.
    #[arg(long, short, env = "CONVOY_SERVER_CONFIG", global = true)]
    pub config: Option<PathBuf>,
}

impl DbArgs {
    /// The server config named by --config, if any.
    pub fn server_config(&self) -> anyhow::Result<Option<ServerConfig>> {
        self.config
            .as_deref()
            .map(ServerConfig::load)
            .transpose()
            .map_err(anyhow::Error::from)
    }

    /// The server config, which this command cannot do without.
    pub fn require_config(&self, command: &str) -> anyhow::Result<ServerConfig> {
        self.server_config()?.with_context(|| {
            format!("`{command}` needs the server's config: pass --config FILE (or set CONVOY_SERVER_CONFIG)")
        })
    }

    /// The database: --db, else the config's `db`, if either is given.
    pub fn db_if_any(&self) -> anyhow::Result<Option<PathBuf>> {
        if let Some(db) = &self.db {
            return Ok(Some(db.clone()));
        }
        Ok(self.server_config()?.map(|c| c.db))
    }

    /// The database, which this command cannot do without.
    pub fn db(&self) -> anyhow::Result<PathBuf> {
        match &self.db {
            Some(_) => self.db_of(None),
            None => self.db_of(self.server_config()?.as_ref()),
        }
    }

    /// The database: --db, else the `db` of `config` (the config --config
    /// named, for a command that reads it anyway and loads it once).
    pub fn db_of(&self, config: Option<&ServerConfig>) -> anyhow::Result<PathBuf> {
        self.db.clone().or_else(|| config.map(|c| c.db.clone())).context(
            "which database? pass --db FILE (or set CONVOY_DB), or --config with the server's config",
        )
    }
}

/// Runs `job` on a fresh runtime with a shutdown token that SIGINT/SIGTERM cancel.
pub fn until_signal<T, E, F>(job: impl FnOnce(CancellationToken) -> F) -> anyhow::Result<T>
where
    F: std::future::Future<Output = Result<T, E>>,
    anyhow::Error: From<E>,
{
    Ok(convoy_runtime::process::block_until_signal(None, job)
        .context("starting the async runtime")??)
}
