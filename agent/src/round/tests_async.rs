//! Asynchronous rounds on the vehicle: a newer round does not abandon the
//! one in training while its update can still count; the vehicle sends
//! it, and takes the newest round up after the receipt.

use super::*;

/// Round `round` on `params`, asynchronous with bound `staleness`.
fn announce(rig: &Rig, round: u64, params: &ParamSet, staleness: u32) -> Input {
    let mut a = rig.announcement(round, params, "fp32", &[]);
    a.staleness = staleness;
    from_server(Kind::Announce, topics::round(FLEET).as_str(), &a)
}

#[test]
fn a_newer_asynchronous_round_waits_for_the_update_in_training() {
    let mut rig = rig();
    let initial = rig.initial();
    let first = rig.handle(announce(&rig, 1, &initial, 2));
    let second = rig.handle(announce(&rig, 2, &initial, 2));
    assert!(!trains(&second), "round 1 trains on");
    assert_eq!(rig.agent.round().number(), Some(1));
    let sent = rig.train(first);
    assert_eq!(update_chunks(&sent)[0].round, 1);
    assert!(!trains(&sent), "round 2 waits for round 1's receipt");
    let after = rig.handle(rig.ack(1, true));
    assert!(trains(&after), "then round 2 is taken up");
    assert_eq!(rig.agent.round().number(), Some(2));
}

#[test]
fn a_round_beyond_the_bound_abandons_the_one_in_training() {
    let mut rig = rig();
    let initial = rig.initial();
    let first = rig.handle(announce(&rig, 1, &initial, 1));
    let third = rig.handle(announce(&rig, 3, &initial, 1));
    assert!(trains(&third), "round 1 could no longer count");
    assert_eq!(rig.agent.round().number(), Some(3));
    assert!(update_chunks(&rig.train(first)).is_empty());
}
