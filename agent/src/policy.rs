//! When the vehicle lets the agent train: a time window, a condition the
//! vehicle's own software reports (a file or a command), how long that
//! condition must have held, and a memory cap.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The `[policy]` section of the agent config. Unset fields allow anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// UTC time window `HH:MM-HH:MM` (may wrap midnight), e.g. `22:00-05:30`.
    pub window: Option<String>,
    /// Train only while this file exists (e.g. written by the vehicle's
    /// software while parked with the charger connected).
    pub condition_file: Option<PathBuf>,
    /// Train only while this command (run by `/bin/sh -c`) exits 0; it gets
    /// 2 s before it is killed and counted as "no".
    pub condition_command: Option<String>,
    /// Seconds the conditions must have held before training starts.
    pub min_idle_secs: u64,
    /// Seconds between checks of file and command (default 5).
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Evaluates a [`PolicyConfig`] over time.
#[derive(Debug)]
pub struct Policy {
    config: PolicyConfig,
    window: Option<Window>,
    condition_since: Option<Instant>,
    last_check: Option<Instant>,
    condition: bool,
}

impl Policy {
    /// Checks the config; the error says what is wrong.
    pub fn new(config: PolicyConfig) -> Result<Self, String> {
        let window = match &config.window {
            Some(w) => Some(Window::parse(w).ok_or_else(|| {
                format!("policy.window {w:?} is not HH:MM-HH:MM (UTC), e.g. \"22:00-05:30\"")
            })?),
            None => None,
        };
        Ok(Self {
            config,
            window,
            condition_since: None,
            last_check: None,
            condition: false,
        })
    }

    fn check_condition(&self) -> bool {
        let file_ok = self
            .config
            .condition_file
            .as_ref()
            .is_none_or(|f| f.exists());
        file_ok
            && self
                .config
                .condition_command
                .as_ref()
                .is_none_or(|c| run_condition(c))
    }

    /// Whether training may run now (`unix_secs` is the wall clock).
    pub fn allowed(&mut self, unix_secs: u64) -> bool {
        let every = Duration::from_secs(self.config.check_secs.max(1));
        if self.last_check.is_none_or(|t| t.elapsed() >= every) {
            self.last_check = Some(Instant::now());
            let now = self.check_condition();
            if now && !self.condition {
                self.condition_since = Some(Instant::now());
            }
            if !now {
                self.condition_since = None;
            }
            self.condition = now;
        }
        let minute = ((unix_secs / 60) % (24 * 60)) as u32;
        let in_window = self.window.is_none_or(|w| w.contains(minute));
        let settled = self
            .condition_since
            .is_some_and(|t| t.elapsed() >= Duration::from_secs(self.config.min_idle_secs));
        in_window && self.condition && settled
    }

    /// The memory cap in bytes, if any.
    pub fn memory_cap(&self) -> Option<u64> {
        (self.config.max_memory_mb > 0).then(|| self.config.max_memory_mb * 1024 * 1024)
    }
}

/// Rough bytes training needs: the data, four copies of the parameters
/// (weights, gradients, base, update) and a batch of activations both ways.
pub fn training_memory(params: usize, data_values: usize, batch: usize, widest: usize) -> u64 {
    ((data_values + 4 * params + 4 * batch * widest) * 4) as u64
}

fn run_condition(command: &str) -> bool {
    let Ok(mut child) = Command::new("/bin/sh")
        .args(["-c", command])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
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
        assert!(
            Policy::new(PolicyConfig {
                window: Some("soon".into()),
                ..Default::default()
            })
            .is_err()
        );
    }

    #[test]
    fn conditions_file_command_and_idle_time() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("parked");
        let mut p = Policy::new(PolicyConfig {
            condition_file: Some(flag.clone()),
            check_secs: 1,
            ..Default::default()
        })
        .unwrap();
        assert!(!p.allowed(0));
        std::fs::write(&flag, "").unwrap();
        p.last_check = None;
        assert!(p.allowed(0));
        std::fs::remove_file(&flag).unwrap();
        p.last_check = None;
        assert!(!p.allowed(0));

        let mut p = Policy::new(PolicyConfig {
            condition_command: Some("exit 0".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(p.allowed(0));
        let mut p = Policy::new(PolicyConfig {
            condition_command: Some("exit 3".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(!p.allowed(0));
        let mut p = Policy::new(PolicyConfig {
            condition_command: Some("true".into()),
            min_idle_secs: 3600,
            ..Default::default()
        })
        .unwrap();
        assert!(!p.allowed(0), "condition must have held for an hour");
        let mut p = Policy::new(PolicyConfig {
            window: Some("10:00-11:00".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(p.allowed(10 * 3600 + 60) && !p.allowed(12 * 3600));
    }
}
