//! A SCAFFOLD round on the vehicle: the server control is fetched by its
//! id (even with the model in hand) and verified, the correction changes
//! training, and the vehicle's own control `cᵢ⁺ = cᵢ − c − Δy/(K·η_l)`
//! becomes its stored one only with the server's receipt.

use super::*;
use convoy_shared::messages::{Objective, UpdateBody};
use convoy_shared::strategy::scaffold::Control;

/// The update a round on the initial model sends, under `objective` (a
/// control of `c` everywhere when SCAFFOLD), and the rig after it.
fn round_one(c: Option<f32>) -> (Rig, UpdateBody) {
    let mut rig = rig();
    let initial = rig.initial();
    let mut announce = rig.announcement(1, &initial, "fp32", &[]);
    let control = c.map(|c| {
        let mut values = ParamSet::zeros(&rig.spec.layout());
        values.values_mut().for_each(|v| *v = c);
        Control::publish(&values, Pipeline::FP32)
    });
    if let Some(control) = &control {
        announce.objective = Objective::Scaffold {
            control: control.id(),
        };
    }
    let mut actions = rig.handle(from_server(
        Kind::Announce,
        topics::round(FLEET).as_str(),
        &announce,
    ));
    if let Some(control) = control {
        let id = control.id();
        let asked = fetch_requests(&actions);
        assert_eq!(asked.len(), 1, "only the control: the model is rebuilt");
        assert_eq!(asked[0].version, id);
        assert!(!trains(&actions), "not before the control is in");
        let payload = control.payload();
        let whole = |data: Vec<u8>| ModelPart::Control {
            pos: ChunkPos {
                index: 0,
                count: 1,
                total_len: data.len() as u32,
            },
        };
        // a payload that does not hash to the id is asked for again
        let mut bad = payload.clone();
        bad[payload.len() - 1] ^= 1;
        let again = rig.handle(rig.chunk(id, whole(bad.clone()), bad));
        assert_eq!(fetch_requests(&again).len(), 1);
        assert!(!trains(&again));
        actions = rig.handle(rig.chunk(id, whole(payload.clone()), payload));
    }
    assert!(trains(&actions));
    rig.train(actions);
    let pending = rig.state().pending().unwrap().expect("stored");
    let body: UpdateBody = postcard::from_bytes(&pending.body).unwrap();
    (rig, body)
}

#[test]
fn the_control_is_fetched_and_the_vehicles_own_is_kept_with_the_receipt() {
    let (_, plain) = round_one(None);
    let (mut rig, body) = round_one(Some(0.5));
    assert_ne!(
        body.encoded, plain.encoded,
        "the correction changes training"
    );
    assert_eq!(
        rig.state().control().unwrap(),
        None,
        "not before the receipt"
    );
    rig.handle(rig.ack(1, true));
    let own = rig
        .state()
        .control()
        .unwrap()
        .expect("stored with the receipt");
    let sent = body
        .codec
        .decode(&body.encoded, &rig.spec.layout())
        .unwrap();
    let k = body.stats.steps as f32;
    let lr = rig.task.lr;
    for (mine, delta) in own.values().zip(sent.values()) {
        let want = -0.5 - delta / (k * lr);
        assert!((mine - want).abs() < 1e-4, "{mine} != {want}");
    }
}

#[test]
fn a_refused_update_leaves_the_vehicles_control_as_it_was() {
    let (mut rig, _) = round_one(Some(0.5));
    rig.handle(rig.ack(1, false));
    assert_eq!(rig.state().control().unwrap(), None);
}
