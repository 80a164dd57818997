//! convoy-runtime: the I/O both binaries share.
//!
//! | module | holds |
//! |---|---|
//! | [`link`] | the broker link: MQTT through rumqttc or the in-process `memory://` broker, re-subscribing on every connect |
//! | [`process`] | logging, signals, systemd notify and watchdog |
//! | [`fs`] | atomic writes (temp file, fsync, rename, fsync the folder) |
//! | [`clock`] | wall and monotonic time behind one trait, so tests can pause it |
//! | [`config`] | TOML loading, relative paths, environment overrides, one [`ConfigError`] |
//!
//! The pure protocol lives in convoy-shared; nothing here knows what a
//! round or a model is.

#![forbid(unsafe_code)]

pub mod clock;
pub mod config;
pub mod fs;
pub mod link;
pub mod process;

pub use clock::{Clock, SystemClock};
pub use config::ConfigError;
