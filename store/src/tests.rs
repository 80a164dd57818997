//! The store against a real SQLite file.

use super::*;

#[test]
fn iso_dates() {
    assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(iso8601(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
}

#[test]
fn rounds_are_never_reused_and_late_counts_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("s.db")).unwrap();
    assert_eq!(store.next_round().unwrap(), 1);
    store.open_round(1, "aa", "fp32", 2, 0).unwrap();
    assert_eq!(store.abandon_open_rounds(1, None).unwrap(), 1);
    assert_eq!(store.next_round().unwrap(), 2);
    store.open_round(2, "aa", "fp32", 2, 0).unwrap();
    let row = RoundRow {
        round: 2,
        status: RoundStatus::Finished,
        clients_reported: 1,
        ..Default::default()
    };
    let client = ClientRow {
        round: 2,
        client: "a".into(),
        status: ClientStatus::Accepted,
        ..Default::default()
    };
    store.finish_round(&row, &[client], 5).unwrap();
    assert!(store.record_late(2, "b", 10).unwrap());
    assert!(!store.record_late(2, "b", 10).unwrap());
    assert!(!store.record_late(2, "a", 10).unwrap());
    let rounds = store.rounds().unwrap();
    assert_eq!(rounds[1].clients_late, 1);
    assert_eq!(rounds[0].status, "abandoned");
    assert_eq!(store.clients(2).unwrap().len(), 2);
}

#[test]
fn each_tasks_metric_is_pooled_from_its_own_vehicles() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("t.db")).unwrap();
    store.open_round(1, "aa", "fp32", 4, 0).unwrap();
    let row = |client: &str, head: &str, n: u64, acc: Option<f64>, rmse: Option<f64>| ClientRow {
        round: 1,
        client: client.into(),
        status: ClientStatus::Accepted,
        samples: 10 * n,
        holdout_samples: n,
        holdout_accuracy: acc,
        holdout_rmse: rmse,
        head: Some(head.into()),
        ..Default::default()
    };
    let refused = ClientRow {
        status: ClientStatus::Rejected,
        ..row("d", "tip", 100, Some(0.0), None)
    };
    let clients = [
        row("a", "tip", 10, Some(0.9), None),
        row("b", "tip", 30, Some(0.5), None),
        row("c", "distance", 20, None, Some(3.0)),
        row("e", "distance", 80, None, Some(1.0)),
        refused,
    ];
    let round = RoundRow {
        round: 1,
        status: RoundStatus::Finished,
        ..Default::default()
    };
    store.finish_round(&round, &clients, 5).unwrap();
    let tasks = store.task_metrics().unwrap();
    assert_eq!(tasks.len(), 2);
    let (distance, tip) = (&tasks[0], &tasks[1]);
    assert_eq!(
        (tip.head.as_str(), tip.clients, tip.samples),
        ("tip", 2, 400)
    );
    // (10 * 0.9 + 30 * 0.5) / 40; the refused row does not count
    assert!((tip.holdout_accuracy.unwrap() - 0.6).abs() < 1e-12);
    assert_eq!(tip.holdout_rmse, None);
    // sqrt((20 * 9 + 80 * 1) / 100)
    assert!((distance.holdout_rmse.unwrap() - 2.6f64.sqrt()).abs() < 1e-12);
    assert_eq!((distance.clients, distance.holdout_samples), (2, 100));
}

#[test]
fn ledger_times_parse_back() {
    for ms in [0, 1_796_224_854_123, 951_782_400_000] {
        assert_eq!(super::parse_iso_ms(&super::iso8601(ms)), Some(ms));
    }
    assert_eq!(super::parse_iso_ms("yesterday"), None);
}
