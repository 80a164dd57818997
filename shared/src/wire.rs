//! The versioned, signed envelope every convoy MQTT payload travels in.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "CNVY"
//! 4       1     protocol version (2)
//! 5       1     message kind
//! 6       1     flags: bit 0 set when a signature follows the body
//! 7       1     reserved, zero
//! 8       4     body length, little endian
//! 12      4     CRC32 (IEEE) of the body, little endian
//! 16      n     postcard body
//! 16+n    64    ed25519 signature over header, topic and body
//! ```
//!
//! The body length is checked against a caller-supplied limit before
//! anything is decoded, so no length read from the network drives an
//! allocation. [`decode`] accepts only a signed envelope whose signature is
//! the expected signer's over this very topic (see [`crate::identity`]):
//! the server's for announcements, model chunks and receipts, the vehicle's
//! own for everything a vehicle publishes.

use crate::identity::{PublicKey, SIGNATURE_LEN, SecretKey, Trusted};
use serde::{Serialize, de::DeserializeOwned};
use thiserror::Error;

/// First four bytes of every convoy payload.
pub const MAGIC: [u8; 4] = *b"CNVY";
/// Protocol version this build speaks (2: signed envelopes).
pub const PROTOCOL_VERSION: u8 = 2;
/// Size of the fixed envelope header in bytes.
pub const HEADER_LEN: usize = 16;
/// Flag bit: a signature follows the body.
const FLAG_SIGNED: u8 = 1;

/// What a payload carries; the byte is stored in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Round announcement (retained).
    Announce = 1,
    /// One chunk of a client's model update.
    UpdateChunk = 2,
    /// A client's request for model chunks.
    FetchRequest = 3,
    /// One chunk of a published model.
    ModelChunk = 4,
    /// Server's receipt for an update.
    UpdateAck = 5,
    /// Agent status (retained, also the last will).
    Status = 6,
    /// A vehicle's report that it cannot serve a round, with the reason.
    Failure = 7,
    /// The server's schema or statistics request (retained).
    AlignRequest = 8,
    /// A vehicle's local schema.
    SchemaReport = 9,
    /// A vehicle's column statistics.
    StatsReport = 10,
}

impl Kind {
    /// Every kind, for iteration in reports.
    pub const ALL: [Kind; 10] = [
        Kind::Announce,
        Kind::UpdateChunk,
        Kind::FetchRequest,
        Kind::ModelChunk,
        Kind::UpdateAck,
        Kind::Status,
        Kind::Failure,
        Kind::AlignRequest,
        Kind::SchemaReport,
        Kind::StatsReport,
    ];

    fn from_byte(byte: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| *k as u8 == byte)
    }
}

/// Why a payload was refused. Each variant is a counted rejection reason.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than the fixed header.
    #[error("truncated: payload has {got} bytes, the envelope header alone needs {HEADER_LEN}")]
    TooShort {
        /// bytes received
        got: usize,
    },
    /// Not a convoy payload.
    #[error("bad magic {0:02x?}: not a convoy payload (expected \"CNVY\")")]
    BadMagic([u8; 4]),
    /// Another protocol version.
    #[error(
        "protocol version {0} is not supported (this build speaks {PROTOCOL_VERSION}); upgrade the older side"
    )]
    UnsupportedVersion(u8),
    /// Unknown kind byte.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// A different kind than the topic calls for.
    #[error("expected a {expected:?} message, got {got:?}")]
    WrongKind {
        /// what the topic carries
        expected: Kind,
        /// what came
        got: Kind,
    },
    /// The declared body is larger than the configured limit.
    #[error("oversized: body declares {declared} bytes, the limit is {limit}")]
    Oversized {
        /// declared length
        declared: u64,
        /// configured limit
        limit: usize,
    },
    /// The declared length and the bytes present disagree.
    #[error("truncated: header declares {declared} body bytes, {present} present")]
    LengthMismatch {
        /// declared length
        declared: usize,
        /// bytes after the header
        present: usize,
    },
    /// The body does not match its checksum.
    #[error("CRC mismatch: header says {expected:08x}, body hashes to {actual:08x}")]
    BadCrc {
        /// CRC in the header
        expected: u32,
        /// CRC of the body
        actual: u32,
    },
    /// No signature where one is required.
    #[error("unsigned: every convoy message must be signed by its sender")]
    Unsigned,
    /// A signature that is not the expected signer's over this topic and body.
    #[error("bad signature: not signed by {signer} for this topic")]
    BadSignature {
        /// who should have signed
        signer: String,
    },
    /// The body did not decode.
    #[error("malformed body: {0}")]
    Body(String),
    /// The message could not be serialised (a bug, never the peer's fault).
    #[error("cannot serialise message: {0}")]
    Encode(String),
}

impl WireError {
    /// A short, stable label for counting rejections.
    pub fn reason(&self) -> &'static str {
        match self {
            WireError::TooShort { .. } | WireError::LengthMismatch { .. } => "truncated",
            WireError::BadMagic(_) => "bad_magic",
            WireError::UnsupportedVersion(_) => "bad_version",
            WireError::UnknownKind(_) | WireError::WrongKind { .. } => "wrong_kind",
            WireError::Oversized { .. } => "oversized",
            WireError::BadCrc { .. } => "bad_crc",
            WireError::Unsigned => "unsigned",
            WireError::BadSignature { .. } => "bad_signature",
            WireError::Body(_) => "malformed",
            WireError::Encode(_) => "unencodable",
        }
    }
}

/// A checked envelope, its body not yet decoded.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// What it carries.
    pub kind: Kind,
    /// The header bytes (signed with the body).
    header: &'a [u8],
    /// The postcard body.
    pub body: &'a [u8],
    /// The signature, when the sender signed it.
    signature: Option<&'a [u8; SIGNATURE_LEN]>,
}

impl Envelope<'_> {
    /// Checks the signature is `signer`'s over this envelope on `topic`.
    pub fn verify(&self, topic: &str, signer: &PublicKey, who: &str) -> Result<(), WireError> {
        let signature = self.signature.ok_or(WireError::Unsigned)?;
        if signer.verify(&[topic.as_bytes(), self.header, self.body], signature) {
            Ok(())
        } else {
            Err(WireError::BadSignature {
                signer: who.to_string(),
            })
        }
    }
}

/// Serialises `message` and wraps it in an envelope signed by `key` for `topic`.
pub fn encode<T: Serialize>(
    kind: Kind,
    message: &T,
    topic: &str,
    key: &SecretKey,
) -> Result<Vec<u8>, WireError> {
    let body = postcard::to_allocvec(message).map_err(|e| WireError::Encode(e.to_string()))?;
    Ok(seal(kind, &body, topic, key))
}

fn header(kind: Kind, flags: u8, body: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&MAGIC);
    h[4] = PROTOCOL_VERSION;
    h[5] = kind as u8;
    h[6] = flags;
    h[8..12].copy_from_slice(&(body.len() as u32).to_le_bytes());
    h[12..16].copy_from_slice(&crc32fast::hash(body).to_le_bytes());
    h
}

/// Wraps already serialised body bytes in an envelope signed by `key`.
pub fn seal(kind: Kind, body: &[u8], topic: &str, key: &SecretKey) -> Vec<u8> {
    let header = header(kind, FLAG_SIGNED, body);
    let signature = key.sign(&[topic.as_bytes(), &header, body]);
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + SIGNATURE_LEN);
    out.extend_from_slice(&header);
    out.extend_from_slice(body);
    out.extend_from_slice(&signature);
    out
}

/// An unsigned envelope: what a forger without a key can send (tests and
/// fault injection; every receiver refuses it).
pub fn encode_raw(kind: Kind, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&header(kind, 0, body));
    out.extend_from_slice(body);
    out
}

/// Checks the envelope's framing and returns it, without decoding the body
/// or checking the signature.
pub fn open(bytes: &[u8], max_body: usize) -> Result<Envelope<'_>, WireError> {
    if bytes.len() < HEADER_LEN {
        return Err(WireError::TooShort { got: bytes.len() });
    }
    let magic: [u8; 4] = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if magic != MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    if bytes[4] != PROTOCOL_VERSION {
        return Err(WireError::UnsupportedVersion(bytes[4]));
    }
    let kind = Kind::from_byte(bytes[5]).ok_or(WireError::UnknownKind(bytes[5]))?;
    let signed = bytes[6] & FLAG_SIGNED != 0;
    let declared = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    if declared > max_body {
        return Err(WireError::Oversized {
            declared: declared as u64,
            limit: max_body,
        });
    }
    let (header, rest) = bytes.split_at(HEADER_LEN);
    let trailer = if signed { SIGNATURE_LEN } else { 0 };
    if rest.len() != declared + trailer {
        return Err(WireError::LengthMismatch {
            declared,
            present: rest.len().saturating_sub(trailer),
        });
    }
    let (body, sig) = rest.split_at(declared);
    let expected = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    let actual = crc32fast::hash(body);
    if expected != actual {
        return Err(WireError::BadCrc { expected, actual });
    }
    Ok(Envelope {
        kind,
        header,
        body,
        signature: sig.try_into().ok(),
    })
}

/// Opens an envelope that must be of kind `expected`, signed by `signer`
/// (named `who` in errors) for `topic`, and decodes its body.
pub fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    expected: Kind,
    max_body: usize,
    topic: &str,
    signer: &PublicKey,
    who: &str,
) -> Result<T, WireError> {
    decode_trusted(bytes, expected, max_body, topic, &(*signer).into(), 0, who)
}

/// [`decode`] for a signer whose key is being rotated: signed by its current
/// key, or by its previous one while that is still trusted at `now_ms`.
pub fn decode_trusted<T: DeserializeOwned>(
    bytes: &[u8],
    expected: Kind,
    max_body: usize,
    topic: &str,
    signer: &Trusted,
    now_ms: u64,
    who: &str,
) -> Result<T, WireError> {
    let envelope = open(bytes, max_body)?;
    if envelope.kind != expected {
        return Err(WireError::WrongKind {
            expected,
            got: envelope.kind,
        });
    }
    if let Err(e) = envelope.verify(topic, &signer.current, who) {
        let by_previous = signer
            .previous_at(now_ms)
            .is_some_and(|previous| envelope.verify(topic, previous, who).is_ok());
        if !by_previous {
            return Err(e);
        }
    }
    postcard::from_bytes(envelope.body).map_err(|e| WireError::Body(e.to_string()))
}

/// Bytes an MQTT 3.1.1 PUBLISH of this topic and payload occupies on the
/// wire: fixed header, remaining-length varint, topic, packet id (QoS > 0)
/// and payload. Used for the ledger's `wire_bytes_*`.
pub fn mqtt_publish_wire_len(topic_len: usize, payload_len: usize, qos: u8) -> u64 {
    let remaining = 2 + topic_len + if qos > 0 { 2 } else { 0 } + payload_len;
    let varint = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    // QoS 1 adds the 4-byte PUBACK that travels the other way for it.
    let ack = if qos > 0 { 4 } else { 0 };
    (1 + varint + remaining + ack) as u64
}

/// Bytes one TLS record adds: TLS 1.3's 5-byte record header, 1 byte of
/// inner content type and the 16-byte AEAD tag (TLS 1.2 with AES-GCM adds
/// 5 + 8 + 16 = 29 to every record instead).
pub const TLS_RECORD_OVERHEAD: u64 = 22;

/// Largest TLS record payload (16 KiB).
pub const TLS_RECORD_MAX: u64 = 16_384;

/// [`mqtt_publish_wire_len`] plus what TLS 1.3 adds when the link is
/// encrypted: one record header and tag per 16 KiB of the PUBLISH, and one
/// record for its PUBACK (QoS > 0). The handshake (a few KiB per
/// connection, not per round) is not included. Used for the ledger's
/// `wire_bytes_*` when vehicles reach the broker over TLS.
pub fn publish_wire_len(topic_len: usize, payload_len: usize, qos: u8, tls: bool) -> u64 {
    let plain = mqtt_publish_wire_len(topic_len, payload_len, qos);
    if !tls {
        return plain;
    }
    let ack = if qos > 0 { 4 } else { 0 };
    let records = (plain - ack).div_ceil(TLS_RECORD_MAX) + u64::from(qos > 0);
    plain + records * TLS_RECORD_OVERHEAD
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_previous_key_counts_until_its_overlap_ends_then_never() {
        let (old, new, other) = (
            SecretKey::generate(),
            SecretKey::generate(),
            SecretKey::generate(),
        );
        let trusted = Trusted {
            current: new.public(),
            previous: Some((old.public(), 1_000)),
        };
        let topic = "convoy/v1/f/round";
        let by = |key: &SecretKey| encode(Kind::Announce, &7u32, topic, key).unwrap();
        let decode = |bytes: &[u8], now| {
            decode_trusted::<u32>(
                bytes,
                Kind::Announce,
                64,
                topic,
                &trusted,
                now,
                "the server",
            )
        };
        assert_eq!(decode(&by(&new), 0).unwrap(), 7);
        assert_eq!(decode(&by(&new), u64::MAX).unwrap(), 7);
        assert_eq!(decode(&by(&old), 999).unwrap(), 7, "within the overlap");
        let late = decode(&by(&old), 1_000).unwrap_err();
        assert_eq!(late.reason(), "bad_signature", "after the overlap");
        assert_eq!(
            decode(&by(&other), 0).unwrap_err().reason(),
            "bad_signature"
        );
    }

    #[test]
    fn tls_adds_a_record_per_16_kib_and_one_per_receipt() {
        assert_eq!(publish_wire_len(3, 10, 1, false), 23);
        // one record for the publish, one for its PUBACK
        assert_eq!(publish_wire_len(3, 10, 1, true), 23 + 2 * 22);
        assert_eq!(publish_wire_len(3, 10, 0, true), 17 + 22);
        // a 32 KiB chunk spans three records (its header tips it over two)
        let plain = mqtt_publish_wire_len(30, 32_768, 1);
        assert_eq!(publish_wire_len(30, 32_768, 1, true), plain + 4 * 22);
    }

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Sample {
        a: u64,
        b: Vec<u8>,
        c: String,
    }

    fn key() -> SecretKey {
        SecretKey::from_seed([3; 32])
    }

    fn sample() -> Sample {
        Sample {
            a: 1,
            b: vec![1, 2, 3],
            c: "x".into(),
        }
    }

    fn reason(bytes: &[u8]) -> &'static str {
        decode::<Sample>(bytes, Kind::Status, 1024, "t", &key().public(), "k")
            .unwrap_err()
            .reason()
    }

    #[test]
    fn rejects_each_corruption_with_its_reason() {
        let good = encode(Kind::Status, &sample(), "t", &key()).unwrap();
        let public = key().public();
        assert_eq!(
            decode::<Sample>(&good, Kind::Status, 1024, "t", &public, "k").unwrap(),
            sample()
        );
        assert_eq!(reason(&good[..10]), "truncated");
        assert_eq!(reason(&good[..good.len() - 1]), "truncated");
        let mut bad = good.clone();
        bad[HEADER_LEN] ^= 0xff;
        assert_eq!(reason(&bad), "bad_crc");
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(reason(&bad), "bad_magic");
        let mut bad = good.clone();
        bad[4] = 9;
        assert_eq!(reason(&bad), "bad_version");
        let mut bad = good.clone();
        bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(reason(&bad), "oversized");
        assert_eq!(
            decode::<Sample>(&good, Kind::Announce, 1024, "t", &public, "k")
                .unwrap_err()
                .reason(),
            "wrong_kind"
        );
    }

    #[test]
    fn refuses_unsigned_forged_and_moved_messages() {
        let body = postcard::to_allocvec(&sample()).unwrap();
        assert_eq!(reason(&encode_raw(Kind::Status, &body)), "unsigned");
        let forger = SecretKey::from_seed([4; 32]);
        let forged = encode(Kind::Status, &sample(), "t", &forger).unwrap();
        assert_eq!(reason(&forged), "bad_signature");
        // a genuine message replayed on another topic
        let elsewhere = encode(Kind::Status, &sample(), "other", &key()).unwrap();
        assert_eq!(reason(&elsewhere), "bad_signature");
        // a flipped signature bit
        let mut bad = encode(Kind::Status, &sample(), "t", &key()).unwrap();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(reason(&bad), "bad_signature");
        // the signed flag cleared: the signature becomes trailing junk
        let mut bad = encode(Kind::Status, &sample(), "t", &key()).unwrap();
        bad[6] = 0;
        assert_eq!(reason(&bad), "truncated");
    }

    #[test]
    fn wire_len_counts_framing() {
        // 1 header + 1 varint + 2 topic len + 3 topic + 2 pkid + 10 payload + 4 puback
        assert_eq!(mqtt_publish_wire_len(3, 10, 1), 23);
        assert_eq!(mqtt_publish_wire_len(3, 200, 0), 1 + 2 + 2 + 3 + 200);
    }

    proptest! {
        #[test]
        fn round_trips(a in any::<u64>(), b in proptest::collection::vec(any::<u8>(), 0..512), c in ".{0,40}") {
            let msg = Sample { a, b, c };
            let bytes = encode(Kind::UpdateChunk, &msg, "t", &key()).unwrap();
            let back = decode::<Sample>(&bytes, Kind::UpdateChunk, 4096, "t", &key().public(), "k").unwrap();
            prop_assert_eq!(back, msg);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<Sample>(&bytes, Kind::UpdateChunk, 128, "t", &key().public(), "k");
        }

        #[test]
        fn arbitrary_body_behind_valid_header_never_panics(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let bytes = seal(Kind::UpdateChunk, &body, "t", &key());
            let _ = decode::<Sample>(&bytes, Kind::UpdateChunk, 128, "t", &key().public(), "k");
        }
    }
}
