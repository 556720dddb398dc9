//! SeekrFlow JSON tree reader: reads back what [`super::to_seekr_json`] writes, strictly.
//!
//! Every node must have exactly the keys `label` (string), `content` (string), `children` (array
//! of nodes) and `level` (string of digits). A `level` that disagrees with the node's depth is
//! corrected with a warning; anything else that does not fit is an error naming the JSON path
//! (`$.children[2].level`). A top-level array of trees is accepted and wrapped under one root.
//! Nesting is bounded by serde_json's recursion limit (128 JSON levels, about 63 tree levels),
//! which turns absurdly deep input into an error instead of a stack overflow.

use std::path::Path;

use proto::{PrincipleNode, PrincipleTree};
use serde_json::{Map, Value};

use super::{IngestError, Ingested, file_stem};

const KEYS: [&str; 4] = ["label", "content", "children", "level"];

pub(super) fn read(path: &Path, text: &str) -> Result<Ingested, IngestError> {
    let value: Value = serde_json::from_str(text).map_err(|e| malformed(path, &e))?;
    let mut reader = TreeReader {
        path,
        warnings: Vec::new(),
    };
    let root = match &value {
        Value::Array(trees) if !trees.is_empty() => {
            let mut root = PrincipleNode::new(file_stem(path), "collection");
            for (i, tree) in trees.iter().enumerate() {
                root.children
                    .push(reader.node(tree, &format!("$[{i}]"), 0, None)?);
            }
            root
        }
        Value::Array(_) => return Err(reader.invalid("$", "empty array: no tree to read")),
        _ => reader.node(&value, "$", 0, None)?,
    };
    Ok(Ingested {
        tree: PrincipleTree::new(root),
        warnings: reader.warnings,
    })
}

struct TreeReader<'p> {
    path: &'p Path,
    warnings: Vec<String>,
}

impl TreeReader<'_> {
    /// Read the node at JSON path `at`, `depth` levels below its tree's root.
    fn node(
        &mut self,
        value: &Value,
        at: &str,
        depth: usize,
        parent_citation: Option<&str>,
    ) -> Result<PrincipleNode, IngestError> {
        let Value::Object(fields) = value else {
            return Err(self.invalid(
                at,
                format!(
                    "expected a tree node (an object), found {}",
                    type_name(value)
                ),
            ));
        };
        if let Some(key) = fields.keys().find(|key| !KEYS.contains(&key.as_str())) {
            return Err(self.invalid(
                at,
                format!(
                    "unexpected key {key:?}: a node has exactly the keys label, content, \
                     children and level"
                ),
            ));
        }
        let label = self.string(fields, at, "label")?;
        if label.trim().is_empty() {
            return Err(self.invalid(&format!("{at}.label"), "empty label"));
        }
        let content = self.string(fields, at, "content")?;
        let children = match self.field(fields, at, "children")? {
            Value::Array(children) => children,
            other => {
                return Err(self.invalid(
                    &format!("{at}.children"),
                    format!("expected an array, found {}", type_name(other)),
                ));
            }
        };
        let level = self.string(fields, at, "level")?;
        if level.is_empty() || !level.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.invalid(
                &format!("{at}.level"),
                format!("expected a string of digits, found {level:?}"),
            ));
        }
        if level.parse::<usize>().ok() != Some(depth) {
            self.warnings.push(format!(
                "{}: {at}.level: level {level:?} does not match the node's depth {depth}; \
                 using {depth}",
                self.path.display()
            ));
        }

        let mut node = PrincipleNode::new(label, if depth == 0 { "document" } else { "heading" });
        node.content = content.to_owned();
        node.citation = match parent_citation {
            Some(parent) => format!("{parent} > {label}"),
            None => label.to_owned(),
        };
        for (i, child) in children.iter().enumerate() {
            let child = self.node(
                child,
                &format!("{at}.children[{i}]"),
                depth + 1,
                Some(&node.citation),
            )?;
            node.children.push(child);
        }
        Ok(node)
    }

    fn field<'v>(
        &self,
        fields: &'v Map<String, Value>,
        at: &str,
        key: &str,
    ) -> Result<&'v Value, IngestError> {
        fields
            .get(key)
            .ok_or_else(|| self.invalid(at, format!("missing key {key:?}")))
    }

    fn string<'v>(
        &self,
        fields: &'v Map<String, Value>,
        at: &str,
        key: &str,
    ) -> Result<&'v str, IngestError> {
        match self.field(fields, at, key)? {
            Value::String(s) => Ok(s),
            other => Err(self.invalid(
                &format!("{at}.{key}"),
                format!("expected a string, found {}", type_name(other)),
            )),
        }
    }

    fn invalid(&self, at: &str, message: impl Into<String>) -> IngestError {
        IngestError::InvalidTree {
            path: self.path.to_owned(),
            json_path: at.to_owned(),
            message: message.into(),
        }
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A serde_json syntax error, with its position moved out of the message into the location.
fn malformed(path: &Path, error: &serde_json::Error) -> IngestError {
    let full = error.to_string();
    let position = format!(" at line {} column {}", error.line(), error.column());
    let message = full.strip_suffix(&position).unwrap_or(&full);
    let message = if message == "recursion limit exceeded" {
        "nested too deeply (more than 128 levels of arrays and objects)".to_owned()
    } else {
        message.to_owned()
    };
    IngestError::MalformedJson {
        path: path.to_owned(),
        line: error.line(),
        column: error.column(),
        message,
    }
}
