//! IDX files (the MNIST / Fashion-MNIST format): images and labels in,
//! a [`Dataset`] out.
//!
//! Readers are passed in; this module opens no files. Gzip-compressed input
//! (as the datasets are distributed) is detected by its magic bytes and
//! decoded transparently. Headers come from untrusted files, so every size
//! is checked against caller-given limits before anything is allocated, and
//! buffers grow with the bytes actually present, never with what a header
//! claims.

use convoy_shared::dataset::{Dataset, Targets};
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
mod tests;
