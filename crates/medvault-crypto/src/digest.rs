//! SHA-256, whole or streamed, and the streamed HMAC-SHA256 of backup files.

/// SHA-256 of `data`, for hashing bearer tokens before they are stored or looked up.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    bytes32(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref())
}

/// HMAC-SHA256 of `message` under `key` (a shared secret given by the operator, such as a
/// webhook's signing secret).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    bytes32(aws_lc_rs::hmac::sign(&key, message).as_ref())
}

/// The 32 bytes of a SHA-256 digest or HMAC-SHA256 tag (always 32 long).
fn bytes32(d: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(d);
    out
}

/// SHA-256 over data that arrives in pieces (a backup file as it is written or read).
pub struct Sha256Stream(aws_lc_rs::digest::Context);

impl std::fmt::Debug for Sha256Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sha256Stream")
    }
}

impl Default for Sha256Stream {
    fn default() -> Self {
        Self(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
    }
}

impl Sha256Stream {
    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest of everything added so far.
    #[must_use]
    pub fn finish(self) -> [u8; 32] {
        bytes32(self.0.finish().as_ref())
    }
}

/// HMAC-SHA256 over data that arrives in pieces, under a key that never leaves this crate
/// (see [`crate::RootKey::backup_mac`]).
pub struct MacStream(pub(crate) aws_lc_rs::hmac::Context);

impl std::fmt::Debug for MacStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacStream([REDACTED])")
    }
}

impl MacStream {
    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The tag over everything added.
    #[must_use]
    pub fn finish(self) -> [u8; 32] {
        bytes32(self.0.sign().as_ref())
    }

    /// True if `tag` is the tag over everything added (compared in constant time).
    #[must_use]
    pub fn verify(self, tag: &[u8]) -> bool {
        let mine = self.0.sign();
        aws_lc_rs::constant_time::verify_slices_are_equal(mine.as_ref(), tag).is_ok()
    }
}

#[cfg(test)]
mod hmac_tests {
    /// RFC 4231, test case 2 (key "Jefe").
    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        let tag = super::hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(tag),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
