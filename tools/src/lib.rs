//! convoy-tools: running whole fleets in one process, for the demo, the
//! simulator and the tests (data sets, partitioners, the local fleet
//! runner), and `deploy`, which installs the agent on boards over SSH.
//! This is the crate that builds and ships agents; the daemon
//! (`convoy-server`) never links the agent.

#![forbid(unsafe_code)]

pub mod csv_file;
pub mod csv_split;
pub mod demo;
pub mod deploy;
pub mod digits;
pub mod fleet;
pub mod idx;
pub mod partition;
pub mod simulate;
pub mod split_file;

/// This machine's training speed, measured now by the agent's own
/// calibration (what `plan` prices rounds with when no fleet measured one).
pub fn calibrate_here() -> convoy_shared::cost::Throughput {
    convoy_agent::calibrate::calibrate(&Default::default())
}
