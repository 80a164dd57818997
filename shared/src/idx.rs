//! IDX files (the MNIST / Fashion-MNIST format): images and labels in,
//! a [`Dataset`] out.
//!
//! Readers are passed in; this module opens no files. Gzip-compressed input
//! (as the datasets are distributed) is detected by its magic bytes and
//! decoded transparently. Headers come from untrusted files, so every size
//! is checked against caller-given limits before anything is allocated, and
//! buffers grow with the bytes actually present, never with what a header
//! claims.

use crate::dataset::{Dataset, Targets};
use flate2::read::MultiGzDecoder;
use std::io::{self, Read};
use thiserror::Error;

/// Magic number of an IDX file of unsigned bytes with three dimensions.
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes with one dimension.
pub const LABELS_MAGIC: u32 = 0x0000_0801;
/// Largest accepted image side, in pixels.
pub const MAX_SIDE: usize = 4096;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Upper bound on the up-front reservation for a body; beyond it the buffer
/// grows only as data really arrives, so a lying header cannot reserve memory.
const MAX_PREALLOC: usize = 16 << 20;

/// Why IDX data could not be read.
#[derive(Debug, Error)]
pub enum IdxError {
    /// The file does not start with the expected magic number.
    #[error(
        "not an IDX {kind} file: magic number is {got:#010x}, expected {expected:#010x}{hint}",
        hint = magic_hint(.got)
    )]
    BadMagic {
        /// what was being read ("images" or "labels")
        kind: &'static str,
        /// magic number required
        expected: u32,
        /// magic number found
        got: u32,
    },
    /// The header announces more items than the caller allows.
    #[error(
        "IDX {kind} file holds {count} items but at most {max_count} are allowed; \
         raise max_count if the file is trusted"
    )]
    TooMany {
        /// what was being read
        kind: &'static str,
        /// items announced by the header
        count: usize,
        /// caller's limit
        max_count: usize,
    },
    /// Image sides outside `1..=MAX_SIDE`.
    #[error("IDX images are {rows}x{cols} pixels; each side must be 1..={MAX_SIDE}")]
    BadShape {
        /// rows per image
        rows: usize,
        /// columns per image
        cols: usize,
    },
    /// The total size does not fit in memory addresses.
    #[error("IDX images: {count} x {rows}x{cols} pixels overflows this platform's usize")]
    TooLarge {
        /// images announced
        count: usize,
        /// rows per image
        rows: usize,
        /// columns per image
        cols: usize,
    },
    /// The data ends before the header's sizes are satisfied.
    #[error(
        "truncated IDX {section}: expected {expected} bytes, only {present} present; \
         the file is cut short or the download incomplete"
    )]
    Truncated {
        /// which part ended early (e.g. "images header")
        section: &'static str,
        /// bytes required
        expected: usize,
        /// bytes found
        present: usize,
    },
    /// Image and label counts disagree.
    #[error("{images} images but {labels} labels; use the matching images and labels files")]
    CountMismatch {
        /// number of images
        images: usize,
        /// number of labels
        labels: usize,
    },
    /// `pixels.len()` disagrees with `count * rows * cols`.
    #[error("images claim {count} x {rows}x{cols} pixels but hold {pixels} bytes")]
    PixelMismatch {
        /// images claimed
        count: usize,
        /// rows per image
        rows: usize,
        /// columns per image
        cols: usize,
        /// pixel bytes held
        pixels: usize,
    },
    /// A label is not a valid class index.
    #[error("label {label} at index {index} is not below the {classes} configured classes")]
    LabelOutOfRange {
        /// position of the label
        index: usize,
        /// label value
        label: u8,
        /// number of classes configured
        classes: usize,
    },
    /// Reading or decompressing failed.
    #[error("reading IDX data: {0} (a corrupt gzip stream also shows up here)")]
    Io(#[from] io::Error),
}

fn magic_hint(got: &u32) -> &'static str {
    match *got {
        IMAGES_MAGIC => " (this is an images file)",
        LABELS_MAGIC => " (this is a labels file)",
        _ => "",
    }
}

/// Images as read from an IDX file: `count` images of `rows` x `cols`
/// pixels, row-major, one byte per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    /// Number of images.
    pub count: usize,
    /// Rows per image.
    pub rows: usize,
    /// Columns per image.
    pub cols: usize,
    /// `count * rows * cols` pixel bytes, image after image, row-major.
    pub pixels: Vec<u8>,
}

/// Reads an IDX images file (raw or gzip), refusing more than `max_count`
/// images before allocating for them.
pub fn read_images(reader: impl Read, max_count: usize) -> Result<Images, IdxError> {
    let mut reader = decompressed(reader)?;
    check_magic(&mut reader, "images", IMAGES_MAGIC)?;
    let [count, rows, cols] = read_fields(&mut reader, "images header")?;
    check_count("images", count, max_count)?;
    if !(1..=MAX_SIDE).contains(&rows) || !(1..=MAX_SIDE).contains(&cols) {
        return Err(IdxError::BadShape { rows, cols });
    }
    let pixel_count = count
        .checked_mul(rows)
        .and_then(|n| n.checked_mul(cols))
        .ok_or(IdxError::TooLarge { count, rows, cols })?;
    let pixels = read_section(&mut reader, pixel_count, "image pixels")?;
    Ok(Images {
        count,
        rows,
        cols,
        pixels,
    })
}

/// Reads an IDX labels file (raw or gzip), refusing more than `max_count`
/// labels before allocating for them.
pub fn read_labels(reader: impl Read, max_count: usize) -> Result<Vec<u8>, IdxError> {
    let mut reader = decompressed(reader)?;
    check_magic(&mut reader, "labels", LABELS_MAGIC)?;
    let [count] = read_fields(&mut reader, "labels header")?;
    check_count("labels", count, max_count)?;
    read_section(&mut reader, count, "labels")
}

/// A classification dataset from images and their labels: features are
/// pixels scaled to `0.0..=1.0`, row-major, `rows * cols` per sample.
pub fn to_dataset(images: &Images, labels: &[u8], classes: usize) -> Result<Dataset, IdxError> {
    if images.count != labels.len() {
        return Err(IdxError::CountMismatch {
            images: images.count,
            labels: labels.len(),
        });
    }
    let pixel_mismatch = || IdxError::PixelMismatch {
        count: images.count,
        rows: images.rows,
        cols: images.cols,
        pixels: images.pixels.len(),
    };
    let dims = images
        .rows
        .checked_mul(images.cols)
        .ok_or_else(pixel_mismatch)?;
    if images.count.checked_mul(dims) != Some(images.pixels.len()) {
        return Err(pixel_mismatch());
    }
    if let Some((index, &label)) = labels
        .iter()
        .enumerate()
        .find(|&(_, &label)| usize::from(label) >= classes)
    {
        return Err(IdxError::LabelOutOfRange {
            index,
            label,
            classes,
        });
    }
    let features = images
        .pixels
        .iter()
        .map(|&p| f32::from(p) / 255.0)
        .collect();
    let targets = Targets::Classes(labels.iter().map(|&l| u32::from(l)).collect());
    Dataset::from_arrays(features, dims, targets).ok_or_else(pixel_mismatch)
}

/// Feature names for `rows` x `cols` images: `px0`, `px1`, ... row-major.
pub fn feature_names(rows: usize, cols: usize) -> Vec<String> {
    (0..rows.saturating_mul(cols))
        .map(|i| format!("px{i}"))
        .collect()
}

/// The reader itself, or a gzip decoder over it when it starts with the
/// gzip magic bytes. Concatenated gzip members (bgzip, `cat a.gz b.gz`) are
/// decoded as one stream.
fn decompressed<'a>(mut reader: impl Read + 'a) -> Result<Box<dyn Read + 'a>, IdxError> {
    let mut prefix = [0u8; 2];
    let mut filled = 0;
    while filled < prefix.len() {
        match reader.read(&mut prefix[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let whole = io::Cursor::new(prefix).take(filled as u64).chain(reader);
    Ok(if prefix == GZIP_MAGIC && filled == 2 {
        Box::new(MultiGzDecoder::new(whole))
    } else {
        Box::new(whole)
    })
}

/// Exactly `len` bytes, or [`IdxError::Truncated`] saying how many came.
fn read_section(
    reader: &mut dyn Read,
    len: usize,
    section: &'static str,
) -> Result<Vec<u8>, IdxError> {
    let mut buf = Vec::with_capacity(len.min(MAX_PREALLOC));
    reader
        .take(u64::try_from(len).unwrap_or(u64::MAX))
        .read_to_end(&mut buf)?;
    if buf.len() < len {
        return Err(IdxError::Truncated {
            section,
            expected: len,
            present: buf.len(),
        });
    }
    Ok(buf)
}

/// Reads the magic number first, so a swapped or foreign file is named as
/// such rather than reported as a short header.
fn check_magic(reader: &mut dyn Read, kind: &'static str, expected: u32) -> Result<(), IdxError> {
    let [got] = read_u32s(reader, "magic number")?;
    if got == expected {
        Ok(())
    } else {
        Err(IdxError::BadMagic {
            kind,
            expected,
            got,
        })
    }
}

fn check_count(kind: &'static str, count: usize, max_count: usize) -> Result<(), IdxError> {
    if count <= max_count {
        Ok(())
    } else {
        Err(IdxError::TooMany {
            kind,
            count,
            max_count,
        })
    }
}

/// `N` big-endian u32 header fields.
fn read_u32s<const N: usize>(
    reader: &mut dyn Read,
    section: &'static str,
) -> Result<[u32; N], IdxError> {
    let bytes = read_section(reader, 4 * N, section)?;
    let mut fields = [0u32; N];
    for (field, chunk) in fields.iter_mut().zip(bytes.chunks_exact(4)) {
        *field = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    Ok(fields)
}

/// `N` header fields as sizes. On a target with a narrower usize they
/// saturate and fail the limit checks instead of wrapping.
fn read_fields<const N: usize>(
    reader: &mut dyn Read,
    section: &'static str,
) -> Result<[usize; N], IdxError> {
    Ok(read_u32s::<N>(reader, section)?.map(|field| usize::try_from(field).unwrap_or(usize::MAX)))
}

#[cfg(test)]
mod tests {
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
}
