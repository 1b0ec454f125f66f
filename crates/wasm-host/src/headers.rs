//! The header map plugins see: ordered, duplicates kept, keys lower-cased (like Envoy).
//!
//! Built once per callback from the proxy's headers and read back after it, so it sits on the
//! hot path: keys and values live back to back in one byte buffer (two allocations per map
//! instead of two per entry), and the edits a plugin makes are logged so the proxy can apply
//! just those to its own headers instead of rebuilding them.

/// A byte range of the buffer.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    len: u32,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: Span,
    value: Span,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Add,
    Replace,
    Remove,
}

#[derive(Debug, Clone, Copy)]
struct Logged {
    op: Op,
    key: Span,
    value: Span,
}

/// One edit since the map was built (or since [`HeaderMap::forget_changes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'a> {
    /// An entry appended (lower-cased key, value).
    Add(&'a [u8], &'a [u8]),
    /// Every entry for the key replaced by one with this value (at the first one's place).
    Replace(&'a [u8], &'a [u8]),
    /// Every entry for the key removed.
    Remove(&'a [u8]),
}

/// An ordered multi-map of header (or trailer, metadata) entries. Pseudo-headers
/// (`:method`, `:path`, `:authority`, `:scheme`, `:status`) are ordinary entries.
#[derive(Clone, Default)]
pub struct HeaderMap {
    buf: Vec<u8>,
    entries: Vec<Entry>,
    changes: Vec<Logged>,
    /// Replaced wholesale (or the log was dropped): the change log does not describe it.
    rebuilt: bool,
}

/// Bytes of superseded values above which the buffer is compacted.
const COMPACT_AT: usize = 16 * 1024;

impl HeaderMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// A map from entries, lower-casing the keys. The entries are its base: no changes.
    pub fn from_entries<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self::build(entries, true)
    }

    /// A map from entries whose keys are already lower case (`http::HeaderName`s, pseudo-header
    /// literals): no per-byte pass over them. Keys that are not lower case are a caller bug
    /// (caught in debug builds): lookups would miss them.
    pub fn from_lowercase_entries<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self::build(entries, false)
    }

    fn build<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        entries: impl IntoIterator<Item = (K, V)>,
        lowercase: bool,
    ) -> Self {
        let it = entries.into_iter();
        let mut m = Self {
            buf: Vec::with_capacity(256),
            entries: Vec::with_capacity(it.size_hint().0),
            changes: Vec::new(),
            rebuilt: false,
        };
        for (k, v) in it {
            let k = k.as_ref();
            let key = if lowercase {
                m.push_key(k)
            } else {
                debug_assert!(!k.iter().any(u8::is_ascii_uppercase), "{k:?}");
                m.push(k)
            };
            let e = Entry {
                key,
                value: m.push(v.as_ref()),
            };
            m.entries.push(e);
        }
        m
    }

    fn push(&mut self, bytes: &[u8]) -> Span {
        let start = self.buf.len() as u32;
        self.buf.extend_from_slice(bytes);
        Span {
            start,
            len: bytes.len() as u32,
        }
    }

    fn push_key(&mut self, key: &[u8]) -> Span {
        let s = self.push(key);
        self.bytes_mut(s).make_ascii_lowercase();
        s
    }

    fn bytes(&self, s: Span) -> &[u8] {
        &self.buf[s.start as usize..(s.start + s.len) as usize]
    }

    fn bytes_mut(&mut self, s: Span) -> &mut [u8] {
        &mut self.buf[s.start as usize..(s.start + s.len) as usize]
    }

    fn key_is(&self, e: &Entry, key: &[u8]) -> bool {
        self.bytes(e.key).eq_ignore_ascii_case(key)
    }

    fn log(&mut self, op: Op, key: Span, value: Span) {
        if !self.rebuilt {
            self.changes.push(Logged { op, key, value });
        }
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
            .map(|e| (self.bytes(e.key), self.bytes(e.value)))
    }

    /// The first value for `key` (case-insensitive), as Envoy's `get_header_map_value` answers.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|e| self.key_is(e, key))
            .map(|e| self.bytes(e.value))
    }

    /// The first value for `key` as UTF-8, if it is.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key.as_bytes())
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// All values for `key` joined with `,` (CEL `request.headers.x` in newer Envoy).
    pub fn get_joined(&self, key: &[u8]) -> Option<Vec<u8>> {
        let mut out: Option<Vec<u8>> = None;
        for (k, v) in self.iter() {
            if k.eq_ignore_ascii_case(key) {
                match &mut out {
                    Some(o) => {
                        o.push(b',');
                        o.extend_from_slice(v);
                    }
                    None => out = Some(v.to_vec()),
                }
            }
        }
        out
    }

    /// Appends an entry (keeps existing ones with the same key).
    pub fn add(&mut self, key: &[u8], value: &[u8]) {
        let e = Entry {
            key: self.push_key(key),
            value: self.push(value),
        };
        self.entries.push(e);
        self.log(Op::Add, e.key, e.value);
        self.maybe_compact();
    }

    /// Removes every entry for `key`, then adds one, as Envoy's `setCopy`: at the end (a
    /// pseudo-header at the end of the pseudo-headers), so a replaced header moves.
    pub fn replace(&mut self, key: &[u8], value: &[u8]) {
        let Some(first) = self.entries.iter().position(|e| self.key_is(e, key)) else {
            self.add(key, value);
            return;
        };
        let v = self.push(value);
        let k = self.entries[first].key;
        let mut i = first;
        while i < self.entries.len() {
            if self.key_is(&self.entries[i], key) {
                self.entries.remove(i);
            } else {
                i += 1;
            }
        }
        let at = if key.first() == Some(&b':') {
            self.entries
                .iter()
                .position(|e| self.buf.get(e.key.start as usize) != Some(&b':'))
                .unwrap_or(self.entries.len())
        } else {
            self.entries.len()
        };
        self.entries.insert(at, Entry { key: k, value: v });
        self.log(Op::Replace, k, v);
        self.maybe_compact();
    }

    /// Removes every entry for `key`.
    pub fn remove(&mut self, key: &[u8]) {
        let before = self.entries.len();
        let buf = &self.buf;
        self.entries.retain(|e| {
            !buf[e.key.start as usize..(e.key.start + e.key.len) as usize].eq_ignore_ascii_case(key)
        });
        if self.entries.len() != before && !self.rebuilt {
            let k = self.push_key(key);
            self.log(Op::Remove, k, Span { start: 0, len: 0 });
        }
    }

    /// Replaces every entry (a plugin setting all pairs): the map no longer has a change log.
    pub fn set_entries<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &mut self,
        entries: impl IntoIterator<Item = (K, V)>,
    ) {
        *self = Self::from_entries(entries);
        self.rebuilt = true;
    }

    /// The edits since the map was built, in order; `None` when it was replaced wholesale
    /// (then apply the whole map).
    pub fn changes(&self) -> Option<impl Iterator<Item = Change<'_>> + Clone> {
        if self.rebuilt {
            return None;
        }
        Some(self.changes.iter().map(|c| match c.op {
            Op::Add => Change::Add(self.bytes(c.key), self.bytes(c.value)),
            Op::Replace => Change::Replace(self.bytes(c.key), self.bytes(c.value)),
            Op::Remove => Change::Remove(self.bytes(c.key)),
        }))
    }

    /// Makes the current entries the base: no changes from here.
    pub fn forget_changes(&mut self) {
        self.changes.clear();
        self.rebuilt = false;
    }

    /// Superseded bytes are dropped once they pile up (a plugin replacing a value in a loop);
    /// the change log goes with them (the proxy then applies the whole map).
    fn maybe_compact(&mut self) {
        if self.buf.len() < COMPACT_AT {
            return;
        }
        let live: usize = self.byte_size();
        if self.buf.len() < 2 * live + COMPACT_AT {
            return;
        }
        let rebuilt = Self::from_entries(self.iter());
        *self = rebuilt;
        self.rebuilt = true;
    }

    /// Sum of key and value bytes (Envoy's `byteSize()`).
    pub fn byte_size(&self) -> usize {
        self.entries
            .iter()
            .map(|e| (e.key.len + e.value.len) as usize)
            .sum()
    }

    /// Copies the entries out.
    pub fn into_entries(self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
    }
}

impl PartialEq for HeaderMap {
    /// Same entries in the same order (the change log is not compared).
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for HeaderMap {}

impl std::fmt::Debug for HeaderMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.iter()
                    .map(|(k, v)| (String::from_utf8_lossy(k), String::from_utf8_lossy(v))),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowercase_entries_build_the_same_map_without_the_case_pass() {
        let e = [
            (":path", "/a"),
            ("x-a", "1"),
            ("x-a", "2"),
            ("content-type", "t"),
        ];
        let a = HeaderMap::from_entries(e);
        let b = HeaderMap::from_lowercase_entries(e);
        assert_eq!(a.iter().collect::<Vec<_>>(), b.iter().collect::<Vec<_>>());
        assert_eq!(b.get(b"X-A"), Some(&b"1"[..]));
        assert_eq!(b.changes().map(|c| c.count()), Some(0));
    }

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

    #[test]
    fn edits_are_logged_in_order_until_forgotten() {
        let mut m = HeaderMap::from_entries([(":path", "/"), ("x-a", "1")]);
        assert_eq!(m.changes().map(|c| c.count()), Some(0));
        m.add(b"X-New", b"v");
        m.replace(b":path", b"/b");
        m.remove(b"x-a");
        m.remove(b"absent");
        let log: Vec<Change<'_>> = m.changes().expect("log").collect();
        assert_eq!(
            log,
            vec![
                Change::Add(b"x-new", b"v"),
                Change::Replace(b":path", b"/b"),
                Change::Remove(b"x-a"),
            ]
        );
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            vec![(&b":path"[..], &b"/b"[..]), (b"x-new", b"v")]
        );
        m.forget_changes();
        assert_eq!(m.changes().map(|c| c.count()), Some(0));
        m.set_entries([("a", "b")]);
        assert!(m.changes().is_none(), "a wholesale replacement has no log");
        assert_eq!(m, HeaderMap::from_entries([("A", "b")]));
    }

    #[test]
    fn a_replace_loop_stays_bounded() {
        let mut m = HeaderMap::from_entries([("x", "0")]);
        let big = vec![b'v'; 1024];
        for _ in 0..10_000 {
            m.replace(b"x", &big);
        }
        assert!(m.buf.len() < 2 * COMPACT_AT + 4096, "{}", m.buf.len());
        assert_eq!(m.get(b"x"), Some(&big[..]));
        assert!(m.changes().is_none(), "compaction drops the log");
    }
}
