//! The serialized header-map format ("pairs", ABI doc 4.2).

/// Largest pairs buffer accepted from a guest (cpp-host: 1 MiB).
const MAX_PAIRS_BYTES: usize = 1 << 20;
/// Most pairs accepted from a guest (cpp-host: 1024).
const MAX_PAIRS: usize = 1024;

/// Serializes pairs: `u32 N`, N × `(u32 klen, u32 vlen)`, then each `key\0value\0`.
pub fn encode<'a, I>(pairs: I) -> Vec<u8>
where
    I: IntoIterator<Item = (&'a [u8], &'a [u8])> + Clone,
{
    let mut n = 0u32;
    let mut size = 4usize;
    for (k, v) in pairs.clone() {
        n += 1;
        size += 8 + k.len() + v.len() + 2;
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&n.to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Parses pairs sent by a guest. Like cpp-host's `toPairs`, anything malformed (too big, too
/// many, truncated, bad terminator, trailing bytes) yields `None`; empty inputs (`""`, `"\0"`,
/// a zero count) yield an empty list.
pub fn decode(buf: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    if buf.is_empty() || buf == [0] {
        return Some(Vec::new());
    }
    if buf.len() > MAX_PAIRS_BYTES || buf.len() < 4 {
        return None;
    }
    let n = u32::from_le_bytes(buf[0..4].try_into().ok()?) as usize;
    if n > MAX_PAIRS {
        return None;
    }
    let sizes_end = 4usize.checked_add(n.checked_mul(8)?)?;
    if sizes_end > buf.len() {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    let mut pos = sizes_end;
    for i in 0..n {
        let s = 4 + i * 8;
        let klen = u32::from_le_bytes(buf[s..s + 4].try_into().ok()?) as usize;
        let vlen = u32::from_le_bytes(buf[s + 4..s + 8].try_into().ok()?) as usize;
        let kend = pos.checked_add(klen)?;
        if kend >= buf.len() || buf[kend] != 0 {
            return None;
        }
        let key = buf[pos..kend].to_vec();
        pos = kend + 1;
        let vend = pos.checked_add(vlen)?;
        if vend >= buf.len() || buf[vend] != 0 {
            return None;
        }
        let value = buf[pos..vend].to_vec();
        pos = vend + 1;
        out.push((key, value));
    }
    if pos != buf.len() {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encodes_the_spec_example() {
        let pairs: Vec<(&[u8], &[u8])> = vec![(b"a", b"1"), (b"bb", b"22")];
        let bytes = encode(pairs.iter().copied());
        let expected: Vec<u8> = vec![
            2, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, b'a', 0, b'1', 0, b'b',
            b'b', 0, b'2', b'2', 0,
        ];
        assert_eq!(bytes, expected);
        let back = decode(&bytes).expect("round trip");
        assert_eq!(
            back,
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"bb".to_vec(), b"22".to_vec())
            ]
        );
    }

    #[test]
    fn accepts_all_empty_forms() {
        assert_eq!(decode(b""), Some(vec![]));
        assert_eq!(decode(b"\0"), Some(vec![]));
        assert_eq!(decode(&[0, 0, 0, 0]), Some(vec![]));
    }

    #[test]
    fn rejects_malformed() {
        // count says 1, nothing follows
        assert_eq!(decode(&[1, 0, 0, 0]), None);
        // bad terminator
        assert_eq!(
            decode(&[1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, b'a', 1, b'b', 0]),
            None
        );
        // trailing garbage
        assert_eq!(
            decode(&[1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, b'a', 0, b'b', 0, 9]),
            None
        );
        // huge count
        assert_eq!(decode(&[0xff, 0xff, 0xff, 0xff]), None);
    }

    proptest! {
        #[test]
        fn round_trips(pairs in proptest::collection::vec((proptest::collection::vec(1u8..255, 0..20), proptest::collection::vec(any::<u8>(), 0..20)), 0..20)) {
            let bytes = encode(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
            prop_assert_eq!(decode(&bytes), Some(pairs));
        }

        #[test]
        fn never_panics_on_garbage(buf in proptest::collection::vec(any::<u8>(), 0..200)) {
            // Any input gives either a list whose re-encoding parses back, or None.
            if let Some(p) = decode(&buf) {
                let again = encode(p.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
                prop_assert_eq!(decode(&again), Some(p));
            }
        }
    }
}
