//! Round and ledger statuses: enums in code, lowercase words in SQLite,
//! JSON and CSV.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! status_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// The word stored and shown.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!("unknown {} {other:?}", stringify!($name))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                value
                    .as_str()?
                    .parse()
                    .map_err(|e: String| FromSqlError::Other(e.into()))
            }
        }
    };
}

status_enum! {
    /// Where a round stands.
    RoundStatus {
        /// Announced, collecting updates.
        #[default]
        Open = "open",
        /// Closed with a new model.
        Finished = "finished",
        /// Closed with too few updates; the model is unchanged.
        Failed = "failed",
        /// Left open by a server that stopped.
        Abandoned = "abandoned",
    }
}

status_enum! {
    /// What came of one selected vehicle in a round.
    ClientStatus {
        /// Selected, no update (yet).
        #[default]
        Dropped = "dropped",
        /// Its update was folded in.
        Accepted = "accepted",
        /// Its update was refused.
        Rejected = "rejected",
        /// Its update came after the round closed.
        Late = "late",
        /// It reported that it cannot serve the round (reason in the row).
        Failed = "failed",
        /// Not selected: the round would pass its data budget (reason in the row).
        Skipped = "skipped",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_words() {
        for s in [
            RoundStatus::Open,
            RoundStatus::Finished,
            RoundStatus::Failed,
            RoundStatus::Abandoned,
        ] {
            assert_eq!(s.as_str().parse::<RoundStatus>(), Ok(s));
        }
        assert_eq!("late".parse::<ClientStatus>(), Ok(ClientStatus::Late));
        assert!("gone".parse::<ClientStatus>().is_err());
        assert_eq!(format!("{:<9}|", RoundStatus::Failed), "failed   |");
        assert_eq!(
            serde_json::to_string(&ClientStatus::Accepted).unwrap(),
            "\"accepted\""
        );
    }
}
