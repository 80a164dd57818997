//! The `convoy-server` command: one module per subcommand under [`cmd`],
//! each holding its own clap arguments and `run`. `main.rs` only parses
//! and dispatches.
//!
//! The daemon itself is `convoy-server` (the library), the database
//! `convoy-store`; the demo, simulator and deploy (feature `tools`, on by
//! default) come from `convoy-tools`, the only crate that builds agents.

#![forbid(unsafe_code)]

pub mod cmd;
pub mod table;
