//! Plain-text reader: paragraph blocks (separated by blank lines) go through the numbered-heading
//! heuristics of [`heuristics`](super::heuristics); without numbered headings, each block is a
//! section. Lines inside a block are kept as written.

use std::path::Path;

use super::heuristics::{self, Block, Found};
use super::{IngestError, Ingested, outline};

pub(super) fn read(path: &Path, text: &str) -> Result<Ingested, IngestError> {
    let recovered = heuristics::recover(blocks(text));
    let sections = recovered.sections.len();
    let mut ingested = outline::build(path, recovered.preamble, recovered.sections)?;
    if recovered.found == Found::Paragraphs {
        ingested.warnings.push(format!(
            "{}: no numbered headings found: one section per paragraph block ({sections} sections)",
            path.display()
        ));
    }
    Ok(ingested)
}

/// The text's paragraph blocks with the line each starts on; trailing whitespace is dropped.
fn blocks(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut current: Option<Block> = None;
    for (index, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.trim().is_empty() {
            blocks.extend(current.take());
            continue;
        }
        match &mut current {
            Some(block) => {
                block.text.push('\n');
                block.text.push_str(line);
            }
            None => {
                current = Some(Block {
                    text: line.to_owned(),
                    line: Some(index + 1),
                    size: None,
                });
            }
        }
    }
    blocks.extend(current);
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_headings_make_the_tree() {
        let text = "Harbor Policy\n\nIntro line.\n\nPART 1 General\n\nSection 1.1 Purpose\n\
                    The purpose.\nSecond line.\n\nSection 1.2 Scope\n\nAll loans.\n";
        let ingested = read(Path::new("p.txt"), text).unwrap();
        assert!(ingested.warnings.is_empty(), "{:?}", ingested.warnings);
        let root = &ingested.tree.root;
        assert_eq!(root.label, "Harbor Policy");
        assert_eq!(root.content, "Intro line.");
        let part = &root.children[0];
        assert_eq!(part.label, "PART 1 General");
        assert_eq!(part.children[0].content, "The purpose.\nSecond line.");
        assert_eq!(
            part.children[1].citation,
            "Section 1.2 of the Harbor Policy"
        );
    }

    #[test]
    fn without_headings_paragraphs_are_sections_with_a_warning() {
        let ingested = read(Path::new("notes.txt"), "One.\n\nTwo.\n").unwrap();
        assert_eq!(ingested.tree.root.label, "notes");
        assert_eq!(ingested.tree.root.children.len(), 2);
        assert_eq!(
            ingested.warnings,
            ["notes.txt: no numbered headings found: one section per paragraph block (2 sections)"]
        );
    }
}
