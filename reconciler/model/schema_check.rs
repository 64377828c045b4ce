//! Structural checks of a parsed document against the JSON Schema of the wire types.
//!
//! The schema users get from `rollgate schema` is the one this walks, so the editor
//! and the validator never disagree. Unlike a deserializer it does not stop at the
//! first problem: it reports every unknown field (with a "did you mean"), every
//! missing field, every wrong type and every unknown kind, each at its line and column.
//! Invariant: the returned JSON has unknown fields removed; it is `Some` only when no
//! other problem was found, and then it deserializes into the wire type.

use serde_json::{Map, Value};

use super::diagnostics::{Code, Diagnostic, Pos, did_you_mean};
use super::yaml::{Kind, Node};

/// Walk `node` against `schema` (a schemars root schema with `$defs`).
pub fn check(file: &str, node: &Node, schema: &Value) -> (Option<Value>, Vec<Diagnostic>) {
    let mut c = Checker {
        root: schema,
        file,
        diags: Vec::new(),
    };
    let value = c.visit(node, schema, "", None);
    let fatal = c.diags.iter().any(|d| d.code != Code::UnknownField);
    (if fatal { None } else { Some(value) }, c.diags)
}

struct Checker<'a> {
    root: &'a Value,
    file: &'a str,
    diags: Vec<Diagnostic>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn where_(path: &str) -> String {
    if path.is_empty() {
        "the document".to_owned()
    } else {
        format!("`{path}`")
    }
}

fn quote_list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    items
        .into_iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn kind_matches(kind: &Kind, ty: &str) -> bool {
    matches!(
        (kind, ty),
        (Kind::Null, "null")
            | (Kind::Bool(_), "boolean")
            | (Kind::Int(_), "integer" | "number")
            | (Kind::Float(_), "number")
            | (Kind::Str(_), "string")
            | (Kind::Seq(_), "array")
            | (Kind::Map(_), "object")
    ) || matches!((kind, ty), (Kind::Float(f), "integer") if f.fract() == 0.0 && f.abs() < 9.0e15)
}

fn type_word(ty: &str) -> &str {
    match ty {
        "object" => "a mapping",
        "array" => "a sequence",
        "string" => "a string",
        "integer" => "an integer",
        "number" => "a number",
        "boolean" => "true or false",
        "null" => "nothing",
        other => other,
    }
}

impl<'a> Checker<'a> {
    fn err(&mut self, pos: Pos, code: Code, msg: String) -> &mut Diagnostic {
        self.diags
            .push(Diagnostic::error(self.file, Some(pos), code, msg));
        let last = self.diags.len() - 1;
        &mut self.diags[last]
    }

    /// Resolve `$ref`, returning the target schema and its definition name.
    fn resolve(&self, schema: &'a Value, name: Option<&'a str>) -> (&'a Value, Option<&'a str>) {
        let mut s = schema;
        let mut n = name;
        for _ in 0..32 {
            let Some(r) = s.get("$ref").and_then(Value::as_str) else {
                break;
            };
            let def = r.trim_start_matches("#/$defs/");
            match self.root.get("$defs").and_then(|d| d.get(def)) {
                Some(t) => {
                    s = t;
                    n = Some(def);
                }
                None => break,
            }
        }
        (s, n)
    }

    fn visit(
        &mut self,
        node: &Node,
        schema: &'a Value,
        path: &str,
        name: Option<&'a str>,
    ) -> Value {
        let (schema, name) = self.resolve(schema, name);
        if let Some(branches) = schema
            .get("oneOf")
            .or_else(|| schema.get("anyOf"))
            .and_then(Value::as_array)
        {
            return self.visit_union(node, branches, path, name);
        }
        if let Some(ty) = schema.get("type") {
            let types: Vec<&str> = match ty {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            // `.inf` and `.nan` are YAML numbers with no JSON form: dropped on the way to
            // the wire types, a bound like `min: .inf` would vanish in silence.
            if let Kind::Float(f) = node.kind
                && !f.is_finite()
            {
                self.err(
                    node.pos,
                    Code::InvalidValue,
                    format!("{} must be a finite number, found {f}", where_(path)),
                );
                return Value::Null;
            }
            if !types.is_empty() && !types.iter().any(|t| kind_matches(&node.kind, t)) {
                let expected: Vec<&str> = types
                    .iter()
                    .filter(|t| **t != "null")
                    .map(|t| type_word(t))
                    .collect();
                let expected = if expected.is_empty() {
                    "nothing".to_owned()
                } else {
                    expected.join(" or ")
                };
                self.err(
                    node.pos,
                    Code::WrongType,
                    format!(
                        "{} must be {expected}, found {}",
                        where_(path),
                        node.kind.type_name()
                    ),
                );
                return Value::Null;
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
            let json = node.to_json();
            if !allowed.contains(&json) {
                let words: Vec<&str> = allowed.iter().filter_map(Value::as_str).collect();
                let found = node.as_str().unwrap_or("");
                let hint = did_you_mean(found, words.iter().copied());
                let d = self.err(
                    node.pos,
                    Code::InvalidValue,
                    format!(
                        "{} must be one of {}",
                        where_(path),
                        quote_list(words.iter().copied())
                    ),
                );
                if let Some(h) = hint {
                    d.help = Some(format!("did you mean `{h}`?"));
                }
            }
            return json;
        }
        self.check_range(node, schema, path);
        match &node.kind {
            Kind::Map(entries) => self.visit_map(node, entries, schema, path),
            Kind::Seq(items) => {
                let item_schema = schema.get("items");
                Value::Array(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| match item_schema {
                            Some(s) => self.visit(item, s, &format!("{path}[{i}]"), None),
                            None => item.to_json(),
                        })
                        .collect(),
                )
            }
            _ => node.to_json(),
        }
    }

    fn check_range(&mut self, node: &Node, schema: &Value, path: &str) {
        let v = match node.kind {
            Kind::Int(i) => i as f64,
            Kind::Float(f) => f,
            _ => return,
        };
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && v < min
        {
            self.err(
                node.pos,
                Code::InvalidValue,
                format!("{} must be at least {min}, found {v}", where_(path)),
            );
        }
        let format_max = match schema.get("format").and_then(Value::as_str) {
            Some("uint8") => Some(f64::from(u8::MAX)),
            Some("uint16") => Some(f64::from(u16::MAX)),
            Some("uint32") => Some(f64::from(u32::MAX)),
            Some("int32") => Some(f64::from(i32::MAX)),
            _ => None,
        };
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64).or(format_max)
            && v > max
        {
            self.err(
                node.pos,
                Code::InvalidValue,
                format!("{} must be at most {max}, found {v}", where_(path)),
            );
        }
    }

    fn visit_map(
        &mut self,
        node: &Node,
        entries: &[(Node, Node)],
        schema: &'a Value,
        path: &str,
    ) -> Value {
        let props = schema.get("properties").and_then(Value::as_object);
        let extra = schema.get("additionalProperties");
        let mut out = Map::new();
        let mut seen: Vec<String> = Vec::new();
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let present: Vec<String> = entries.iter().map(|(k, _)| k.key_string()).collect();
        for (k, v) in entries {
            let key = k.key_string();
            if !matches!(k.kind, Kind::Str(_)) {
                self.err(
                    k.pos,
                    Code::WrongType,
                    format!("keys in {} must be strings", where_(path)),
                );
                continue;
            }
            let field_path = join(path, &key);
            if let Some(sub) = props.and_then(|p| p.get(&key)) {
                let val = self.visit(v, sub, &field_path, None);
                out.insert(key.clone(), val);
            } else {
                match extra {
                    Some(Value::Bool(false)) => {
                        let known: Vec<&str> = props
                            .map(|p| p.keys().map(String::as_str).collect())
                            .unwrap_or_default();
                        let hint = did_you_mean(&key, known.iter().copied());
                        let d = self.err(
                            k.pos,
                            Code::UnknownField,
                            format!("unknown field `{key}` in {}", where_(path)),
                        );
                        d.help = Some(match hint {
                            Some(h) => format!("did you mean `{h}`?"),
                            None => {
                                format!("expected one of {}", quote_list(known.iter().copied()))
                            }
                        });
                        // A misspelt required field (`stratgy`): its content is checked
                        // as the field it was meant to be, so one typo does not hide
                        // every problem inside it. The typo stays an error; the missing
                        // field is that same problem and is not reported again.
                        if let Some(h) = hint
                            && required.contains(&h)
                            && !present.iter().any(|p| p == h)
                            && !seen.iter().any(|s| s == h)
                            && let Some(sub) = props.and_then(|p| p.get(h))
                        {
                            let val = self.visit(v, sub, &join(path, h), None);
                            out.insert(h.to_owned(), val);
                            seen.push(h.to_owned());
                        }
                    }
                    Some(s @ Value::Object(_)) => {
                        let val = self.visit(v, s, &field_path, None);
                        out.insert(key.clone(), val);
                    }
                    _ => {
                        out.insert(key.clone(), v.to_json());
                    }
                }
            }
            seen.push(key);
        }
        {
            for r in required.iter().copied() {
                if !seen.iter().any(|s| s == r) {
                    self.err(
                        node.pos,
                        Code::MissingField,
                        format!("missing field `{r}` in {}", where_(path)),
                    );
                }
            }
        }
        Value::Object(out)
    }

    /// An externally tagged enum (every branch an object with one required key) or an `Option`.
    fn visit_union(
        &mut self,
        node: &Node,
        branches: &'a [Value],
        path: &str,
        name: Option<&'a str>,
    ) -> Value {
        let non_null: Vec<&'a Value> = branches
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) != Some("null"))
            .collect();
        if matches!(node.kind, Kind::Null) && non_null.len() < branches.len() {
            return Value::Null;
        }
        let tags: Vec<&'a str> = non_null
            .iter()
            .filter_map(|b| {
                let req = b.get("required")?.as_array()?;
                if req.len() == 1 && b.get("type").and_then(Value::as_str) == Some("object") {
                    req[0].as_str()
                } else {
                    None
                }
            })
            .collect();
        if tags.len() == non_null.len() && !tags.is_empty() {
            let what = name
                .map(|n| n.to_ascii_lowercase())
                .unwrap_or_else(|| "value".to_owned());
            let Kind::Map(entries) = &node.kind else {
                self.err(
                    node.pos,
                    Code::WrongType,
                    format!(
                        "{} must be a mapping with one of {}, found {}",
                        where_(path),
                        quote_list(tags.iter().copied()),
                        node.kind.type_name()
                    ),
                );
                return Value::Null;
            };
            let known: Vec<&(Node, Node)> = entries
                .iter()
                .filter(|(k, _)| k.as_str().is_some_and(|s| tags.contains(&s)))
                .collect();
            let unknown: Vec<&(Node, Node)> = entries
                .iter()
                .filter(|(k, _)| !k.as_str().is_some_and(|s| tags.contains(&s)))
                .collect();
            match known.len() {
                1 => {
                    for (k, _) in &unknown {
                        let key = k.key_string();
                        let d = self.err(
                            k.pos,
                            Code::UnknownField,
                            format!("unknown field `{key}` in {}", where_(path)),
                        );
                        d.help = Some(format!(
                            "a {what} has exactly one of {}",
                            quote_list(tags.iter().copied())
                        ));
                    }
                    let (k, v) = known[0];
                    let tag = k.key_string();
                    let idx = tags.iter().position(|t| *t == tag).unwrap_or(0);
                    let sub = non_null[idx]
                        .get("properties")
                        .and_then(|p| p.get(&tag))
                        .unwrap_or(&Value::Null);
                    let val = self.visit(v, sub, &join(path, &tag), None);
                    let mut m = Map::new();
                    m.insert(tag, val);
                    Value::Object(m)
                }
                0 => {
                    if let Some((k, _)) = unknown.first() {
                        let key = k.key_string();
                        let hint = did_you_mean(&key, tags.iter().copied());
                        let d = self.err(
                            k.pos,
                            Code::UnknownKind,
                            format!("unknown {what} kind `{key}` in {}", where_(path)),
                        );
                        d.help = Some(match hint {
                            Some(h) => format!(
                                "did you mean `{h}`? (known kinds: {})",
                                quote_list(tags.iter().copied())
                            ),
                            None => format!("known kinds: {}", quote_list(tags.iter().copied())),
                        });
                    } else {
                        self.err(
                            node.pos,
                            Code::MissingField,
                            format!(
                                "{} needs one of {}",
                                where_(path),
                                quote_list(tags.iter().copied())
                            ),
                        );
                    }
                    Value::Null
                }
                _ => {
                    let names: Vec<String> = known.iter().map(|(k, _)| k.key_string()).collect();
                    self.err(
                        known[1].0.pos,
                        Code::InvalidValue,
                        format!(
                            "{} has more than one {what} kind ({}); choose one",
                            where_(path),
                            quote_list(names.iter().map(String::as_str))
                        ),
                    );
                    Value::Null
                }
            }
        } else {
            // A plain union: the first branch that fits; else report the best-typed branch.
            for b in &non_null {
                let mut sub = Checker {
                    root: self.root,
                    file: self.file,
                    diags: Vec::new(),
                };
                let v = sub.visit(node, b, path, None);
                if sub.diags.is_empty() {
                    return v;
                }
            }
            let best = non_null
                .iter()
                .find(|b| {
                    b.get("type")
                        .and_then(Value::as_str)
                        .is_some_and(|t| kind_matches(&node.kind, t))
                })
                .or(non_null.first());
            match best {
                Some(b) => self.visit(node, b, path, name),
                None => node.to_json(),
            }
        }
    }
}
