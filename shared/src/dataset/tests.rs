//! Tables and training sets from small CSVs.

use super::*;

const CSV: &str = "b,a,y\n1,10,yes\n3,20,no\n5,30,yes\n7,40,maybe\n";

#[test]
fn derives_spec_and_matches_columns_by_name() {
    let table = Table::read(CSV.as_bytes()).unwrap();
    let mut spec = table
        .derive_spec("y", TaskKind::Classification, vec![4], 1)
        .unwrap();
    assert_eq!(spec.feature_names(), vec!["a", "b"]);
    assert_eq!(spec.heads[0].classes, vec!["maybe", "no", "yes"]);
    assert!(matches!(
        spec.features[1].encoding,
        crate::spec::Encoding::Numeric { mean, mask: false, .. } if (mean - 4.0).abs() < 1e-6
    ));
    spec.heads[0].classes.retain(|c| c != "maybe");
    // reordered columns and an extra one still line up by name
    let other = "extra,a,y,b\n0,25,no,4\n0,25,maybe,4\n";
    let data = Dataset::from_csv(other.as_bytes(), &spec).unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data.skipped_rows, 1);
    assert_eq!(data.features, vec![0.0, 0.0]);
}

#[test]
fn missing_feature_is_imputed_and_reported() {
    let table = Table::read(CSV.as_bytes()).unwrap();
    let spec = table
        .derive_spec("y", TaskKind::Classification, vec![], 1)
        .unwrap();
    let data = Dataset::from_csv("a,y\n20,no\n".as_bytes(), &spec).unwrap();
    assert_eq!(data.missing_features, vec!["b"]);
}

#[test]
fn owned_table_gives_the_same_dataset_without_a_second_copy() {
    let spec = Table::read(CSV.as_bytes())
        .unwrap()
        .derive_spec("y", TaskKind::Classification, vec![4], 1)
        .unwrap();
    let mut spec = spec;
    spec.heads[0].classes.retain(|c| c != "maybe");
    for (csv, builds) in [
        // reordered, an extra column, a skipped row (in place)
        (
            "extra,a,y,b\n0,25,no,4\n0,25,maybe,4\n9,10,yes,1\n1,30,yes,7\n",
            true,
        ),
        // a feature missing (copies)
        ("a,y\n20,no\n30,yes\n", true),
        // a text column that is not a feature, and one that is (copies, then errors)
        ("note,a,b,y\nx,10,1,yes\ny,20,3,no\n", true),
        ("a,b,y\n10,1,yes\n20,oops,no\n", false),
    ] {
        let copied = Dataset::from_table(&Table::read(csv.as_bytes()).unwrap(), &spec);
        let owned = Dataset::from_owned_table(Table::read(csv.as_bytes()).unwrap(), &spec, None);
        assert_eq!(copied.is_ok(), builds, "{csv}");
        match (copied, owned) {
            (Ok(c), Ok(o)) => {
                assert_eq!(c.features, o.features, "{csv}");
                assert_eq!(c.targets(), o.targets(), "{csv}");
                assert_eq!(c.skipped_rows, o.skipped_rows);
                assert_eq!(c.missing_features, o.missing_features);
                assert_eq!(o.features.len(), o.len() * o.dims());
            }
            (Err(c), Err(o)) => assert_eq!(c.to_string(), o.to_string()),
            (c, o) => panic!("{csv}: {c:?} vs {o:?}"),
        }
    }
}

#[test]
fn text_cells_survive_a_column_turning_to_text() {
    let table = Table::read("a,y\n1.5,yes\nN/A,no\nfast,yes\n2,no\n".as_bytes()).unwrap();
    assert!(!table.is_numeric(0));
    assert_eq!(table.text(0, 0), "1.5");
    assert_eq!(table.cell(1, 0), Cell::Missing);
    assert_eq!(table.cell(2, 0), Cell::Text("fast"));
    assert_eq!(table.row(3), vec!["2", "no"]);
    let numeric = Table::read("a,y\n1,yes\nNaN,no\n,no\nnull,no\n-inf,no\n".as_bytes()).unwrap();
    assert!(numeric.is_numeric(0));
    assert_eq!(numeric.cell(0, 0), Cell::Number(1.0));
    assert!((1..5).all(|r| numeric.cell(r, 0) == Cell::Missing));
}

#[test]
fn bad_cells_say_where() {
    let table = Table::read("a,y\n1,0\n2,1\n".as_bytes()).unwrap();
    let spec = table
        .derive_spec("y", TaskKind::Regression, vec![], 1)
        .unwrap();
    let err = Dataset::from_csv("a,y\n1,0\nx,1\n".as_bytes(), &spec).unwrap_err();
    assert!(err.to_string().contains("row 2"), "{err}");
    let err = Table::read("a,y\n1,0\n2,x\n".as_bytes())
        .unwrap()
        .derive_spec("y", TaskKind::Regression, vec![], 1)
        .unwrap_err();
    assert!(err.to_string().contains("must be numeric"), "{err}");
    let err = table
        .derive_spec("label", TaskKind::Regression, vec![], 1)
        .unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
}

#[test]
fn duplicate_column_names_are_refused() {
    let err = Table::read("a,b,a\n1,2,3\n".as_bytes()).unwrap_err();
    assert!(
        matches!(err, DataError::DuplicateColumn(ref c) if c == "a"),
        "{err}"
    );
}

#[test]
fn a_time_ordered_table_holds_out_its_newest_rows() {
    // rows out of order; one without a time
    let csv = "t,x,y\n2024-03-02T10:00,3,c\n2024-01-05T08:00,1,a\n,0,z\n2024-02-01T12:00,2,b\n2024-04-11T00:00,4,d\n";
    let table = Table::read(csv.as_bytes()).unwrap();
    let ordered = table.ordered_by("t").unwrap();
    assert_eq!(ordered.headers, ["x", "y"], "the clock is not an input");
    let ys: Vec<String> = (0..ordered.len()).map(|r| ordered.text(r, 1)).collect();
    assert_eq!(ys, ["z", "a", "b", "c", "d"], "missing time first");
    assert!(table.ordered_by("when").is_none());
    // numbers order by value, not as text
    let numeric = Table::read("t,y\n10,b\n9,a\n100,c\n".as_bytes()).unwrap();
    let ordered = numeric.ordered_by("t").unwrap();
    let ys: Vec<String> = (0..3).map(|r| ordered.text(r, 0)).collect();
    assert_eq!(ys, ["a", "b", "c"]);
    // the last 40 % of five rows: the two newest
    let table = Table::read(csv.as_bytes())
        .unwrap()
        .ordered_by("t")
        .unwrap();
    let spec = table
        .derive_spec("y", TaskKind::Classification, vec![], 1)
        .unwrap();
    let data = Dataset::from_table(&table, &spec).unwrap();
    let (train, held) = data.split_holdout_tail(0.4);
    let held = held.unwrap();
    assert_eq!((train.len(), held.len()), (3, 2));
    let xs = |d: &Dataset| d.features.clone();
    let all = xs(&Dataset::from_table(&table, &spec).unwrap());
    assert_eq!(xs(&held), all[3..], "the newest two rows");
    assert_eq!(xs(&train), all[..3]);
}
