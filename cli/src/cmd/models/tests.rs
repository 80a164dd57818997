//! `models` against a real store: two versions, one a round's child of
//! the other.

use super::*;
use convoy_shared::codec::Pipeline;
use convoy_shared::dataset::Table;
use convoy_shared::params::ParamSet;
use convoy_shared::spec::{Recipe, TaskKind};
use convoy_shared::version::{Provenance, VersionId};

fn spec_and_task() -> (ModelSpec, Recipe) {
    let mut text = String::from("a,b,y\n");
    for i in 0..20 {
        text.push_str(&format!("{},{},{}\n", i, i % 3, i % 2));
    }
    let spec = Table::read(text.as_bytes())
        .unwrap()
        .derive_spec("y", TaskKind::Classification, vec![200, 100], 1)
        .unwrap();
    (spec, Recipe::default())
}

fn provenance(parent: Option<VersionId>, downlink: &str) -> Provenance {
    Provenance {
        parent,
        strategy: "fedavg:lr=1".into(),
        codec: Pipeline::FP32,
        downlink_codec: downlink.parse().unwrap(),
    }
}

/// Publishes a child of `parent` whose tensors `touch` moved, through
/// `downlink`, and stores it; returns it.
fn child(
    store: &Store,
    parent: &StoredVersion,
    touch: &[usize],
    downlink: &str,
    round: u64,
) -> StoredVersion {
    let mut target = parent.params.clone();
    for (k, t) in touch.iter().enumerate() {
        target.tensors[*t].data[3 + k] += 0.5;
    }
    let codec = convoy_shared::codec::Pipeline::parse(downlink).unwrap();
    let mut residual = ParamSet::zeros(&target.layout());
    let p = convoy_shared::strategy::publish::publish(
        &parent.params,
        &target,
        &mut residual,
        &codec,
        false,
        round,
    )
    .unwrap();
    let prov = provenance(Some(parent.manifest.version), &p.delta.codec.name());
    let v = StoredVersion {
        round,
        parent: Some(parent.manifest.version),
        manifest: version::manifest_of(&p.params, &parent.spec, &parent.task, &prov),
        spec: parent.spec.clone(),
        task: parent.task.clone(),
        params: p.params,
    };
    store
        .save_version(
            &Publication {
                version: &v,
                delta: Some(&p.delta),
                server_lr: 1.0,
                exact: false,
                clean: true,
                replay_secs: 0.0,
                optimizer_state: None,
            },
            None,
            round + 1,
        )
        .unwrap();
    v
}

fn initial(store: &Store) -> StoredVersion {
    let (spec, task) = spec_and_task();
    let params = spec.init_params();
    let first = StoredVersion {
        round: 0,
        parent: None,
        manifest: version::manifest_of(&params, &spec, &task, &provenance(None, "fp32")),
        spec,
        task,
        params,
    };
    store
        .save_version(&Publication::root(&first), None, 1)
        .unwrap();
    first
}

/// `verify` checks `versions` versions and finds nothing wrong.
fn assert_sound(db: &Path, versions: usize) {
    let found = verify(db).unwrap();
    assert_eq!(
        (found.checked, found.problems.len()),
        (versions, 0),
        "{:?}",
        found.problems
    );
}

/// A store holding an initial model and one later version whose first
/// tensor moved; returns the store's path and both ids.
fn two_versions(dir: &Path) -> (std::path::PathBuf, String, String) {
    let db = dir.join("m.db");
    let store = Store::open(&db).unwrap();
    let first = initial(&store);
    let second = child(&store, &first, &[0], "fp32", 1);
    (
        db,
        version::hex(&first.manifest.version),
        version::hex(&second.manifest.version),
    )
}

#[test]
fn list_show_and_diff_say_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let (db, a, b) = two_versions(dir.path());
    let listed = list(&db, Format::Table).unwrap();
    assert!(
        listed.contains(&a[..12]) && listed.contains("2 versions"),
        "{listed}"
    );
    let shown = show(&db, &b[..8]).unwrap();
    assert!(
        shown.contains(&format!("lineage    {} (round 0)", &a[..12])),
        "{shown}"
    );
    assert!(shown.contains("head     y"), "{shown}");
    let d = diff(&db, &a, &b).unwrap();
    assert!(d.contains("spec       same"), "{d}");
    // one value moved: only its chunk differs, and its tensor's change is 0.5
    assert!(d.contains("chunks     1 of"), "{d}");
    assert!(
        d.contains("layers.0.weight") && d.contains("5.0000e-1"),
        "{d}"
    );
    let csv = dir.path().join("t.csv");
    std::fs::write(&csv, "b,y,extra\n1,0,x\n2,1,y\n0,1,z\n").unwrap();
    let scored = eval(&db, &b, &csv).unwrap();
    assert!(
        scored.contains("y                        3 rows: accuracy")
            && scored.contains("encoded as missing: a"),
        "{scored}"
    );
    std::fs::write(&csv, "a,b\n1,2\n").unwrap();
    assert!(
        eval(&db, &b, &csv)
            .unwrap_err()
            .to_string()
            .contains("no label")
    );
    assert!(show(&db, "zz").is_err(), "not hex");
    assert!(show(&db, "0000").is_err(), "no such version");
}

#[test]
fn verify_names_the_chunk_a_flipped_byte_broke() {
    let dir = tempfile::tempdir().unwrap();
    let (db, a, b) = two_versions(dir.path());
    assert_eq!(verify(&db).unwrap().problems, Vec::<String>::new());
    let conn = rusqlite::Connection::open(&db).unwrap();
    let hashes: Vec<Vec<u8>> = conn
        .prepare("SELECT hash FROM version_chunks WHERE version = ?1 ORDER BY idx")
        .unwrap()
        .query_map([&a], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(hashes.len() >= 3, "{} chunks", hashes.len());
    for (k, hash) in hashes.iter().enumerate() {
        let clean: Vec<u8> = conn
            .query_row("SELECT bytes FROM chunks WHERE hash = ?1", [hash], |r| {
                r.get(0)
            })
            .unwrap();
        let mut bytes = clean.clone();
        bytes[clean.len() / 2] ^= 0x10;
        conn.execute(
            "UPDATE chunks SET bytes = ?1 WHERE hash = ?2",
            rusqlite::params![bytes, hash],
        )
        .unwrap();
        let found = verify(&db).unwrap();
        assert_eq!(found.checked, 2);
        // the keyframe, and the delta version rebuilt from it
        assert_eq!(found.problems.len(), 2, "{:?}", found.problems);
        assert!(found.problems[0].starts_with(&a), "{:?}", found.problems);
        assert!(
            found
                .problems
                .iter()
                .all(|p| p.contains(&format!("chunk {k} "))),
            "flip in chunk {k}: {:?}",
            found.problems
        );
        conn.execute(
            "UPDATE chunks SET bytes = ?1 WHERE hash = ?2",
            rusqlite::params![clean, hash],
        )
        .unwrap();
    }
    // a flipped byte in the stored delta breaks only the version it makes
    let clean: Vec<u8> = conn
        .query_row("SELECT bytes FROM deltas WHERE version = ?1", [&b], |r| {
            r.get(0)
        })
        .unwrap();
    let mut bytes = clean.clone();
    // (four bytes: a lone low bit of a zero delta would vanish in the sum)
    let at = clean.len() / 3;
    bytes[at..at + 4].iter_mut().for_each(|b| *b ^= 0x5a);
    conn.execute(
        "UPDATE deltas SET bytes = ?1 WHERE version = ?2",
        rusqlite::params![bytes, b],
    )
    .unwrap();
    let found = verify(&db).unwrap();
    assert_eq!(found.problems.len(), 1, "{:?}", found.problems);
    assert!(found.problems[0].starts_with(&b) && found.problems[0].contains("chunk"));
    conn.execute(
        "UPDATE deltas SET bytes = ?1 WHERE version = ?2",
        rusqlite::params![clean, b],
    )
    .unwrap();
    assert!(verify(&db).unwrap().problems.is_empty());
}

#[test]
fn export_and_import_keep_the_id_and_refuse_a_damaged_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _, b) = two_versions(dir.path());
    let file = dir.path().join("model.convoy");
    export(&db, &b, &file).unwrap();
    let other = dir.path().join("other.db");
    let said = import(&other, &file).unwrap();
    assert!(said.starts_with(&format!("imported {b}")), "{said}");
    let again = Store::open_existing(&other).unwrap();
    assert_eq!(again.versions().unwrap()[0].version, b);
    assert_eq!(
        again.load_version(&b).unwrap(),
        Store::open_existing(&db).unwrap().load_version(&b).unwrap()
    );
    assert!(import(&other, &file).unwrap().starts_with("already stored"));
    let bytes = std::fs::read(&file).unwrap();
    for damage in [
        bytes[..bytes.len() - 1].to_vec(),
        {
            let mut x = bytes.clone();
            x[40] ^= 1;
            x
        },
        b"not a bundle at all, just text".to_vec(),
    ] {
        assert!(read_bundle(&damage).is_err());
    }
}

/// v0 keyframe, v1 v2 deltas, v3 a keyframe (depth limit 2), v4 a delta.
fn chain(dir: &Path) -> (std::path::PathBuf, Vec<StoredVersion>) {
    let db = dir.join("c.db");
    let mut store = Store::open(&db).unwrap();
    store.set_policy(convoy_store::StorePolicy {
        max_chain_depth: 2,
        ..Default::default()
    });
    let mut line = vec![initial(&store)];
    for round in 1..=4 {
        // round r moves the first tensor only: the other chunks stay shared
        let next = child(&store, line.last().unwrap(), &[0], "q8+zstd", round);
        line.push(next);
    }
    (db, line)
}

#[test]
fn the_policy_stores_keyframes_every_max_chain_depth_and_chunks_once() {
    let dir = tempfile::tempdir().unwrap();
    let (db, line) = chain(dir.path());
    let store = Store::open_existing(&db).unwrap();
    let kinds: Vec<_> = store
        .versions()
        .unwrap()
        .iter()
        .map(|r| (r.kind, r.depth))
        .collect();
    use convoy_store::StorageKind::{Delta, Keyframe};
    assert_eq!(
        kinds,
        vec![
            (Keyframe, 0),
            (Delta, 1),
            (Delta, 2),
            (Keyframe, 0),
            (Delta, 1)
        ]
    );
    // v3's unchanged chunks are v0's: stored once
    let rows = store.versions().unwrap();
    assert!(rows[3].stored_bytes < rows[0].stored_bytes / 2, "{rows:?}");
    for v in &line {
        let hex = version::hex(&v.manifest.version);
        assert_eq!(store.load_version(&hex).unwrap().params, v.params);
    }
}

#[test]
fn a_vehicle_several_versions_behind_gets_the_delta_chain_not_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let (db, line) = chain(dir.path());
    let store = Store::open_existing(&db).unwrap();
    let hex = |i: usize| version::hex(&line[i].manifest.version);
    let cost = transfer_cost(&store, &hex(0), &hex(4)).unwrap();
    assert_eq!(cost.behind, Some(4));
    let chain = cost
        .delta_chain
        .expect("every step has a delta (v3's is small)");
    assert!(chain * 20 < cost.full, "{cost:?}");
    assert_eq!(cost.cheapest, chain);
    // only the first tensor's chunk changed: the chunks route moves only it
    assert!(cost.missing_chunks <= MODEL_CHUNK_SIZE as u64, "{cost:?}");
    assert!(cost.missing_chunks < cost.full);
    // what the chain carries rebuilds exactly the target
    let links = store.delta_chain(&hex(1), &hex(4), 10).unwrap().unwrap();
    assert_eq!(links.len(), 3);
    let mut params = line[1].params.clone();
    for link in &links {
        params = convoy_shared::strategy::publish::apply(&params, link).unwrap();
    }
    assert_eq!(params, line[4].params);
    assert!(
        store.delta_chain(&hex(4), &hex(1), 10).unwrap().is_none(),
        "not an ancestor"
    );
}

#[test]
fn gc_never_drops_a_chunk_or_parent_a_kept_version_needs() {
    let dir = tempfile::tempdir().unwrap();
    let (db, line) = chain(dir.path());
    let hex = |i: usize| version::hex(&line[i].manifest.version);
    {
        let store = Store::open(&db).unwrap();
        // a vehicle still runs v1: it and the keyframe it is rebuilt from stay
        store.record_holding("car-1", &hex(1), 5).unwrap();
    }
    let said = gc(&db, Some(1), true).unwrap();
    assert!(said.starts_with("would drop 1 version(s)"), "{said}");
    assert_eq!(verify(&db).unwrap().checked, 5, "a dry run drops nothing");
    let said = gc(&db, Some(1), false).unwrap();
    assert!(said.contains(&hex(2)), "{said}");
    let store = Store::open_existing(&db).unwrap();
    let left: Vec<String> = store
        .versions()
        .unwrap()
        .into_iter()
        .map(|r| r.version)
        .collect();
    assert_eq!(left, vec![hex(0), hex(1), hex(3), hex(4)]);
    assert_sound(&db, 4);
    // with nobody holding v1, v0 and v1 go; v3's chunks (shared with v0) stay
    Store::open(&db)
        .unwrap()
        .record_holding("car-1", &hex(4), 6)
        .unwrap();
    gc(&db, Some(1), false).unwrap();
    assert_sound(&db, 2);
}

#[test]
fn gc_removes_only_old_files_older_releases_left() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _, _) = two_versions(dir.path());
    let store = Store::open_existing(&db).unwrap();
    let folder = store.blob_dir().to_path_buf();
    let old = folder.join("0123abcd.bin");
    let fresh = folder.join("4567cdef.bin.tmp");
    std::fs::write(&old, b"a model file of an older release").unwrap();
    std::fs::write(&fresh, b"being written").unwrap();
    let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(an_hour_ago)
        .unwrap();
    let said = gc(&db, None, true).unwrap();
    assert!(said.contains("would remove 1 file(s)"), "{said}");
    assert!(old.exists(), "a dry run removes nothing");
    let said = gc(&db, None, false).unwrap();
    assert!(
        said.contains("removed 1 file(s)") && said.contains("1 file(s) younger"),
        "{said}"
    );
    assert!(!old.exists() && fresh.exists());
    assert_sound(&db, 2);
}

#[test]
fn a_line_stores_its_spec_once_and_older_rows_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let (db, line) = chain(dir.path());
    let hex = |i: usize| version::hex(&line[i].manifest.version);
    let spec_len = postcard::to_allocvec(&line[0].spec).unwrap().len() as u64;
    let conn = rusqlite::Connection::open(&db).unwrap();
    let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    assert_eq!(
        count("SELECT COUNT(*) FROM specs"),
        1,
        "five versions, one spec"
    );
    let totals = Store::open_existing(&db).unwrap().storage().unwrap();
    assert!(
        totals.meta_bytes < spec_len + 5 * 400,
        "descriptions {} for a {spec_len}-byte spec",
        totals.meta_bytes
    );
    // a row as releases before the shared specs wrote it: the whole
    // description (spec included) in meta, no spec hash
    #[derive(serde::Serialize)]
    struct Before<'a> {
        round: u64,
        manifest: &'a version::Manifest,
        spec: &'a ModelSpec,
        task: &'a Recipe,
        server_lr: f64,
        exact: bool,
        clean: bool,
    }
    let v = &line[2];
    let before = postcard::to_allocvec(&Before {
        round: v.round,
        manifest: &v.manifest,
        spec: &v.spec,
        task: &v.task,
        server_lr: 1.0,
        exact: false,
        clean: true,
    })
    .unwrap();
    conn.execute(
        "UPDATE versions SET meta = ?1, spec = NULL WHERE version = ?2",
        rusqlite::params![before, hex(2)],
    )
    .unwrap();
    assert_sound(&db, 5);
    let store = Store::open_existing(&db).unwrap();
    assert_eq!(store.load_version(&hex(2)).unwrap().params, v.params);
    // v2 no longer names the spec; the others still need it: gc keeps it
    drop(store);
    gc(&db, None, false).unwrap();
    assert_eq!(count("SELECT COUNT(*) FROM specs"), 1);
    // a damaged spec breaks every version that names it, and v2 (whose
    // chain starts at v0) with them, and says so
    conn.execute("UPDATE specs SET spec = substr(spec, 1, 20)", [])
        .unwrap();
    let found = verify(&db).unwrap();
    assert_eq!(found.problems.len(), 5, "{:?}", found.problems);
    assert!(
        found
            .problems
            .iter()
            .all(|p| p.contains("spec does not match")),
        "{:?}",
        found.problems
    );
}
