//! Splitting large payloads into chunks and putting them back together.
//!
//! Brokers cap message sizes (AWS IoT Core at 128 KB), so updates and models
//! travel as numbered chunks. Reassembly accepts chunks in any order and
//! ignores exact duplicates; it allocates only after the declared total has
//! been checked against the configured limit.

use thiserror::Error;

/// Default chunk size: fits brokers with a 128 KiB message limit.
pub const DEFAULT_CHUNK_SIZE: usize = 128 * 1024;

/// Position of one chunk inside a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkPos {
    /// Zero-based chunk index.
    pub index: u32,
    /// Number of chunks in the payload.
    pub count: u32,
    /// Total payload length in bytes.
    pub total_len: u32,
}

/// Splits `payload` into `(position, bytes)` pieces of at most `chunk_size` bytes.
/// An empty payload still yields one (empty) chunk so its arrival is observable.
pub fn split(payload: &[u8], chunk_size: usize) -> impl Iterator<Item = (ChunkPos, &[u8])> {
    let chunk_size = chunk_size.max(1);
    let count = payload.len().div_ceil(chunk_size).max(1) as u32;
    let total_len = payload.len() as u32;
    (0..count).map(move |index| {
        let start = index as usize * chunk_size;
        let end = (start + chunk_size).min(payload.len());
        (
            ChunkPos {
                index,
                count,
                total_len,
            },
            &payload[start.min(end)..end],
        )
    })
}

/// Why a chunk could not be placed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ChunkError {
    /// Declared total larger than the configured limit.
    #[error("oversized: payload declares {declared} bytes, the limit is {limit}")]
    Oversized {
        /// declared total
        declared: u32,
        /// configured limit
        limit: usize,
    },
    /// Index, count and lengths do not add up.
    #[error("inconsistent chunk: {0}")]
    Inconsistent(String),
    /// Same index seen before with different bytes.
    #[error("chunk {0} arrived twice with different contents")]
    Conflict(u32),
}

impl ChunkError {
    /// A short, stable label for counting rejections.
    pub fn reason(&self) -> &'static str {
        match self {
            ChunkError::Oversized { .. } => "oversized",
            ChunkError::Inconsistent(_) => "truncated",
            ChunkError::Conflict(_) => "conflict",
        }
    }
}

/// What inserting one chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Stored; more chunks are missing.
    Partial,
    /// This chunk was already here; nothing changed.
    Duplicate,
    /// The payload is whole.
    Complete,
}

/// Collects the chunks of one payload. Memory grows with what arrived:
/// a sender that declares a large payload and sends one chunk costs that
/// chunk, not the declared total.
#[derive(Debug)]
pub struct Reassembler {
    pos: ChunkPos,
    chunk_size: usize,
    /// The chunks so far, by index.
    received: std::collections::BTreeMap<u32, Vec<u8>>,
}

impl Reassembler {
    /// Starts a payload from its first-seen chunk's position. Checks the
    /// declared total against `max_total` before allocating.
    pub fn new(pos: ChunkPos, first_len: usize, max_total: usize) -> Result<Self, ChunkError> {
        if pos.total_len as usize > max_total {
            return Err(ChunkError::Oversized {
                declared: pos.total_len,
                limit: max_total,
            });
        }
        if pos.count == 0 || pos.index >= pos.count {
            return Err(ChunkError::Inconsistent(format!(
                "index {} of {} chunks",
                pos.index, pos.count
            )));
        }
        // All chunks but the last have the same size; derive it from the
        // total so a short last chunk seen first does not mislead us.
        let total = pos.total_len as usize;
        let chunk_size = if pos.count == 1 {
            total.max(1)
        } else {
            let size = if pos.index + 1 < pos.count {
                first_len
            } else {
                // last chunk first: the full ones share the remainder
                (total - first_len.min(total)) / (pos.count as usize - 1)
            };
            if size == 0 || (total.div_ceil(size)) as u32 != pos.count {
                return Err(ChunkError::Inconsistent(format!(
                    "{} chunks cannot carry {} bytes",
                    pos.count, total
                )));
            }
            size
        };
        Ok(Self {
            pos,
            chunk_size,
            received: std::collections::BTreeMap::new(),
        })
    }

    /// Places one chunk.
    pub fn insert(&mut self, pos: ChunkPos, bytes: &[u8]) -> Result<Progress, ChunkError> {
        if pos.count != self.pos.count || pos.total_len != self.pos.total_len {
            return Err(ChunkError::Inconsistent(format!(
                "chunk says {} chunks / {} bytes, payload started as {} / {}",
                pos.count, pos.total_len, self.pos.count, self.pos.total_len
            )));
        }
        if pos.index >= pos.count {
            return Err(ChunkError::Inconsistent(format!(
                "index {} of {} chunks",
                pos.index, pos.count
            )));
        }
        let start = pos.index as usize * self.chunk_size;
        let end = (start + self.chunk_size).min(self.pos.total_len as usize);
        if start > end || bytes.len() != end - start {
            return Err(ChunkError::Inconsistent(format!(
                "chunk {} has {} bytes, expected {}",
                pos.index,
                bytes.len(),
                end.saturating_sub(start)
            )));
        }
        if let Some(held) = self.received.get(&pos.index) {
            return if held.as_slice() == bytes {
                Ok(Progress::Duplicate)
            } else {
                Err(ChunkError::Conflict(pos.index))
            };
        }
        self.received.insert(pos.index, bytes.to_vec());
        Ok(if self.received.len() == self.pos.count as usize {
            Progress::Complete
        } else {
            Progress::Partial
        })
    }

    /// Indices still missing.
    pub fn missing(&self) -> Vec<u32> {
        (0..self.pos.count)
            .filter(|i| !self.received.contains_key(i))
            .collect()
    }

    /// Bytes held so far.
    pub fn held(&self) -> usize {
        self.received.values().map(Vec::len).sum()
    }

    /// The whole payload, once complete.
    pub fn finish(self) -> Option<Vec<u8>> {
        if self.received.len() != self.pos.count as usize {
            return None;
        }
        let mut out = Vec::with_capacity(self.pos.total_len as usize);
        for chunk in self.received.into_values() {
            out.extend_from_slice(&chunk);
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_large_declared_payload_costs_only_what_arrived() {
        let limit = 64 << 20;
        let pos = ChunkPos {
            index: 0,
            count: 64 << 10,
            total_len: (64 << 20) as u32,
        };
        let mut r = Reassembler::new(pos, 1024, limit).unwrap();
        assert_eq!(r.insert(pos, &[7; 1024]).unwrap(), Progress::Partial);
        assert_eq!(r.held(), 1024);
        assert_eq!(r.missing().len(), (64 << 10) - 1);
    }

    proptest! {
        #[test]
        fn reassembles_in_any_order_with_duplicates(
            payload in proptest::collection::vec(any::<u8>(), 0..2000),
            chunk_size in 1usize..300,
            seed in any::<u64>(),
        ) {
            let mut chunks: Vec<_> = split(&payload, chunk_size).collect();
            // deterministic shuffle + duplicate the first chunk at the end
            let n = chunks.len();
            for i in 0..n {
                let j = (seed.wrapping_mul(i as u64 + 7) % n as u64) as usize;
                chunks.swap(i, j);
            }
            chunks.push(chunks[0]);
            let (pos0, bytes0) = chunks[0];
            let mut r = Reassembler::new(pos0, bytes0.len(), 4096).unwrap();
            let mut complete = 0;
            for (pos, bytes) in &chunks {
                if r.insert(*pos, bytes).unwrap() == Progress::Complete {
                    complete += 1;
                }
            }
            prop_assert_eq!(complete, 1);
            prop_assert_eq!(r.finish().unwrap(), payload);
        }

        #[test]
        fn arbitrary_positions_never_panic(
            index in any::<u32>(), count in any::<u32>(), total in any::<u32>(),
            len in 0usize..64, index2 in any::<u32>(), len2 in 0usize..64,
        ) {
            let pos = ChunkPos { index, count, total_len: total };
            if let Ok(mut r) = Reassembler::new(pos, len, 1 << 16) {
                let _ = r.insert(pos, &vec![1; len]);
                let _ = r.insert(ChunkPos { index: index2, ..pos }, &vec![2; len2]);
            }
        }
    }

    #[test]
    fn refuses_oversized_before_allocating() {
        let pos = ChunkPos {
            index: 0,
            count: 2,
            total_len: u32::MAX,
        };
        assert!(matches!(
            Reassembler::new(pos, 10, 1 << 20),
            Err(ChunkError::Oversized { .. })
        ));
    }

    #[test]
    fn conflicting_duplicate_is_an_error() {
        let payload = [1u8, 2, 3, 4];
        let chunks: Vec<_> = split(&payload, 2).collect();
        let mut r = Reassembler::new(chunks[0].0, 2, 100).unwrap();
        r.insert(chunks[0].0, chunks[0].1).unwrap();
        assert_eq!(r.insert(chunks[0].0, &[9, 9]), Err(ChunkError::Conflict(0)));
        assert_eq!(r.missing(), vec![1]);
    }
}
