//! Asynchronous buffered aggregation (FedBuff): a full buffer publishes at
//! once, an update trained on an older model counts scaled by
//! 1/√(1 + staleness) (a known answer, across a restart), one beyond
//! the bound is refused with its reason, and a re-sent one is confirmed,
//! not counted again.

use super::*;
use crate::config::RoundMode;

fn async_rig() -> Rig {
    rig_with(
        |c| {
            c.aggregation.rule = Rule::FedAvg;
            c.rounds.mode = RoundMode::Async;
            (c.rounds.async_buffer, c.rounds.max_staleness) = (2, 1);
        },
        false,
    )
}

const CARS: [&str; 4] = ["car-1", "car-2", "car-3", "visitor"];

#[test]
fn a_stale_update_counts_down_weighted_and_one_too_stale_is_refused() {
    let mut rig = async_rig();
    let a1 = rig.open(&CARS);
    assert_eq!(a1.staleness, 1, "the bound is announced");
    // trained on round 1's model, sent later (the same bytes each time)
    let late = |rig: &Rig| rig.update_body("car-3", &a1, &delta_of(&a1, "car-3", 0.04), 10);
    let too_late = rig.update_body("visitor", &a1, &delta_of(&a1, "visitor", 0.04), 10);
    rig.send(rig.update("car-1", 0.01, 10));
    let out = rig.send(rig.update("car-2", 0.01, 10));
    closed(&out).expect("a full buffer closes the round at once");
    let v1 = rig.coordinator.current().params.clone();
    rig.online(&CARS);
    let a2 = announces(&rig.handle(Input::Tick)).pop().expect("round 2");
    let out = rig.send(late(&rig));
    let ack = acks(&out, "car-3");
    assert!(
        ack.len() == 1 && ack[0].accepted && ack[0].round == 1,
        "{ack:?}"
    );
    // killed with the stale update acknowledged: it is still in the round
    let mut rig = rig.restart();
    rig.online(&CARS);
    let fresh = delta_of(&a2, "car-1", 0.02);
    let out = rig.send(rig.update_body("car-1", &a2, &fresh, 10));
    let row = closed(&out).expect("round 2 closed").clone();
    assert_eq!(row.clients_reported, 2);
    let moved = rig.coordinator.current().params.tensors[0].data[0] - v1.tensors[0].data[0];
    let stale = 1.0 / 2f64.sqrt();
    // FedBuff: the stale update is scaled, its weight (rows) unchanged
    let want = ((0.04 * stale + 0.02) / 2.0) as f32;
    assert!((moved - want).abs() < 1e-6, "moved {moved}, want {want}");
    let ledger = rig.coordinator.store.clients(2).unwrap();
    let car3 = ledger.iter().find(|c| c.client == "car-3").unwrap();
    assert_eq!(car3.staleness, Some(1));
    assert_eq!(car3.weight, Some(10.0));
    let car1 = ledger.iter().find(|c| c.client == "car-1").unwrap();
    assert_eq!((car1.staleness, car1.weight), (Some(0), Some(10.0)));
    // round 3: the re-sent update is confirmed, not counted again
    rig.online(&CARS);
    announces(&rig.handle(Input::Tick)).pop().expect("round 3");
    let out = rig.send(late(&rig));
    assert!(
        acks(&out, "car-3")
            .iter()
            .all(|a| a.accepted && a.round == 1)
    );
    let counted = |rig: &Rig| {
        rig.coordinator
            .store
            .clients(3)
            .unwrap()
            .iter()
            .filter(|c| c.status == ClientStatus::Accepted)
            .count()
    };
    assert_eq!(counted(&rig), 0);
    // trained two versions back, over the bound of 1: refused, with why
    let out = rig.send(too_late);
    let nack = acks(&out, "visitor");
    assert!(
        !nack[0].accepted && nack[0].reason.starts_with("stale"),
        "{nack:?}"
    );
    assert!(rig.rejected("stale") > 0, "counted as refused");
    assert_eq!(counted(&rig), 0);
}

/// A vehicle whose older update is in the open round already has its
/// next one wait for the following round (no receipt yet), rather than
/// taken as a re-send and lost.
#[test]
fn a_second_update_of_one_vehicle_waits_for_the_next_round() {
    let mut rig = async_rig();
    let a1 = rig.open(&CARS);
    let late = rig.update_body("car-3", &a1, &delta_of(&a1, "car-3", 0.04), 10);
    rig.send(rig.update("car-1", 0.01, 10));
    closed(&rig.send(rig.update("car-2", 0.01, 10))).expect("round 1");
    rig.online(&CARS);
    let a2 = announces(&rig.handle(Input::Tick)).pop().expect("round 2");
    rig.send(late);
    let second = |rig: &Rig| rig.update_body("car-3", &a2, &delta_of(&a2, "car-3", 0.02), 10);
    let out = rig.send(second(&rig));
    assert!(acks(&out, "car-3").is_empty(), "no receipt: it waits");
    assert!(closed(&out).is_none(), "and does not fill the buffer");
    closed(&rig.send(rig.update("car-1", 0.01, 10))).expect("round 2");
    rig.online(&CARS);
    announces(&rig.handle(Input::Tick)).pop().expect("round 3");
    let out = rig.send(second(&rig));
    let ack = acks(&out, "car-3");
    assert!(
        ack.len() == 1 && ack[0].accepted && ack[0].round == 2,
        "{ack:?}"
    );
    let rows = rig.coordinator.store.clients(3).unwrap();
    let car3 = rows.iter().find(|c| c.client == "car-3").unwrap();
    assert_eq!(car3.staleness, Some(1));
}

/// An asynchronous round takes an update from a vehicle it did not ask
/// (online after it opened), and counts every one of its chunks' bytes.
#[test]
fn a_vehicle_online_after_the_round_opened_counts_with_all_its_bytes() {
    let mut rig = async_rig();
    let a1 = rig.open(&["car-1", "car-2"]);
    rig.online(&["car-3"]);
    let chunks = rig.update_body("car-3", &a1, &delta_of(&a1, "car-3", 0.01), 10);
    let sent = chunks.len() as u64;
    let out = rig.send(chunks);
    assert!(acks(&out, "car-3").iter().all(|a| a.accepted));
    let r = rig.coordinator.round.as_ref().expect("round 1 open");
    let row = &r.rows["car-3"];
    assert_eq!(row.status, ClientStatus::Accepted);
    assert_eq!(row.chunks_up, sent, "every chunk counted, the first too");
    assert!(row.wire_bytes_up > row.bytes_up);
}
