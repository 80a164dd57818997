//! Schema merge, statistics and the pipeline they make.

use super::*;
use crate::dataset::{Dataset, Targets};
use crate::spec::{Encoding, TaskKind};

fn table(csv: &str) -> Table {
    Table::read(csv.as_bytes()).unwrap()
}

fn declare(csv: &str, label: &str) -> LocalSchema {
    LocalSchema::infer(&table(csv), label, TaskKind::Classification).unwrap()
}

const A: &str = "speed_kmh,road,y\n50,city,yes\n,highway,no\n90,highway,yes\n";
const B: &str = "vehicle_speed,rain,y\n30,1,no\n40,NA,yes\n";

#[test]
fn declarations_merge_by_name_with_renames() {
    let settings = AlignSettings {
        renames: [("speed_kmh".to_string(), "vehicle_speed".to_string())].into(),
        ..Default::default()
    };
    let (a, b) = (declare(A, "y"), declare(B, "y"));
    assert_eq!(a.columns[0].missing, 1);
    assert_eq!(a.columns[1].kind, ColumnKind::Categorical);
    let schema = merge(&[("car-a", &a), ("car-b", &b)], &settings).unwrap();
    let names: Vec<_> = schema.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["rain", "road", "vehicle_speed"]);
    assert_eq!(schema.columns[2].aliases, ["speed_kmh"]);
    assert_eq!(schema.columns[0].kind, ColumnKind::Numeric);
    // arrival order does not change the schema
    assert_eq!(
        merge(&[("car-b", &b), ("car-a", &a)], &settings)
            .unwrap()
            .id(),
        schema.id()
    );
}

#[test]
fn conflicts_name_the_vehicles() {
    let a = declare("gear,y\n1,yes\n2,no\n", "y");
    let b = declare("gear,y\nP,yes\nD,no\n", "y");
    let err = merge(&[("car-a", &a), ("car-b", &b)], &AlignSettings::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"gear\" is numeric on car-a but text on car-b"),
        "{err}"
    );
    assert!(err.contains("align.categorical"), "{err}");
    let forced = AlignSettings {
        categorical: vec!["gear".into()],
        ..Default::default()
    };
    let schema = merge(&[("car-a", &a), ("car-b", &b)], &forced).unwrap();
    assert_eq!(schema.columns[0].kind, ColumnKind::Categorical);

    let numeric_label = declare("x,y\n1,0\n2,1\n", "y");
    let text_label = declare("x,y\n1,no\n2,yes\n", "y");
    let err = merge(
        &[("car-1", &numeric_label), ("car-2", &text_label)],
        &AlignSettings::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("label \"y\"") && err.contains("car-1") && err.contains("car-2"),
        "{err}"
    );
    let mut other_task = declare("x,y\n1,3\n2,4\n", "y");
    other_task.task = TaskKind::Regression;
    let err = merge(
        &[("car-1", &numeric_label), ("car-3", &other_task)],
        &AlignSettings::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("different tasks") && err.contains("\"regression\": car-3"),
        "{err}"
    );
    let mut regression = declare("x,y\n1,no\n2,yes\n", "y");
    regression.task = TaskKind::Regression;
    let err = merge(&[("car-4", &regression)], &AlignSettings::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("must be numeric"), "{err}");
}

/// Rows with gaps, text categories and a numeric column whose values do not
/// add up exactly in floating point.
fn pooled() -> String {
    let mut csv = String::from("dist,dow,hour,tip\n");
    let days = ["Mon", "Tue", "Sat", "Sun"];
    for i in 0..97u32 {
        let dist = if i % 7 == 3 {
            String::new()
        } else {
            format!("{}", (i as f32 * 0.37).sin() * 1e3 + 0.1)
        };
        let dow = if i % 11 == 5 {
            "NA"
        } else {
            days[(i % 4) as usize]
        };
        let tip = if i % 3 == 0 { "no" } else { "yes" };
        csv.push_str(&format!("{dist},{dow},{},{tip}\n", i % 24));
    }
    csv
}

#[test]
fn merged_statistics_equal_the_pooled_statistics_exactly() {
    let all = pooled();
    let lines: Vec<&str> = all.lines().collect();
    let whole = table(&all);
    let schema = merge(
        &[(
            "all",
            &LocalSchema::infer(&whole, "tip", TaskKind::Classification).unwrap(),
        )],
        &AlignSettings::default(),
    )
    .unwrap();
    let reference = Statistics::collect(&whole, &schema, "tip", None).unwrap();
    for cut in [1, 13, 50, 96] {
        // split the rows over three vehicles, the last one lacking `hour`
        let part = |rows: &[&str]| format!("{}\n{}\n", lines[0], rows.join("\n"));
        let (first, rest) = lines[1..].split_at(cut);
        let (second, third) = rest.split_at(rest.len() / 2);
        let mut reports: Vec<Statistics> = [first, second, third]
            .iter()
            .map(|rows| Statistics::collect(&table(&part(rows)), &schema, "tip", None).unwrap())
            .collect();
        let (columns, label) = stats::merged(&schema, &reports);
        for ((merged, _), expected) in columns.iter().zip(&reference.columns) {
            assert_eq!(merged, expected, "cut {cut}");
        }
        assert_eq!(label, std::slice::from_ref(&reference.label));
        reports.reverse();
        let spec = finish(&schema, &reports, &AlignSettings::default(), vec![4], 1).unwrap();
        let alone = finish(&schema, [&reference], &AlignSettings::default(), vec![4], 1).unwrap();
        assert_eq!(spec, alone, "cut {cut}");
    }
    let ColumnStats::Numeric(dist) = &reference.columns[0] else {
        panic!("dist is numeric")
    };
    let values: Vec<f64> = (0..whole.len())
        .filter_map(|r| match whole.cell(r, 0) {
            crate::dataset::Cell::Number(v) => Some(v as f64),
            _ => None,
        })
        .collect();
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    assert_eq!(dist.count as usize, values.len());
    assert_eq!(dist.missing, 14);
    assert!((dist.mean() - mean).abs() < 1e-9);
}

#[test]
fn missing_cells_get_a_presence_input_and_categories_one_hot() {
    let data = "dist,dow,y\n2,Mon,yes\n,Tue,no\n4,NA,yes\n6,Fri,no\n";
    let t = table(data);
    let spec = t
        .derive_spec("y", TaskKind::Classification, vec![4], 1)
        .unwrap();
    let Encoding::Numeric { mean, std, mask } = spec.features[0].encoding else {
        panic!("dist is numeric")
    };
    assert!(mask, "a missing cell turns the presence input on");
    assert_eq!(mean, 4.0);
    assert!((std - (8.0f32 / 3.0).sqrt()).abs() < 1e-6);
    let Encoding::Categorical { vocabulary } = &spec.features[1].encoding else {
        panic!("dow is categorical")
    };
    assert_eq!(vocabulary, &["Fri", "Mon", "Tue"]);
    // inputs: dist, dist present, Fri, Mon, Tue, other
    assert_eq!(spec.inputs(), 6);
    // a vehicle without `dist`, with a day the fleet never saw
    let other = Dataset::from_table(&table("dow,y\nWed,yes\nMon,no\n"), &spec).unwrap();
    assert_eq!(other.missing_features, ["dist"]);
    let b = other.batch(&[0, 1]);
    assert_eq!(
        b.features,
        [0., 0., 0., 0., 0., 1., /* */ 0., 0., 0., 1., 0., 0.]
    );
    let own = Dataset::from_table(&t, &spec).unwrap();
    let b = own.batch(&[0, 1, 2]);
    let z = (2.0 - 4.0) / std;
    assert_eq!(
        b.features,
        [
            z, 1., 0., 1., 0., 0., /* */ 0., 0., 0., 0., 1., 0., /* */ 0., 1., 0., 0.,
            0., 0.
        ]
    );
    assert_eq!(b.targets, Targets::Classes(vec![1, 0, 1]));
}

#[test]
fn vocabulary_is_capped_with_an_other_input() {
    let t = table("c,y\na,1\na,0\nb,1\nb,0\nb,1\nc,0\nd,1\n");
    let settings = AlignSettings {
        max_categories: 2,
        ..Default::default()
    };
    let local = LocalSchema::infer(&t, "y", TaskKind::Classification).unwrap();
    let schema = merge(&[("v", &local)], &settings).unwrap();
    let stats = Statistics::collect(&t, &schema, "y", None).unwrap();
    let spec = finish(&schema, [&stats], &settings, vec![], 1).unwrap();
    assert_eq!(
        spec.features[0].encoding,
        Encoding::Categorical {
            vocabulary: vec!["b".into(), "a".into()]
        }
    );
    let data = Dataset::from_table(&t, &spec).unwrap();
    // `c` and `d` share the "other" input
    assert_eq!(data.batch(&[5, 6]).features, [0., 0., 1., 0., 0., 1.]);
    assert_eq!(spec.primary().classes, ["0", "1"]);
}

#[test]
fn regression_targets_are_standardised() {
    let t = table("x,delay\n1,100\n2,200\n3,\n4,300\n");
    let spec = t
        .derive_spec("delay", TaskKind::Regression, vec![], 1)
        .unwrap();
    assert_eq!(spec.primary().target.mean, 200.0);
    let data = Dataset::from_table(&t, &spec).unwrap();
    assert_eq!(data.skipped_rows, 1, "a row without a target is skipped");
    let Targets::Values(v) = data.targets() else {
        panic!("values")
    };
    assert!((v[0] + v[2]).abs() < 1e-6 && v[1] == 0.0, "{v:?}");
    assert!((v[2] - 100.0 / spec.primary().target.std).abs() < 1e-6);
}

#[test]
fn data_that_does_not_fit_the_schema_is_refused_clearly() {
    let fleet = table("speed,y\n1,yes\n2,no\n");
    let schema = merge(
        &[(
            "a",
            &LocalSchema::infer(&fleet, "y", TaskKind::Classification).unwrap(),
        )],
        &AlignSettings::default(),
    )
    .unwrap();
    let err = Statistics::collect(&table("speed,y\n1,yes\nfast,no\n"), &schema, "y", None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"speed\"") && err.contains("\"fast\""),
        "{err}"
    );
    let err = Statistics::collect(&table("speed,label\n1,yes\n"), &schema, "y", None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("label column \"y\" not found"), "{err}");
}

#[test]
fn malformed_statistics_are_refused() {
    let t = table("s,y\n1,yes\n2,no\n");
    let schema = merge(
        &[(
            "a",
            &LocalSchema::infer(&t, "y", TaskKind::Classification).unwrap(),
        )],
        &AlignSettings::default(),
    )
    .unwrap();
    let good = Statistics::collect(&t, &schema, "y", None).unwrap();
    good.check(&schema).unwrap();
    let mut wrong_schema = good.clone();
    wrong_schema.schema[0] ^= 1;
    let mut short = good.clone();
    short.columns.clear();
    let mut inflated = good.clone();
    inflated.rows = 1_000;
    let mut kind = good.clone();
    kind.columns[0] = ColumnStats::Categorical(CategoryStats::default());
    let mut no_head = good.clone();
    no_head.head = 1;
    for bad in [wrong_schema, short, inflated, kind, no_head] {
        assert!(matches!(
            bad.check(&schema),
            Err(AlignError::Malformed { .. })
        ));
    }
    let mut twice = LocalSchema::infer(&t, "y", TaskKind::Classification).unwrap();
    twice.columns.push(twice.columns[0].clone());
    assert!(twice.check().is_err());
}

#[test]
fn each_label_becomes_a_head_and_no_label_is_an_input() {
    // car-a classifies tip and logs distance; car-b regresses distance and
    // logs tip; car-c classifies tip under another name
    let a = "distance,hour,tip\n1.5,3,yes\n2.5,4,no\n,5,yes\n";
    let b = "distance,hour,tip\n10,6,no\n30,7,yes\n";
    let c = "hour,gratuity\n8,no\n9,yes\n";
    let settings = AlignSettings {
        renames: [("gratuity".to_string(), "tip".to_string())].into(),
        ..Default::default()
    };
    let la = declare(a, "tip");
    let lb = LocalSchema::infer(&table(b), "distance", TaskKind::Regression).unwrap();
    let lc = declare(c, "gratuity");
    let schema = merge(&[("car-a", &la), ("car-b", &lb), ("car-c", &lc)], &settings).unwrap();
    let names: Vec<_> = schema.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["hour"], "labels are never inputs");
    let heads: Vec<_> = schema
        .heads
        .iter()
        .map(|h| (h.label.as_str(), h.task))
        .collect();
    assert_eq!(
        heads,
        [
            ("distance", TaskKind::Regression),
            ("tip", TaskKind::Classification)
        ]
    );
    assert_eq!(schema.heads[1].aliases, ["gratuity"]);
    let reports = [
        Statistics::collect(&table(a), &schema, "tip", None).unwrap(),
        Statistics::collect(&table(b), &schema, "distance", None).unwrap(),
        Statistics::collect(&table(c), &schema, "gratuity", None).unwrap(),
    ];
    assert_eq!(
        reports.iter().map(|r| r.head).collect::<Vec<_>>(),
        [1, 0, 1]
    );
    for r in &reports {
        r.check(&schema).unwrap();
    }
    let spec = finish(&schema, &reports, &settings, vec![4], 1).unwrap();
    assert_eq!(spec.heads.len(), 2);
    assert_eq!(spec.heads[0].target.mean, 20.0, "only car-b's targets");
    assert_eq!(spec.heads[1].classes, ["no", "yes"]);
    // car-a's rows train the tip head, even though its CSV has distance too
    let da = Dataset::from_table_for(&table(a), &spec, spec.head_for("tip")).unwrap();
    assert_eq!((da.head(), da.len()), (1, 3));
    let db = Dataset::from_table_for(&table(b), &spec, spec.head_for("distance")).unwrap();
    assert_eq!(db.head(), 0);
    assert_eq!(db.targets(), &Targets::Values(vec![-1.0, 1.0]));
    let dc = Dataset::from_table(&table(c), &spec).unwrap();
    assert_eq!(dc.head(), 1, "the renamed label finds its head");
}

#[test]
fn model_lines_get_heads_of_their_own_on_the_shared_trunk() {
    let a = "hour,tip\n1,yes\n2,no\n";
    let b = "hour,tip\n3,no\n4,yes\n5,maybe\n";
    let mut la = declare(a, "tip");
    la.line = Some("sedan".into());
    let mut lb = declare(b, "tip");
    lb.line = Some("van".into());
    let lc = declare(a, "tip");
    let schema = merge(
        &[("car-a", &la), ("car-b", &lb), ("car-c", &lc)],
        &Default::default(),
    )
    .unwrap();
    let lines: Vec<Option<&str>> = schema.heads.iter().map(|h| h.line.as_deref()).collect();
    assert_eq!(lines, [None, Some("sedan"), Some("van")]);
    let reports = [
        Statistics::collect(&table(a), &schema, "tip", Some("sedan")).unwrap(),
        Statistics::collect(&table(b), &schema, "tip", Some("van")).unwrap(),
        Statistics::collect(&table(a), &schema, "tip", None).unwrap(),
    ];
    let spec = finish(&schema, &reports, &Default::default(), vec![4], 1).unwrap();
    assert_eq!(
        spec.heads[2].classes,
        ["maybe", "no", "yes"],
        "each line's own classes"
    );
    assert_eq!(spec.heads[1].classes, ["no", "yes"]);
    assert_eq!(spec.head_of("tip", Some("van")), Some(2));
    assert_eq!(spec.head_of("tip", None), Some(0));
    assert_eq!(spec.heads[2].name(), "tip@van");
    let mut odd = declare(a, "tip");
    odd.line = Some(String::new());
    assert!(odd.check().is_err(), "an empty line name is refused");
}
