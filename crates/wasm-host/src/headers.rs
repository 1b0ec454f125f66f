//! The header map plugins see: ordered, duplicates kept, keys lower-cased (like Envoy).

/// An ordered multi-map of header (or trailer, metadata) entries. Pseudo-headers
/// (`:method`, `:path`, `:authority`, `:scheme`, `:status`) are ordinary entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMap {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

impl HeaderMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// A map from entries, lower-casing the keys.
    pub fn from_entries<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let mut m = Self::new();
        for (k, v) in entries {
            m.add(k.as_ref(), v.as_ref());
        }
        m
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
        self.entries
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// The first value for `key` (case-insensitive), as Envoy's `get_header_map_value` answers.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_slice())
    }

    /// The first value for `key` as UTF-8, if it is.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key.as_bytes())
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// All values for `key` joined with `,` (CEL `request.headers.x` in newer Envoy).
    pub fn get_joined(&self, key: &[u8]) -> Option<Vec<u8>> {
        let mut out: Option<Vec<u8>> = None;
        for (k, v) in &self.entries {
            if k.eq_ignore_ascii_case(key) {
                match &mut out {
                    Some(o) => {
                        o.push(b',');
                        o.extend_from_slice(v);
                    }
                    None => out = Some(v.clone()),
                }
            }
        }
        out
    }

    /// Appends an entry (keeps existing ones with the same key).
    pub fn add(&mut self, key: &[u8], value: &[u8]) {
        self.entries
            .push((key.to_ascii_lowercase(), value.to_vec()));
    }

    /// Removes every entry for `key`, then adds one.
    pub fn replace(&mut self, key: &[u8], value: &[u8]) {
        let mut found = false;
        self.entries.retain_mut(|(k, v)| {
            if k.eq_ignore_ascii_case(key) {
                if found {
                    return false;
                }
                found = true;
                *v = value.to_vec();
            }
            true
        });
        if !found {
            self.add(key, value);
        }
    }

    /// Removes every entry for `key`.
    pub fn remove(&mut self, key: &[u8]) {
        self.entries.retain(|(k, _)| !k.eq_ignore_ascii_case(key));
    }

    /// Sum of key and value bytes (Envoy's `byteSize()`).
    pub fn byte_size(&self) -> usize {
        self.entries.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    /// Moves the entries out.
    pub fn into_entries(self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_replace_remove_are_case_insensitive() {
        let mut m = HeaderMap::from_entries([("X-A", "1"), ("x-a", "2"), ("b", "3")]);
        assert_eq!(m.get(b"x-A"), Some(&b"1"[..]));
        assert_eq!(m.get_joined(b"X-a"), Some(b"1,2".to_vec()));
        m.replace(b"X-A", b"9");
        assert_eq!(m.iter().filter(|(k, _)| *k == b"x-a").count(), 1);
        assert_eq!(m.get(b"x-a"), Some(&b"9"[..]));
        m.replace(b"new", b"v");
        assert_eq!(m.iter().last(), Some((&b"new"[..], &b"v"[..])));
        m.remove(b"B");
        assert_eq!(m.get(b"b"), None);
        assert_eq!(m.len(), 2);
        assert_eq!(m.byte_size(), 3 + 1 + 3 + 1);
    }
}
