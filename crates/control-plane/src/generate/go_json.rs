//! `pluginConfig` as the JSON text istiod sends: `protomarshal.ToJSON` (legacy `jsonpb`) over a
//! `google.protobuf.Struct`. Plugins receive this text byte for byte, so it must match: keys
//! sorted, no spaces, numbers as Go's `encoding/json` prints a float64, strings escaped as
//! `encoding/json` escapes them with HTML escaping on (Go ≥ 1.22, which every Istio since 1.22 is
//! built with).

use std::fmt::Write as _;

use serde_json::{Map, Value};

/// A `Struct` (the whole `pluginConfig`) as istiod's JSON text.
pub(crate) fn struct_to_string(fields: &Map<String, Value>) -> String {
    let mut out = String::new();
    write_struct(&mut out, fields);
    out
}

fn write_struct(out: &mut String, fields: &Map<String, Value>) {
    // jsonpb sorts map entries by key (Go string order = byte order, as Rust's).
    let mut entries: Vec<_> = fields.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    out.push('{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, k);
        out.push(':');
        write_value(out, v);
    }
    out.push('}');
}

fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        // Struct numbers are float64 (`number_value`), whatever the YAML spelled.
        Value::Number(n) => write_float(out, n.as_f64().unwrap_or_default()),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(fields) => write_struct(out, fields),
    }
}

/// Go `encoding/json` `floatEncoder` for 64 bits: `strconv` 'f' format with the shortest
/// digits, or 'e' when |f| < 1e-6 or |f| ≥ 1e21, with the exponent unpadded (`1e-7`, `1e+21`).
/// jsonpb writes non-finite values as quoted strings.
fn write_float(out: &mut String, f: f64) {
    if f.is_nan() {
        out.push_str("\"NaN\"");
        return;
    }
    if f.is_infinite() {
        out.push_str(if f > 0.0 {
            "\"Infinity\""
        } else {
            "\"-Infinity\""
        });
        return;
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        // Rust's `{:e}` has Go's shortest mantissa digits and an unpadded, unsigned-if-positive
        // exponent; Go always signs it.
        let e = format!("{f:e}");
        let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
        out.push_str(mantissa);
        out.push('e');
        if !exp.starts_with('-') {
            out.push('+');
        }
        out.push_str(exp);
    } else {
        // Rust's `Display` for f64 is the shortest round-trip digits without an exponent, as
        // Go's `strconv.FormatFloat(f, 'f', -1, 64)` (`1.0` → `1`, `-0.0` → `-0`).
        let _ = write!(out, "{f}");
    }
}

/// Go `encoding/json` string escaping with `escapeHTML`.
fn write_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{0}'..='\u{1f}' | '<' | '>' | '&' => {
                let b = c as u8;
                out.push_str("\\u00");
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 0xf)] as char);
            }
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn to_go(v: Value) -> String {
        let Value::Object(m) = v else {
            panic!("not an object")
        };
        struct_to_string(&m)
    }

    #[test]
    fn sorted_keys_no_spaces_html_escaped_float64_numbers() {
        assert_eq!(
            to_go(json!({"url": "https://a/?x=1&y=2", "html": "<b>", "ratio": 1.0, "n": 1e3})),
            r#"{"html":"\u003cb\u003e","n":1000,"ratio":1,"url":"https://a/?x=1\u0026y=2"}"#
        );
    }

    #[test]
    fn numbers_print_like_go_encoding_json_float64() {
        let cases: &[(Value, &str)] = &[
            (json!(1.0), "1"),
            (json!(1000), "1000"),
            (json!(0.000001), "0.000001"),
            (json!(1e-7), "1e-7"),
            (json!(1.5e-7), "1.5e-7"),
            (json!(1e-10), "1e-10"),
            (json!(-2.5e-9), "-2.5e-9"),
            (json!(1e21), "1e+21"),
            (json!(1.2345e22), "1.2345e+22"),
            (json!(999999999999999900000.0), "999999999999999900000"),
            (json!(1e20), "100000000000000000000"),
            (json!(0.1), "0.1"),
            (json!(-0.0), "-0"),
            (json!(0), "0"),
            (json!(-5), "-5"),
            // Integers beyond 2^53 go through float64, as the Struct stores them.
            (json!(12345678901234567890u64), "12345678901234567000"),
            (json!(9007199254740993u64), "9007199254740992"),
        ];
        for (v, want) in cases {
            assert_eq!(to_go(json!({"v": v})), format!("{{\"v\":{want}}}"), "{v}");
        }
    }

    #[test]
    fn strings_escape_like_go_encoding_json() {
        assert_eq!(
            to_go(json!({"s": "a\"b\\c\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f}é☃\u{2028}\u{2029}/'"})),
            "{\"s\":\"a\\\"b\\\\c\\n\\r\\t\\b\\f\\u0001\\u001f\u{7f}é☃\\u2028\\u2029/'\"}"
        );
        // Keys are escaped the same way.
        assert_eq!(to_go(json!({"<k>": 1})), r#"{"\u003ck\u003e":1}"#);
    }

    #[test]
    fn nested_values_and_empty_containers() {
        assert_eq!(
            to_go(json!({"b": [1, "x", null, true, {"z": 1, "a": []}], "a": {}})),
            r#"{"a":{},"b":[1,"x",null,true,{"a":[],"z":1}]}"#
        );
    }
}
