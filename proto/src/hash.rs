//! Deterministic identifiers. Every id Principia derives (node, shard, record, job fingerprint) is a
//! truncated BLAKE3 digest of length-prefixed parts, so that ids are stable across runs, machines and
//! processes, and no two different part lists collide by concatenation.

/// Hex digest (first `hex_len` characters) of the given parts, each length-prefixed.
pub fn digest(parts: &[&[u8]], hex_len: usize) -> String {
    let mut hasher = blake3::Hasher::new();
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let hex = hasher.finalize().to_hex();
    hex[..hex_len.min(hex.len())].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_length_prefixed() {
        assert_ne!(digest(&[b"ab", b"c"], 16), digest(&[b"a", b"bc"], 16));
        assert_eq!(digest(&[b"x"], 16), digest(&[b"x"], 16));
        assert_eq!(digest(&[b"x"], 16).len(), 16);
    }
}
