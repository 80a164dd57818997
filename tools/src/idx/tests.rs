//! Unit and property tests of the IDX reader.

use super::*;
use flate2::Compression;
use flate2::write::GzEncoder;
use proptest::prelude::*;
use std::io::Write;

/// Three 2x3 images whose pixels count up from 0, 10 and 250.
fn images_file(count_in_header: u32) -> Vec<u8> {
    let mut file = Vec::new();
    for field in [IMAGES_MAGIC, count_in_header, 2, 3] {
        file.extend_from_slice(&field.to_be_bytes());
    }
    for start in [0u8, 10, 250] {
        file.extend((0..6).map(|i| start.wrapping_add(i)));
    }
    file
}

fn labels_file(labels: &[u8]) -> Vec<u8> {
    let mut file = Vec::new();
    file.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
    file.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    file.extend_from_slice(labels);
    file
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn check_round_trip(images_bytes: &[u8], labels_bytes: &[u8]) {
    let images = read_images(images_bytes, 3).unwrap();
    assert_eq!((images.count, images.rows, images.cols), (3, 2, 3));
    assert_eq!(images.pixels.len(), 18);
    assert_eq!(&images.pixels[..7], &[0, 1, 2, 3, 4, 5, 10]);
    assert_eq!(images.pixels[17], 255);
    let labels = read_labels(labels_bytes, 3).unwrap();
    assert_eq!(labels, vec![2, 0, 1]);

    let data = to_dataset(&images, &labels, 3).unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(data.targets(), &Targets::Classes(vec![2, 0, 1]));
    let batch = data.batch(&[2]);
    assert_eq!([batch.targets.len(), batch.dims], [1, 6]);
    let expected: Vec<f32> = (250..=255).map(|p| p as f32 / 255.0).collect();
    assert_eq!(batch.features, expected);
}

#[test]
fn raw_files_round_trip() {
    check_round_trip(&images_file(3), &labels_file(&[2, 0, 1]));
}

#[test]
fn gzip_files_round_trip() {
    check_round_trip(&gzip(&images_file(3)), &gzip(&labels_file(&[2, 0, 1])));
}

#[test]
fn concatenated_gzip_members_are_one_stream() {
    let file = images_file(3);
    let (head, tail) = file.split_at(20);
    let mut two_members = gzip(head);
    two_members.extend(gzip(tail));
    assert_eq!(read_images(&two_members[..], 3).unwrap().pixels, file[16..]);
}

#[test]
fn swapped_files_are_refused_by_magic() {
    let err = read_images(&labels_file(&[1])[..], 10).unwrap_err();
    assert!(matches!(
        err,
        IdxError::BadMagic {
            expected: IMAGES_MAGIC,
            got: LABELS_MAGIC,
            ..
        }
    ));
    let message = err.to_string();
    assert!(message.contains("expected 0x00000803"), "{message}");
    assert!(message.contains("0x00000801"), "{message}");
    assert!(message.contains("labels file"), "{message}");
    assert!(matches!(
        read_labels(&images_file(3)[..], 10),
        Err(IdxError::BadMagic {
            expected: LABELS_MAGIC,
            got: IMAGES_MAGIC,
            ..
        })
    ));
}

#[test]
fn truncated_data_says_how_much_is_missing() {
    let file = images_file(3);
    let err = read_images(&file[..file.len() - 1], 3).unwrap_err();
    assert!(matches!(
        err,
        IdxError::Truncated {
            section: "image pixels",
            expected: 18,
            present: 17
        }
    ));
    assert!(
        err.to_string()
            .contains("expected 18 bytes, only 17 present")
    );
    assert!(matches!(
        read_images(&file[..5], 3),
        Err(IdxError::Truncated {
            section: "images header",
            expected: 12,
            present: 1
        })
    ));
    assert!(matches!(
        read_labels(&labels_file(&[1, 2, 3])[..10], 3),
        Err(IdxError::Truncated {
            section: "labels",
            expected: 3,
            present: 2
        })
    ));
    assert!(matches!(
        read_labels(&[][..], 3),
        Err(IdxError::Truncated {
            section: "magic number",
            expected: 4,
            present: 0
        })
    ));
    // a gzip stream cut short fails too, as a decoding error or short data
    let compressed = gzip(&file);
    assert!(read_images(&compressed[..compressed.len() / 2], 3).is_err());
}

#[test]
fn oversized_counts_are_refused_before_reading() {
    // the header claims u32::MAX images; only the limit check stands
    // between it and a multi-terabyte allocation
    let err = read_images(&images_file(u32::MAX)[..], 1000).unwrap_err();
    assert!(
        matches!(err, IdxError::TooMany { count, max_count: 1000, .. } if count == u32::MAX as usize)
    );
    assert!(matches!(
        read_images(&images_file(3)[..], 2),
        Err(IdxError::TooMany {
            count: 3,
            max_count: 2,
            ..
        })
    ));
    assert!(matches!(
        read_labels(&labels_file(&[0; 5])[..], 4),
        Err(IdxError::TooMany {
            count: 5,
            max_count: 4,
            ..
        })
    ));
    // a huge count under a generous limit still only allocates what is present
    assert!(matches!(
        read_images(&images_file(u32::MAX)[..], usize::MAX),
        Err(IdxError::Truncated { present: 18, .. })
    ));
}

#[test]
fn image_sides_are_bounded() {
    let mut file = images_file(3);
    file[8..12].copy_from_slice(&4097u32.to_be_bytes());
    assert!(matches!(
        read_images(&file[..], 3),
        Err(IdxError::BadShape {
            rows: 4097,
            cols: 3
        })
    ));
    file[8..12].copy_from_slice(&0u32.to_be_bytes());
    assert!(matches!(
        read_images(&file[..], 3),
        Err(IdxError::BadShape { rows: 0, .. })
    ));
}

#[test]
fn to_dataset_checks_counts_and_labels() {
    let images = read_images(&images_file(3)[..], 3).unwrap();
    assert!(matches!(
        to_dataset(&images, &[0, 1], 10),
        Err(IdxError::CountMismatch {
            images: 3,
            labels: 2
        })
    ));
    assert!(matches!(
        to_dataset(&images, &[0, 3, 1], 3),
        Err(IdxError::LabelOutOfRange {
            index: 1,
            label: 3,
            classes: 3
        })
    ));
    let inconsistent = Images {
        pixels: vec![0; 17],
        ..images
    };
    assert!(matches!(
        to_dataset(&inconsistent, &[0, 0, 0], 3),
        Err(IdxError::PixelMismatch { pixels: 17, .. })
    ));
}

#[test]
fn feature_names_are_row_major() {
    assert_eq!(feature_names(2, 2), vec!["px0", "px1", "px2", "px3"]);
    assert_eq!(
        feature_names(28, 28).last().map(String::as_str),
        Some("px783")
    );
}

/// Needs the Debian package `dataset-fashion-mnist`.
#[test]
#[ignore = "needs /usr/share/datasets/fashion-mnist (apt-get install dataset-fashion-mnist)"]
fn reads_fashion_mnist_test_set() {
    let dir = std::path::Path::new("/usr/share/datasets/fashion-mnist");
    let images_path = dir.join("t10k-images-idx3-ubyte.gz");
    let labels_path = dir.join("t10k-labels-idx1-ubyte.gz");
    let images = read_images(std::fs::File::open(images_path).unwrap(), 60_000).unwrap();
    let labels = read_labels(std::fs::File::open(labels_path).unwrap(), 60_000).unwrap();
    assert_eq!((images.count, images.rows, images.cols), (10_000, 28, 28));
    assert_eq!(labels.len(), 10_000);
    assert!(labels.iter().all(|&l| l < 10));
    // every class is present, so the labels were not all read as zeros
    for class in 0..10 {
        assert!(labels.contains(&class), "class {class} missing");
    }
    assert!(images.pixels.contains(&255));
    let data = to_dataset(&images, &labels, 10).unwrap();
    assert_eq!(data.len(), 10_000);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
        max_count in 0usize..100,
    ) {
        if let Ok(images) = read_images(&bytes[..], max_count) {
            prop_assert!(images.count <= max_count);
            prop_assert_eq!(images.pixels.len(), images.count * images.rows * images.cols);
        }
        if let Ok(labels) = read_labels(&bytes[..], max_count) {
            prop_assert!(labels.len() <= max_count);
        }
    }

    #[test]
    fn arbitrary_gzip_like_bytes_never_panic(
        tail in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut bytes = GZIP_MAGIC.to_vec();
        bytes.extend(tail);
        let _ = read_images(&bytes[..], 50);
        let _ = read_labels(&bytes[..], 50);
    }

    #[test]
    fn valid_magic_with_arbitrary_header_never_panics(
        fields in proptest::array::uniform3(any::<u32>()),
        body in proptest::collection::vec(any::<u8>(), 0..300),
        gzipped in any::<bool>(),
    ) {
        let mut images = IMAGES_MAGIC.to_be_bytes().to_vec();
        fields.iter().for_each(|f| images.extend_from_slice(&f.to_be_bytes()));
        images.extend_from_slice(&body);
        let mut labels = LABELS_MAGIC.to_be_bytes().to_vec();
        labels.extend_from_slice(&fields[0].to_be_bytes());
        labels.extend_from_slice(&body);
        if gzipped {
            images = gzip(&images);
            labels = gzip(&labels);
        }
        if let Ok(read) = read_images(&images[..], usize::MAX) {
            prop_assert_eq!(read.pixels.len(), read.count * read.rows * read.cols);
        }
        if let Ok(read) = read_labels(&labels[..], usize::MAX) {
            prop_assert_eq!(read.len(), fields[0] as usize);
        }
    }
}
