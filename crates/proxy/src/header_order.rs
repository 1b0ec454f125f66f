//! Removing headers without reordering the rest. `http::HeaderMap::remove` swaps the last
//! entry into the removed one's place; Envoy's header map keeps insertion order, and plugins
//! that list or hash the headers, and upstreams that log them, see that order.

use http::HeaderMap;

/// Removes every value of each of `names` (lower case), keeping the order of the other
/// headers. One pass over the map's names when none is present; when a removed header is
/// followed by a few that stay (a proxy's own additions after an upstream's `connection`),
/// those are moved off the end and back, else the map is rebuilt.
pub(crate) fn remove(map: &mut HeaderMap, names: &[&str]) {
    // One pass over the names (no parsing of `names` as header names).
    let removed = |k: &http::HeaderName| names.contains(&k.as_str());
    let Some(first) = map.keys().position(removed) else {
        return;
    };
    // The names after the first removed one that stay, in order.
    let tail: Vec<http::HeaderName> = map
        .keys()
        .skip(first)
        .filter(|k| !removed(k))
        .cloned()
        .collect();
    if tail.len() > 4 {
        rebuild(map, &removed);
        return;
    }
    // Take the few names that stay after it off the end (each is last when taken: nothing
    // moves), drop the removed ones (now at the end), put the others back in order.
    let mut kept = Vec::with_capacity(tail.len());
    for name in tail.iter().rev() {
        let values: Vec<http::HeaderValue> = map.get_all(name).iter().cloned().collect();
        map.remove(name);
        kept.push((name.clone(), values));
    }
    let gone: Vec<http::HeaderName> = map.keys().filter(|k| removed(k)).cloned().collect();
    for name in gone {
        map.remove(name);
    }
    for (name, values) in kept.into_iter().rev() {
        for v in values {
            map.append(name.clone(), v);
        }
    }
}

/// Rebuilds `map` without the names `removed` says go.
fn rebuild(map: &mut HeaderMap, removed: &dyn Fn(&http::HeaderName) -> bool) {
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
    fn many_headers_after_the_removed_one_keep_their_order_too() {
        let mut m = map(&[
            ("a", "1"),
            ("connection", "close"),
            ("b", "2"),
            ("c", "3"),
            ("d", "4"),
            ("e", "5"),
            ("f", "6"),
            ("b", "7"),
        ]);
        remove(&mut m, &["connection"]);
        let names: Vec<&str> = m.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d", "e", "f"]);
        assert_eq!(m.get_all("b").iter().count(), 2);
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
