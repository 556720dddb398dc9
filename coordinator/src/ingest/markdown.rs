//! Markdown reader: headings make the tree, the text between two headings is a section's content.
//!
//! Content is rendered back to plain, markdown-like text (paragraphs separated by blank lines, list
//! items as `- item`, table rows as `| a | b |`, code and link text kept, inline HTML kept as
//! written). Front matter (YAML `---` or TOML `+++`) is dropped. The sections become a tree as
//! [`outline::build`](super::outline::build) nests them: a document whose only H1 is its first
//! heading takes that heading as its root, skipped levels are normalised with a warning.

use std::path::Path;

use pulldown_cmark::{CodeBlockKind, Event, Options, Parser, Tag, TagEnd};

use super::outline::{self, Section};
use super::{IngestError, Ingested};

/// Nesting of lists and block quotes beyond this is not indented further.
const MAX_NESTING: usize = 8;

pub(super) fn read(path: &Path, text: &str) -> Result<Ingested, IngestError> {
    let mut reader = Reader::new(text);
    let options = Options::ENABLE_TABLES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_YAML_STYLE_METADATA_BLOCKS
        | Options::ENABLE_PLUSES_DELIMITED_METADATA_BLOCKS;
    for (event, range) in Parser::new_ext(text, options).into_offset_iter() {
        reader.event(event, range.start);
    }
    let (preamble, sections) = reader.finish();
    outline::build(path, preamble, sections)
}

/// Whether the text has a markdown heading (ATX `#` or setext), i.e. reads as markdown rather
/// than plain text.
pub(super) fn has_headings(text: &str) -> bool {
    Parser::new(text).any(|event| matches!(event, Event::Start(Tag::Heading { .. })))
}

/// A top-level heading being read.
struct OpenHeading {
    level: usize,
    line: usize,
    text: String,
}

/// Turns pulldown-cmark events into sections with plain-text content.
struct Reader<'t> {
    lines: LineCounter<'t>,
    sections: Vec<Section>,
    /// Text before the first heading.
    preamble: String,
    heading: Option<OpenHeading>,
    /// Finished blocks of the current section.
    content: String,
    /// Text of the block being built.
    block: String,
    /// Open table cell, table row and finished table rows.
    cell: Option<String>,
    row: Vec<String>,
    table: Vec<String>,
    /// Open lists, innermost last: the next number of an ordered list, `None` for bullets.
    lists: Vec<Option<u64>>,
    /// List marker waiting for the first line of its item.
    marker: Option<String>,
    quotes: usize,
    in_metadata: bool,
    /// Whether the last block written was part of a list (tight items are not blank-separated).
    last_in_list: bool,
}

impl<'t> Reader<'t> {
    fn new(text: &'t str) -> Self {
        Reader {
            lines: LineCounter::new(text),
            sections: Vec::new(),
            preamble: String::new(),
            heading: None,
            content: String::new(),
            block: String::new(),
            cell: None,
            row: Vec::new(),
            table: Vec::new(),
            lists: Vec::new(),
            marker: None,
            quotes: 0,
            in_metadata: false,
            last_in_list: false,
        }
    }

    fn event(&mut self, event: Event<'_>, offset: usize) {
        match event {
            Event::Start(tag) => self.start(tag, offset),
            Event::End(tag) => self.end(tag),
            Event::Text(_) if self.in_metadata => {}
            Event::Text(text)
            | Event::Code(text)
            | Event::InlineHtml(text)
            | Event::Html(text)
            | Event::InlineMath(text)
            | Event::DisplayMath(text) => self.text(&text),
            Event::FootnoteReference(name) => self.text(&format!("[^{name}]")),
            Event::SoftBreak => self.text(" "),
            Event::HardBreak => self.text("\n"),
            Event::Rule => {
                self.flush();
                self.block.push_str("---");
                self.flush();
            }
            Event::TaskListMarker(done) => self.text(if done { "[x] " } else { "[ ] " }),
        }
    }

    fn start(&mut self, tag: Tag<'_>, offset: usize) {
        match tag {
            Tag::Heading { level, .. } if self.lists.is_empty() && self.quotes == 0 => {
                self.flush();
                self.heading = Some(OpenHeading {
                    level: level as usize,
                    line: self.lines.line_at(offset),
                    text: String::new(),
                });
            }
            Tag::MetadataBlock(_) => self.in_metadata = true,
            Tag::List(first) => {
                self.flush();
                if self.lists.is_empty() {
                    // A new list is a block of its own, even right after another list.
                    self.last_in_list = false;
                }
                self.lists.push(first);
            }
            Tag::Item => {
                self.flush();
                self.marker = Some(match self.lists.last_mut() {
                    Some(Some(number)) => {
                        let marker = format!("{number}. ");
                        *number += 1;
                        marker
                    }
                    _ => "- ".to_owned(),
                });
            }
            Tag::BlockQuote(_) => {
                self.flush();
                self.quotes += 1;
            }
            Tag::CodeBlock(kind) => {
                self.flush();
                self.block.push_str("```");
                if let CodeBlockKind::Fenced(info) = kind {
                    self.block.push_str(&info);
                }
                self.block.push('\n');
            }
            Tag::TableHead | Tag::TableRow => self.row.clear(),
            Tag::TableCell => self.cell = Some(String::new()),
            Tag::Paragraph
            | Tag::Heading { .. }
            | Tag::HtmlBlock
            | Tag::Table(_)
            | Tag::FootnoteDefinition(_)
            | Tag::DefinitionList
            | Tag::DefinitionListTitle
            | Tag::DefinitionListDefinition => self.flush(),
            Tag::Emphasis
            | Tag::Strong
            | Tag::Strikethrough
            | Tag::Superscript
            | Tag::Subscript
            | Tag::Link { .. }
            | Tag::Image { .. } => {}
        }
    }

    fn end(&mut self, tag: TagEnd) {
        match tag {
            TagEnd::Heading(_) if self.heading.is_some() => self.end_heading(),
            TagEnd::MetadataBlock(_) => self.in_metadata = false,
            TagEnd::List(_) => {
                self.flush();
                self.lists.pop();
            }
            TagEnd::BlockQuote(_) => {
                self.flush();
                self.quotes = self.quotes.saturating_sub(1);
            }
            TagEnd::CodeBlock => {
                let code_end = self.block.trim_end_matches('\n').len();
                self.block.truncate(code_end);
                self.block.push_str("\n```");
                self.flush();
            }
            TagEnd::TableCell => {
                let cell = self.cell.take().unwrap_or_default();
                self.row.push(super::xml::collapse(&cell));
            }
            TagEnd::TableHead => {
                let separator = vec!["---".to_owned(); self.row.len()];
                self.table.push(table_row(&self.row));
                self.table.push(table_row(&separator));
            }
            TagEnd::TableRow => self.table.push(table_row(&self.row)),
            TagEnd::Table => {
                self.block = std::mem::take(&mut self.table).join("\n");
                self.flush();
            }
            TagEnd::Paragraph
            | TagEnd::Heading(_)
            | TagEnd::Item
            | TagEnd::HtmlBlock
            | TagEnd::FootnoteDefinition
            | TagEnd::DefinitionList
            | TagEnd::DefinitionListTitle
            | TagEnd::DefinitionListDefinition => self.flush(),
            TagEnd::Emphasis
            | TagEnd::Strong
            | TagEnd::Strikethrough
            | TagEnd::Superscript
            | TagEnd::Subscript
            | TagEnd::Link
            | TagEnd::Image => {}
        }
    }

    fn text(&mut self, text: &str) {
        if let Some(heading) = &mut self.heading {
            heading.text.push_str(text);
        } else if let Some(cell) = &mut self.cell {
            cell.push_str(text);
        } else {
            self.block.push_str(text);
        }
    }

    /// A top-level heading ends: the content so far belongs to the previous section.
    fn end_heading(&mut self) {
        let Some(heading) = self.heading.take() else {
            return;
        };
        let content = std::mem::take(&mut self.content);
        match self.sections.last_mut() {
            Some(previous) => previous.content = content,
            None => self.preamble = content,
        }
        self.sections.push(Section {
            level: heading.level,
            line: Some(heading.line),
            label: super::xml::collapse(&heading.text),
            content: String::new(),
        });
        self.last_in_list = false;
    }

    /// Write the block being built into the section's content, with list and quote prefixes.
    fn flush(&mut self) {
        let block = std::mem::take(&mut self.block);
        let block = block.trim_matches(|c| c == '\n' || c == ' ');
        if block.is_empty() {
            return;
        }
        let in_list = !self.lists.is_empty();
        if !self.content.is_empty() {
            self.content.push_str(if in_list && self.last_in_list {
                "\n"
            } else {
                "\n\n"
            });
        }
        let quote = "> ".repeat(self.quotes.min(MAX_NESTING));
        let indent = "  ".repeat(self.lists.len().saturating_sub(1).min(MAX_NESTING));
        let mut marker = self.marker.take();
        for (i, line) in block.lines().enumerate() {
            if i > 0 {
                self.content.push('\n');
            }
            self.content.push_str(&quote);
            self.content.push_str(&indent);
            match marker.take() {
                Some(marker) => self.content.push_str(&marker),
                None if in_list => self.content.push_str("  "),
                None => {}
            }
            self.content.push_str(line.trim_end());
        }
        self.last_in_list = in_list;
    }

    fn finish(mut self) -> (String, Vec<Section>) {
        self.flush();
        let content = std::mem::take(&mut self.content);
        match self.sections.last_mut() {
            Some(last) => last.content = content,
            None => self.preamble = content,
        }
        (self.preamble, self.sections)
    }
}

fn table_row(cells: &[String]) -> String {
    format!("| {} |", cells.join(" | "))
}

/// Line numbers for increasing byte offsets, counted incrementally (linear over the document).
struct LineCounter<'t> {
    bytes: &'t [u8],
    offset: usize,
    line: usize,
}

impl<'t> LineCounter<'t> {
    fn new(text: &'t str) -> Self {
        LineCounter {
            bytes: text.as_bytes(),
            offset: 0,
            line: 1,
        }
    }

    fn line_at(&mut self, offset: usize) -> usize {
        let offset = offset.min(self.bytes.len());
        if offset < self.offset {
            // Headings come in document order; anything else is counted from the start.
            return super::line_at(self.bytes, offset);
        }
        self.line += self.bytes[self.offset..offset]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        self.offset = offset;
        self.line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_str(text: &str) -> Ingested {
        read(Path::new("doc.md"), text).expect("valid markdown")
    }

    #[test]
    fn renders_lists_tables_code_and_inline_markup_as_plain_text() {
        let tree = read_str(
            "# T\n\nSome *em* and `code` and [link](http://x) and <b>html</b>.\n\n\
             - one\n- two\n  - nested\n\n1. first\n2. second\n\n\
             | a | b |\n|---|---|\n| 1 | 2 |\n\n```rust\nfn x() {}\n```\n",
        )
        .tree;
        assert_eq!(
            tree.root.content,
            "Some em and code and link and <b>html</b>.\n\n\
             - one\n- two\n  - nested\n\n1. first\n2. second\n\n\
             | a | b |\n| --- | --- |\n| 1 | 2 |\n\n```rust\nfn x() {}\n```"
        );
    }

    #[test]
    fn setext_headings_and_preamble() {
        let tree = read_str("intro\n\nTitle\n=====\n\nbody\n\nPart\n----\n\nmore\n").tree;
        assert_eq!(tree.root.label, "Title");
        assert_eq!(tree.root.content, "intro\n\nbody");
        assert_eq!(tree.root.children[0].label, "Part");
        assert_eq!(tree.root.children[0].citation, "Title > Part");
    }

    #[test]
    fn without_a_single_leading_h1_the_root_is_the_file() {
        let tree = read_str("# A\n\na\n\n# B\n\nb\n").tree;
        assert_eq!(tree.root.label, "doc");
        assert_eq!(tree.root.kind, "document");
        assert_eq!(tree.root.children.len(), 2);
    }
}
