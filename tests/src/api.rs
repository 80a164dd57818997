//! Every item of convoy's other crates that the tests name, in one place, so
//! that when one moves only this file changes.

pub use convoy_agent::AgentError;
pub use convoy_agent::backend;
pub use convoy_agent::config::{AgentConfig, Backend, DataConfig};
pub use convoy_agent::state::{PendingUpdate, StateDir};
pub use convoy_cli::cmd::{models, report};
pub use convoy_cli::table::Format;
pub use convoy_server::config::ServerConfig;
pub use convoy_server::{RunSummary, ServerError};
pub use convoy_shared::chunk::ChunkPos;
pub use convoy_shared::codec::Pipeline;
pub use convoy_shared::dataset::Targets;
pub use convoy_shared::messages::{
    self, AgentState, Announce, Status, TrainStats, UpdateBody, UpdateChunk,
};
pub use convoy_shared::params::ParamSet;
pub use convoy_shared::spec::{Encoding, TaskKind};
pub use convoy_shared::topics::{self, ClientTopic};
pub use convoy_shared::version;
pub use convoy_shared::wire::{self, Kind};
pub use convoy_store::{ClientRow, RoundRow, Store};
pub use convoy_tools::demo::DEFAULT_CODEC;
pub use convoy_tools::deploy;
pub use convoy_tools::idx;
pub use convoy_tools::{fleet, partition, simulate};
