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
    /// Every family.
    pub const ALL: [ClientTopic; 8] = [
        ClientTopic::Update,
        ClientTopic::Fetch,
        ClientTopic::Model,
        ClientTopic::Ack,
        ClientTopic::Status,
        ClientTopic::Failure,
        ClientTopic::Schema,
        ClientTopic::Stats,
    ];

    /// Whether the vehicle publishes this family (on its own topic), rather
    /// than the server (model chunks and receipts, which the vehicle reads).
    pub fn written_by_vehicle(self) -> bool {
        !matches!(self, ClientTopic::Model | ClientTopic::Ack)
    }

    /// The topic segment: `update`, `model`, ...
    pub fn segment(self) -> &'static str {
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
        Self::ALL.into_iter().find(|t| t.segment() == s)
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

/// Whether vehicle `vehicle` of `fleet` may publish on `topic`: only on its
/// own update, status, fetch, failure, schema and stats topics. The broker
/// ACLs (embedded, and the Mosquitto file) rest on this rule.
pub fn vehicle_may_publish(fleet: &str, vehicle: &str, topic: &str) -> bool {
    matches!(parse_client(fleet, topic), Some((kind, id)) if id == vehicle && kind.written_by_vehicle())
}

/// Whether vehicle `vehicle` of `fleet` may subscribe to `filter`: the
/// fleet's round and align topics, and its own model and receipt topics;
/// no wildcards.
pub fn vehicle_may_subscribe(fleet: &str, vehicle: &str, filter: &str) -> bool {
    filter == round(fleet).as_str()
        || filter == align(fleet).as_str()
        || matches!(parse_client(fleet, filter), Some((kind, id)) if id == vehicle && !kind.written_by_vehicle())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vehicle_may_use_only_its_own_topics() {
        let own = |kind| client("f", kind, "car-1");
        for kind in ClientTopic::ALL {
            let mine = own(kind);
            let theirs = client("f", kind, "car-2");
            assert_eq!(
                vehicle_may_publish("f", "car-1", &mine),
                kind.written_by_vehicle(),
                "{mine}"
            );
            assert_eq!(
                vehicle_may_subscribe("f", "car-1", &mine),
                !kind.written_by_vehicle(),
                "{mine}"
            );
            assert!(!vehicle_may_publish("f", "car-1", &theirs), "{theirs}");
            assert!(!vehicle_may_subscribe("f", "car-1", &theirs), "{theirs}");
            assert!(!vehicle_may_publish("g", "car-1", &mine), "another fleet");
        }
        for filter in ["convoy/v1/f/round", "convoy/v1/f/align"] {
            assert!(vehicle_may_subscribe("f", "car-1", filter));
            assert!(!vehicle_may_publish("f", "car-1", filter));
        }
        for wild in [
            "#",
            "convoy/#",
            "convoy/v1/f/#",
            "convoy/v1/f/update/+",
            "convoy/v1/+/model/car-1",
            "convoy/v1/f/model/#",
        ] {
            assert!(!vehicle_may_subscribe("f", "car-1", wild), "{wild}");
        }
    }

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
