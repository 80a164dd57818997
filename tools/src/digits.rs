//! The digits data set, embedded so the demo and tests need no download.

/// The digits CSV (see `data/digits/README.md` for provenance).
pub const DIGITS_CSV: &str = include_str!("../../data/digits/digits.csv");
