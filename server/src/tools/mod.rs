//! Running whole fleets in one process, for the demo, the simulator and the
//! tests: data sets, partitioners and the local fleet runner. This is the
//! only part of the server besides `deploy` that builds agents.

pub mod csv_file;
pub mod demo;
pub mod digits;
pub mod fleet;
pub mod idx;
pub mod partition;
pub mod simulate;
