//! SCAFFOLD on the server: the control is announced by its id, served to
//! whoever fetches it (counted in the ledger), stepped from the round's
//! updates on a known answer, and the same after a restart.

use super::*;
use convoy_shared::messages::{ModelPart, Objective};
use convoy_shared::strategy::scaffold;

fn control_id(a: &Announce) -> [u8; 32] {
    match a.objective {
        Objective::Scaffold { control } => control,
        other => panic!("not a SCAFFOLD round: {other:?}"),
    }
}

/// Fetches control `id` as `client`; the payload's pieces that come back.
fn fetch_control(rig: &mut Rig, client: &str, id: [u8; 32]) -> Vec<u8> {
    let request = FetchRequest {
        version: id,
        chunks: vec![],
        have: None,
    };
    let topic = topics::client(FLEET, ClientTopic::Fetch, client);
    let out = rig.handle(message(
        topic.as_str(),
        signed(Kind::FetchRequest, &topic, client, &request),
    ));
    let mut payload = Vec::new();
    for o in &out {
        if let Output::Publish(m) = o {
            let piece: ModelChunk = from_server(m, Kind::ModelChunk);
            assert_eq!(piece.version, id);
            assert!(matches!(piece.part, ModelPart::Control { .. }));
            payload.extend_from_slice(&piece.data);
        }
    }
    payload
}

/// Round 1 starts from a zero control; both vehicles send Δy = 0.01
/// everywhere after K = 3 steps at η_l = 0.05, so with everyone reporting
/// the next control is `−0.01 / (3 · 0.05)` on every weight.
#[test]
fn the_control_steps_on_a_known_answer_is_served_and_survives_a_restart() {
    let mut rig = rig_with(
        |c| {
            c.aggregation.rule = Rule::FedAvg;
            c.strategy.scaffold = true;
        },
        false,
    );
    let a = rig.open(&["car-1", "car-2"]);
    let first = control_id(&a);
    let payload = fetch_control(&mut rig, "car-1", first);
    let zeros = scaffold::receive(&payload, &first, &rig.spec).expect("verifies");
    assert!(zeros.values().all(|v| v == 0.0));
    // a version that is neither the model nor the control is refused
    assert!(fetch_control(&mut rig, "car-1", [9; 32]).is_empty());
    assert_eq!(rig.rejected("unknown_version"), 1);
    rig.send(rig.update("car-1", 0.01, 10));
    rig.send(rig.update("car-2", 0.01, 10));
    let row = closed(&rig.handle(Input::Tick)).expect("closed").clone();
    assert_eq!(row.strategy.as_deref(), Some("scaffold+fedavg:lr=1"));
    let ledger = rig.coordinator.store.clients(1).unwrap();
    let car1 = ledger.iter().find(|c| c.client == "car-1").unwrap();
    assert!(
        car1.bytes_down >= payload.len() as u64,
        "the control's bytes count as downlink: {}",
        car1.bytes_down
    );
    rig.online(&["car-1", "car-2"]);
    let next = announces(&rig.handle(Input::Tick)).pop().expect("round 2");
    let second = control_id(&next);
    assert_ne!(second, first);
    let payload = fetch_control(&mut rig, "car-2", second);
    let c = scaffold::receive(&payload, &second, &rig.spec).expect("verifies");
    let want = -0.01f32 / (3.0 * 0.05);
    // the first weight; the last carries each vehicle's tiny own offset
    assert!((c.tensors[0].data[0] - want).abs() < 1e-5, "{c:?}");
    // the old control is no longer served
    assert!(fetch_control(&mut rig, "car-2", first).is_empty());
    // killed with round 2 open: it comes back with the same control
    let mut rig = rig.restart();
    assert_eq!(rig.coordinator.control.as_ref().map(|c| c.id), Some(second));
    assert_eq!(fetch_control(&mut rig, "car-1", second), payload);
}
