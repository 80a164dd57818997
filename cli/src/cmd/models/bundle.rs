//! The bundle format of `models export` and `import`: weights, spec and
//! recipe in one checksummed file.

use super::*;

/// First bytes of an exported bundle.
pub const BUNDLE_MAGIC: &[u8; 12] = b"convoy-model";
/// Bundle layout version, after the magic.
pub(super) const BUNDLE_VERSION: u8 = 2;

/// A version as a self-contained, checksummed bundle.
pub fn bundle(v: &StoredVersion) -> Result<Vec<u8>, String> {
    let mut out = BUNDLE_MAGIC.to_vec();
    out.push(BUNDLE_VERSION);
    out.extend(postcard::to_allocvec(v).map_err(|e| e.to_string())?);
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    Ok(out)
}

/// Reads a bundle back, checking its checksum and that its weights and
/// spec hash to the id it carries.
pub fn read_bundle(bytes: &[u8]) -> Result<StoredVersion, String> {
    let head = BUNDLE_MAGIC.len() + 1;
    if bytes.len() < head + 32 || &bytes[..BUNDLE_MAGIC.len()] != BUNDLE_MAGIC {
        return Err("not a convoy model bundle (models export writes them)".into());
    }
    if bytes[BUNDLE_MAGIC.len()] != BUNDLE_VERSION {
        return Err(format!(
            "bundle layout {} is not the {BUNDLE_VERSION} this build reads",
            bytes[BUNDLE_MAGIC.len()]
        ));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != sum {
        return Err("checksum mismatch: the bundle is truncated or corrupt".into());
    }
    let v: StoredVersion =
        postcard::from_bytes(&body[head..]).map_err(|e| format!("bundle does not decode: {e}"))?;
    if !v.manifest.verifies(&v.params, &v.spec, &v.task) {
        return Err("the bundle's weights and spec do not hash to its version id".into());
    }
    v.spec.validate().map_err(|e| e.to_string())?;
    Ok(v)
}
