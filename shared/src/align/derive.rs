//! A spec from one table alone: what a fleet of one vehicle would align to.

use super::{AlignError, AlignSettings, LocalSchema, Statistics, finish, merge};
use crate::dataset::Table;
use crate::spec::{ModelSpec, TaskKind};

impl Table {
    /// Derives a spec from this table alone, the way a fleet of one vehicle
    /// would align: numeric columns standardised (with a presence input when
    /// a cell is missing), text columns one-hot, classes sorted.
    pub fn derive_spec(
        &self,
        label: &str,
        task: TaskKind,
        hidden: Vec<u32>,
        init_seed: u64,
    ) -> Result<ModelSpec, AlignError> {
        let settings = AlignSettings::default();
        let local = LocalSchema::infer(self, label, task)?;
        let schema = merge(&[("local", &local)], &settings)?;
        let stats = Statistics::collect(self, &schema, label, None)?;
        finish(&schema, [&stats], &settings, hidden, init_seed)
    }
}
