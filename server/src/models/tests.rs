//! `models` against a real store: two versions, one a round's child of
//! the other.

use super::*;
use convoy_shared::dataset::Table;
use convoy_shared::spec::{Recipe, TaskKind};

/// A store holding an initial model and one later version whose first
/// tensor moved; returns the store's path and both ids.
fn two_versions(dir: &Path) -> (std::path::PathBuf, String, String) {
    let db = dir.join("m.db");
    let store = Store::open(&db).unwrap();
    let mut text = String::from("a,b,y\n");
    for i in 0..20 {
        text.push_str(&format!("{},{},{}\n", i, i % 3, i % 2));
    }
    let spec = Table::read(text.as_bytes())
        .unwrap()
        .derive_spec("y", TaskKind::Classification, vec![200, 100], 1)
        .unwrap();
    let task = Recipe::default();
    let params = spec.init_params();
    let first = StoredVersion {
        round: 0,
        parent: None,
        manifest: version::manifest_of(&params, &spec, &task),
        spec: spec.clone(),
        task: task.clone(),
        params,
    };
    store.save_version(&first, None, 1).unwrap();
    let mut params = first.params.clone();
    params.tensors[0].data[3] += 0.5;
    let second = StoredVersion {
        round: 1,
        parent: Some(first.manifest.version),
        manifest: version::manifest_of(&params, &spec, &task),
        spec,
        task,
        params,
    };
    store.save_version(&second, None, 2).unwrap();
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
    let (db, _, b) = two_versions(dir.path());
    assert!(verify(&db).unwrap().problems.is_empty());
    let store = Store::open_existing(&db).unwrap();
    let row = store
        .versions()
        .unwrap()
        .into_iter()
        .find(|r| r.version == b)
        .unwrap();
    let path = store.blob_path(&row);
    let clean = std::fs::read(&path).unwrap();
    // the model spans several chunks; flip a byte inside each of them in turn
    let v: StoredVersion = postcard::from_bytes(&clean).unwrap();
    let chunks = v.manifest.chunks.len();
    assert!(chunks >= 3, "{chunks} chunks");
    let data_end = clean.len() - 64;
    let mut broken = std::collections::BTreeSet::new();
    for k in 0..chunks {
        let mut bytes = clean.clone();
        // a byte late in the blob's weights, walking backwards by chunk
        let at = data_end - k * MODEL_CHUNK_SIZE - 7;
        bytes[at] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let found = verify(&db).unwrap();
        assert_eq!(found.checked, 2);
        assert_eq!(
            found.problems.len(),
            1,
            "flip at {at}: {:?}",
            found.problems
        );
        assert!(found.problems[0].starts_with(&b), "{:?}", found.problems);
        let chunk = found.problems[0]
            .split("chunk ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse::<usize>().ok());
        broken.insert(chunk.expect("the problem names a chunk"));
    }
    assert_eq!(
        broken.len(),
        chunks,
        "each flip is found in its own chunk: {broken:?}"
    );
    std::fs::write(&path, &clean).unwrap();
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

#[test]
fn gc_removes_only_old_unreferenced_files_and_every_version_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _, _) = two_versions(dir.path());
    let store = Store::open_existing(&db).unwrap();
    let folder = store.blob_dir().to_path_buf();
    let old = folder.join("0123abcd.bin.tmp");
    let fresh = folder.join("4567cdef.bin.tmp");
    std::fs::write(&old, b"left by a crash").unwrap();
    std::fs::write(&fresh, b"being written").unwrap();
    let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(an_hour_ago)
        .unwrap();
    // a version blob just as old is still needed
    for row in store.versions().unwrap() {
        std::fs::File::options()
            .write(true)
            .open(store.blob_path(&row))
            .unwrap()
            .set_modified(an_hour_ago)
            .unwrap();
    }
    let said = gc(&db, true).unwrap();
    assert!(said.starts_with("would remove 1 unreferenced"), "{said}");
    assert!(old.exists(), "a dry run removes nothing");
    let said = gc(&db, false).unwrap();
    assert!(
        said.contains("0123abcd.bin.tmp") && said.contains("1 unreferenced file(s) younger"),
        "{said}"
    );
    assert!(!old.exists() && fresh.exists());
    let found = verify(&db).unwrap();
    assert_eq!(
        (found.checked, found.problems.len()),
        (2, 0),
        "{:?}",
        found.problems
    );
}
