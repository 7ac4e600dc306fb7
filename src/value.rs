//! Values of a pipeline file, kept with their source spans, and the canonical parameter
//! values that go into a stage's fingerprint.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use toml::de::{DeTable, DeValue};

use crate::diag::{Diag, Source, Span};

/// A TOML value with the place it came from.
#[derive(Debug, Clone)]
pub struct Node {
    pub span: Span,
    pub v: V,
}

#[derive(Debug, Clone)]
pub enum V {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime(String),
    Array(Vec<Node>),
    Table(Table),
}

/// A table in file order, each key with its span.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub entries: Vec<(Key, Node)>,
}

#[derive(Debug, Clone)]
pub struct Key {
    pub name: String,
    pub span: Span,
}

impl Table {
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v)
    }
    pub fn get_key(&self, key: &str) -> Option<&Key> {
        self.entries.iter().find(|(k, _)| k.name == key).map(|(k, _)| k)
    }
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.name.as_str())
    }
    /// Insert or replace `key`.
    pub fn set(&mut self, key: Key, value: Node) {
        if let Some(slot) = self.entries.iter_mut().find(|(k, _)| k.name == key.name) {
            *slot = (key, value);
        } else {
            self.entries.push((key, value));
        }
    }
}

impl V {
    pub fn type_name(&self) -> &'static str {
        match self {
            V::Str(_) => "a string",
            V::Int(_) => "an integer",
            V::Float(_) => "a float",
            V::Bool(_) => "a boolean",
            V::Datetime(_) => "a datetime",
            V::Array(_) => "an array",
            V::Table(_) => "a table",
        }
    }
}

/// Parse TOML text into a spanned [`Table`]. A syntax error becomes a [`Diag`].
#[allow(clippy::result_large_err)]
pub fn parse_document(src: &Arc<Source>) -> Result<Table, Diag> {
    match DeTable::parse(&src.text) {
        Ok(t) => {
            let span = t.span();
            Ok(convert_table(src, t.get_ref(), span))
        }
        Err(e) => {
            let range = e.span().unwrap_or(0..0);
            let msg = e.message().trim().to_string();
            let (headline, label) = split_toml_message(&msg);
            Err(Diag::error(format!("invalid TOML: {headline}"))
                .at(&Span::new(src, range), label)
                .hint("fix the TOML syntax; see https://toml.io for the format"))
        }
    }
}

/// Parse a single TOML value (used for `-S key=value`); a bare word is taken as a string.
#[allow(clippy::result_large_err)]
pub fn parse_value(src: &Arc<Source>, range: std::ops::Range<usize>) -> Result<Node, Diag> {
    let text = &src.text[range.clone()];
    match DeValue::parse(text) {
        Ok(v) => {
            let inner = v.span();
            let shifted = (range.start + inner.start)..(range.start + inner.end);
            let mut n = convert_value(src, v.get_ref(), shifted.clone(), range.start);
            n.span = Span::new(src, range);
            Ok(n)
        }
        Err(e) => {
            // A bare word such as `adam` or `data/x.csv` is a string, as users expect.
            let looks_bare = !text.is_empty()
                && !text.starts_with(['"', '\'', '[', '{'])
                && !text.contains(['\n', '"', '\'', '=', '#']);
            if looks_bare {
                Ok(Node { span: Span::new(src, range), v: V::Str(text.to_string()) })
            } else {
                Err(Diag::error(format!("invalid value in override: {}", e.message().trim()))
                    .at(&Span::new(src, range), "not a TOML value")
                    .hint("quote strings: -S stage.key='\"text\"', arrays as [1, 2]"))
            }
        }
    }
}

fn split_toml_message(msg: &str) -> (String, String) {
    let mut lines = msg.lines();
    let head = lines.next().unwrap_or("syntax error").to_string();
    let rest: Vec<&str> = lines.map(str::trim).filter(|l| !l.is_empty()).collect();
    let label = if rest.is_empty() { head.clone() } else { rest.join("; ") };
    (head, label)
}

fn convert_table(src: &Arc<Source>, t: &DeTable<'_>, span: std::ops::Range<usize>) -> Table {
    let _ = span;
    let mut out = Table::default();
    for (k, v) in t.iter() {
        let key = Key { name: k.get_ref().to_string(), span: Span::new(src, k.span()) };
        out.entries.push((key, convert_value(src, v.get_ref(), v.span(), 0)));
    }
    out
}

fn convert_value(src: &Arc<Source>, v: &DeValue<'_>, range: std::ops::Range<usize>, shift: usize) -> Node {
    let sh = |r: std::ops::Range<usize>| (r.start + shift)..(r.end + shift);
    let span = Span::new(src, range);
    let v = match v {
        DeValue::String(s) => V::Str(s.to_string()),
        DeValue::Integer(i) => {
            let digits: String = i.as_str().chars().filter(|c| *c != '_').collect();
            let (neg, digits) = match digits.strip_prefix('-') {
                Some(d) => (true, d.to_string()),
                None => (false, digits.trim_start_matches('+').to_string()),
            };
            let digits = digits
                .trim_start_matches("0x")
                .trim_start_matches("0o")
                .trim_start_matches("0b")
                .to_string();
            match i64::from_str_radix(&digits, i.radix()) {
                Ok(n) => V::Int(if neg { -n } else { n }),
                Err(_) => V::Str(i.as_str().to_string()),
            }
        }
        DeValue::Float(f) => {
            let s: String = f.as_str().chars().filter(|c| *c != '_').collect();
            let val = match s.trim_start_matches('+') {
                "inf" => f64::INFINITY,
                "-inf" => f64::NEG_INFINITY,
                "nan" | "-nan" => f64::NAN,
                other => other.parse().unwrap_or(f64::NAN),
            };
            V::Float(val)
        }
        DeValue::Boolean(b) => V::Bool(*b),
        DeValue::Datetime(d) => V::Datetime(d.to_string()),
        DeValue::Array(a) => {
            V::Array(a.iter().map(|x| convert_value(src, x.get_ref(), sh(x.span()), shift)).collect())
        }
        DeValue::Table(t) => {
            let mut out = Table::default();
            for (k, x) in t.iter() {
                let key = Key { name: k.get_ref().to_string(), span: Span::new(src, sh(k.span())) };
                out.entries.push((key, convert_value(src, x.get_ref(), sh(x.span()), shift)));
            }
            V::Table(out)
        }
    };
    Node { span, v }
}

/// A canonical parameter value: what goes into the stage fingerprint and the lock file.
/// Tables are sorted maps, so key order in the file never changes a key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PVal {
    Bool(bool),
    Int(i64),
    Float(#[serde(with = "float_repr")] Float),
    Str(String),
    Array(Vec<PVal>),
    Table(BTreeMap<String, PVal>),
}

impl PVal {
    /// A JSON value (a stage's typed, serialised config) as a canonical parameter; floats
    /// stay floats, `null` becomes the string `none`.
    pub fn from_json(v: serde_json::Value) -> PVal {
        match v {
            serde_json::Value::Null => PVal::Str("none".into()),
            serde_json::Value::Bool(b) => PVal::Bool(b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) if !n.is_f64() => PVal::Int(i),
                _ => PVal::Float(Float(n.as_f64().unwrap_or(f64::NAN))),
            },
            serde_json::Value::String(s) => PVal::Str(s),
            serde_json::Value::Array(a) => PVal::Array(a.into_iter().map(PVal::from_json).collect()),
            serde_json::Value::Object(o) => PVal::Table(o.into_iter().map(|(k, v)| (k, PVal::from_json(v))).collect()),
        }
    }
}

/// A float stored in canonical text form (`{"$float": "0.02"}`), so NaN and infinities survive
/// JSON and `1.0` never reads back as the integer `1`.
#[derive(Debug, Clone, Copy)]
pub struct Float(pub f64);

impl PartialEq for Float {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits() || (self.0.is_nan() && other.0.is_nan())
    }
}

mod float_repr {
    use super::Float;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Repr {
        #[serde(rename = "$float")]
        f: String,
    }

    pub fn serialize<S: Serializer>(v: &Float, s: S) -> Result<S::Ok, S::Error> {
        Repr { f: super::fmt_float(v.0) }.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Float, D::Error> {
        let r = Repr::deserialize(d)?;
        let v = match r.f.as_str() {
            "inf" => f64::INFINITY,
            "-inf" => f64::NEG_INFINITY,
            "nan" => f64::NAN,
            s => s.parse().map_err(serde::de::Error::custom)?,
        };
        Ok(Float(v))
    }
}

pub(crate) fn fmt_float(f: f64) -> String {
    if f.is_nan() {
        "nan".into()
    } else if f.is_infinite() {
        if f > 0.0 { "inf".into() } else { "-inf".into() }
    } else {
        let s = format!("{f:?}");
        s
    }
}

impl PVal {
    pub fn from_node(n: &Node) -> PVal {
        match &n.v {
            V::Str(s) | V::Datetime(s) => PVal::Str(s.clone()),
            V::Int(i) => PVal::Int(*i),
            V::Float(f) => PVal::Float(Float(*f)),
            V::Bool(b) => PVal::Bool(*b),
            V::Array(a) => PVal::Array(a.iter().map(PVal::from_node).collect()),
            V::Table(t) => PVal::Table(t.entries.iter().map(|(k, v)| (k.name.clone(), PVal::from_node(v))).collect()),
        }
    }

    /// Text used when a parameter is substituted into a command.
    pub fn to_arg(&self) -> String {
        match self {
            PVal::Str(s) => s.clone(),
            PVal::Int(i) => i.to_string(),
            PVal::Float(f) => fmt_float(f.0),
            PVal::Bool(b) => b.to_string(),
            PVal::Array(a) => a.iter().map(PVal::to_arg).collect::<Vec<_>>().join(" "),
            PVal::Table(_) => self.to_string(),
        }
    }

    /// Flatten nested tables into dotted paths (`optimizer.lr`), for diffs.
    pub fn flatten(&self, prefix: &str, out: &mut BTreeMap<String, PVal>) {
        match self {
            PVal::Table(t) if !t.is_empty() => {
                for (k, v) in t {
                    let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    v.flatten(&p, out);
                }
            }
            _ => {
                out.insert(prefix.to_string(), self.clone());
            }
        }
    }
}

impl fmt::Display for PVal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PVal::Str(s) => write!(f, "{s:?}"),
            PVal::Int(i) => write!(f, "{i}"),
            PVal::Float(x) => write!(f, "{}", fmt_float(x.0)),
            PVal::Bool(b) => write!(f, "{b}"),
            PVal::Array(a) => {
                write!(f, "[")?;
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{x}")?;
                }
                write!(f, "]")
            }
            PVal::Table(t) => {
                write!(f, "{{")?;
                for (i, (k, x)) in t.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{k} = {x}")?;
                }
                write!(f, "}}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(t: &str) -> Arc<Source> {
        Arc::new(Source { name: "t.toml".into(), text: t.into() })
    }

    #[test]
    fn spans_point_at_values() {
        let s = src("[a]\nx = 10\ny = \"hi\"\n");
        let t = parse_document(&s).unwrap();
        let a = match &t.get("a").unwrap().v {
            V::Table(t) => t.clone(),
            _ => panic!(),
        };
        let x = a.get("x").unwrap();
        assert_eq!(&s.text[x.span.range.clone()], "10");
        assert!(matches!(x.v, V::Int(10)));
        assert_eq!(a.get_key("y").unwrap().span.line_col(), (3, 1));
    }

    #[test]
    fn canonical_floats_roundtrip() {
        for f in [0.02, 1.0, -3.5e-9, f64::INFINITY] {
            let p = PVal::Float(Float(f));
            let j = serde_json::to_string(&p).unwrap();
            let back: PVal = serde_json::from_str(&j).unwrap();
            assert_eq!(p, back, "{j}");
        }
        let one: PVal = serde_json::from_str(&serde_json::to_string(&PVal::Float(Float(1.0))).unwrap()).unwrap();
        assert!(matches!(one, PVal::Float(_)));
    }

    #[test]
    fn override_values() {
        let s = src("x=0.5 y=adam z=[1,2]");
        assert!(matches!(parse_value(&s, 2..5).unwrap().v, V::Float(f) if f == 0.5));
        assert!(matches!(parse_value(&s, 8..12).unwrap().v, V::Str(ref w) if w == "adam"));
        assert!(matches!(parse_value(&s, 15..20).unwrap().v, V::Array(ref a) if a.len() == 2));
    }
}
