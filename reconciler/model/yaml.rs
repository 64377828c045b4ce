//! The one door YAML comes in through: serde-saphyr with hard budgets.
//!
//! Every user file is parsed here into a [`Node`] tree that remembers the line and
//! column of every key and value, so later checks can point at the exact place.
//! Invariant: untrusted text never reaches a parser without the size cap, the nesting
//! cap and the alias budget below; a YAML bomb is refused after a bounded amount of work.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Budget, Options, Spanned};

use super::diagnostics::{Code, Diagnostic, Pos};

/// The largest YAML file rollgate reads (plans, settings, status).
pub const MAX_FILE_BYTES: usize = 1024 * 1024;
/// The deepest nesting of mappings and sequences accepted.
pub const MAX_DEPTH: usize = 48;

/// A parsed YAML value with its place in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys keep their own places; order is the file's order.
    Map(Vec<(Node, Node)>),
}

impl Kind {
    /// The word users see for this kind of value in "expected X, found Y".
    pub fn type_name(&self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Bool(_) => "boolean",
            Kind::Int(_) => "integer",
            Kind::Float(_) => "number",
            Kind::Str(_) => "string",
            Kind::Seq(_) => "sequence",
            Kind::Map(_) => "mapping",
        }
    }
}

impl Node {
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A mapping's entry by key.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            Kind::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Follow a path of keys and sequence indices, e.g. `["spec", "strategy", "canary"]`.
    pub fn at<'a>(&'a self, path: &[PathSeg<'_>]) -> Option<&'a Node> {
        let mut cur = self;
        for seg in path {
            cur = match (seg, &cur.kind) {
                (PathSeg::Key(k), Kind::Map(_)) => cur.get(k)?,
                (PathSeg::Index(i), Kind::Seq(items)) => items.get(*i)?,
                _ => return None,
            };
        }
        Some(cur)
    }

    /// The node as JSON (for schema checks and Rego input); keys become strings.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match &self.kind {
            Kind::Null => Value::Null,
            Kind::Bool(b) => Value::Bool(*b),
            Kind::Int(i) => Value::from(*i),
            Kind::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Kind::Str(s) => Value::String(s.clone()),
            Kind::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            Kind::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.key_string(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// A mapping key as text, whatever scalar it was written as.
    pub fn key_string(&self) -> String {
        match &self.kind {
            Kind::Str(s) => s.clone(),
            Kind::Int(i) => i.to_string(),
            Kind::Float(f) => f.to_string(),
            Kind::Bool(b) => b.to_string(),
            Kind::Null => "null".to_owned(),
            Kind::Seq(_) | Kind::Map(_) => "<complex key>".to_owned(),
        }
    }
}

/// One step of a path into a document.
#[derive(Debug, Clone, Copy)]
pub enum PathSeg<'a> {
    Key(&'a str),
    Index(usize),
}

fn options() -> Options {
    let mut budget = Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.flow_nesting_limit = MAX_DEPTH;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_events = 200_000;
    budget.max_nodes = 100_000;
    budget.max_total_scalar_bytes = MAX_FILE_BYTES;
    budget.max_documents = 1;
    budget.max_recorded_anchor_events = 100_000;
    budget.max_merge_keys = 100;
    let mut opts = Options::default();
    opts.budget = Some(budget);
    opts.with_snippet = false;
    opts.alias_limits.max_total_replayed_events = 100_000;
    opts.alias_limits.max_alias_expansions_per_anchor = 100;
    opts
}

/// Parse one YAML document. An empty document is an error: every rollgate file has content.
pub fn parse(file: &str, text: &str) -> Result<Node, Diagnostic> {
    if text.len() > MAX_FILE_BYTES {
        return Err(Diagnostic::error(
            file,
            None,
            Code::InputLimit,
            format!(
                "file is {} bytes; the limit is {MAX_FILE_BYTES}",
                text.len()
            ),
        ));
    }
    if text.trim().is_empty()
        || text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Err(Diagnostic::error(
            file,
            Some(Pos::new(1, 1)),
            Code::MissingField,
            "file is empty",
        ));
    }
    match serde_saphyr::from_str_with_options::<Node>(text, options()) {
        Ok(node) => Ok(node),
        Err(e) => Err(syntax_diagnostic(file, &e)),
    }
}

fn syntax_diagnostic(file: &str, e: &serde_saphyr::Error) -> Diagnostic {
    let pos = e
        .location()
        .filter(|l| l.line() > 0)
        .map(|l| Pos::new(clamp(l.line()), clamp(l.column())));
    let msg = first_line(&e.to_string());
    let lower = msg.to_ascii_lowercase();
    let code = if ["budget", "limit", "exceed", "too many", "depth", "alias"]
        .iter()
        .any(|w| lower.contains(w))
    {
        Code::InputLimit
    } else {
        Code::YamlSyntax
    };
    Diagnostic::error(file, pos, code, msg)
}

fn clamp(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn first_line(s: &str) -> String {
    // serde-saphyr prefixes "line:col:" in some messages; the diagnostic carries the place already.
    let line = s.lines().next().unwrap_or("").trim();
    let stripped = line
        .split_once(": ")
        .filter(|(head, _)| {
            head.chars()
                .all(|c| c.is_ascii_digit() || c == ':' || c == ' ')
        })
        .map_or(line, |(_, rest)| rest);
    stripped.to_owned()
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Kind>::deserialize(d)?;
        Ok(Node {
            pos: Pos::new(
                clamp(spanned.referenced.line()),
                clamp(spanned.referenced.column()),
            ),
            kind: spanned.value,
        })
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KindVisitor)
    }
}

struct KindVisitor;

impl<'de> Visitor<'de> for KindVisitor {
    type Value = Kind;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Kind, E> {
        Ok(Kind::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Kind, E> {
        Ok(Kind::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Kind, D::Error> {
        Kind::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Kind, E> {
        Ok(Kind::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Kind, E> {
        Ok(Kind::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Kind, E> {
        Ok(i64::try_from(v).map_or(Kind::Float(v as f64), Kind::Int))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Kind, E> {
        Ok(i64::try_from(v).map_or(Kind::Float(v as f64), Kind::Int))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Kind, E> {
        Ok(i64::try_from(v).map_or(Kind::Float(v as f64), Kind::Int))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Kind, E> {
        Ok(Kind::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Kind, E> {
        Ok(Kind::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Kind, E> {
        Ok(Kind::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Kind, E> {
        Ok(Kind::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Kind, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Kind::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kind, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Node>()? {
            let value = map.next_value::<Node>()?;
            entries.push((key, value));
        }
        Ok(Kind::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_places_of_keys_and_values() {
        let n = parse(
            "a.yaml",
            "spec:\n  target: prod\n  steps:\n    - setWeight: 5\n",
        )
        .expect("parses");
        let spec = n.get("spec").expect("spec");
        assert_eq!(spec.get("target").map(|t| t.pos), Some(Pos::new(2, 11)));
        let Kind::Map(entries) = &spec.kind else {
            panic!("map")
        };
        assert_eq!(entries[0].0.pos, Pos::new(2, 3));
        let step = spec.at(&[
            PathSeg::Key("steps"),
            PathSeg::Index(0),
            PathSeg::Key("setWeight"),
        ]);
        assert_eq!(
            step.map(|s| (&s.kind, s.pos)),
            Some((&Kind::Int(5), Pos::new(4, 18)))
        );
    }

    #[test]
    fn syntax_error_has_a_place() {
        let e = parse("a.yaml", "a: [1, 2\nb: c\n").expect_err("bad yaml");
        assert_eq!(e.code, Code::YamlSyntax);
        assert!(e.pos.is_some(), "{e}");
    }

    #[test]
    fn billion_laughs_is_refused() {
        let mut s = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let prev = i - 1;
            s.push_str(&format!("a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"));
        }
        let e = parse("bomb.yaml", &s).expect_err("bomb refused");
        assert_eq!(e.code, Code::InputLimit, "{e}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let s = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
        let e = parse("deep.yaml", &s).expect_err("deep refused");
        assert_eq!(e.code, Code::InputLimit, "{e}");
        let s: String = (0..20_000)
            .map(|i| format!("{}k:\n", " ".repeat(i)))
            .collect();
        let e = parse("deep2.yaml", &s).expect_err("deep refused");
        assert_eq!(e.code, Code::InputLimit, "{e}");
    }
}
