//! From a flat list of headings to a tree: shared by every reader whose documents have headings
//! (markdown, HTML, DOCX, PDF, plain text) rather than nested divisions.
//!
//! A document whose top level is a title (level 0, e.g. a DOCX `Title` paragraph or a plain-text
//! title line) or level 1, with exactly one heading at that level and that heading first, takes
//! it as its root; otherwise the root is named after the file. Skipped heading levels are
//! normalised (the deeper heading becomes a child of the nearest shallower one) with a warning,
//! as SeekrFlow only warns there.
//!
//! Citations: a heading that designates itself (`Section 2.1 ...`, `Article IV ...`, `Part 2.
//! ...`, `§ 3 ...`, or a multi-level number `2.1 ...`) is cited as a person cites it, `Section 2.1
//! of the <document title>`; any other heading by its path from the root, `Title > Part >
//! Heading`.

use std::path::Path;
use std::sync::LazyLock;

use proto::{PrincipleNode, PrincipleTree};
use regex::Regex;

use super::heuristics::{self, Block, Found};
use super::{IngestError, Ingested, file_stem};

/// A heading and the text up to the next heading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Section {
    /// 0 for a document title, 1 for a top-level heading, deeper headings count up.
    pub(super) level: usize,
    /// Source line of the heading, for formats that have lines.
    pub(super) line: Option<usize>,
    pub(super) label: String,
    pub(super) content: String,
}

/// Nest the sections by heading level under the document's root. `preamble` is the text before
/// the first heading.
pub(super) fn build(
    path: &Path,
    preamble: String,
    sections: Vec<Section>,
) -> Result<Ingested, IngestError> {
    let Some(top_level) = sections.iter().map(|s| s.level).min() else {
        return Err(IngestError::NoHeadings {
            path: path.to_owned(),
        });
    };
    if let Some(empty) = sections.iter().find(|s| s.label.is_empty()) {
        return Err(IngestError::Invalid {
            path: path.to_owned(),
            line: empty.line,
            message: "empty heading".into(),
        });
    }
    let at_top = sections.iter().filter(|s| s.level == top_level).count();
    let titled = top_level <= 1 && at_top == 1 && sections[0].level == top_level;

    let mut sections = sections;
    let (mut root, root_level) = if titled {
        let title = sections.remove(0);
        let mut root = PrincipleNode::new(title.label, "document");
        root.content = join_blocks(preamble, title.content);
        (root, top_level)
    } else {
        let mut root = PrincipleNode::new(file_stem(path), "document");
        root.content = preamble;
        (root, top_level.saturating_sub(1))
    };
    root.citation = root.label.clone();

    let mut warnings = Vec::new();
    // Open headings below the root, outermost first, with their levels.
    let mut open: Vec<(usize, PrincipleNode)> = Vec::new();
    for section in sections {
        close(&mut root, &mut open, section.level);
        let (parent_level, parent) = match open.last() {
            Some((level, node)) => (*level, node),
            None => (root_level, &root),
        };
        if section.level > parent_level + 1 {
            let at = match section.line {
                Some(line) => format!("{}:{line}", path.display()),
                None => format!("{}: heading {:?}", path.display(), section.label),
            };
            warnings.push(if open.is_empty() && !titled {
                format!(
                    "{at}: heading level {} has no level-{} heading above it",
                    section.level,
                    section.level - 1
                )
            } else {
                format!(
                    "{at}: heading level jumps from {parent_level} to {}",
                    section.level
                )
            });
        }
        let mut node = PrincipleNode::new(section.label, "heading");
        node.citation = match designation(&node.label) {
            Some(designation) => format!("{designation} of {}", with_article(&root.label)),
            None => format!("{} > {}", parent.citation, node.label),
        };
        node.content = section.content;
        open.push((section.level, node));
    }
    close(&mut root, &mut open, 0);
    Ok(Ingested {
        tree: PrincipleTree::new(root),
        warnings,
    })
}

/// A piece of a document whose headings are marked up (HTML elements, DOCX styles), in reading
/// order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Piece {
    /// A heading of `level` (1 = top; 0 = the document's title).
    Heading { level: usize, text: String },
    /// A paragraph, list item or table as text. Consecutive list items are separated by a line
    /// break, other blocks by a blank line.
    Block { text: String, list_item: bool },
}

/// The tree of a document made of pieces: its headings make the tree (empty headings are
/// dropped). Without headings, the plain-text heuristics recover numbered headings from its
/// paragraphs, else each paragraph is a section; a warning says so, naming what was `missing`.
///
/// # Errors
///
/// A document without any text.
pub(super) fn from_pieces(
    path: &Path,
    pieces: Vec<Piece>,
    missing: &str,
) -> Result<Ingested, IngestError> {
    let mut preamble = String::new();
    let mut sections: Vec<Section> = Vec::new();
    let mut blocks: Vec<Block> = Vec::new();
    let mut last_was_list_item = false;
    for piece in pieces {
        match piece {
            Piece::Heading { level, text } => {
                let label = super::xml::collapse(&text);
                if !label.is_empty() {
                    sections.push(Section {
                        level,
                        line: None,
                        label,
                        content: String::new(),
                    });
                }
                last_was_list_item = false;
            }
            Piece::Block { text, list_item } => {
                let text = text.trim_end();
                if text.trim().is_empty() {
                    continue;
                }
                let content = match sections.last_mut() {
                    Some(section) => &mut section.content,
                    None => &mut preamble,
                };
                let joins_list = list_item && last_was_list_item;
                if !content.is_empty() {
                    content.push_str(if joins_list { "\n" } else { "\n\n" });
                }
                content.push_str(text);
                match blocks.last_mut() {
                    Some(block) if joins_list => {
                        block.text.push('\n');
                        block.text.push_str(text);
                    }
                    _ => blocks.push(Block {
                        text: text.to_owned(),
                        line: None,
                        size: None,
                    }),
                }
                last_was_list_item = list_item;
            }
        }
    }
    if !sections.is_empty() {
        return build(path, preamble, sections);
    }
    if blocks.is_empty() {
        return Err(IngestError::Invalid {
            path: path.to_owned(),
            line: None,
            message: "no text".into(),
        });
    }
    let recovered = heuristics::recover(blocks);
    let count = recovered.sections.len();
    let mut ingested = build(path, recovered.preamble, recovered.sections)?;
    ingested.warnings.push(match recovered.found {
        Found::Headings => format!(
            "{}: no {missing}: headings recovered from numbered lines",
            path.display()
        ),
        Found::Paragraphs => format!(
            "{}: no {missing} and no numbered headings: one section per paragraph ({count} sections)",
            path.display()
        ),
    });
    Ok(ingested)
}

/// Close the open headings at `level` or deeper, attaching each to its parent.
fn close(root: &mut PrincipleNode, open: &mut Vec<(usize, PrincipleNode)>, level: usize) {
    while let Some((_, done)) = open.pop_if(|(l, _)| *l >= level) {
        match open.last_mut() {
            Some((_, parent)) => parent.children.push(done),
            None => root.children.push(done),
        }
    }
}

static DESIGNATION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)^(?:(section|sec\.|article|art\.|part|chapter|rule|clause|principle|§)\s*([0-9]+[a-z]*(?:[.\-][0-9a-z]+)*|[ivxlc]+\b)|([0-9]+(?:\.[0-9]+)+)\b)",
    )
    .expect("valid regex")
});

/// How a heading designates itself, if it does: `Section 2.1`, `Article IV`, `§ 3`, and a bare
/// multi-level number as `Section 2.1` (a bare `2.` is a list's own numbering, not a citation).
fn designation(label: &str) -> Option<String> {
    let captures = DESIGNATION.captures(label.trim())?;
    Some(match (captures.get(1), captures.get(2), captures.get(3)) {
        (Some(word), Some(number), _) => format!("{} {}", word.as_str(), number.as_str()),
        (_, _, Some(number)) => format!("Section {}", number.as_str()),
        _ => return None,
    })
}

/// A document title as it follows "of": `the Harbor Lending Policy`, `The Act` unchanged.
fn with_article(title: &str) -> String {
    let lower = title.to_lowercase();
    if lower.starts_with("the ") || lower.starts_with("a ") || lower.starts_with("an ") {
        title.to_string()
    } else {
        format!("the {title}")
    }
}

/// Two blocks of text separated by a blank line, either of which may be empty.
pub(super) fn join_blocks(first: String, second: String) -> String {
    match (first.is_empty(), second.is_empty()) {
        (true, _) => second,
        (_, true) => first,
        _ => format!("{first}\n\n{second}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(level: usize, label: &str) -> Section {
        Section {
            level,
            line: None,
            label: label.into(),
            content: format!("{label} text"),
        }
    }

    #[test]
    fn a_leading_title_becomes_the_root() {
        let sections = vec![section(0, "T"), section(1, "A"), section(2, "A.1")];
        let ingested = build(Path::new("t.docx"), String::new(), sections).unwrap();
        let root = &ingested.tree.root;
        assert_eq!(root.label, "T");
        assert_eq!(root.children[0].children[0].citation, "T > A > A.1");
        assert!(ingested.warnings.is_empty());
    }

    #[test]
    fn headings_that_designate_themselves_are_cited_by_it() {
        let sections = vec![
            section(1, "Policy"),
            section(2, "Part 2. Loan Approval"),
            section(3, "Section 2.1 Authority"),
            section(3, "2.2 Ability to Repay"),
            section(3, "2. Warning"),
            section(2, "Article IV"),
            section(2, "§ 3 Scope"),
        ];
        let tree = build(Path::new("p.md"), String::new(), sections)
            .unwrap()
            .tree;
        let citations: Vec<&str> = tree.nodes().iter().map(|n| n.citation.as_str()).collect();
        assert_eq!(
            citations,
            [
                "Policy",
                "Part 2 of the Policy",
                "Section 2.1 of the Policy",
                "Section 2.2 of the Policy",
                "Part 2 of the Policy > 2. Warning",
                "Article IV of the Policy",
                "§ 3 of the Policy",
            ]
        );
    }

    #[test]
    fn skipped_levels_without_lines_name_the_heading() {
        let sections = vec![section(1, "A"), section(1, "B"), section(3, "B.x")];
        let ingested = build(Path::new("t.html"), String::new(), sections).unwrap();
        assert_eq!(ingested.tree.root.label, "t");
        assert_eq!(
            ingested.warnings,
            ["t.html: heading \"B.x\": heading level jumps from 1 to 3"]
        );
    }
}
