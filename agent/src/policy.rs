//! When the vehicle lets the agent train: a time window, a condition the
//! vehicle's own software reports (a file or a command), how long that
//! condition must have held, and a memory cap.
//!
//! [`Policy`] only decides from what it was told; [`check_condition`] (the
//! file test and the command, asynchronous and bounded by a timeout) runs in
//! the agent's I/O loop and feeds its answer in, so no check ever blocks the
//! async runtime.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::time::Instant;

/// How long the condition command may run before it counts as "no".
pub const CONDITION_TIMEOUT: Duration = Duration::from_secs(2);

/// The `[policy]` section of the agent config. Unset fields allow anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// UTC time window `HH:MM-HH:MM` (may wrap midnight), e.g. `22:00-05:30`.
    pub window: Option<Window>,
    /// Train only while this file exists (e.g. written by the vehicle's
    /// software while parked with the charger connected).
    pub condition_file: Option<PathBuf>,
    /// Train only while this command (run by `/bin/sh -c`) exits 0; it gets
    /// 2 s before it is killed and counted as "no".
    pub condition_command: Option<String>,
    /// Seconds the conditions must have held before training starts.
    pub min_idle_secs: u64,
    /// Seconds between checks of file and command (1 to 86400, default 5).
    pub check_secs: u64,
    /// Skip rounds whose estimated training memory exceeds this many MiB (0: no cap).
    pub max_memory_mb: u64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            window: None,
            condition_file: None,
            condition_command: None,
            min_idle_secs: 0,
            check_secs: 5,
            max_memory_mb: 0,
        }
    }
}

/// A daily window in minutes since midnight UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Window {
    start: u32,
    end: u32,
}

impl Window {
    /// Parses `HH:MM-HH:MM`.
    pub fn parse(s: &str) -> Option<Self> {
        let minutes = |t: &str| {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        let (a, b) = s.split_once('-')?;
        Some(Self {
            start: minutes(a)?,
            end: minutes(b)?,
        })
    }

    /// Whether `minute` (of the UTC day) is inside; wraps midnight when
    /// start > end; start == end means all day.
    pub fn contains(&self, minute: u32) -> bool {
        match self.start.cmp(&self.end) {
            std::cmp::Ordering::Less => (self.start..self.end).contains(&minute),
            std::cmp::Ordering::Greater => minute >= self.start || minute < self.end,
            std::cmp::Ordering::Equal => true,
        }
    }
}

impl TryFrom<String> for Window {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        Window::parse(&s).ok_or_else(|| {
            format!("policy.window {s:?} is not HH:MM-HH:MM (UTC), e.g. \"22:00-05:30\"")
        })
    }
}

impl From<Window> for String {
    fn from(w: Window) -> String {
        format!(
            "{:02}:{:02}-{:02}:{:02}",
            w.start / 60,
            w.start % 60,
            w.end / 60,
            w.end % 60
        )
    }
}

impl PolicyConfig {
    /// Whether a file or command must be checked.
    pub fn has_condition(&self) -> bool {
        self.condition_file.is_some() || self.condition_command.is_some()
    }

    /// Time between condition checks.
    pub fn check_every(&self) -> Duration {
        Duration::from_secs(self.check_secs.clamp(1, 86_400))
    }

    /// Checks the numbers a config file can get wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.min_idle_secs > 604_800 {
            return Err(format!(
                "policy.min_idle_secs {} must be 0 to 604800 (a week)",
                self.min_idle_secs
            ));
        }
        if !(1..=86_400).contains(&self.check_secs) {
            return Err(format!(
                "policy.check_secs {} must be 1 to 86400",
                self.check_secs
            ));
        }
        Ok(())
    }
}

/// Evaluates a [`PolicyConfig`] from the condition answers it is given.
#[derive(Debug)]
pub struct Policy {
    config: PolicyConfig,
    /// Since when the condition has held; `None` while it does not.
    condition_since: Option<Instant>,
}

impl Policy {
    /// A policy; without a condition to check, the condition holds from `now`.
    pub fn new(config: PolicyConfig, now: Instant) -> Self {
        let condition_since = (!config.has_condition()).then_some(now);
        Self {
            config,
            condition_since,
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Records the answer of a condition check made at `at`.
    pub fn observe(&mut self, condition: bool, at: Instant) {
        match (condition, self.condition_since) {
            (true, None) => self.condition_since = Some(at),
            (false, _) => self.condition_since = None,
            (true, Some(_)) => {}
        }
    }

    /// Whether training may run at wall time `unix_secs`, monotonic `now`.
    pub fn allowed(&self, unix_secs: u64, now: Instant) -> bool {
        let minute = ((unix_secs / 60) % (24 * 60)) as u32;
        let in_window = self.config.window.is_none_or(|w| w.contains(minute));
        let settled = self.condition_since.is_some_and(|t| {
            now.saturating_duration_since(t) >= Duration::from_secs(self.config.min_idle_secs)
        });
        in_window && settled
    }

    /// The memory cap in bytes, if any.
    pub fn memory_cap(&self) -> Option<u64> {
        (self.config.max_memory_mb > 0).then(|| self.config.max_memory_mb * 1024 * 1024)
    }
}

/// Checks the configured condition: the file exists and the command exits 0
/// within [`CONDITION_TIMEOUT`] (a command that hangs is killed and is "no").
pub async fn check_condition(config: &PolicyConfig) -> bool {
    if let Some(file) = &config.condition_file
        && !tokio::fs::try_exists(file).await.unwrap_or(false)
    {
        return false;
    }
    match &config.condition_command {
        Some(command) => run_condition(command).await,
        None => true,
    }
}

async fn run_condition(command: &str) -> bool {
    let child = tokio::process::Command::new("/bin/sh")
        .args(["-c", command])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let Ok(mut child) = child else {
        return false;
    };
    match tokio::time::timeout(CONDITION_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) => status.success(),
        _ => {
            let _ = child.kill().await;
            false
        }
    }
}

/// Rough bytes training needs: the data, four copies of the parameters
/// (weights, gradients, base, update) and a batch of activations both ways.
pub fn training_memory(params: usize, data_values: usize, batch: usize, widest: usize) -> u64 {
    ((data_values + 4 * params + 4 * batch * widest) * 4) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_wrap_midnight() {
        let night = Window::parse("22:00-05:30").unwrap();
        assert!(night.contains(23 * 60) && night.contains(60) && !night.contains(12 * 60));
        assert!(!night.contains(5 * 60 + 30));
        let day = Window::parse("08:00-17:00").unwrap();
        assert!(day.contains(8 * 60) && !day.contains(17 * 60));
        assert!(Window::parse("00:00-00:00").unwrap().contains(999));
        for bad in ["", "8-17", "25:00-01:00", "10:61-11:00", "10:00"] {
            assert!(Window::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(String::from(night), "22:00-05:30");
        let err = toml::from_str::<PolicyConfig>("window = \"soon\"").unwrap_err();
        assert!(err.to_string().contains("HH:MM-HH:MM"), "{err}");
    }

    #[tokio::test]
    async fn conditions_file_command_and_idle_time() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("parked");
        let config = PolicyConfig {
            condition_file: Some(flag.clone()),
            check_secs: 1,
            ..Default::default()
        };
        let t0 = Instant::now();
        let mut p = Policy::new(config.clone(), t0);
        assert!(!p.allowed(0, t0), "no answer yet: not allowed");
        assert!(!check_condition(&config).await);
        std::fs::write(&flag, "").unwrap();
        let ok = check_condition(&config).await;
        assert!(ok);
        p.observe(ok, t0);
        assert!(p.allowed(0, t0));
        std::fs::remove_file(&flag).unwrap();
        p.observe(check_condition(&config).await, t0);
        assert!(!p.allowed(0, t0));

        let command = |c: &str| PolicyConfig {
            condition_command: Some(c.into()),
            ..Default::default()
        };
        assert!(check_condition(&command("exit 0")).await);
        assert!(!check_condition(&command("exit 3")).await);
        let mut p = Policy::new(
            PolicyConfig {
                min_idle_secs: 3600,
                ..command("true")
            },
            t0,
        );
        p.observe(true, t0);
        assert!(!p.allowed(0, t0), "condition must have held for an hour");
        assert!(p.allowed(0, t0 + Duration::from_secs(3600)));
        let p = Policy::new(
            PolicyConfig {
                window: Window::parse("10:00-11:00"),
                ..Default::default()
            },
            t0,
        );
        assert!(p.allowed(10 * 3600 + 60, t0) && !p.allowed(12 * 3600, t0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_command_is_no_and_does_not_block() {
        // paused time: the timeout fires without waiting 2 s for real
        assert!(
            !check_condition(&PolicyConfig {
                condition_command: Some("sleep 30".into()),
                ..Default::default()
            })
            .await
        );
    }
}
