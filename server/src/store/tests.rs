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
