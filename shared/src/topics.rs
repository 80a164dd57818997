//! MQTT topic layout, all under `convoy/v1/<fleet>/`.
//!
//! | topic | direction | retained |
//! |---|---|---|
//! | `round` | server → fleet, round announcement | yes |
//! | `update/<client>` | agent → server, update chunks | no |
//! | `fetch/<client>` | agent → server, model chunk requests | no |
//! | `model/<client>` | server → agent, model chunks | no |
//! | `ack/<client>` | server → agent, update receipts | no |
//! | `status/<client>` | agent → all, status and last will | yes |
//! | `failure/<client>` | agent → server, why it cannot serve a round | no |
//! | `align` | server → fleet, schema or statistics request | yes |
//! | `schema/<client>` | agent → server, its local schema | no |
//! | `stats/<client>` | agent → server, its column statistics | no |

use heapless::String as HString;

/// Longest topic convoy builds.
pub const MAX_TOPIC: usize = 160;
/// A topic name with fixed capacity.
pub type Topic = HString<MAX_TOPIC>;
/// Longest fleet or client id.
pub const MAX_ID: usize = 64;

/// The per-client topic families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTopic {
    /// Update chunks.
    Update,
    /// Model fetch requests.
    Fetch,
    /// Model chunks.
    Model,
    /// Update receipts.
    Ack,
    /// Status.
    Status,
    /// Failure reports.
    Failure,
    /// Local schema declarations (alignment).
    Schema,
    /// Column statistics (alignment).
    Stats,
}

impl ClientTopic {
    fn segment(self) -> &'static str {
        match self {
            ClientTopic::Update => "update",
            ClientTopic::Fetch => "fetch",
            ClientTopic::Model => "model",
            ClientTopic::Ack => "ack",
            ClientTopic::Status => "status",
            ClientTopic::Failure => "failure",
            ClientTopic::Schema => "schema",
            ClientTopic::Stats => "stats",
        }
    }

    fn from_segment(s: &str) -> Option<Self> {
        [
            ClientTopic::Update,
            ClientTopic::Fetch,
            ClientTopic::Model,
            ClientTopic::Ack,
            ClientTopic::Status,
            ClientTopic::Failure,
            ClientTopic::Schema,
            ClientTopic::Stats,
        ]
        .into_iter()
        .find(|t| t.segment() == s)
    }
}

/// Is `id` usable as a fleet or client id: 1..=64 of `[A-Za-z0-9_.-]`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// A fleet, client or deployment id, checked once when it is parsed: 1 to
/// 64 characters of `[A-Za-z0-9_.-]`, so it is always one safe topic level.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct TopicId(String);

impl TopicId {
    /// Checks `id`; the error says what an id may hold.
    pub fn new(id: impl Into<String>) -> Result<Self, String> {
        let id = id.into();
        if valid_id(&id) {
            Ok(Self(id))
        } else {
            Err(format!(
                "{id:?} is not an id: use 1-64 characters of A-Z a-z 0-9 _ . -"
            ))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The fleet a config names when it names none: `default`.
    pub fn default_fleet() -> Self {
        Self("default".to_string())
    }
}

impl std::ops::Deref for TopicId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for TopicId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TopicId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&self.0)
    }
}

impl std::str::FromStr for TopicId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::new(s)
    }
}

impl TryFrom<String> for TopicId {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        Self::new(s)
    }
}

impl From<TopicId> for String {
    fn from(id: TopicId) -> String {
        id.0
    }
}

impl PartialEq<&str> for TopicId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

fn build(parts: &[&str]) -> Topic {
    let mut t = Topic::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            let _ = t.push('/');
        }
        // ids are validated to fit; a failed push only truncates, never panics
        let _ = t.push_str(p);
    }
    t
}

/// `convoy/v1/<fleet>/round`.
pub fn round(fleet: &str) -> Topic {
    build(&["convoy", "v1", fleet, "round"])
}

/// `convoy/v1/<fleet>/align`: the retained alignment request.
pub fn align(fleet: &str) -> Topic {
    build(&["convoy", "v1", fleet, "align"])
}

/// `convoy/v1/<fleet>/<kind>/<client>`.
pub fn client(fleet: &str, kind: ClientTopic, client: &str) -> Topic {
    build(&["convoy", "v1", fleet, kind.segment(), client])
}

/// Wildcard filter for one family across all clients: `convoy/v1/<fleet>/<kind>/+`.
pub fn all_clients(fleet: &str, kind: ClientTopic) -> Topic {
    build(&["convoy", "v1", fleet, kind.segment(), "+"])
}

/// Splits a per-client topic of `fleet` into its family and client id.
pub fn parse_client<'a>(fleet: &str, topic: &'a str) -> Option<(ClientTopic, &'a str)> {
    let mut parts = topic.split('/');
    if parts.next()? != "convoy" || parts.next()? != "v1" || parts.next()? != fleet {
        return None;
    }
    let kind = ClientTopic::from_segment(parts.next()?)?;
    let client = parts.next()?;
    (parts.next().is_none() && valid_id(client)).then_some((kind, client))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses() {
        let t = client("demo", ClientTopic::Update, "car-7");
        assert_eq!(t.as_str(), "convoy/v1/demo/update/car-7");
        assert_eq!(
            parse_client("demo", &t),
            Some((ClientTopic::Update, "car-7"))
        );
        assert_eq!(parse_client("other", &t), None);
        assert_eq!(parse_client("demo", "convoy/v1/demo/update/a/b"), None);
        assert_eq!(round("demo").as_str(), "convoy/v1/demo/round");
        assert_eq!(
            all_clients("demo", ClientTopic::Status).as_str(),
            "convoy/v1/demo/status/+"
        );
    }

    #[test]
    fn ids_are_checked() {
        assert!(valid_id("car_01.a-b"));
        assert!(!valid_id(""));
        assert!(!valid_id("a/b"));
        assert!(!valid_id("+"));
        assert!(!valid_id(&"x".repeat(65)));
    }
}
