//! The aligner driven message by message: a real SQLite store in a temp
//! folder, no broker, a clock that moves only when told.

use super::*;
use crate::config::RoundConfig;
use convoy_runtime::clock::ManualClock;
use convoy_shared::dataset::Table;
use convoy_shared::spec::{Encoding, TaskKind};
use convoy_store::VehicleRow;
use std::sync::Arc;

const FLEET: &str = "unit";
const START_MS: u64 = 1_700_000_000_000;
const CARS: [&str; 2] = ["car-1", "car-2"];

struct Rig {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    aligner: Aligner,
}

fn server_key() -> SecretKey {
    SecretKey::from_seed([9; 32])
}

fn vehicle_key(client: &str) -> SecretKey {
    SecretKey::from_seed(*blake3::hash(client.as_bytes()).as_bytes())
}

fn rig(tweak: impl FnOnce(&mut ServerConfig)) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig {
        fleet: FLEET.parse().unwrap(),
        db: dir.path().join("unit.db"),
        rounds: RoundConfig {
            min_clients: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    tweak(&mut config);
    let store = Store::open(&config.db).unwrap();
    for client in CARS {
        let row = VehicleRow {
            client: client.to_string(),
            public_key: vehicle_key(client).public().to_string(),
            password_hash: String::new(),
            created_ms: 0,
            previous_key: None,
        };
        store.add_vehicle(&row, true).unwrap();
    }
    let clock = ManualClock::new(START_MS);
    let aligner = Aligner::new(config, server_key(), store, clock.clone()).unwrap();
    Rig {
        _dir: dir,
        clock,
        aligner,
    }
}

/// The two vehicles' data: different columns, a gap, a category.
fn data(client: &str) -> Table {
    let csv = match client {
        "car-1" => "speed,road,tip\n10,city,yes\n,highway,no\n30,city,yes\n",
        _ => "speed,rain,tip\n20,1,no\n40,0,yes\n",
    };
    Table::read(csv.as_bytes()).unwrap()
}

fn message(topic: String, payload: Vec<u8>) -> LinkEvent {
    LinkEvent::Message {
        topic,
        payload: payload.into(),
        retain: false,
    }
}

fn topic(kind: ClientTopic, client: &str) -> String {
    topics::client(FLEET, kind, client).as_str().to_string()
}

fn schema_from(client: &str, epoch: u64) -> LinkEvent {
    let report = SchemaReport {
        client: convoy_shared::messages::id(client).unwrap(),
        epoch,
        schema: LocalSchema::infer(&data(client), "tip", TaskKind::Classification).unwrap(),
    };
    let t = topic(ClientTopic::Schema, client);
    let payload = wire::encode(Kind::SchemaReport, &report, &t, &vehicle_key(client)).unwrap();
    message(t, payload)
}

fn stats_from(client: &str, epoch: u64, schema: &Schema) -> LinkEvent {
    let report = StatsReport {
        client: convoy_shared::messages::id(client).unwrap(),
        epoch,
        stats: Statistics::collect(&data(client), schema, "tip", None).unwrap(),
    };
    let t = topic(ClientTopic::Stats, client);
    let payload = wire::encode(Kind::StatsReport, &report, &t, &vehicle_key(client)).unwrap();
    message(t, payload)
}

fn request(out: &[Outgoing]) -> AlignRequest {
    let m = out.last().expect("a request");
    assert!(m.retain, "the request is retained");
    wire::decode(
        &m.payload,
        Kind::AlignRequest,
        1 << 20,
        &m.topic,
        &server_key().public(),
        "server",
    )
    .unwrap()
}

/// Runs the schema stage with both cars; returns the epoch and the schema.
fn through_schema(rig: &mut Rig) -> (u64, Schema) {
    let epoch = request(&rig.aligner.start().unwrap()).epoch;
    for car in CARS {
        assert!(
            rig.aligner
                .on_event(schema_from(car, epoch))
                .unwrap()
                .is_empty()
        );
    }
    let out = rig.aligner.tick().unwrap();
    let AlignStage::Statistics(schema) = request(&out).stage else {
        panic!("statistics stage")
    };
    (epoch, schema)
}

#[test]
fn schemas_then_statistics_make_the_spec() {
    let mut rig = rig(|_| {});
    let (epoch, schema) = through_schema(&mut rig);
    let names: Vec<_> = schema.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["rain", "road", "speed"]);
    rig.aligner
        .on_event(stats_from("car-1", epoch, &schema))
        .unwrap();
    assert!(rig.aligner.tick().unwrap().is_empty(), "waits for car-2");
    rig.aligner
        .on_event(stats_from("car-2", epoch, &schema))
        .unwrap();
    let out = rig.aligner.tick().unwrap();
    assert!(
        out[0].payload.is_empty() && out[0].retain,
        "the request is cleared"
    );
    let spec = rig.aligner.spec().expect("aligned").clone();
    assert_eq!(spec.primary().classes, ["no", "yes"]);
    let Encoding::Numeric { mean, mask, .. } = spec.features[2].encoding else {
        panic!("speed is numeric")
    };
    assert_eq!(mean, 25.0, "pooled over both cars, the gap left out");
    assert!(mask, "a gap and a missing column turn presence on");
    assert!(matches!(
        spec.features[1].encoding,
        Encoding::Categorical { .. }
    ));
    // a status seen while aligning is kept for the coordinator, unread
    rig.aligner
        .on_event(message(topic(ClientTopic::Status, "car-1"), vec![1, 2, 3]))
        .unwrap();
    let (_, rejections, statuses) = rig.aligner.into_parts();
    assert!(rejections.is_empty());
    assert_eq!(statuses.len(), 1);
}

#[test]
fn malformed_answers_are_counted_and_alignment_goes_on() {
    // one accepted schema would be enough to move on, once answers settle
    let mut rig = rig(|c| c.align.min_vehicles = 1);
    let epoch = request(&rig.aligner.start().unwrap()).epoch;
    let schema_topic = topic(ClientTopic::Schema, "car-1");
    let stats_topic = topic(ClientTopic::Stats, "car-1");
    let failure_topic = topic(ClientTopic::Failure, "car-1");
    // garbage, truncation, unsigned, signed by another car, unknown sender
    for t in [&schema_topic, &stats_topic, &failure_topic] {
        rig.aligner
            .on_event(message(t.clone(), vec![0xff; 40]))
            .unwrap();
        rig.aligner
            .on_event(message(t.clone(), Vec::new()))
            .unwrap();
    }
    let LinkEvent::Message { payload, .. } = schema_from("car-1", epoch) else {
        unreachable!()
    };
    rig.aligner
        .on_event(message(
            schema_topic.clone(),
            payload[..payload.len() - 3].to_vec(),
        ))
        .unwrap();
    let LinkEvent::Message { payload, .. } = schema_from("car-2", epoch) else {
        unreachable!()
    };
    rig.aligner
        .on_event(message(schema_topic.clone(), payload.to_vec()))
        .unwrap();
    rig.aligner
        .on_event(message(topic(ClientTopic::Schema, "stranger"), vec![1; 10]))
        .unwrap();
    // an old epoch, and a schema that declares one column twice
    rig.aligner
        .on_event(schema_from("car-1", epoch - 1))
        .unwrap();
    let mut twice = LocalSchema::infer(&data("car-1"), "tip", TaskKind::Classification).unwrap();
    twice.columns.push(twice.columns[0].clone());
    let report = SchemaReport {
        client: convoy_shared::messages::id("car-1").unwrap(),
        epoch,
        schema: twice,
    };
    let payload = wire::encode(
        Kind::SchemaReport,
        &report,
        &schema_topic,
        &vehicle_key("car-1"),
    )
    .unwrap();
    rig.aligner
        .on_event(message(schema_topic.clone(), payload))
        .unwrap();
    let settle = crate::config::AlignConfig::default().settle_secs;
    rig.clock
        .advance(std::time::Duration::from_secs(settle + 1));
    assert!(
        rig.aligner.tick().unwrap().is_empty(),
        "nothing was accepted"
    );

    for car in CARS {
        rig.aligner.on_event(schema_from(car, epoch)).unwrap();
    }
    let AlignStage::Statistics(schema) = request(&rig.aligner.tick().unwrap()).stage else {
        panic!("statistics stage")
    };
    // statistics that do not add up to their rows
    let mut stats = Statistics::collect(&data("car-1"), &schema, "tip", None).unwrap();
    stats.rows += 5;
    let report = StatsReport {
        client: convoy_shared::messages::id("car-1").unwrap(),
        epoch,
        stats,
    };
    let payload = wire::encode(
        Kind::StatsReport,
        &report,
        &stats_topic,
        &vehicle_key("car-1"),
    )
    .unwrap();
    rig.aligner
        .on_event(message(stats_topic.clone(), payload))
        .unwrap();
    for car in CARS {
        rig.aligner
            .on_event(stats_from(car, epoch, &schema))
            .unwrap();
    }
    rig.aligner.tick().unwrap();
    assert!(rig.aligner.spec().is_some());
    let (store, rejections, _) = rig.aligner.into_parts();
    for reason in [
        "bad_magic",
        "truncated",
        "bad_signature",
        "unknown_vehicle",
        "wrong_epoch",
        "bad_schema",
        "bad_statistics",
    ] {
        assert!(
            rejections.get(reason).is_some_and(|n| *n > 0),
            "{reason}: {rejections:?}"
        );
    }
    assert!(
        store.rejection_rows().unwrap() > 0,
        "rejections are recorded"
    );
}

#[test]
fn a_vehicle_that_cannot_align_is_not_waited_for() {
    let mut rig = rig(|c| c.align.min_vehicles = 1);
    let (epoch, schema) = through_schema(&mut rig);
    rig.aligner
        .on_event(stats_from("car-1", epoch, &schema))
        .unwrap();
    let failure = convoy_shared::messages::FailureReport {
        client: convoy_shared::messages::id("car-2").unwrap(),
        round: 0,
        reason: convoy_shared::messages::detail("data"),
        detail: convoy_shared::messages::detail("column \"speed\" holds text"),
    };
    let t = topic(ClientTopic::Failure, "car-2");
    let payload = wire::encode(Kind::Failure, &failure, &t, &vehicle_key("car-2")).unwrap();
    rig.aligner.on_event(message(t, payload)).unwrap();
    rig.aligner.tick().unwrap();
    assert!(
        rig.aligner.spec().is_some(),
        "car-2 said it cannot take part"
    );
}

#[test]
fn too_few_vehicles_by_the_deadline_asks_again() {
    let mut rig = rig(|c| c.align.deadline_secs = 10);
    let first = request(&rig.aligner.start().unwrap()).epoch;
    rig.aligner.on_event(schema_from("car-1", first)).unwrap();
    assert_eq!(rig.aligner.awaited(), ["car-2"], "named, not counted");
    rig.clock.advance(std::time::Duration::from_secs(6));
    assert!(
        rig.aligner.tick().unwrap().is_empty(),
        "settled, but one of two is too few"
    );
    rig.clock.advance(std::time::Duration::from_secs(5));
    let again = request(&rig.aligner.tick().unwrap());
    assert!(again.epoch > first && again.stage == AlignStage::Schema);
    // the earlier answer no longer counts
    rig.aligner.on_event(schema_from("car-1", first)).unwrap();
    rig.aligner
        .on_event(schema_from("car-2", again.epoch))
        .unwrap();
    assert!(rig.aligner.tick().unwrap().is_empty());
}

#[test]
fn conflicting_schemas_stop_with_the_vehicles_named() {
    let mut rig = rig(|_| {});
    let epoch = request(&rig.aligner.start().unwrap()).epoch;
    let text = Table::read("speed,tip\nfast,yes\nslow,no\n".as_bytes()).unwrap();
    let report = SchemaReport {
        client: convoy_shared::messages::id("car-2").unwrap(),
        epoch,
        schema: LocalSchema::infer(&text, "tip", TaskKind::Classification).unwrap(),
    };
    let t = topic(ClientTopic::Schema, "car-2");
    let payload = wire::encode(Kind::SchemaReport, &report, &t, &vehicle_key("car-2")).unwrap();
    rig.aligner.on_event(schema_from("car-1", epoch)).unwrap();
    rig.aligner.on_event(message(t, payload)).unwrap();
    let err = rig.aligner.tick().unwrap_err().to_string();
    assert!(
        err.contains("\"speed\" is numeric on car-1 but text on car-2"),
        "{err}"
    );
}
