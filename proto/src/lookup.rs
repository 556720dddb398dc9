//! The lookup index: what the generator's tools look things up in.
//!
//! Built at ingest from the principle tree (`coordinator::ingest::lookup`) and stored beside it
//! on the object store; a worker loads it for the shards that name it. It holds every node with
//! its parent (so ancestors, children and siblings follow), the cross-references found in each
//! node's text resolved to the node they point at ("see § 1.3", "section 321(g) of this title"),
//! and the definitions found in the document ("X means ..."), each as a span of its node's text.
//!
//! Citations are compared by [`citation_key`], so that a model asking for "§ 2.1", "1 CFR 2.1" or
//! "Section 2.1" finds the same node.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Version of [`LookupIndex`]. A worker ignores an index of another version (it generates without
/// lookups and says so) rather than misreading it.
pub const LOOKUP_INDEX_VERSION: u32 = 1;

/// Index of a node in [`LookupIndex::nodes`].
pub type NodeIndex = u32;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupIndex {
    pub version: u32,
    /// Fingerprint of the tree it was built from.
    pub tree_fingerprint: String,
    /// Every node of the tree in document order (pre-order); the root is node 0.
    pub nodes: Vec<LookupNode>,
    /// Definitions found in node texts, in document order.
    pub definitions: Vec<Definition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupNode {
    pub id: String,
    pub citation: String,
    pub label: String,
    pub kind: String,
    pub parent: Option<NodeIndex>,
    /// Whether the node is in force (inactive nodes are found but say so).
    pub active: bool,
    /// The node's own text.
    pub text: String,
    /// Cross-references in `text` that resolve to another node of the tree.
    pub references: Vec<Reference>,
}

/// A cross-reference: the words at `start..end` of the node's text point at node `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reference {
    pub start: usize,
    pub end: usize,
    pub target: NodeIndex,
}

/// A definition: node `node`'s text at `start..end` defines `term`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition {
    pub term: String,
    pub node: NodeIndex,
    pub start: usize,
    pub end: usize,
}

impl LookupIndex {
    pub fn node(&self, index: NodeIndex) -> Option<&LookupNode> {
        self.nodes.get(index as usize)
    }

    /// The defining passage of `definition`.
    pub fn definition_text(&self, definition: &Definition) -> &str {
        self.node(definition.node)
            .and_then(|node| node.text.get(definition.start..definition.end))
            .unwrap_or_default()
    }

    /// Ancestors of `index`, nearest first (the root last).
    pub fn ancestors(&self, index: NodeIndex) -> Vec<NodeIndex> {
        let mut ancestors = Vec::new();
        let mut current = self.node(index).and_then(|n| n.parent);
        while let Some(parent) = current {
            ancestors.push(parent);
            current = self.node(parent).and_then(|n| n.parent);
        }
        ancestors
    }

    /// Of `candidates`, the node closest to `from` in the tree: the one sharing the deepest
    /// ancestor with it (the first on ties).
    pub fn closest(&self, from: NodeIndex, candidates: &[NodeIndex]) -> Option<NodeIndex> {
        candidates.iter().copied().max_by_key(|&candidate| {
            (
                self.shared_depth(from, candidate),
                std::cmp::Reverse(candidate),
            )
        })
    }

    /// How many nodes the root-down lines of `a` and `b` share (the depth of their lowest common
    /// ancestor, plus one).
    pub fn shared_depth(&self, a: NodeIndex, b: NodeIndex) -> usize {
        let line = |node: NodeIndex| {
            let mut line = self.ancestors(node);
            line.reverse();
            line.push(node);
            line
        };
        line(a)
            .into_iter()
            .zip(line(b))
            .take_while(|(x, y)| x == y)
            .count()
    }

    /// Maps built once per loaded index for the lookups that search.
    pub fn maps(&self) -> LookupMaps {
        let mut by_id = HashMap::new();
        let mut by_citation: HashMap<String, Vec<NodeIndex>> = HashMap::new();
        let mut children: HashMap<NodeIndex, Vec<NodeIndex>> = HashMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let i = i as NodeIndex;
            by_id.insert(node.id.clone(), i);
            if let Some(parent) = node.parent {
                children.entry(parent).or_default().push(i);
            }
            for key in [citation_key(&node.citation), citation_key(&node.label)] {
                if !key.is_empty() {
                    let entry = by_citation.entry(key).or_default();
                    if !entry.contains(&i) {
                        entry.push(i);
                    }
                }
            }
        }
        let mut by_term: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, definition) in self.definitions.iter().enumerate() {
            by_term
                .entry(term_key(&definition.term))
                .or_default()
                .push(i);
        }
        LookupMaps {
            by_id,
            by_citation,
            children,
            by_term,
        }
    }
}

/// Search maps over a [`LookupIndex`]; see [`LookupIndex::maps`].
#[derive(Debug, Clone, Default)]
pub struct LookupMaps {
    pub by_id: HashMap<String, NodeIndex>,
    /// [`citation_key`] of each node's citation and label -> nodes (document order).
    pub by_citation: HashMap<String, Vec<NodeIndex>>,
    pub children: HashMap<NodeIndex, Vec<NodeIndex>>,
    /// [`term_key`] -> indexes into [`LookupIndex::definitions`].
    pub by_term: HashMap<String, Vec<usize>>,
}

/// The comparable form of a citation or a reference to one: lowercase; the words that only say
/// what kind of citation it is dropped (`§`, `section`, `CFR`, `U.S.C.` with its title number);
/// a division named by its kind and number (`part 2`, `chapter 9`). `"§ 2.1"`, `"Section 2.1"`,
/// `"1 CFR 2.1"` and the heading `"Section 2.1 Authority"` give `"2.1"`; `"7 CFR part 2"` and the
/// heading `"Part 2. Loan Approval"` give `"part 2"`; `"21 U.S.C. 321"` gives `"321"`.
pub fn citation_key(citation: &str) -> String {
    // A heading path ("Policy > Part 1 > 1.2 Eligibility") is cited by its last segment.
    let last = citation.rsplit(" > ").next().unwrap_or(citation);
    let lower = last.to_lowercase().replace(['§', '¶'], " ");
    let words: Vec<&str> = lower
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| c == ',' || c == ':' || c == ';'))
        .filter(|w| !w.is_empty())
        .collect();
    // "1 CFR 2.1", "21 U.S.C. 321": what follows the code's name.
    let start = words
        .iter()
        .position(|w| matches!(*w, "cfr" | "c.f.r." | "u.s.c." | "u.s.c" | "usc"))
        .map_or(0, |code| code + 1);
    let mut rest = &words[start..];
    while let Some((first, tail)) = rest.split_first() {
        if matches!(
            *first,
            "section" | "sections" | "sec." | "sec" | "article" | "rule"
        ) {
            rest = tail;
        } else {
            break;
        }
    }
    match rest {
        [first, ..] if starts_with_digit(first) => leading_number(first).to_string(),
        [division, number, ..] if starts_with_digit(number) => match division_name(division) {
            Some(division) => format!("{division} {}", leading_number(number)),
            None => rest.join(" "),
        },
        _ => rest.join(" "),
    }
}

fn starts_with_digit(word: &str) -> bool {
    word.chars().next().is_some_and(|c| c.is_ascii_digit())
}

/// `2.1`, `379g`, `247d–6b`, `2` of `2.`, `2—general`.
fn leading_number(word: &str) -> &str {
    let end = word
        .char_indices()
        .find(|(_, c)| !(c.is_alphanumeric() || matches!(c, '.' | '-' | '–')))
        .map_or(word.len(), |(i, _)| i);
    word[..end].trim_end_matches(['.', '-', '–'])
}

/// The division a word names, in its long form.
fn division_name(word: &str) -> Option<&'static str> {
    Some(match word {
        "part" | "pt." => "part",
        "subpart" | "subpt." => "subpart",
        "chapter" | "ch." => "chapter",
        "subchapter" | "subch." => "subchapter",
        _ => return None,
    })
}

/// The comparable form of a defined term: lowercase, quotes and surrounding punctuation removed,
/// whitespace collapsed.
pub fn term_key(term: &str) -> String {
    term.split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn citations_compare_by_their_number() {
        assert_eq!(citation_key("§ 2.1"), "2.1");
        assert_eq!(citation_key("1 CFR 2.1"), "2.1");
        assert_eq!(citation_key("Section 2.1"), "2.1");
        assert_eq!(citation_key("21 U.S.C. 321"), "321");
        assert_eq!(citation_key("section 321"), "321");
        assert_eq!(
            citation_key("Harbor Lending Policy > Part 1 > 1.2 Eligibility"),
            "1.2"
        );
        assert_eq!(citation_key("Eligibility"), "eligibility");
        assert_eq!(citation_key("7 CFR part 2"), "part 2");
        assert_eq!(citation_key("Part 2. Loan Approval"), "part 2");
        assert_eq!(citation_key("PART 2—GENERAL INFORMATION"), "part 2");
        assert_eq!(citation_key("9 U.S.C. ch. 2"), "chapter 2");
        assert_eq!(citation_key("§ 360bbb-3."), "360bbb-3");
        assert_eq!(citation_key(""), "");
    }

    #[test]
    fn terms_compare_without_case_or_quotes() {
        assert_eq!(term_key("“Drug”"), "drug");
        assert_eq!(term_key("  Federal   agency "), "federal agency");
    }

    #[test]
    fn ancestors_walk_up_to_the_root() {
        let node = |parent| LookupNode {
            id: String::new(),
            citation: String::new(),
            label: String::new(),
            kind: String::new(),
            parent,
            active: true,
            text: String::new(),
            references: Vec::new(),
        };
        let index = LookupIndex {
            version: LOOKUP_INDEX_VERSION,
            tree_fingerprint: String::new(),
            nodes: vec![node(None), node(Some(0)), node(Some(1)), node(Some(0))],
            definitions: Vec::new(),
        };
        assert_eq!(index.ancestors(2), vec![1, 0]);
        assert_eq!(index.ancestors(0), Vec::<NodeIndex>::new());
        assert_eq!(index.maps().children[&0], vec![1, 3]);
    }
}
