//! Broker passwords: how they are made and what the store keeps of them.
//! A vehicle's password is a random 256-bit token, so its plain BLAKE3 hash
//! is kept (no slow KDF is needed against guessing), and compared in
//! constant time.

/// A random 256-bit token, hex.
pub fn new_password() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the store keeps of a password.
pub fn password_hash(password: &str) -> String {
    blake3::hash(password.as_bytes()).to_hex().to_string()
}

/// Constant-time comparison of two hex digests.
pub fn same_digest(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}
