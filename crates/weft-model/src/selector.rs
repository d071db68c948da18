//! Kubernetes label selectors: the object form (`matchLabels` + `matchExpressions`), the string
//! form (`app=db,tier in (a,b),!legacy`) and matching against a label map.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::syntax;
use crate::validation::Validator;

pub type Labels = BTreeMap<String, String>;

/// The OpenAPI schema of a label map: keys and values as `syntax::qualified_key` and
/// `syntax::label_value` take them (a schema-driven client generates labels the server takes,
/// and nothing the server refuses passes the schema).
pub fn labels_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    let string = || ObjectBuilder::new().schema_type(SchemaType::new(Type::String));
    ObjectBuilder::new()
        .schema_type(SchemaType::new(Type::Object))
        .property_names(Some(
            string()
                .pattern(Some(
                    "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
                ))
                .max_length(Some(317)),
        ))
        .additional_properties(Some(
            string().pattern(Some("^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")).max_length(Some(63)),
        ))
        .build()
}

/// A label selector as Kubernetes defines it. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "MatchLabels::is_empty")]
    #[schema(value_type = BTreeMap<String, String>)]
    pub match_labels: MatchLabels,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
}

/// A selector's `matchLabels`: a map from key to value, as compact as the one or two entries
/// selectors have. A `BTreeMap` allocates a node of eleven entries for one (540 bytes for
/// strings); at 112,500 policies the compiler held some 40 MiB of such nodes (issue 23). In
/// key order, keys unique; serialised as a map, and a key given twice keeps its last value
/// (as a `BTreeMap` did).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MatchLabels(Vec<(String, String)>);

impl MatchLabels {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn get(&self, key: &str) -> Option<&String> {
        let i = self.0.binary_search_by(|(k, _)| k.as_str().cmp(key)).ok()?;
        Some(&self.0[i].1)
    }

    /// Sets `key` to `value`; the value it had, if any.
    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        match self.0.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    /// In key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl<'a> IntoIterator for &'a MatchLabels {
    type Item = (&'a String, &'a String);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (String, String)>, fn(&(String, String)) -> (&String, &String)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl FromIterator<(String, String)> for MatchLabels {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(entries: I) -> Self {
        let mut labels = MatchLabels::default();
        for (k, v) in entries {
            labels.insert(k, v);
        }
        labels.0.shrink_to_fit();
        labels
    }
}

impl From<BTreeMap<String, String>> for MatchLabels {
    fn from(map: BTreeMap<String, String>) -> Self {
        // Already in key order, keys unique.
        MatchLabels(map.into_iter().collect())
    }
}

impl Serialize for MatchLabels {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for MatchLabels {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = MatchLabels;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of label keys to values")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<MatchLabels, A::Error> {
                let mut labels = MatchLabels::default();
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    labels.insert(k, v);
                }
                labels.0.shrink_to_fit();
                Ok(labels)
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// Why a selector string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector at character {position}: {message}")]
pub struct ParseError {
    pub position: usize,
    pub message: String,
}

impl LabelSelector {
    /// The selector that matches every label set.
    pub fn everything() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// Checks keys, values and operator arity, reporting below the validator's current pointer.
    pub fn validate(&self, v: &mut Validator) {
        v.at("matchLabels", |v| {
            for (key, value) in &self.match_labels {
                v.at(key, |v| {
                    if let Err(e) = syntax::qualified_key(key).and_then(|()| syntax::label_value(value)) {
                        v.error(e);
                    }
                });
            }
        });
        v.at("matchExpressions", |v| {
            for (i, r) in self.match_expressions.iter().enumerate() {
                v.at(i, |v| r.validate(v));
            }
        });
    }

    /// Parses the Kubernetes string syntax. The result still needs [`LabelSelector::validate`].
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        Parser { input, pos: 0 }.selector()
    }
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        match self.operator {
            Operator::In => labels.get(&self.key).is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => labels.get(&self.key).is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => labels.contains_key(&self.key),
            Operator::DoesNotExist => !labels.contains_key(&self.key),
        }
    }

    fn validate(&self, v: &mut Validator) {
        v.check("key", syntax::qualified_key(&self.key));
        match self.operator {
            Operator::In | Operator::NotIn if self.values.is_empty() => {
                v.at("values", |v| v.error(format!("operator {:?} needs at least one value", self.operator)))
            }
            Operator::Exists | Operator::DoesNotExist if !self.values.is_empty() => {
                v.at("values", |v| v.error(format!("operator {:?} takes no values", self.operator)))
            }
            _ => {}
        }
        v.at("values", |v| {
            for (i, value) in self.values.iter().enumerate() {
                v.check(i, syntax::label_value(value));
            }
        });
    }
}

impl fmt::Display for LabelSelector {
    /// Writes the Kubernetes string syntax; `parse(to_string())` gives back an equal selector.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for r in &self.match_expressions {
            parts.push(match r.operator {
                Operator::In => format!("{} in ({})", r.key, r.values.join(",")),
                Operator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            });
        }
        f.write_str(&parts.join(","))
    }
}

struct Parser<'a> {
    input: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn selector(mut self) -> Result<LabelSelector, ParseError> {
        let mut selector = LabelSelector::default();
        self.skip_ws();
        if self.at_end() {
            return Ok(selector);
        }
        loop {
            self.requirement(&mut selector)?;
            self.skip_ws();
            if self.at_end() {
                return Ok(selector);
            }
            self.expect(',')?;
        }
    }

    fn requirement(&mut self, selector: &mut LabelSelector) -> Result<(), ParseError> {
        self.skip_ws();
        if self.eat('!') {
            let key = self.word("a key after '!'")?;
            selector.match_expressions.push(Requirement { key, operator: Operator::DoesNotExist, values: vec![] });
            return Ok(());
        }
        let key = self.word("a key")?;
        self.skip_ws();
        let rest = &self.input[self.pos..];
        if rest.starts_with("!=") {
            self.pos += 2;
            let value = self.value()?;
            selector.match_expressions.push(Requirement { key, operator: Operator::NotIn, values: vec![value] });
        } else if rest.starts_with("==") || rest.starts_with('=') {
            self.pos += if rest.starts_with("==") { 2 } else { 1 };
            let value = self.value()?;
            if selector.match_labels.get(&key).is_none() {
                selector.match_labels.insert(key, value);
            } else {
                selector.match_expressions.push(Requirement { key, operator: Operator::In, values: vec![value] });
            }
        } else if self.keyword("notin") {
            let values = self.value_list()?;
            selector.match_expressions.push(Requirement { key, operator: Operator::NotIn, values });
        } else if self.keyword("in") {
            let values = self.value_list()?;
            selector.match_expressions.push(Requirement { key, operator: Operator::In, values });
        } else if self.at_end() || rest.starts_with(',') {
            selector.match_expressions.push(Requirement { key, operator: Operator::Exists, values: vec![] });
        } else {
            return Err(self.error("expected '=', '==', '!=', 'in', 'notin', ',' or the end"));
        }
        Ok(())
    }

    /// A value after an operator: possibly empty (`app=`), ended by ',' or the end.
    fn value(&mut self) -> Result<String, ParseError> {
        self.skip_ws();
        Ok(self.take_while(|c| !c.is_whitespace() && !matches!(c, ',' | '(' | ')' | '=' | '!')))
    }

    fn value_list(&mut self) -> Result<Vec<String>, ParseError> {
        self.skip_ws();
        self.expect('(')?;
        let mut values = Vec::new();
        loop {
            let value = self.value()?;
            self.skip_ws();
            values.push(value);
            if self.eat(')') {
                break;
            }
            self.expect(',')?;
        }
        Ok(values)
    }

    fn keyword(&mut self, word: &str) -> bool {
        let rest = &self.input[self.pos..];
        let after = rest.get(word.len()..).and_then(|r| r.chars().next());
        if rest.starts_with(word) && after.is_some_and(|c| c.is_whitespace() || c == '(') {
            self.pos += word.len();
            true
        } else {
            false
        }
    }

    fn word(&mut self, what: &str) -> Result<String, ParseError> {
        self.skip_ws();
        let w = self.take_while(|c| !c.is_whitespace() && !matches!(c, ',' | '(' | ')' | '=' | '!'));
        if w.is_empty() { Err(self.error(&format!("expected {what}"))) } else { Ok(w) }
    }

    fn take_while(&mut self, pred: impl Fn(char) -> bool) -> String {
        let rest = &self.input[self.pos..];
        let len = rest.find(|c: char| !pred(c)).unwrap_or(rest.len());
        self.pos += len;
        rest[..len].to_string()
    }

    fn skip_ws(&mut self) {
        self.take_while(char::is_whitespace);
    }

    fn eat(&mut self, c: char) -> bool {
        if self.input[self.pos..].starts_with(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), ParseError> {
        self.skip_ws();
        if self.eat(c) { Ok(()) } else { Err(self.error(&format!("expected '{c}'"))) }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.input.len()
    }

    fn error(&self, message: &str) -> ParseError {
        ParseError { position: self.pos, message: message.to_string() }
    }
}

#[cfg(test)]
mod tests;
