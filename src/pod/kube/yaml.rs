//! One YAML document as a tree of nodes that remember where they start, so
//! that errors about the *content* of a pod file (not only its syntax) can
//! point at `file:line:column`.
//!
//! Built from `saphyr-parser`'s events rather than a serde data model:
//! serde_yaml 0.9 is deprecated and has no spans for values. The builder
//! also enforces what a hostile file could otherwise abuse: a nesting limit
//! (the tree is dropped recursively), a node budget that covers alias
//! expansion ("billion laughs"), duplicate keys, and one document per file.
//!
//! Plain scalars are typed the way Kubernetes' YAML decoder (go-yaml v2, i.e.
//! YAML 1.1) types them, so that a file berth accepts is accepted by
//! `kubectl` too: `yes` is a boolean, `8080` a number, `"8080"` a string.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};

/// Deeper nesting than this is no pod file.
const MAX_DEPTH: usize = 64;
/// Nodes in the tree, aliases counted at their expanded size.
const MAX_NODES: usize = 250_000;

/// A position in the text, both numbers starting at 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    pub line: usize,
    pub column: usize,
}

impl Mark {
    fn of(span: &Span) -> Mark {
        Mark { line: span.start.line(), column: span.start.col() + 1 }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub mark: Mark,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(Scalar),
    Seq(Vec<Node>),
    /// Entries in file order; keys are unique.
    Map(Vec<(Key, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub text: String,
    pub mark: Mark,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    pub text: String,
    pub kind: ScalarKind,
}

/// What a scalar is, once resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarKind {
    Null,
    Bool(bool),
    Int,
    Float,
    Str,
}

impl ScalarKind {
    pub fn describe(self) -> &'static str {
        match self {
            ScalarKind::Null => "null",
            ScalarKind::Bool(_) => "a boolean",
            ScalarKind::Int => "an integer",
            ScalarKind::Float => "a number",
            ScalarKind::Str => "a string",
        }
    }
}

impl Node {
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar(Scalar { kind: ScalarKind::Null, .. }))
    }

    /// "a mapping", "a list", "the integer 3", for error messages.
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Map(_) => "a mapping".to_string(),
            Value::Seq(_) => "a list".to_string(),
            Value::Scalar(s) if s.kind == ScalarKind::Null => "null".to_string(),
            Value::Scalar(s) => format!("{} ({})", s.kind.describe(), short(&s.text)),
        }
    }
}

/// `text` quoted and cut to a length that fits in a one-line message.
pub fn short(text: &str) -> String {
    const MAX: usize = 40;
    if text.chars().count() <= MAX {
        format!("{text:?}")
    } else {
        let cut: String = text.chars().take(MAX).collect();
        format!("{cut:?}...")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub mark: Mark,
    pub message: String,
}

impl YamlError {
    fn at(mark: Mark, message: impl Into<String>) -> YamlError {
        YamlError { mark, message: message.into() }
    }
}

/// Parses `text`, which must hold at most one non-empty document. Returns
/// `None` for a stream with no content (empty, or only comments).
pub fn parse_one(text: &str) -> Result<Option<Node>, YamlError> {
    let mut builder = Builder {
        parser: Parser::new_from_str(text),
        anchors: HashMap::new(),
        nodes: 0,
    };
    let mut found: Option<Node> = None;
    loop {
        let (event, span) = builder.next()?;
        match event {
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
            Event::StreamEnd => return Ok(found),
            Event::DocumentStart(_) => {
                let doc_mark = Mark::of(&span);
                let (event, span) = builder.next()?;
                let root = builder.node(event, span, 0)?;
                if root.is_null() {
                    continue;
                }
                if found.is_some() {
                    return Err(YamlError::at(
                        doc_mark,
                        "a pod file holds one Pod; found a second YAML document",
                    ));
                }
                found = Some(root);
            }
            _ => return Err(YamlError::at(Mark::of(&span), "unexpected YAML event")),
        }
    }
}

struct Builder<'a> {
    parser: Parser<'a, saphyr_parser::StrInput<'a>>,
    /// Completed anchored nodes by anchor id, with their node counts.
    anchors: HashMap<usize, (Node, usize)>,
    nodes: usize,
}

impl<'a> Builder<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Span), YamlError> {
        match self.parser.next_event() {
            Some(Ok(ev)) => Ok(ev),
            Some(Err(e)) => {
                let m = e.marker();
                Err(YamlError::at(
                    Mark { line: m.line(), column: m.col() + 1 },
                    format!("invalid YAML: {}", e.info()),
                ))
            }
            None => Err(YamlError::at(Mark::default(), "invalid YAML: unexpected end")),
        }
    }

    fn count(&mut self, n: usize, mark: Mark) -> Result<(), YamlError> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(YamlError::at(mark, format!("document too large (more than {MAX_NODES} YAML nodes, aliases expanded)")));
        }
        Ok(())
    }

    /// Builds the node that `event` starts.
    fn node(&mut self, event: Event<'a>, span: Span, depth: usize) -> Result<Node, YamlError> {
        let mark = Mark::of(&span);
        if depth > MAX_DEPTH {
            return Err(YamlError::at(mark, format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        let before = self.nodes;
        let (node, anchor) = match event {
            Event::Scalar(text, style, anchor, tag) => {
                self.count(1, mark)?;
                let kind = resolve(&text, style, tag.as_deref(), mark)?;
                (Node { value: Value::Scalar(Scalar { text: text.into_owned(), kind }), mark }, anchor)
            }
            Event::Alias(id) => {
                let (node, n) = self
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| YamlError::at(mark, "alias refers to an anchor that is not complete yet"))?;
                self.count(n, mark)?;
                // The alias stands where it is used, for error positions.
                return Ok(Node { mark, ..node });
            }
            Event::SequenceStart(anchor, tag) => {
                check_collection_tag(tag.as_deref(), "seq", mark)?;
                self.count(1, mark)?;
                let mut items = Vec::new();
                loop {
                    let (ev, sp) = self.next()?;
                    if matches!(ev, Event::SequenceEnd) {
                        break;
                    }
                    items.push(self.node(ev, sp, depth + 1)?);
                }
                (Node { value: Value::Seq(items), mark }, anchor)
            }
            Event::MappingStart(anchor, tag) => {
                check_collection_tag(tag.as_deref(), "map", mark)?;
                self.count(1, mark)?;
                let entries = self.mapping(depth)?;
                (Node { value: Value::Map(entries), mark }, anchor)
            }
            _ => return Err(YamlError::at(mark, "unexpected YAML event")),
        };
        if anchor != 0 {
            let n = self.nodes - before;
            self.anchors.insert(anchor, (node.clone(), n));
        }
        Ok(node)
    }

    fn mapping(&mut self, depth: usize) -> Result<Vec<(Key, Node)>, YamlError> {
        let mut entries: Vec<(Key, Node)> = Vec::new();
        let mut merges: Vec<Node> = Vec::new();
        loop {
            let (ev, sp) = self.next()?;
            if matches!(ev, Event::MappingEnd) {
                break;
            }
            let key_node = self.node(ev, sp, depth + 1)?;
            let (ev, sp) = self.next()?;
            let value = self.node(ev, sp, depth + 1)?;
            let key = match key_node.value {
                Value::Scalar(s) if s.kind == ScalarKind::Str && s.text == "<<" => {
                    merges.push(value);
                    continue;
                }
                Value::Scalar(s) => Key { text: s.text, mark: key_node.mark },
                _ => return Err(YamlError::at(key_node.mark, "mapping keys must be plain strings")),
            };
            if entries.iter().any(|(k, _)| k.text == key.text) {
                return Err(YamlError::at(key.mark, format!("duplicate key {}", short(&key.text))));
            }
            entries.push((key, value));
        }
        // YAML 1.1 merge keys (`<<: *base`), which Kubernetes' decoder
        // honours: keys written here win over merged ones, earlier merged
        // mappings over later ones.
        for merged in merges {
            let sources = match merged.value {
                Value::Map(m) => vec![m],
                Value::Seq(items) => {
                    let mut maps = Vec::new();
                    for item in items {
                        match item.value {
                            Value::Map(m) => maps.push(m),
                            _ => return Err(YamlError::at(item.mark, "a merge key (<<) takes mappings")),
                        }
                    }
                    maps
                }
                _ => return Err(YamlError::at(merged.mark, "a merge key (<<) takes a mapping or a list of mappings")),
            };
            for source in sources {
                for (k, v) in source {
                    if !entries.iter().any(|(e, _)| e.text == k.text) {
                        entries.push((k, v));
                    }
                }
            }
        }
        Ok(entries)
    }
}

fn check_collection_tag(tag: Option<&Tag>, core: &str, mark: Mark) -> Result<(), YamlError> {
    match tag {
        None => Ok(()),
        Some(t) if t.is_yaml_core_schema() && t.suffix == core => Ok(()),
        Some(t) => Err(YamlError::at(mark, format!("unsupported YAML tag {t}"))),
    }
}

fn resolve(text: &str, style: ScalarStyle, tag: Option<&Tag>, mark: Mark) -> Result<ScalarKind, YamlError> {
    if let Some(t) = tag {
        if !t.is_yaml_core_schema() {
            return Err(YamlError::at(mark, format!("unsupported YAML tag {t}")));
        }
        let kind = plain_kind(text);
        let ok = match t.suffix.as_str() {
            "str" => return Ok(ScalarKind::Str),
            "null" => kind == ScalarKind::Null,
            "bool" => matches!(kind, ScalarKind::Bool(_)),
            "int" => kind == ScalarKind::Int,
            "float" => matches!(kind, ScalarKind::Float | ScalarKind::Int),
            _ => return Err(YamlError::at(mark, format!("unsupported YAML tag {t}"))),
        };
        if !ok {
            return Err(YamlError::at(mark, format!("{} is not a valid !!{}", short(text), t.suffix)));
        }
        return Ok(kind);
    }
    Ok(match style {
        ScalarStyle::Plain => plain_kind(text),
        _ => ScalarKind::Str,
    })
}

/// The type go-yaml v2 gives an untagged plain scalar.
pub fn plain_kind(text: &str) -> ScalarKind {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return ScalarKind::Null,
        "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "true" | "True" | "TRUE" => {
            return ScalarKind::Bool(true)
        }
        "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "false" | "False" | "FALSE" => {
            return ScalarKind::Bool(false)
        }
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" | "-.inf" | "-.Inf" | "-.INF" | ".nan" | ".NaN"
        | ".NAN" => return ScalarKind::Float,
        _ => {}
    }
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    let radix_digits = |prefix: &str, ok: fn(char) -> bool| {
        unsigned
            .strip_prefix(prefix)
            .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c == '_' || ok(c)) && d.chars().any(ok))
    };
    if radix_digits("0x", |c| c.is_ascii_hexdigit())
        || radix_digits("0o", |c| matches!(c, '0'..='7'))
        || radix_digits("0b", |c| matches!(c, '0' | '1'))
    {
        return ScalarKind::Int;
    }
    let starts_digit = unsigned.starts_with(|c: char| c.is_ascii_digit());
    if starts_digit && unsigned.chars().all(|c| c.is_ascii_digit() || c == '_') {
        return ScalarKind::Int;
    }
    if is_float(unsigned) {
        return ScalarKind::Float;
    }
    ScalarKind::Str
}

/// `1.5`, `.5`, `1.`, `1e3`, `2.5E-3` (underscores allowed in the mantissa).
fn is_float(s: &str) -> bool {
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (mantissa, None),
    };
    let digits = |t: &str| t.chars().all(|c| c.is_ascii_digit() || c == '_');
    let has_digit = int.chars().any(|c| c.is_ascii_digit()) || frac.is_some_and(|f| f.chars().any(|c| c.is_ascii_digit()));
    if !has_digit || !digits(int) || !frac.is_none_or(digits) || (int.starts_with('_')) {
        return false;
    }
    match exponent {
        None => frac.is_some(),
        Some(e) => {
            let e = e.strip_prefix(['+', '-']).unwrap_or(e);
            !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Node {
        parse_one(text).expect("parses").expect("a document")
    }

    fn map(node: &Node) -> &[(Key, Node)] {
        match &node.value {
            Value::Map(m) => m,
            other => panic!("not a map: {other:?}"),
        }
    }

    #[test]
    fn scalar_kinds_follow_kubernetes_decoder() {
        let cases = [
            ("8080", ScalarKind::Int),
            ("-3", ScalarKind::Int),
            ("0x1F", ScalarKind::Int),
            ("1_000", ScalarKind::Int),
            ("0755", ScalarKind::Int),
            ("0.5", ScalarKind::Float),
            (".5", ScalarKind::Float),
            ("1e9", ScalarKind::Float),
            ("1e", ScalarKind::Str),
            ("yes", ScalarKind::Bool(true)),
            ("Off", ScalarKind::Bool(false)),
            ("~", ScalarKind::Null),
            ("", ScalarKind::Null),
            ("256Mi", ScalarKind::Str),
            ("500m", ScalarKind::Str),
            ("busybox", ScalarKind::Str),
            ("1.2.3", ScalarKind::Str),
            ("-", ScalarKind::Str),
            (".", ScalarKind::Str),
            ("+", ScalarKind::Str),
        ];
        for (text, kind) in cases {
            assert_eq!(plain_kind(text), kind, "{text:?}");
        }
    }

    #[test]
    fn quoted_and_tagged_scalars_are_strings() {
        let n = one("a: \"8080\"\nb: '1'\nc: !!str 7\nd: 7\n");
        let kinds: Vec<_> = map(&n)
            .iter()
            .map(|(_, v)| match &v.value {
                Value::Scalar(s) => s.kind,
                _ => panic!(),
            })
            .collect();
        assert_eq!(kinds, [ScalarKind::Str, ScalarKind::Str, ScalarKind::Str, ScalarKind::Int]);
    }

    #[test]
    fn marks_are_one_based() {
        let n = one("a:\n  b: c\n");
        assert_eq!(n.mark, Mark { line: 1, column: 1 });
        let (_, b) = &map(&n)[0];
        let (k, v) = &map(b)[0];
        assert_eq!(k.mark, Mark { line: 2, column: 3 });
        assert_eq!(v.mark, Mark { line: 2, column: 6 });
    }

    #[test]
    fn duplicate_keys_are_errors_at_the_second() {
        let e = parse_one("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(e.mark, Mark { line: 3, column: 1 });
        assert!(e.message.contains("duplicate key \"a\""), "{}", e.message);
    }

    #[test]
    fn second_document_is_an_error_but_empty_ones_are_not() {
        assert!(parse_one("---\na: 1\n---\n").unwrap().is_some());
        assert!(parse_one("# only a comment\n").unwrap().is_none());
        let e = parse_one("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(e.mark.line, 2);
    }

    #[test]
    fn aliases_and_merge_keys() {
        let n = one("base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  y: 3\n");
        let (_, m) = &map(&n)[1];
        let got: Vec<_> = map(m)
            .iter()
            .map(|(k, v)| match &v.value {
                Value::Scalar(s) => (k.text.as_str(), s.text.as_str()),
                _ => panic!(),
            })
            .collect();
        assert_eq!(got, [("y", "3"), ("x", "1")]);
    }

    #[test]
    fn alias_bombs_hit_the_node_budget() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            text.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
        }
        let e = parse_one(&text).unwrap_err();
        assert!(e.message.contains("too large"), "{}", e.message);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse_one(&text).is_err());
        let text = (0..200).map(|i| format!("{}k{i}:\n", "  ".repeat(i))).collect::<String>();
        let e = parse_one(&text).unwrap_err();
        assert!(e.message.contains("nesting"), "{}", e.message);
    }

    #[test]
    fn unknown_tags_are_refused() {
        let e = parse_one("a: !custom x\n").unwrap_err();
        assert!(e.message.contains("unsupported YAML tag"), "{}", e.message);
        assert!(parse_one("a: !!int x\n").is_err());
    }
}
