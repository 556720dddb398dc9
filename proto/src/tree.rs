//! The principle tree: a document (or several) as nested sections.
//!
//! Readers build it; the planner cuts it into shards; the dataset points back into it by node id.
//! The internal tree carries more than SeekrFlow's four keys (`label`, `content`, `children`,
//! `level`): a stable id, a citation, the kind of division, and whether the section is in force.

use serde::{Deserialize, Serialize};

use crate::hash::digest;

/// Whether a section takes part in generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum NodeStatus {
    #[default]
    Active,
    /// Repealed, omitted, transferred, reserved...: kept in the tree, left out of generation.
    Inactive { reason: String },
}

/// One section of a principle document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrincipleNode {
    /// Stable id: derived from the labels on the path from the root and the node's own text.
    #[serde(default)]
    pub id: String,
    pub label: String,
    /// The section's own text, without its children's.
    #[serde(default)]
    pub content: String,
    /// How a person cites the section: `21 U.S.C. 361`, `1 CFR 1.1`, `Section 2.1 of Policy`, or a
    /// heading path.
    #[serde(default)]
    pub citation: String,
    /// Kind of division (`title`, `chapter`, `part`, `section`, `heading`, ...).
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub status: NodeStatus,
    #[serde(default)]
    pub children: Vec<PrincipleNode>,
}

impl PrincipleNode {
    pub fn new(label: impl Into<String>, kind: impl Into<String>) -> Self {
        PrincipleNode {
            id: String::new(),
            label: label.into(),
            content: String::new(),
            citation: String::new(),
            kind: kind.into(),
            status: NodeStatus::Active,
            children: Vec::new(),
        }
    }

    pub fn is_active(&self) -> bool {
        self.status == NodeStatus::Active
    }

    /// A node that generation works on: in force and with text of its own.
    pub fn is_generation_unit(&self) -> bool {
        self.is_active() && !self.content.trim().is_empty()
    }
}

/// A whole principle tree under one root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrincipleTree {
    pub root: PrincipleNode,
}

/// A node seen during a depth-first walk, with the labels of its ancestors.
#[derive(Debug, Clone, Copy)]
pub struct Visit<'a> {
    pub node: &'a PrincipleNode,
    /// Depth below the root: the root is 0.
    pub depth: usize,
}

impl PrincipleTree {
    pub fn new(root: PrincipleNode) -> Self {
        let mut tree = PrincipleTree { root };
        tree.assign_ids();
        tree
    }

    /// Give every node its stable id: a digest of the labels from the root down to the node and of
    /// the node's own text. Identical siblings (same path, same text) get an occurrence suffix so
    /// that ids stay unique.
    pub fn assign_ids(&mut self) {
        let mut seen = std::collections::HashMap::new();
        let mut path = Vec::new();
        assign(&mut self.root, &mut path, &mut seen);
    }

    /// Depth-first, pre-order walk with each node's ancestors (root first, excluding the node).
    pub fn walk<'a>(&'a self, mut visit: impl FnMut(Visit<'a>, &[&'a PrincipleNode])) {
        let mut ancestors = Vec::new();
        walk(&self.root, 0, &mut ancestors, &mut visit);
    }

    /// Every node in pre-order.
    pub fn nodes(&self) -> Vec<&PrincipleNode> {
        let mut all = Vec::new();
        self.walk(|v, _| all.push(v.node));
        all
    }

    /// The nodes generation works on, in document order.
    pub fn generation_units(&self) -> Vec<&PrincipleNode> {
        self.nodes()
            .into_iter()
            .filter(|n| n.is_generation_unit())
            .collect()
    }

    /// Deepest level used (root = 0).
    pub fn depth(&self) -> usize {
        let mut max = 0;
        self.walk(|v, _| max = max.max(v.depth));
        max
    }

    /// Digest of the whole tree (ids cover labels and text, so this covers the content).
    pub fn fingerprint(&self) -> String {
        let ids: Vec<&[u8]> = self.nodes().into_iter().map(|n| n.id.as_bytes()).collect();
        digest(&ids, 32)
    }
}

fn assign(
    node: &mut PrincipleNode,
    path: &mut Vec<String>,
    seen: &mut std::collections::HashMap<String, usize>,
) {
    path.push(node.label.clone());
    let parts: Vec<&[u8]> = path
        .iter()
        .map(|s| s.as_bytes())
        .chain(std::iter::once(node.content.as_bytes()))
        .collect();
    let base = digest(&parts, 16);
    let occurrence = seen.entry(base.clone()).or_insert(0);
    node.id = if *occurrence == 0 {
        base
    } else {
        digest(&[base.as_bytes(), &occurrence.to_le_bytes()], 16)
    };
    *occurrence += 1;
    for child in &mut node.children {
        assign(child, path, seen);
    }
    path.pop();
}

fn walk<'a>(
    node: &'a PrincipleNode,
    depth: usize,
    ancestors: &mut Vec<&'a PrincipleNode>,
    visit: &mut impl FnMut(Visit<'a>, &[&'a PrincipleNode]),
) {
    visit(Visit { node, depth }, ancestors);
    ancestors.push(node);
    for child in &node.children {
        walk(child, depth + 1, ancestors, visit);
    }
    ancestors.pop();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(label: &str, text: &str) -> PrincipleNode {
        let mut n = PrincipleNode::new(label, "section");
        n.content = text.into();
        n
    }

    #[test]
    fn ids_are_stable_and_follow_text() {
        let mut root = PrincipleNode::new("Policy", "document");
        root.children = vec![leaf("A", "one"), leaf("B", "two")];
        let first = PrincipleTree::new(root.clone());
        let again = PrincipleTree::new(root.clone());
        assert_eq!(first, again);

        root.children[1].content = "changed".into();
        let edited = PrincipleTree::new(root);
        assert_eq!(first.root.children[0].id, edited.root.children[0].id);
        assert_ne!(first.root.children[1].id, edited.root.children[1].id);
    }

    #[test]
    fn identical_siblings_get_distinct_ids() {
        let mut root = PrincipleNode::new("Policy", "document");
        root.children = vec![leaf("Reserved", ""), leaf("Reserved", "")];
        let tree = PrincipleTree::new(root);
        assert_ne!(tree.root.children[0].id, tree.root.children[1].id);
    }
}
