//! The entropy-coding stage: a general-purpose compressor over the
//! quantized bytes. `zstd` (C library, level 3) and `deflate` (pure Rust,
//! miniz_oxide level 6) are both available so deployments can pick the
//! better trade-off for their CPUs; `convoy-server codec-bench` measures it.

use super::CodecError;

/// Entropy stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entropy {
    /// None.
    None,
    /// zstd level 3.
    Zstd,
    /// DEFLATE level 6.
    Deflate,
}

impl Entropy {
    /// Stage name, if any.
    pub fn name(self) -> Option<&'static str> {
        match self {
            Entropy::None => None,
            Entropy::Zstd => Some("zstd"),
            Entropy::Deflate => Some("deflate"),
        }
    }

    /// Parses a stage name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "zstd" => Some(Entropy::Zstd),
            "deflate" => Some(Entropy::Deflate),
            _ => None,
        }
    }

    /// Compresses.
    pub fn compress(self, raw: Vec<u8>) -> Vec<u8> {
        match self {
            Entropy::None => raw,
            Entropy::Zstd => zstd::bulk::compress(&raw, 3).unwrap_or(raw),
            Entropy::Deflate => miniz_oxide::deflate::compress_to_vec(&raw, 6),
        }
    }

    /// Decompresses, refusing output larger than `limit` bytes.
    pub fn decompress(self, bytes: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
        match self {
            Entropy::None => Ok(bytes.to_vec()),
            Entropy::Zstd => {
                // The frame header states the content size; check it before
                // the decoder allocates its output buffer.
                match zstd::zstd_safe::get_frame_content_size(bytes) {
                    Ok(Some(size)) if size <= limit as u64 => {}
                    Ok(Some(size)) => {
                        return Err(CodecError::Oversized {
                            declared: size,
                            limit,
                        });
                    }
                    _ => {
                        return Err(CodecError::Malformed(
                            "zstd frame without a valid content size".into(),
                        ));
                    }
                }
                zstd::bulk::decompress(bytes, limit)
                    .map_err(|e| CodecError::Malformed(format!("zstd: {e}")))
            }
            Entropy::Deflate => miniz_oxide::inflate::decompress_to_vec_with_limit(bytes, limit)
                .map_err(|e| CodecError::Malformed(format!("deflate: {e:?}"))),
        }
    }
}
