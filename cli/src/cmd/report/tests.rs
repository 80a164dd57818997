//! `report` against rows made here and a real store.

use super::*;
use convoy_store::{RoundRow, RoundStatus};

/// The cell of `line` under header `name`: columns are found by where
/// each header starts and ends in the header line.
fn cell<'a>(header: &str, line: &'a str, name: &str) -> &'a str {
    let names: Vec<&str> = header.split_whitespace().collect();
    let k = names.iter().position(|n| *n == name).unwrap();
    line.split_whitespace().nth(k).unwrap()
}

#[test]
fn since_takes_dates_times_and_ages() {
    let now = 1_796_224_854_000; // 2026-12-02T15:20:54Z
    assert_eq!(parse_since("90m", now), Ok(now - 90 * 60_000));
    assert_eq!(parse_since("7d", now), Ok(now - 7 * 86_400_000));
    let day = parse_since("2026-12-01", now).unwrap();
    assert_eq!(convoy_store::iso8601(day), "2026-12-01T00:00:00.000Z");
    let time = parse_since("2026-12-01T08:30:00Z", now).unwrap();
    assert_eq!(convoy_store::iso8601(time), "2026-12-01T08:30:00.000Z");
    let err = parse_since("last tuesday", now).unwrap_err();
    assert!(err.contains("90m"), "{err}");
}

#[test]
fn every_round_column_has_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let mut store = Store::open(&db).unwrap();
    let classified = RoundRow {
        round: 1,
        status: RoundStatus::Finished,
        codec: "topk:0.1+q8+zstd".into(),
        downlink_codec: "fp32".into(),
        clients_selected: 3,
        clients_reported: 2,
        bytes_up: 1000,
        bytes_up_raw: 15_400,
        accuracy: Some(0.6741),
        ..Default::default()
    };
    let regressed = RoundRow {
        round: 2,
        accuracy: None,
        rmse: Some(3.25),
        ..classified.clone()
    };
    for r in [&classified, &regressed] {
        store.open_round(r.round, "00", &r.codec, 3, 0).unwrap();
        store.finish_round(r, &[], 1).unwrap();
    }
    let text = rounds(&db, Format::Table, &Window::default()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let header = lines[0];
    for line in &lines[1..3] {
        assert_eq!(
            line.split_whitespace().count(),
            header.split_whitespace().count(),
            "{text}"
        );
    }
    assert_eq!(cell(header, lines[1], "ratio"), "15.4x");
    assert_eq!(cell(header, lines[1], "codec"), "topk:0.1+q8+zstd");
    assert_eq!(cell(header, lines[1], "down_codec"), "fp32");
    assert_eq!(cell(header, lines[1], "accuracy"), "67.41%");
    assert_eq!(cell(header, lines[2], "accuracy"), "-");
    assert_eq!(cell(header, lines[2], "rmse"), "3.2500");
    // and the header words stand over their values
    let at = |s: &str, name: &str| s.find(name).unwrap();
    let end = at(header, "bytes_up") + "bytes_up".len();
    assert_eq!(&lines[1][end - 4..end], "1000");
}
