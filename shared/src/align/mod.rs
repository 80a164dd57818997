//! Federated alignment: how vehicles that log different columns agree on
//! one model without showing anyone a row.
//!
//! 1. Each vehicle declares its [`LocalSchema`] (column names and inferred
//!    types, label, task), inferred from its own CSV.
//! 2. The server [`merge`]s the declarations by name into one [`Schema`]
//!    (union of columns, configured renames, type conflicts refused with
//!    the vehicles named). Each label the vehicles declare becomes a head
//!    of the model, with its own task; no label is ever an input.
//! 3. Each vehicle sends [`Statistics`] of its columns under that schema
//!    (counts, exact sums, min/max, missing cells, category counts).
//! 4. The server [`finish`]es: merged statistics become each feature's
//!    standardisation, presence input and categorical vocabulary, which is
//!    the model's input pipeline, part of its spec and version id.

mod derive;
mod exact;
mod stats;

#[cfg(test)]
mod tests;

pub use exact::ExactSum;
pub use stats::{CategoryStats, ColumnStats, NumericStats, Statistics, finish};

use crate::dataset::Table;
use crate::spec::TaskKind;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

/// Most columns a vehicle may declare.
pub const MAX_COLUMNS: usize = 4096;
/// Longest column name, bytes.
pub const MAX_NAME: usize = 128;
/// Most distinct categories a vehicle reports per column; rarer ones are
/// summed into its `other` count.
pub const MAX_LOCAL_CATEGORIES: usize = 1024;

/// The type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnKind {
    /// Every present cell is a number.
    Numeric,
    /// Some present cell is text: the cells are categories.
    Categorical,
}

/// One column as a vehicle sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalColumn {
    /// Header name.
    pub name: String,
    /// Inferred type.
    pub kind: ColumnKind,
    /// Missing cells.
    pub missing: u64,
}

/// What a vehicle declares in the schema round: its columns, never a value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalSchema {
    /// Feature columns (the label excluded), in header order.
    pub columns: Vec<LocalColumn>,
    /// Label column name.
    pub label: String,
    /// Type of the label column.
    pub label_kind: ColumnKind,
    /// The task this vehicle labels.
    pub task: TaskKind,
    /// Its model line (`data.line`), if it trains a head of its group's.
    pub line: Option<String>,
    /// Data rows.
    pub rows: u64,
}

/// Why alignment failed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AlignError {
    /// The vehicles' declarations contradict each other.
    #[error("the vehicles' schemas do not merge:\n  {}", .0.join("\n  "))]
    Conflicts(Vec<String>),
    /// A vehicle's data does not fit the fleet's schema.
    #[error("column {column:?}: {message}")]
    Mismatch {
        /// The column.
        column: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The label column is absent.
    #[error("label column {label:?} not found; columns are {columns:?}")]
    NoLabel {
        /// Expected label.
        label: String,
        /// Columns present.
        columns: Vec<String>,
    },
    /// A message is internally inconsistent (shape, sizes, bounds).
    #[error("malformed {what}: {message}")]
    Malformed {
        /// Which message.
        what: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Nothing to build a model from.
    #[error("{0}")]
    Empty(String),
}

/// How the server merges schemas: set in its `[align]` config section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlignSettings {
    /// Local column name → fleet column name, e.g. `speed_kmh = "vehicle_speed"`.
    pub renames: BTreeMap<String, String>,
    /// Columns that are categories even where every cell is a number
    /// (codes such as a gear or a road class).
    pub categorical: Vec<String>,
    /// Most categories a feature gets its own input for; the rest share one
    /// "other" input.
    pub max_categories: usize,
}

impl Default for AlignSettings {
    fn default() -> Self {
        Self {
            renames: BTreeMap::new(),
            categorical: Vec::new(),
            max_categories: 32,
        }
    }
}

impl AlignSettings {
    /// The fleet's name for a local column.
    pub fn canonical<'a>(&'a self, local: &'a str) -> &'a str {
        self.renames.get(local).map_or(local, String::as_str)
    }

    /// Checks values a config can get wrong.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=4096).contains(&self.max_categories) {
            return Err(format!(
                "align.max_categories {} must be 1 to 4096",
                self.max_categories
            ));
        }
        if let Some((from, _)) = self.renames.iter().find(|(from, to)| from == to) {
            return Err(format!("align.renames maps {from:?} to itself"));
        }
        Ok(())
    }
}

/// One column of the fleet's schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaColumn {
    /// Fleet name.
    pub name: String,
    /// Local names renamed to it.
    pub aliases: Vec<String>,
    /// Agreed type.
    pub kind: ColumnKind,
}

impl SchemaColumn {
    /// Does a local column called `column` hold this one?
    pub fn matches(&self, column: &str) -> bool {
        self.name == column || self.aliases.iter().any(|a| a == column)
    }
}

/// One label of the fleet's schema: a head of the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaHead {
    /// Fleet name of the label column.
    pub label: String,
    /// Local names renamed to it.
    pub aliases: Vec<String>,
    /// The task every vehicle labelling it trains.
    pub task: TaskKind,
    /// The model line whose vehicles train it (`None`: the whole fleet's).
    pub line: Option<String>,
}

impl SchemaHead {
    /// Does a local column called `column` hold this label?
    pub fn matches(&self, column: &str) -> bool {
        self.label == column || self.aliases.iter().any(|a| a == column)
    }

    pub(crate) fn label_kind(&self) -> ColumnKind {
        match self.task {
            TaskKind::Classification => ColumnKind::Categorical,
            TaskKind::Regression => ColumnKind::Numeric,
        }
    }
}

/// The fleet's merged schema, announced for the statistics round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schema {
    /// Feature columns, sorted by name (so arrival order does not matter).
    pub columns: Vec<SchemaColumn>,
    /// Labels, one head each, sorted by name.
    pub heads: Vec<SchemaHead>,
}

impl Schema {
    /// Content id: statistics name the schema they were computed under.
    pub fn id(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("convoy schema v1");
        h.update(&postcard::to_allocvec(self).unwrap_or_default());
        *h.finalize().as_bytes()
    }

    /// The head of a vehicle whose local label column is `label`, in
    /// model line `line`.
    pub fn head_for(&self, label: &str, line: Option<&str>) -> Option<usize> {
        self.heads
            .iter()
            .position(|h| h.matches(label) && h.line.as_deref() == line)
    }

    /// Is `column` (a local name) any head's label?
    pub fn is_label(&self, column: &str) -> bool {
        self.heads.iter().any(|h| h.matches(column))
    }
}

impl LocalSchema {
    /// Infers a vehicle's schema from its table: a column is numeric when
    /// every present cell is a number.
    pub fn infer(table: &Table, label: &str, task: TaskKind) -> Result<Self, AlignError> {
        let label_col = table.column(label).ok_or_else(|| AlignError::NoLabel {
            label: label.to_string(),
            columns: table.headers.clone(),
        })?;
        let kind_of = |c: usize| {
            if table.is_numeric(c) {
                ColumnKind::Numeric
            } else {
                ColumnKind::Categorical
            }
        };
        let missing = |c: usize| {
            (0..table.len())
                .filter(|r| table.cell(*r, c) == crate::dataset::Cell::Missing)
                .count() as u64
        };
        let columns = (0..table.headers.len())
            .filter(|c| *c != label_col)
            .map(|c| LocalColumn {
                name: table.headers[c].clone(),
                kind: kind_of(c),
                missing: missing(c),
            })
            .collect();
        let schema = Self {
            columns,
            label: label.to_string(),
            label_kind: kind_of(label_col),
            task,
            line: None,
            rows: table.len() as u64,
        };
        schema.check()?;
        Ok(schema)
    }

    /// Checks the bounds a declaration from the network must keep.
    pub fn check(&self) -> Result<(), AlignError> {
        let bad = |message: String| AlignError::Malformed {
            what: "schema",
            message,
        };
        if self.columns.len() > MAX_COLUMNS {
            return Err(bad(format!(
                "{} columns, at most {MAX_COLUMNS}",
                self.columns.len()
            )));
        }
        let mut seen = BTreeSet::new();
        if let Some(line) = &self.line
            && (line.is_empty() || line.len() > MAX_NAME)
        {
            return Err(bad(format!(
                "model line {line:?} must be 1 to {MAX_NAME} bytes"
            )));
        }
        for name in self.columns.iter().map(|c| &c.name).chain([&self.label]) {
            if name.is_empty() || name.len() > MAX_NAME {
                return Err(bad(format!(
                    "column name {name:?} must be 1 to {MAX_NAME} bytes"
                )));
            }
            if !seen.insert(name) {
                return Err(bad(format!("column {name:?} declared twice")));
            }
        }
        Ok(())
    }
}

/// Merges the vehicles' declarations (vehicle id, schema) into the fleet's
/// schema, or names every conflict and the vehicles on each side of it.
pub fn merge(
    declarations: &[(&str, &LocalSchema)],
    settings: &AlignSettings,
) -> Result<Schema, AlignError> {
    if declarations.is_empty() {
        return Err(AlignError::Empty("no vehicle declared a schema".into()));
    }
    let mut conflicts = Vec::new();
    let first_id = declarations[0].0;
    // one head per label the vehicles declare, and per model line
    type Declared<'a> = Vec<(&'a str, &'a LocalSchema)>;
    let mut by_head: BTreeMap<(String, Option<String>), Declared<'_>> = BTreeMap::new();
    for (id, s) in declarations {
        by_head
            .entry((settings.canonical(&s.label).to_string(), s.line.clone()))
            .or_default()
            .push((id, s));
    }
    let labels: BTreeSet<&str> = by_head.keys().map(|(l, _)| l.as_str()).collect();
    // a label's task and type must agree across its lines
    let mut by_label: BTreeMap<&str, Vec<(&str, &LocalSchema)>> = BTreeMap::new();
    for ((label, _), group) in &by_head {
        by_label.entry(label).or_default().extend(group);
    }
    for (label, group) in &by_label {
        let side = |pick: &dyn Fn(&LocalSchema) -> String| {
            let mut by: BTreeMap<String, Vec<&str>> = BTreeMap::new();
            for (id, s) in group {
                by.entry(pick(s)).or_default().push(id);
            }
            by
        };
        let tasks = side(&|s| format!("{:?}", s.task).to_lowercase());
        if tasks.len() > 1 {
            conflicts.push(format!(
                "vehicles label {label:?} as different tasks ({}); set data.task alike on every vehicle that labels it",
                describe(&tasks)
            ));
        }
        let task = group[0].1.task;
        let label_forced = settings.categorical.iter().any(|c| c == label);
        let label_kinds = side(&|s| kind_name(s.label_kind).to_string());
        match task {
            TaskKind::Classification if label_kinds.len() > 1 && !label_forced => {
                conflicts.push(format!(
                    "label {label:?} holds numbers on some vehicles and text on others ({}); list it in align.categorical to treat every value as a class",
                    describe(&label_kinds)
                ));
            }
            TaskKind::Regression => {
                if let Some(text) = label_kinds.get("categorical") {
                    conflicts.push(format!(
                        "regression label {label:?} holds text on {}; a regression target must be numeric",
                        text.join(", ")
                    ));
                }
            }
            _ => {}
        }
    }
    let mut heads = Vec::with_capacity(by_head.len());
    for ((label, line), group) in &by_head {
        let aliases: BTreeSet<String> = group
            .iter()
            .map(|(_, s)| s.label.clone())
            .filter(|l| l != label)
            .collect();
        heads.push(SchemaHead {
            label: label.clone(),
            aliases: aliases.into_iter().collect(),
            task: group[0].1.task,
            line: line.clone(),
        });
    }
    struct Votes<'a> {
        aliases: BTreeSet<String>,
        numeric: Vec<&'a str>,
        categorical: Vec<&'a str>,
    }
    let mut columns: BTreeMap<String, Votes<'_>> = BTreeMap::new();
    for (id, schema) in declarations {
        for column in &schema.columns {
            let name = settings.canonical(&column.name).to_string();
            // another vehicle's label: never an input, or the model would
            // read the answer it is asked for
            if labels.contains(name.as_str()) {
                continue;
            }
            let votes = columns.entry(name.clone()).or_insert_with(|| Votes {
                aliases: BTreeSet::new(),
                numeric: Vec::new(),
                categorical: Vec::new(),
            });
            if column.name != name {
                votes.aliases.insert(column.name.clone());
            }
            match column.kind {
                ColumnKind::Numeric => votes.numeric.push(id),
                ColumnKind::Categorical => votes.categorical.push(id),
            }
        }
    }
    let mut merged = Vec::with_capacity(columns.len());
    for (name, votes) in columns {
        let kind = if settings.categorical.contains(&name) || votes.numeric.is_empty() {
            ColumnKind::Categorical
        } else if votes.categorical.is_empty() {
            ColumnKind::Numeric
        } else {
            conflicts.push(format!(
                "column {name:?} is numeric on {} but text on {}; fix the data, rename one with align.renames, or list it in align.categorical",
                votes.numeric.join(", "),
                votes.categorical.join(", ")
            ));
            continue;
        };
        merged.push(SchemaColumn {
            name,
            aliases: votes.aliases.into_iter().collect(),
            kind,
        });
    }
    if merged.is_empty() && conflicts.is_empty() {
        conflicts.push(format!(
            "no feature columns: every vehicle logs only the label (first: {first_id})"
        ));
    }
    if !conflicts.is_empty() {
        return Err(AlignError::Conflicts(conflicts));
    }
    Ok(Schema {
        columns: merged,
        heads,
    })
}

fn kind_name(kind: ColumnKind) -> &'static str {
    match kind {
        ColumnKind::Numeric => "numeric",
        ColumnKind::Categorical => "categorical",
    }
}

fn describe(sides: &BTreeMap<String, Vec<&str>>) -> String {
    sides
        .iter()
        .map(|(value, ids)| format!("{value:?}: {}", ids.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}
