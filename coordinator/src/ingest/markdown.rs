//! Markdown reader: headings make the tree, the text between two headings is a section's content.
//!
//! Content is rendered back to plain, markdown-like text (paragraphs separated by blank lines, list
//! items as `- item`, table rows as `| a | b |`, code and link text kept). A paragraph, heading or
//! table cell with inline HTML, and an HTML block, is rendered to the text a reader sees by the
//! HTML reader's renderer ([`html::fragment_text`](super::html::fragment_text)): tags removed,
//! entities decoded, `<li>`, `<p>`, `<br>` on lines of their own, scripts and styles and footnote
//! back-link arrows dropped. An indented block inside an element an HTML block left open (a
//! tab-indented `<li>` after `<ul>` and a blank line) is HTML, as browsers read it, not code.
//! Front matter (YAML `---` or TOML `+++`) is dropped. The sections become a tree as
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
    text: Collected,
}

/// The text of a block, heading or table cell as it is read: plain text, and once raw HTML
/// appears in it, all of it as HTML (the plain text escaped), rendered to text when it ends.
#[derive(Default)]
struct Collected {
    text: String,
    html: Option<String>,
}

impl Collected {
    fn push_text(&mut self, text: &str) {
        self.text.push_str(text);
        if let Some(html) = &mut self.html {
            push_escaped(html, text);
        }
    }

    fn push_html(&mut self, raw: &str) {
        let text = &self.text;
        self.html
            .get_or_insert_with(|| {
                let mut html = String::new();
                push_escaped(&mut html, text);
                html
            })
            .push_str(raw);
    }

    /// The text as a reader sees it.
    fn into_text(self) -> String {
        match self.html {
            Some(html) => super::html::fragment_text(&html),
            None => self.text,
        }
    }
}

/// Markdown's text in HTML: escaped, its line breaks (hard breaks, code block lines) kept as `<br>`.
fn push_escaped(html: &mut String, text: &str) {
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            html.push_str("<br>\n");
        }
        html_escape::encode_text_to_string(line, html);
    }
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
    block: Collected,
    /// Open table cell, table row and finished table rows.
    cell: Option<Collected>,
    row: Vec<String>,
    table: Vec<String>,
    /// Open lists, innermost last: the next number of an ordered list, `None` for bullets.
    lists: Vec<Option<u64>>,
    /// List marker waiting for the first line of its item.
    marker: Option<String>,
    quotes: usize,
    in_metadata: bool,
    /// The element an HTML block opened and no HTML block has closed yet (`ul` of `<ul>`).
    open_html_element: Option<String>,
    /// The indented code block being read is HTML inside that element.
    code_is_html: bool,
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
            block: Collected::default(),
            cell: None,
            row: Vec::new(),
            table: Vec::new(),
            lists: Vec::new(),
            marker: None,
            quotes: 0,
            in_metadata: false,
            open_html_element: None,
            code_is_html: false,
            last_in_list: false,
        }
    }

    fn event(&mut self, event: Event<'_>, offset: usize) {
        match event {
            Event::Start(tag) => self.start(tag, offset),
            Event::End(tag) => self.end(tag),
            Event::Text(_) if self.in_metadata => {}
            Event::Text(html) if self.code_is_html => self.block.push_html(&html),
            Event::Text(text)
            | Event::Code(text)
            | Event::InlineMath(text)
            | Event::DisplayMath(text) => self.text(&text),
            Event::InlineHtml(html) | Event::Html(html) => self.collected().push_html(&html),
            Event::FootnoteReference(name) => self.text(&format!("[^{name}]")),
            Event::SoftBreak => self.text(" "),
            Event::HardBreak => self.text("\n"),
            Event::Rule => {
                self.flush();
                self.block.push_text("---");
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
                    text: Collected::default(),
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
            Tag::CodeBlock(CodeBlockKind::Indented) if self.open_html_element.is_some() => {
                self.flush();
                self.code_is_html = true;
            }
            Tag::CodeBlock(kind) => {
                self.flush();
                self.block.push_text("```");
                if let CodeBlockKind::Fenced(info) = kind {
                    self.block.push_text(&info);
                }
                self.block.push_text("\n");
            }
            Tag::TableHead | Tag::TableRow => self.row.clear(),
            Tag::TableCell => self.cell = Some(Collected::default()),
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
            TagEnd::CodeBlock if self.code_is_html => {
                self.code_is_html = false;
                self.flush();
            }
            TagEnd::HtmlBlock => {
                let html = self.block.html.as_deref().unwrap_or_default();
                self.open_html_element = match self.open_html_element.take() {
                    Some(open) if !closes(html, &open) => Some(open),
                    Some(_) => None,
                    None => left_open(html),
                };
                self.flush();
            }
            TagEnd::CodeBlock => {
                let code = &mut self.block.text;
                code.truncate(code.trim_end_matches('\n').len());
                code.push_str("\n```");
                self.flush();
            }
            TagEnd::TableCell => {
                let cell = self.cell.take().unwrap_or_default().into_text();
                self.row.push(super::xml::collapse(&cell));
            }
            TagEnd::TableHead => {
                let separator = vec!["---".to_owned(); self.row.len()];
                self.table.push(table_row(&self.row));
                self.table.push(table_row(&separator));
            }
            TagEnd::TableRow => self.table.push(table_row(&self.row)),
            TagEnd::Table => {
                let table = std::mem::take(&mut self.table).join("\n");
                self.block.push_text(&table);
                self.flush();
            }
            TagEnd::Paragraph
            | TagEnd::Heading(_)
            | TagEnd::Item
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
        self.collected().push_text(text);
    }

    /// Where text goes: the open heading, else the open table cell, else the block.
    fn collected(&mut self) -> &mut Collected {
        if let Some(heading) = &mut self.heading {
            &mut heading.text
        } else if let Some(cell) = &mut self.cell {
            cell
        } else {
            &mut self.block
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
            label: super::xml::collapse(&heading.text.into_text()),
            content: String::new(),
        });
        self.last_in_list = false;
    }

    /// Write the block being built into the section's content, with list and quote prefixes.
    fn flush(&mut self) {
        let block = std::mem::take(&mut self.block).into_text();
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

/// The element an HTML block starts with, when the block does not close it: `ul` of
/// `<ul style="...">` alone on its lines.
fn left_open(html: &str) -> Option<String> {
    const VOID: [&str; 13] = [
        "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr",
    ];
    let name: String = html
        .trim_start()
        .strip_prefix('<')?
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_lowercase();
    (!name.is_empty() && !VOID.contains(&name.as_str()) && !closes(html, &name)).then_some(name)
}

/// Whether the HTML has the end tag of `element`.
fn closes(html: &str, element: &str) -> bool {
    html.to_ascii_lowercase().contains(&format!("</{element}"))
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
            "Some em and code and link and html.\n\n\
             - one\n- two\n  - nested\n\n1. first\n2. second\n\n\
             | a | b |\n| --- | --- |\n| 1 | 2 |\n\n```rust\nfn x() {}\n```"
        );
    }

    /// Inline HTML, HTML blocks, and a tab-indented `<li>` inside the `<ul>` an HTML block left
    /// open (an indented code block to CommonMark).
    #[test]
    fn inline_and_block_html_is_rendered_to_the_text_a_reader_sees() {
        let ingested = read_str(
            "# Policy<br/>Memo\n\n\
             Agencies spend money.<sup id=\"fnr1\"><a href=\"#fn1\">1</a></sup> More &amp; <b>more</b>.\n\n\
             <ol type=\"i\">\n  <li>First <em>item</em>;</li>\n  <li>Second &amp; last.</li>\n</ol>\n\
             <script>var hidden = 1;</script>\n\n\
             Line one<br/>line two <style>p { color: red }</style>\n\n\
             | a | b |\n|---|---|\n| x<br>y | &lt;z&gt; |\n\n\
             <ul style=\"list-style-type:none\">\n\n\
             \t<li id=\"fn1\"><sup>1</sup> See <a href=\"https://example.gov\">example.gov</a>. <a href=\"#fnr1\">&#8617;</a></li>\n\n\
             </ul>\n",
        );
        let root = &ingested.tree.root;
        assert_eq!(root.label, "Policy Memo");
        assert_eq!(
            root.content,
            "Agencies spend money.\u{b9} More & more.\n\n\
             1. First item;\n2. Second & last.\n\n\
             Line one\nline two\n\n\
             | a | b |\n| --- | --- |\n| x y | <z> |\n\n\
             - \u{b9} See example.gov."
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
