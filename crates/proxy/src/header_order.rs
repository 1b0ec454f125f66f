//! Removing headers without reordering the rest. `http::HeaderMap::remove` swaps the last
//! entry into the removed one's place; Envoy's header map keeps insertion order, and plugins
//! that list or hash the headers, and upstreams that log them, see that order.

use http::HeaderMap;

/// Removes every value of each of `names` (lower case), keeping the order of the other
/// headers. A lookup per name when none is present; the map is rebuilt only when a removed
/// header is followed by one that stays.
pub(crate) fn remove(map: &mut HeaderMap, names: &[&str]) {
    if !names.iter().any(|n| map.contains_key(*n)) {
        return;
    }
    let removed = |k: &http::HeaderName| names.contains(&k.as_str());
    // Only trailing entries go: removing them moves nothing that stays.
    let first = map.keys().position(removed).unwrap_or(0);
    if map.keys().skip(first).all(removed) {
        for n in names {
            map.remove(*n);
        }
        return;
    }
    let old = std::mem::take(map);
    map.reserve(old.len());
    let mut current = None;
    for (k, v) in old {
        if let Some(k) = k {
            current = (!removed(&k)).then_some(k);
        }
        if let Some(k) = &current {
            map.append(k.clone(), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, http::HeaderValue::from_static(v));
        }
        m
    }

    fn pairs(m: &HeaderMap) -> Vec<(String, String)> {
        m.iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect()
    }

    #[test]
    fn the_others_keep_their_order() {
        let mut m = map(&[
            ("a", "1"),
            ("connection", "close"),
            ("b", "2"),
            ("c", "3"),
            ("b", "4"),
            ("te", "x"),
            ("d", "5"),
        ]);
        remove(&mut m, &["connection", "te", "absent"]);
        // (`http::HeaderMap` lists a name's values together, at its first place)
        let want = [("a", "1"), ("b", "2"), ("b", "4"), ("c", "3"), ("d", "5")];
        let want: Vec<_> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(pairs(&m), want);
        // `http`'s own remove would have moved `d` into `connection`'s place
        let mut swapped = map(&[("a", "1"), ("connection", "close"), ("b", "2"), ("d", "5")]);
        swapped.remove("connection");
        assert_eq!(swapped.keys().last().map(|k| k.as_str()), Some("b"));
    }

    #[test]
    fn trailing_and_absent_names() {
        let mut m = map(&[
            ("a", "1"),
            ("b", "2"),
            ("connection", "close"),
            ("upgrade", "h2c"),
        ]);
        remove(&mut m, &["upgrade", "connection"]);
        assert_eq!(m.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        remove(&mut m, &["te"]);
        assert_eq!(m.len(), 2);
        remove(&mut m, &["a"]);
        assert_eq!(m.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["b"]);
    }
}
