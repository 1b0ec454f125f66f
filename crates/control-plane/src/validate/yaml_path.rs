//! Best-effort field path (`spec.match[0].mode`) of a line/column in block-style YAML, so that
//! YAML-level errors (unknown field, bad enum value) name a path like semantic errors do.

enum Frame {
    Key {
        indent: usize,
        name: String,
        leaf: bool,
    },
    Seq {
        indent: usize,
        index: usize,
    },
}

impl Frame {
    fn indent(&self) -> usize {
        match self {
            Frame::Key { indent, .. } | Frame::Seq { indent, .. } => *indent,
        }
    }
}

/// `key: rest` at the start of `s` → (key, has a value after the colon).
fn split_key(s: &str) -> Option<(String, bool)> {
    let bytes = s.as_bytes();
    let (key, after) = if let Some(q) = s.strip_prefix('"').or_else(|| s.strip_prefix('\'')) {
        let end = q.find(['"', '\''])?;
        (q[..end].to_string(), &q[end + 1..])
    } else {
        let end = s
            .find(": ")
            .or_else(|| s.ends_with(':').then(|| s.len() - 1))?;
        if bytes
            .first()
            .is_some_and(|b| matches!(b, b'{' | b'[' | b'#'))
        {
            return None;
        }
        (s[..end].trim().to_string(), &s[end..])
    };
    let after = after.strip_prefix(':')?;
    let value = after.trim();
    Some((key, !(value.is_empty() || value.starts_with('#'))))
}

/// The last `key:` in `s` (a flow mapping fragment), if any.
fn last_flow_key(s: &str) -> Option<String> {
    let colon = s.rfind(':')?;
    let start = s[..colon]
        .rfind(['{', ',', ' '])
        .map(|i| i + 1)
        .unwrap_or(0);
    let k = s[start..colon].trim().trim_matches(['"', '\'']);
    (!k.is_empty()).then(|| k.to_string())
}

/// Path of `line` (1-based) / `column` (1-based) in `doc`, or `None` if it cannot be inferred.
pub(crate) fn path_at(doc: &str, line: usize, column: usize) -> Option<String> {
    let mut stack: Vec<Frame> = Vec::new();
    let lines: Vec<&str> = doc.lines().collect();
    let target = line.checked_sub(1)?;
    if target >= lines.len() {
        return None;
    }
    let mut block_key_end = 0;
    for (i, raw) in lines.iter().enumerate().take(target + 1) {
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("---") {
            continue;
        }
        let n = raw.len() - trimmed.len();
        if let Some(item) = trimmed
            .strip_prefix("- ")
            .or_else(|| (trimmed == "-").then_some(""))
        {
            while stack.last().is_some_and(|f| {
                f.indent() > n || matches!(f, Frame::Key { indent, leaf: true, .. } if *indent >= n)
            }) {
                stack.pop();
            }
            match stack.last_mut() {
                Some(Frame::Seq { indent, index }) if *indent == n => *index += 1,
                _ => stack.push(Frame::Seq {
                    indent: n,
                    index: 0,
                }),
            }
            let content = item.trim_start();
            let content_col = n + 2 + (item.len() - content.len());
            if let Some((name, leaf)) = split_key(content) {
                if i == target {
                    block_key_end = content_col + name.len();
                }
                stack.push(Frame::Key {
                    indent: content_col,
                    name,
                    leaf,
                });
            }
        } else {
            while stack.last().is_some_and(|f| f.indent() >= n) {
                stack.pop();
            }
            let (name, leaf) = split_key(trimmed)?;
            if i == target {
                block_key_end = n + name.len();
            }
            stack.push(Frame::Key {
                indent: n,
                name,
                leaf,
            });
        }
    }
    let mut path = String::new();
    for f in &stack {
        match f {
            Frame::Key { name, .. } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(name);
            }
            Frame::Seq { index, .. } => path.push_str(&format!("[{index}]")),
        }
    }
    // Inside a flow mapping on the target line: add the key the column points at (or after).
    let text = lines[target];
    let col = column.saturating_sub(1).min(text.len());
    if col > block_key_end + 1 && text[block_key_end..col].contains('{') {
        let frag = &text[block_key_end + 1..];
        let upto =
            (col - block_key_end - 1 + frag[col - block_key_end - 1..].find(':').unwrap_or(0) + 1)
                .min(frag.len());
        if let Some(k) = last_flow_key(&frag[..upto]) {
            path.push('.');
            path.push_str(&k);
        }
    }
    (!path.is_empty()).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::path_at;

    const DOC: &str = "apiVersion: x\nkind: WasmPlugin\nmetadata:\n  name: p\nspec:\n  url: oci://x\n  match:\n  - mode: BAD\n    ports:\n    - number: 1\n    - numbr: 2\n  - mode: CLIENT\n  vmConfig:\n    env:\n      - name: A\n        valu: b\n  selector: {matchLabels: {a: b}, extra: 1}\n  phasee: AUTHN\n";

    #[test]
    fn paths_of_block_and_flow_yaml() {
        assert_eq!(path_at(DOC, 4, 3).as_deref(), Some("metadata.name"));
        assert_eq!(path_at(DOC, 8, 11).as_deref(), Some("spec.match[0].mode"));
        assert_eq!(
            path_at(DOC, 11, 7).as_deref(),
            Some("spec.match[0].ports[1].numbr")
        );
        assert_eq!(path_at(DOC, 12, 5).as_deref(), Some("spec.match[1].mode"));
        assert_eq!(
            path_at(DOC, 16, 9).as_deref(),
            Some("spec.vmConfig.env[0].valu")
        );
        assert_eq!(path_at(DOC, 17, 36).as_deref(), Some("spec.selector.extra"));
        assert_eq!(path_at(DOC, 18, 3).as_deref(), Some("spec.phasee"));
    }
}
