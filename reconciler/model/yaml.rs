//! The one door YAML comes in through, with hard budgets.
//!
//! Every user file is parsed here into a [`Node`] tree that remembers the line and
//! column of every key and value, so later checks can point at the exact place. The
//! tree is built straight from the events of serde-saphyr's parser (`granit_parser`),
//! about three times faster than going through serde with `Spanned` on every node.
//! Scalars resolve by the YAML 1.2 core schema (`yes` stays a string).
//! Invariant: untrusted text never reaches the parser without the size cap, and the
//! builder stops at the first event past the depth, node or alias budget, so a YAML
//! bomb or a 20,000-deep nest is refused after a bounded amount of work and memory.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle, Span, Tag};

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

/// The most nodes one file may hold, counting every alias expansion in full.
pub const MAX_NODES: usize = 100_000;
/// The most aliases (`*name`) one file may use.
pub const MAX_ALIASES: usize = 1_000;

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
    if text
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
    Builder::new(file).run(text)
}

fn clamp(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// A container being filled.
enum Open {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

struct Builder<'f> {
    file: &'f str,
    stack: Vec<Open>,
    /// Anchored nodes by id, with their size in nodes.
    anchors: HashMap<usize, (Node, usize)>,
    nodes: usize,
    aliases: usize,
    root: Option<Node>,
    documents: usize,
}

fn pos_of(span: &Span) -> Pos {
    Pos::new(clamp(span.start.line()), clamp(span.start.col() + 1))
}

impl<'f> Builder<'f> {
    fn new(file: &'f str) -> Self {
        Self {
            file,
            stack: Vec::new(),
            anchors: HashMap::new(),
            nodes: 0,
            aliases: 0,
            root: None,
            documents: 0,
        }
    }

    fn limit(&self, pos: Pos, msg: String) -> Diagnostic {
        Diagnostic::error(self.file, Some(pos), Code::InputLimit, msg)
    }

    fn run(mut self, text: &str) -> Result<Node, Diagnostic> {
        for ev in Parser::new_from_str(text) {
            let (ev, span) = ev.map_err(|e| {
                let m = e.marker();
                // The parser's own guards (e.g. its nesting limit) are limits, not typos.
                let code = if e.info().contains("limit") {
                    Code::InputLimit
                } else {
                    Code::YamlSyntax
                };
                Diagnostic::error(
                    self.file,
                    Some(Pos::new(clamp(m.line()), clamp(m.col() + 1))),
                    code,
                    e.info().to_owned(),
                )
            })?;
            let pos = pos_of(&span);
            match ev {
                Event::DocumentStart(..) => {
                    self.documents += 1;
                    if self.documents > 1 {
                        let msg =
                            "more than one YAML document in the file; rollgate reads one per file";
                        return Err(Diagnostic::error(
                            self.file,
                            Some(pos),
                            Code::YamlSyntax,
                            msg,
                        ));
                    }
                }
                Event::SequenceStart(_, anchor, _) => {
                    self.open(pos)?;
                    self.stack.push(Open::Seq {
                        pos,
                        anchor,
                        items: Vec::new(),
                    });
                }
                Event::MappingStart(_, anchor, _) => {
                    self.open(pos)?;
                    self.stack.push(Open::Map {
                        pos,
                        anchor,
                        entries: Vec::new(),
                        key: None,
                    });
                }
                Event::SequenceEnd | Event::MappingEnd => {
                    let (node, anchor) = match self.stack.pop() {
                        Some(Open::Seq { pos, anchor, items }) => (
                            Node {
                                pos,
                                kind: Kind::Seq(items),
                            },
                            anchor,
                        ),
                        Some(Open::Map {
                            pos,
                            anchor,
                            entries,
                            ..
                        }) => (
                            Node {
                                pos,
                                kind: Kind::Map(entries),
                            },
                            anchor,
                        ),
                        None => continue,
                    };
                    self.finish(node, anchor)?;
                }
                Event::Scalar(value, style, anchor, tag) => {
                    self.count(pos, 1)?;
                    let kind = resolve(&value, style, tag.as_deref());
                    self.finish(Node { pos, kind }, anchor)?;
                }
                Event::Alias(id) => {
                    self.aliases += 1;
                    if self.aliases > MAX_ALIASES {
                        return Err(self.limit(pos, format!("more than {MAX_ALIASES} aliases")));
                    }
                    let Some(size) = self.anchors.get(&id).map(|(_, s)| *s) else {
                        return Err(Diagnostic::error(
                            self.file,
                            Some(pos),
                            Code::YamlSyntax,
                            "alias to an unknown anchor",
                        ));
                    };
                    // Count before cloning, so a bomb is refused before it is built.
                    self.count(pos, size)?;
                    let node = self.anchors[&id].0.clone();
                    self.finish(
                        Node {
                            pos,
                            kind: node.kind,
                        },
                        0,
                    )?;
                }
                _ => {}
            }
        }
        self.root.ok_or_else(|| {
            Diagnostic::error(
                self.file,
                Some(Pos::new(1, 1)),
                Code::MissingField,
                "file is empty",
            )
        })
    }

    fn count(&mut self, pos: Pos, n: usize) -> Result<(), Diagnostic> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(self.limit(
                pos,
                format!(
                    "more than {MAX_NODES} nodes (counting alias expansions); is this a YAML bomb?"
                ),
            ));
        }
        Ok(())
    }

    fn open(&mut self, pos: Pos) -> Result<(), Diagnostic> {
        self.count(pos, 1)?;
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.limit(pos, format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    /// A complete node: remember it under its anchor, then place it in its parent.
    fn finish(&mut self, node: Node, anchor: usize) -> Result<(), Diagnostic> {
        if anchor != 0 {
            let size = node.size();
            self.anchors.insert(anchor, (node.clone(), size));
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Open::Seq { items, .. }) => items.push(node),
            Some(Open::Map { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => {
                    if let Some((first, _)) = entries.iter().find(|(e, _)| e.kind == k.kind) {
                        let msg = format!(
                            "duplicate key `{}` (first at line {})",
                            k.key_string(),
                            first.pos.line
                        );
                        return Err(Diagnostic::error(
                            self.file,
                            Some(k.pos),
                            Code::YamlSyntax,
                            msg,
                        ));
                    }
                    entries.push((k, node));
                }
            },
        }
        Ok(())
    }
}

impl Node {
    /// How many nodes this tree holds.
    fn size(&self) -> usize {
        match &self.kind {
            Kind::Seq(items) => 1 + items.iter().map(Node::size).sum::<usize>(),
            Kind::Map(entries) => {
                1 + entries
                    .iter()
                    .map(|(k, v)| k.size() + v.size())
                    .sum::<usize>()
            }
            _ => 1,
        }
    }
}

/// The YAML 1.2 core schema: what a scalar means.
fn resolve(value: &str, style: ScalarStyle, tag: Option<&Tag>) -> Kind {
    if let Some(t) = tag
        && t.is_yaml_core_schema()
        && t.suffix() == "str"
    {
        return Kind::Str(value.to_owned());
    }
    if style != ScalarStyle::Plain {
        return Kind::Str(value.to_owned());
    }
    match value {
        "" | "~" | "null" | "Null" | "NULL" => return Kind::Null,
        "true" | "True" | "TRUE" => return Kind::Bool(true),
        "false" | "False" | "FALSE" => return Kind::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Kind::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Kind::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Kind::Float(f64::NAN),
        _ => {}
    }
    let bytes = value.as_bytes();
    let unsigned = bytes
        .strip_prefix(b"-")
        .or_else(|| bytes.strip_prefix(b"+"))
        .unwrap_or(bytes);
    if !unsigned.is_empty()
        && unsigned.iter().all(u8::is_ascii_digit)
        && let Ok(i) = value.parse::<i64>()
    {
        return Kind::Int(i);
    }
    if let Some(hex) = value.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return Kind::Int(i);
    }
    if let Some(oct) = value.strip_prefix("0o")
        && let Ok(i) = i64::from_str_radix(oct, 8)
    {
        return Kind::Int(i);
    }
    let numeric = unsigned
        .first()
        .is_some_and(|c| c.is_ascii_digit() || *c == b'.')
        && unsigned
            .iter()
            .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'-' | b'+'))
        && unsigned.iter().any(u8::is_ascii_digit);
    if numeric && let Ok(f) = value.parse::<f64>() {
        return Kind::Float(f);
    }
    Kind::Str(value.to_owned())
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

    #[test]
    fn scalars_follow_the_core_schema() {
        let n = parse(
            "a.yaml",
            "a: 1\nb: 1.5\nc: yes\nd: \"1\"\ne: ~\nf: true\ng: 0x1f\nh: -2\ni: 1e3\nj: v1\n",
        )
        .expect("parses");
        let kinds: Vec<Kind> = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]
            .iter()
            .map(|k| n.get(k).expect(k).kind.clone())
            .collect();
        assert_eq!(
            kinds,
            vec![
                Kind::Int(1),
                Kind::Float(1.5),
                Kind::Str("yes".into()),
                Kind::Str("1".into()),
                Kind::Null,
                Kind::Bool(true),
                Kind::Int(31),
                Kind::Int(-2),
                Kind::Float(1000.0),
                Kind::Str("v1".into())
            ]
        );
    }

    #[test]
    fn duplicate_keys_and_second_documents_are_errors() {
        let e = parse("a.yaml", "a: 1\nb: 2\na: 3\n").expect_err("duplicate");
        assert_eq!((e.code, e.pos), (Code::YamlSyntax, Some(Pos::new(3, 1))));
        assert!(e.message.contains("first at line 1"), "{e}");
        let e = parse("a.yaml", "a: 1\n---\nb: 2\n").expect_err("two documents");
        assert!(e.message.contains("more than one YAML document"), "{e}");
    }

    #[test]
    fn aliases_expand_within_budget() {
        let n = parse("a.yaml", "base: &b { x: 1 }\nother: *b\n").expect("parses");
        assert_eq!(
            n.get("other").and_then(|o| o.get("x")).map(|x| &x.kind),
            Some(&Kind::Int(1))
        );
    }
}
