//! Envoy's expression foreign functions (`expr_create`, `expr_evaluate`, `expr_delete`): a
//! plugin compiles a CEL expression over the stream's attributes (`request.headers["x"]`,
//! `source.address`, `"a" + b`...) and evaluates it later; the result is serialized as property
//! values are. This is the subset of CEL those plugins use (Istio's stats plugin dimensions,
//! Envoy's own test plugins): literals, attribute selection and indexing, arithmetic, string
//! concatenation, comparisons, `&&` `||` `!`, `?:`, `in`, `has()`, `size()`, `string()`,
//! `int()`, `uint()`, `double()`, and the string methods `startsWith`, `endsWith`, `contains`,
//! `matches`. Message construction (`T{...}`) is refused at creation, as Envoy refuses the
//! type names it does not know.

use std::collections::HashMap;

use crate::properties::PropertyValue;

/// A parse or evaluation failure (the foreign function answers BadArgument or
/// InternalFailure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExprError(pub(crate) String);

fn err<T>(m: impl Into<String>) -> Result<T, ExprError> {
    Err(ExprError(m.into()))
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    Lit(Value),
    Ident(String),
    Select(Box<Expr>, String),
    Index(Box<Expr>, Box<Expr>),
    /// A function (`size(x)`) or a method (`x.startsWith(y)`: the target first).
    Call(String, Option<Box<Expr>>, Vec<Expr>),
    Unary(char, Box<Expr>),
    Binary(String, Box<Expr>, Box<Expr>),
    Cond(Box<Expr>, Box<Expr>, Box<Expr>),
    List(Vec<Expr>),
    Map(Vec<(Expr, Expr)>),
}

/// A CEL value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(String),
    Bytes(Vec<u8>),
    Duration(i64),
    Timestamp(i64),
    List(Vec<Value>),
    Map(Vec<(Value, Value)>),
}

impl Value {
    fn from_property(p: PropertyValue) -> Value {
        match p {
            PropertyValue::Bytes(b) | PropertyValue::Raw(b) => match String::from_utf8(b) {
                Ok(s) => Value::Str(s),
                Err(e) => Value::Bytes(e.into_bytes()),
            },
            PropertyValue::Int(v) => Value::Int(v),
            PropertyValue::UInt(v) => Value::UInt(v),
            PropertyValue::Double(v) => Value::Double(v),
            PropertyValue::Bool(v) => Value::Bool(v),
            PropertyValue::Timestamp(v) => Value::Timestamp(v),
            PropertyValue::Duration(v) => Value::Duration(v),
            PropertyValue::Map(m) => Value::Map(
                m.into_iter()
                    .map(|(k, v)| {
                        (
                            Value::from_property(PropertyValue::Bytes(k)),
                            Value::from_property(v),
                        )
                    })
                    .collect(),
            ),
            PropertyValue::List(l) => {
                Value::List(l.into_iter().map(Value::from_property).collect())
            }
            PropertyValue::Unserializable => Value::Null,
        }
    }

    /// The bytes the guest gets (Envoy's `serializeValue`).
    pub(crate) fn encode(&self) -> Result<Vec<u8>, ExprError> {
        Ok(match self {
            Value::Null => return err("null does not serialize"),
            Value::Bool(b) => vec![u8::from(*b)],
            Value::Int(v) | Value::Duration(v) | Value::Timestamp(v) => v.to_le_bytes().to_vec(),
            Value::UInt(v) => v.to_le_bytes().to_vec(),
            Value::Double(v) => v.to_le_bytes().to_vec(),
            Value::Str(s) => s.as_bytes().to_vec(),
            Value::Bytes(b) => b.clone(),
            Value::List(items) => {
                let enc = items
                    .iter()
                    .map(Value::encode)
                    .collect::<Result<Vec<_>, _>>()?;
                crate::pairs::encode(enc.iter().map(|k| (k.as_slice(), &b""[..])))
            }
            Value::Map(entries) => {
                let enc = entries
                    .iter()
                    .map(|(k, v)| Ok((k.encode()?, v.encode()?)))
                    .collect::<Result<Vec<_>, ExprError>>()?;
                crate::pairs::encode(enc.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
            }
        })
    }

    fn truthy(&self) -> Result<bool, ExprError> {
        match self {
            Value::Bool(b) => Ok(*b),
            other => err(format!("no such overload: bool expected, got {other:?}")),
        }
    }
}

// ---------- parsing ----------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Lit(Value),
    Op(&'static str),
}

const OPS: [&str; 24] = [
    "==", "!=", "<=", ">=", "&&", "||", "<", ">", "+", "-", "*", "/", "%", "!", "?", ":", ".", ",",
    "(", ")", "[", "]", "{", "}",
];

fn lex(src: &str) -> Result<Vec<Tok>, ExprError> {
    let b = src.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                // A `.` only belongs to the number when a digit follows (`1.5`, not `1.size`).
                if b[i] == b'.' && !b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    break;
                }
                i += 1;
            }
            let t = &src[start..i];
            let v = if let Some(u) = t.strip_suffix(['u', 'U']) {
                Value::UInt(
                    u.parse()
                        .map_err(|_| ExprError(format!("bad number {t}")))?,
                )
            } else if let Some(h) = t.strip_prefix("0x") {
                Value::Int(
                    i64::from_str_radix(h, 16).map_err(|_| ExprError(format!("bad number {t}")))?,
                )
            } else if t.contains(['.', 'e', 'E']) {
                Value::Double(
                    t.parse()
                        .map_err(|_| ExprError(format!("bad number {t}")))?,
                )
            } else {
                Value::Int(
                    t.parse()
                        .map_err(|_| ExprError(format!("bad number {t}")))?,
                )
            };
            out.push(Tok::Lit(v));
            continue;
        }
        let bytes_prefix = (c == b'b' || c == b'B') && matches!(b.get(i + 1), Some(b'"' | b'\''));
        if c == b'"' || c == b'\'' || bytes_prefix {
            if bytes_prefix {
                i += 1;
            }
            let q = b[i];
            i += 1;
            let mut s = Vec::new();
            loop {
                let Some(&ch) = b.get(i) else {
                    return err("unterminated string");
                };
                i += 1;
                if ch == q {
                    break;
                }
                if ch == b'\\' {
                    let Some(&e) = b.get(i) else {
                        return err("unterminated escape");
                    };
                    i += 1;
                    s.push(match e {
                        b'n' => b'\n',
                        b't' => b'\t',
                        b'r' => b'\r',
                        b'0' => 0,
                        other => other,
                    });
                } else {
                    s.push(ch);
                }
            }
            out.push(Tok::Lit(if bytes_prefix {
                Value::Bytes(s)
            } else {
                Value::Str(String::from_utf8(s).map_err(|_| ExprError("bad utf-8".into()))?)
            }));
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(match &src[start..i] {
                "true" => Tok::Lit(Value::Bool(true)),
                "false" => Tok::Lit(Value::Bool(false)),
                "null" => Tok::Lit(Value::Null),
                "in" => Tok::Op("in"),
                id => Tok::Ident(id.to_string()),
            });
            continue;
        }
        let Some(op) = OPS.iter().find(|op| src[i..].starts_with(**op)) else {
            return err(format!("unexpected character {:?}", c as char));
        };
        out.push(Tok::Op(op));
        i += op.len();
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn eat(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Op(o)) if *o == op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, op: &str) -> Result<(), ExprError> {
        if self.eat(op) {
            Ok(())
        } else {
            err(format!("expected {op}"))
        }
    }

    fn expr(&mut self) -> Result<Expr, ExprError> {
        let c = self.binary(0)?;
        if self.eat("?") {
            let a = self.binary(0)?;
            self.expect(":")?;
            let b = self.expr()?;
            return Ok(Expr::Cond(Box::new(c), Box::new(a), Box::new(b)));
        }
        Ok(c)
    }

    /// Binary operators by precedence: `||`, `&&`, relations, `+ -`, `* / %`.
    fn binary(&mut self, level: usize) -> Result<Expr, ExprError> {
        const LEVELS: [&[&str]; 5] = [
            &["||"],
            &["&&"],
            &["==", "!=", "<", "<=", ">", ">=", "in"],
            &["+", "-"],
            &["*", "/", "%"],
        ];
        let Some(ops) = LEVELS.get(level) else {
            return self.unary();
        };
        let mut lhs = self.binary(level + 1)?;
        while let Some(Tok::Op(o)) = self.peek() {
            let o = *o;
            if !ops.contains(&o) {
                break;
            }
            self.pos += 1;
            let rhs = self.binary(level + 1)?;
            lhs = Expr::Binary(o.to_string(), Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        if self.eat("!") {
            return Ok(Expr::Unary('!', Box::new(self.unary()?)));
        }
        if self.eat("-") {
            return Ok(match self.unary()? {
                Expr::Lit(Value::Int(v)) => Expr::Lit(Value::Int(-v)),
                Expr::Lit(Value::Double(v)) => Expr::Lit(Value::Double(-v)),
                e => Expr::Unary('-', Box::new(e)),
            });
        }
        self.member()
    }

    fn args(&mut self, close: &str) -> Result<Vec<Expr>, ExprError> {
        let mut out = Vec::new();
        if self.eat(close) {
            return Ok(out);
        }
        loop {
            out.push(self.expr()?);
            if self.eat(close) {
                return Ok(out);
            }
            self.expect(",")?;
        }
    }

    fn member(&mut self) -> Result<Expr, ExprError> {
        let mut e = self.primary()?;
        loop {
            if self.eat(".") {
                let Some(Tok::Ident(f)) = self.peek().cloned() else {
                    return err("expected a field name");
                };
                self.pos += 1;
                if self.eat("(") {
                    let args = self.args(")")?;
                    e = Expr::Call(f, Some(Box::new(e)), args);
                } else {
                    e = Expr::Select(Box::new(e), f);
                }
            } else if self.eat("[") {
                let i = self.expr()?;
                self.expect("]")?;
                e = Expr::Index(Box::new(e), Box::new(i));
            } else if matches!(self.peek(), Some(Tok::Op("{"))) {
                // `T{...}`: message construction, which this host does not do.
                return err("message construction is not supported");
            } else {
                return Ok(e);
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, ExprError> {
        let Some(t) = self.peek().cloned() else {
            return err("unexpected end of expression");
        };
        self.pos += 1;
        match t {
            Tok::Lit(v) => Ok(Expr::Lit(v)),
            Tok::Ident(id) => {
                if self.eat("(") {
                    let args = self.args(")")?;
                    return Ok(Expr::Call(id, None, args));
                }
                Ok(Expr::Ident(id))
            }
            Tok::Op("(") => {
                let e = self.expr()?;
                self.expect(")")?;
                Ok(e)
            }
            Tok::Op("[") => Ok(Expr::List(self.args("]")?)),
            Tok::Op("{") => {
                let mut entries = Vec::new();
                if !self.eat("}") {
                    loop {
                        let k = self.expr()?;
                        self.expect(":")?;
                        entries.push((k, self.expr()?));
                        if self.eat("}") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                Ok(Expr::Map(entries))
            }
            Tok::Op(o) => err(format!("unexpected {o}")),
        }
    }
}

/// Parses `src`.
pub(crate) fn parse(src: &str) -> Result<Expr, ExprError> {
    let mut p = Parser {
        toks: lex(src)?,
        pos: 0,
    };
    let e = p.expr()?;
    if p.pos != p.toks.len() {
        return err("unexpected trailing input");
    }
    Ok(e)
}

// ---------- evaluation ----------

/// The attribute path of `e` when it is a chain of names and constant string keys
/// (`request.headers["x"]` is `request`, `headers`, `x`).
fn path_of(e: &Expr) -> Option<Vec<String>> {
    match e {
        Expr::Ident(id) => Some(vec![id.clone()]),
        Expr::Select(t, f) => {
            let mut p = path_of(t)?;
            p.push(f.clone());
            Some(p)
        }
        Expr::Index(t, k) => match k.as_ref() {
            Expr::Lit(Value::Str(s)) => {
                let mut p = path_of(t)?;
                p.push(s.clone());
                Some(p)
            }
            _ => None,
        },
        _ => None,
    }
}

/// Evaluates `e`; `attr` answers an attribute path (the property lookup).
pub(crate) fn eval(
    e: &Expr,
    attr: &dyn Fn(&[String]) -> Option<PropertyValue>,
) -> Result<Value, ExprError> {
    match e {
        Expr::Lit(v) => Ok(v.clone()),
        Expr::Ident(_) | Expr::Select(..) | Expr::Index(..) => {
            if let Some(path) = path_of(e)
                && let Some(v) = attr(&path)
            {
                return Ok(Value::from_property(v));
            }
            match e {
                Expr::Select(t, f) => index(eval(t, attr)?, &Value::Str(f.clone())),
                Expr::Index(t, k) => index(eval(t, attr)?, &eval(k, attr)?),
                _ => err(format!(
                    "no such attribute: {}",
                    path_of(e).unwrap_or_default().join(".")
                )),
            }
        }
        Expr::Unary('!', x) => Ok(Value::Bool(!eval(x, attr)?.truthy()?)),
        Expr::Unary(_, x) => match eval(x, attr)? {
            Value::Int(v) => Ok(Value::Int(
                v.checked_neg().ok_or(ExprError("overflow".into()))?,
            )),
            Value::Double(v) => Ok(Value::Double(-v)),
            v => err(format!("no such overload: -{v:?}")),
        },
        Expr::Cond(c, a, b) => {
            if eval(c, attr)?.truthy()? {
                eval(a, attr)
            } else {
                eval(b, attr)
            }
        }
        Expr::Binary(op, a, b) if op == "&&" || op == "||" => {
            // CEL's commutative logic: an error on one side is absorbed by a decisive other.
            let l = eval(a, attr).and_then(|v| v.truthy());
            let decisive = op == "||";
            if l == Ok(decisive) {
                return Ok(Value::Bool(decisive));
            }
            let r = eval(b, attr).and_then(|v| v.truthy());
            match (l, r) {
                (_, Ok(v)) if v == decisive => Ok(Value::Bool(decisive)),
                (Ok(_), Ok(_)) => Ok(Value::Bool(!decisive)),
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        }
        Expr::Binary(op, a, b) => binary(op, eval(a, attr)?, eval(b, attr)?),
        Expr::List(items) => Ok(Value::List(
            items
                .iter()
                .map(|i| eval(i, attr))
                .collect::<Result<_, _>>()?,
        )),
        Expr::Map(entries) => Ok(Value::Map(
            entries
                .iter()
                .map(|(k, v)| Ok((eval(k, attr)?, eval(v, attr)?)))
                .collect::<Result<_, ExprError>>()?,
        )),
        Expr::Call(f, None, args) if f == "has" => match args.as_slice() {
            [a @ Expr::Select(..)] => Ok(Value::Bool(eval(a, attr).is_ok())),
            _ => err("has() takes a field selection"),
        },
        Expr::Call(f, target, args) => {
            let mut vals = Vec::new();
            if let Some(t) = target {
                vals.push(eval(t, attr)?);
            }
            for a in args {
                vals.push(eval(a, attr)?);
            }
            call(f, vals)
        }
    }
}

fn index(container: Value, key: &Value) -> Result<Value, ExprError> {
    match (container, key) {
        (Value::Map(entries), k) => entries
            .into_iter()
            .find(|(ek, _)| ek == k)
            .map(|(_, v)| v)
            .ok_or_else(|| ExprError(format!("no such key: {k:?}"))),
        (Value::List(items), Value::Int(i)) => usize::try_from(*i)
            .ok()
            .and_then(|i| items.into_iter().nth(i))
            .ok_or_else(|| ExprError("index out of range".into())),
        (c, k) => err(format!("no such overload: {c:?}[{k:?}]")),
    }
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::UInt(u) => Some(*u as f64),
        Value::Double(d) => Some(*d),
        _ => None,
    }
}

fn binary(op: &str, a: Value, b: Value) -> Result<Value, ExprError> {
    use std::cmp::Ordering;
    let overflow = || ExprError("overflow".into());
    match op {
        "==" => return Ok(Value::Bool(equal(&a, &b))),
        "!=" => return Ok(Value::Bool(!equal(&a, &b))),
        "in" => {
            return match b {
                Value::List(items) => Ok(Value::Bool(items.iter().any(|i| equal(i, &a)))),
                Value::Map(entries) => Ok(Value::Bool(entries.iter().any(|(k, _)| equal(k, &a)))),
                other => err(format!("no such overload: in {other:?}")),
            };
        }
        "<" | "<=" | ">" | ">=" => {
            let ord = match (&a, &b) {
                (Value::Str(x), Value::Str(y)) => x.cmp(y),
                (Value::Bytes(x), Value::Bytes(y)) => x.cmp(y),
                (Value::Duration(x), Value::Duration(y))
                | (Value::Timestamp(x), Value::Timestamp(y)) => x.cmp(y),
                _ => match (num(&a), num(&b)) {
                    (Some(x), Some(y)) => x.partial_cmp(&y).ok_or(ExprError("NaN".into()))?,
                    _ => return err(format!("no such overload: {a:?} {op} {b:?}")),
                },
            };
            return Ok(Value::Bool(match op {
                "<" => ord == Ordering::Less,
                "<=" => ord != Ordering::Greater,
                ">" => ord == Ordering::Greater,
                _ => ord != Ordering::Less,
            }));
        }
        _ => {}
    }
    Ok(match (op, a, b) {
        ("+", Value::Str(x), Value::Str(y)) => Value::Str(x + &y),
        ("+", Value::Bytes(mut x), Value::Bytes(y)) => {
            x.extend_from_slice(&y);
            Value::Bytes(x)
        }
        ("+", Value::List(mut x), Value::List(y)) => {
            x.extend(y);
            Value::List(x)
        }
        ("+", Value::Int(x), Value::Int(y)) => Value::Int(x.checked_add(y).ok_or_else(overflow)?),
        ("-", Value::Int(x), Value::Int(y)) => Value::Int(x.checked_sub(y).ok_or_else(overflow)?),
        ("*", Value::Int(x), Value::Int(y)) => Value::Int(x.checked_mul(y).ok_or_else(overflow)?),
        ("/", Value::Int(x), Value::Int(y)) => Value::Int(
            x.checked_div(y)
                .ok_or(ExprError("division by zero".into()))?,
        ),
        ("%", Value::Int(x), Value::Int(y)) => Value::Int(
            x.checked_rem(y)
                .ok_or(ExprError("modulus by zero".into()))?,
        ),
        ("+", Value::UInt(x), Value::UInt(y)) => {
            Value::UInt(x.checked_add(y).ok_or_else(overflow)?)
        }
        ("-", Value::UInt(x), Value::UInt(y)) => {
            Value::UInt(x.checked_sub(y).ok_or_else(overflow)?)
        }
        ("*", Value::UInt(x), Value::UInt(y)) => {
            Value::UInt(x.checked_mul(y).ok_or_else(overflow)?)
        }
        ("/", Value::UInt(x), Value::UInt(y)) => Value::UInt(
            x.checked_div(y)
                .ok_or(ExprError("division by zero".into()))?,
        ),
        ("%", Value::UInt(x), Value::UInt(y)) => Value::UInt(
            x.checked_rem(y)
                .ok_or(ExprError("modulus by zero".into()))?,
        ),
        ("+", Value::Double(x), Value::Double(y)) => Value::Double(x + y),
        ("-", Value::Double(x), Value::Double(y)) => Value::Double(x - y),
        ("*", Value::Double(x), Value::Double(y)) => Value::Double(x * y),
        ("/", Value::Double(x), Value::Double(y)) => Value::Double(x / y),
        ("+", Value::Duration(x), Value::Duration(y)) => {
            Value::Duration(x.checked_add(y).ok_or_else(overflow)?)
        }
        ("-", Value::Duration(x), Value::Duration(y)) => {
            Value::Duration(x.checked_sub(y).ok_or_else(overflow)?)
        }
        ("+", Value::Timestamp(x), Value::Duration(y)) => {
            Value::Timestamp(x.checked_add(y).ok_or_else(overflow)?)
        }
        ("-", Value::Timestamp(x), Value::Duration(y)) => {
            Value::Timestamp(x.checked_sub(y).ok_or_else(overflow)?)
        }
        ("-", Value::Timestamp(x), Value::Timestamp(y)) => {
            Value::Duration(x.checked_sub(y).ok_or_else(overflow)?)
        }
        (op, a, b) => return err(format!("no such overload: {a:?} {op} {b:?}")),
    })
}

/// CEL equality: numbers compare across types; other values by kind and content.
fn equal(a: &Value, b: &Value) -> bool {
    match (num(a), num(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn call(f: &str, args: Vec<Value>) -> Result<Value, ExprError> {
    Ok(match (f, args.as_slice()) {
        ("size", [Value::Str(s)]) => Value::Int(s.chars().count() as i64),
        ("size", [Value::Bytes(b)]) => Value::Int(b.len() as i64),
        ("size", [Value::List(l)]) => Value::Int(l.len() as i64),
        ("size", [Value::Map(m)]) => Value::Int(m.len() as i64),
        ("startsWith", [Value::Str(s), Value::Str(p)]) => Value::Bool(s.starts_with(p.as_str())),
        ("endsWith", [Value::Str(s), Value::Str(p)]) => Value::Bool(s.ends_with(p.as_str())),
        ("contains", [Value::Str(s), Value::Str(p)]) => Value::Bool(s.contains(p.as_str())),
        ("matches", [Value::Str(s), Value::Str(re)]) => {
            let re = regex::Regex::new(re).map_err(|e| ExprError(e.to_string()))?;
            Value::Bool(re.is_match(s))
        }
        ("string", [Value::Str(s)]) => Value::Str(s.clone()),
        ("string", [Value::Int(v)]) => Value::Str(v.to_string()),
        ("string", [Value::UInt(v)]) => Value::Str(v.to_string()),
        ("string", [Value::Double(v)]) => Value::Str(v.to_string()),
        ("string", [Value::Bool(v)]) => Value::Str(v.to_string()),
        ("string", [Value::Bytes(b)]) => {
            Value::Str(String::from_utf8(b.clone()).map_err(|_| ExprError("invalid UTF-8".into()))?)
        }
        ("bytes", [Value::Str(s)]) => Value::Bytes(s.as_bytes().to_vec()),
        ("int", [Value::Int(v)]) => Value::Int(*v),
        ("int", [Value::UInt(v)]) => {
            Value::Int(i64::try_from(*v).map_err(|_| ExprError("range".into()))?)
        }
        ("int", [Value::Double(v)]) => Value::Int(*v as i64),
        ("int", [Value::Str(s)]) => {
            Value::Int(s.parse().map_err(|_| ExprError("not an int".into()))?)
        }
        ("int", [Value::Timestamp(v)]) => Value::Int(v / 1_000_000_000),
        ("uint", [Value::Int(v)]) => {
            Value::UInt(u64::try_from(*v).map_err(|_| ExprError("range".into()))?)
        }
        ("uint", [Value::UInt(v)]) => Value::UInt(*v),
        ("uint", [Value::Str(s)]) => {
            Value::UInt(s.parse().map_err(|_| ExprError("not a uint".into()))?)
        }
        ("double", [v]) if num(v).is_some() => Value::Double(num(v).unwrap_or_default()),
        ("double", [Value::Str(s)]) => {
            Value::Double(s.parse().map_err(|_| ExprError("not a double".into()))?)
        }
        (f, a) => return err(format!("no such overload: {f}({a:?})")),
    })
}

/// The expressions of one VM, by token (Envoy numbers them from 0).
#[derive(Debug, Default)]
pub(crate) struct Expressions {
    exprs: HashMap<u32, Expr>,
    next: u32,
}

impl Expressions {
    pub(crate) fn create(&mut self, src: &str) -> Result<u32, ExprError> {
        let e = parse(src)?;
        let mut token = self.next;
        while self.exprs.contains_key(&token) {
            token = token.wrapping_add(1);
        }
        self.next = token.wrapping_add(1);
        self.exprs.insert(token, e);
        Ok(token)
    }

    pub(crate) fn get(&self, token: u32) -> Option<&Expr> {
        self.exprs.get(&token)
    }

    pub(crate) fn delete(&mut self, token: u32) -> bool {
        self.exprs.remove(&token).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(path: &[String]) -> Option<PropertyValue> {
        match path.join(".").as_str() {
            "request.headers.server" => Some(PropertyValue::string("envoy-wasm")),
            "request.path" => Some(PropertyValue::string("/a/b?c")),
            "response.code" => Some(PropertyValue::Int(200)),
            "request.headers" => Some(PropertyValue::Map(vec![(
                b"server".to_vec(),
                PropertyValue::string("envoy-wasm"),
            )])),
            _ => None,
        }
    }

    fn run(src: &str) -> Result<Value, ExprError> {
        eval(&parse(src)?, &attrs)
    }

    #[test]
    fn evaluates_the_subset_plugins_use() {
        assert_eq!(
            run(r#""server is " + request.headers["server"]"#),
            Ok(Value::Str("server is envoy-wasm".into()))
        );
        assert_eq!(
            run("response.code == 200 ? 'ok' : 'bad'"),
            Ok(Value::Str("ok".into()))
        );
        assert_eq!(
            run("response.code >= 500 || request.path.startsWith('/a')"),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            run("has(request.headers.server) && !has(request.headers.nope)"),
            Ok(Value::Bool(true))
        );
        assert_eq!(run("size(request.path) + 1"), Ok(Value::Int(7)));
        assert_eq!(run("'server' in request.headers"), Ok(Value::Bool(true)));
        assert_eq!(
            run("string(response.code) + 'x'"),
            Ok(Value::Str("200x".into()))
        );
        assert_eq!(run("[1, 2][1] * -3"), Ok(Value::Int(-6)));
        assert!(
            run("request.nothing").is_err(),
            "a missing attribute is an error"
        );
        assert!(parse("envoy.api.v2.core.GrpcService{envoy_grpc: 1}").is_err());
        assert!(parse("1 +").is_err());
        assert_eq!(Value::Int(1).encode(), Ok(1i64.to_le_bytes().to_vec()));
    }

    #[test]
    fn tokens_count_from_zero_and_are_reused_only_when_free() {
        let mut x = Expressions::default();
        assert_eq!(x.create("1"), Ok(0));
        assert_eq!(x.create("2"), Ok(1));
        assert!(x.delete(0));
        assert!(!x.delete(0));
        assert_eq!(x.create("3"), Ok(2));
        assert!(x.create("(").is_err());
    }
}
