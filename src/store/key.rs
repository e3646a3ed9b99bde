//! Key encoding: big-endian integers so that byte order is numeric order, and 0xff separators.

/// Separates variable-length parts of a key; never valid inside a Matrix ID or UTF-8 text.
pub const SEP: u8 = 0xff;

/// Joins parts with [`SEP`].
pub fn join(parts: &[&[u8]]) -> Vec<u8> {
    let mut key = Vec::with_capacity(parts.iter().map(|part| part.len() + 1).sum());
    for (index, part) in parts.iter().enumerate() {
        if index > 0 {
            key.push(SEP);
        }
        key.extend_from_slice(part);
    }
    key
}

/// `parts` joined by [`SEP`], with a trailing [`SEP`]: a prefix for everything below them.
pub fn prefix(parts: &[&[u8]]) -> Vec<u8> {
    let mut key = join(parts);
    key.push(SEP);
    key
}

/// Splits a key at [`SEP`].
pub fn split(key: &[u8]) -> impl Iterator<Item = &[u8]> {
    key.split(|byte| *byte == SEP)
}

/// A `u64` as 8 big-endian bytes.
pub fn u64_bytes(value: u64) -> [u8; 8] {
    value.to_be_bytes()
}

/// Reads a big-endian `u64` from the first 8 bytes, if there are 8.
pub fn read_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_endian_keys_sort_numerically() {
        let mut keys: Vec<_> = [300u64, 2, 70_000, 1]
            .iter()
            .map(|n| u64_bytes(*n))
            .collect();
        keys.sort();
        let back: Vec<_> = keys.iter().map(|key| read_u64(key).unwrap()).collect();
        assert_eq!(back, vec![1, 2, 300, 70_000]);
        assert_eq!(read_u64(&[1, 2]), None);
    }

    #[test]
    fn joined_keys_split_back() {
        let key = join(&[b"@a:x", b"!r:x", b""]);
        let parts: Vec<_> = split(&key).collect();
        assert_eq!(parts, vec![&b"@a:x"[..], b"!r:x", b""]);
        assert!(prefix(&[b"@a:x"]).ends_with(&[SEP]));
    }
}
