//! HTML reader: `h1`-`h6` make the tree, the text between two headings is a section's content.
//!
//! Only the main content is read: the `<main>` element (or `role="main"`), else the page's one
//! `<article>`, else `<body>` without its top-level `<header>` and `<footer>`. Navigation, asides,
//! scripts, styles, forms' controls, hidden elements and ARIA banners are dropped. Content is
//! rendered like the markdown reader's: paragraphs separated by blank lines, list items as
//! `- item` or `1. item`, table rows as `| a | b |`, `<pre>` kept as written, digits in `<sup>` as
//! superscript digits (`¹`), footnote back-link arrows (`↩`) dropped. A page without headings
//! goes through the plain-text heuristics with a warning. Parsing is html5ever's (via `scraper`),
//! which repairs any tag soup into a tree; the tree is walked without recursion. The same
//! rendering turns HTML inside markdown into text ([`fragment_text`]).

use std::path::Path;

use ego_tree::NodeId;
use ego_tree::iter::Edge;
use scraper::{ElementRef, Html, Node, Selector};

use super::outline::{self, Piece};
use super::{IngestError, Ingested};

/// List nesting beyond this is not indented further.
const MAX_INDENT: usize = 8;

pub(super) fn read(path: &Path, text: &str) -> Result<Ingested, IngestError> {
    let document = Html::parse_document(text);
    let (content, is_body) = main_content(&document);
    let pieces = Renderer::new(content.id(), is_body, true).render(content);
    outline::from_pieces(path, pieces, "h1-h6 headings")
}

/// An HTML fragment (markdown's inline HTML and HTML blocks) as the text a reader sees, rendered
/// as pages are: tags removed, entities decoded, scripts and styles dropped, paragraphs separated
/// by blank lines, list items and `<br>` on lines of their own. Headings are text here, not
/// structure.
pub(super) fn fragment_text(html: &str) -> String {
    let fragment = Html::parse_fragment(html);
    let root = fragment.root_element();
    let mut text = String::new();
    let mut last_was_list_item = false;
    for piece in Renderer::new(root.id(), false, false).render(root) {
        if let Piece::Block {
            text: block,
            list_item,
        } = piece
        {
            if !text.is_empty() {
                text.push_str(if list_item && last_was_list_item {
                    "\n"
                } else {
                    "\n\n"
                });
            }
            text.push_str(&block);
            last_was_list_item = list_item;
        }
    }
    text
}

/// Whether text (trimmed at the start) opens like an HTML page: a doctype or an `<html>`,
/// `<head>` or `<body>` tag, after any comments.
pub(super) fn opens_like_html(start: &str) -> bool {
    let mut rest = start;
    while let Some(comment) = rest.strip_prefix("<!--") {
        match comment.find("-->") {
            Some(end) => rest = comment[end + 3..].trim_start(),
            None => return false,
        }
    }
    let head: String = rest
        .chars()
        .take(16)
        .collect::<String>()
        .to_ascii_lowercase();
    head.starts_with("<!doctype html")
        || ["<html", "<head", "<body"].iter().any(|tag| {
            head.strip_prefix(tag)
                .is_some_and(|after| after.starts_with(|c: char| c == '>' || c.is_whitespace()))
        })
}

/// The element holding the page's main content, and whether it is the whole `<body>`.
fn main_content(document: &Html) -> (ElementRef<'_>, bool) {
    let selector = |css: &str| Selector::parse(css).expect("a valid built-in selector");
    if let Some(main) = document.select(&selector("main, [role=main]")).next() {
        return (main, false);
    }
    let article = selector("article");
    let mut articles = document.select(&article);
    if let (Some(article), None) = (articles.next(), articles.next()) {
        return (article, false);
    }
    match document.select(&selector("body")).next() {
        Some(body) => (body, true),
        None => (document.root_element(), true),
    }
}

/// Elements whose content is never principle text.
fn is_dropped(element: &scraper::node::Element) -> bool {
    const DROPPED: [&str; 17] = [
        "script", "style", "noscript", "template", "nav", "aside", "head", "title", "svg", "math",
        "iframe", "object", "canvas", "button", "select", "textarea", "dialog",
    ];
    DROPPED.contains(&element.name())
        || element.attr("hidden").is_some()
        || element.attr("aria-hidden") == Some("true")
        || element.attr("role").is_some_and(|role| {
            [
                "navigation",
                "banner",
                "contentinfo",
                "complementary",
                "search",
            ]
            .contains(&role)
        })
}

fn is_block(name: &str) -> bool {
    matches!(
        name,
        "p" | "div"
            | "section"
            | "article"
            | "main"
            | "header"
            | "footer"
            | "blockquote"
            | "address"
            | "figure"
            | "figcaption"
            | "details"
            | "summary"
            | "dl"
            | "dt"
            | "dd"
            | "fieldset"
            | "legend"
            | "center"
            | "form"
            | "caption"
            | "hr"
            | "body"
    )
}

fn heading_level(name: &str) -> Option<usize> {
    match name {
        "h1" => Some(1),
        "h2" => Some(2),
        "h3" => Some(3),
        "h4" => Some(4),
        "h5" => Some(5),
        "h6" => Some(6),
        _ => None,
    }
}

/// The arrow of a footnote's link back to its reference.
const BACK_LINK_ARROW: char = '\u{21a9}';

/// `39` → `³⁹`: a footnote number as a reader sees it.
fn superscript_digits(digits: &str) -> String {
    const SUPERSCRIPTS: [char; 10] = ['⁰', '¹', '²', '³', '⁴', '⁵', '⁶', '⁷', '⁸', '⁹'];
    digits
        .bytes()
        .map(|b| SUPERSCRIPTS[usize::from(b - b'0')])
        .collect()
}

/// An open table: finished rows, the open row's cells, the open cell.
#[derive(Default)]
struct Table {
    rows: Vec<String>,
    row: Vec<String>,
    header_row: bool,
    cell: Option<String>,
}

/// Turns the element tree into heading and block pieces.
struct Renderer {
    root: NodeId,
    /// The content is the whole body: its own header and footer are page chrome.
    is_body: bool,
    /// Whether `h1`-`h6` are headings (a page) or text (a fragment inside another format).
    reads_headings: bool,
    pieces: Vec<Piece>,
    /// An element being skipped with everything in it.
    skipping: Option<NodeId>,
    heading: Option<(usize, String)>,
    block: String,
    /// Open lists, innermost last: the next number of an ordered list, `None` for bullets.
    lists: Vec<Option<u64>>,
    /// List marker waiting for the first block of its item.
    marker: Option<String>,
    table: Option<Table>,
    /// Depth of tables inside the open table's cells (their cells become words of the cell).
    inner_tables: usize,
    preformatted: usize,
    /// Depth of open `<sup>` elements.
    superscript: usize,
}

impl Renderer {
    fn new(root: NodeId, is_body: bool, reads_headings: bool) -> Self {
        Renderer {
            root,
            is_body,
            reads_headings,
            pieces: Vec::new(),
            skipping: None,
            heading: None,
            block: String::new(),
            lists: Vec::new(),
            marker: None,
            table: None,
            inner_tables: 0,
            preformatted: 0,
            superscript: 0,
        }
    }

    fn render(mut self, content: ElementRef<'_>) -> Vec<Piece> {
        for edge in content.traverse() {
            match edge {
                Edge::Open(node) => {
                    if self.skipping.is_some() {
                        continue;
                    }
                    match node.value() {
                        Node::Text(text) => self.text(&text[..]),
                        Node::Element(element) => {
                            let chrome = self.is_body
                                && matches!(element.name(), "header" | "footer")
                                && node.parent().is_some_and(|p| p.id() == self.root);
                            if is_dropped(element) || chrome {
                                self.skipping = Some(node.id());
                            } else {
                                self.open(element);
                            }
                        }
                        _ => {}
                    }
                }
                Edge::Close(node) => {
                    if self.skipping == Some(node.id()) {
                        self.skipping = None;
                    } else if self.skipping.is_none()
                        && let Node::Element(element) = node.value()
                    {
                        self.close(element.name());
                    }
                }
            }
        }
        self.flush();
        self.pieces
    }

    fn open(&mut self, element: &scraper::node::Element) {
        let name = element.name();
        if name == "sup" {
            self.superscript += 1;
        }
        if let Some(table) = &mut self.table {
            match name {
                "table" => self.inner_tables += 1,
                "tr" if self.inner_tables == 0 => {
                    table.row.clear();
                    table.header_row = true;
                }
                "td" | "th" if self.inner_tables == 0 => {
                    table.cell = Some(String::new());
                    table.header_row &= name == "th";
                }
                "br" | "p" | "div" | "li" | "td" | "th" | "tr" => self.text(" "),
                _ => {}
            }
            return;
        }
        if let Some(level) = heading_level(name)
            && self.lists.is_empty()
            && self.reads_headings
        {
            self.flush();
            self.heading = Some((level, String::new()));
            return;
        }
        match name {
            "br" => self.push("\n"),
            "pre" => {
                self.flush();
                self.preformatted += 1;
            }
            "ul" | "ol" => {
                self.flush();
                let start = element.attr("start").and_then(|s| s.trim().parse().ok());
                self.lists
                    .push((name == "ol").then_some(start.unwrap_or(1)));
            }
            "li" => {
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
            "table" => {
                self.flush();
                self.table = Some(Table::default());
            }
            "hr" => {
                self.flush();
                self.block.push_str("---");
                self.flush();
            }
            _ if is_block(name) || self.heading_as_text(name) => self.flush(),
            _ => {}
        }
    }

    /// A heading of a fragment: a block of text.
    fn heading_as_text(&self, name: &str) -> bool {
        !self.reads_headings && heading_level(name).is_some()
    }

    fn close(&mut self, name: &str) {
        if name == "sup" {
            self.superscript = self.superscript.saturating_sub(1);
        }
        if let Some(table) = &mut self.table {
            match name {
                "table" if self.inner_tables > 0 => self.inner_tables -= 1,
                "table" => {
                    let table = self.table.take().unwrap_or_default();
                    self.block = table.rows.join("\n");
                    self.flush();
                }
                "td" | "th" if self.inner_tables == 0 => {
                    let cell = table.cell.take().unwrap_or_default();
                    table.row.push(super::xml::collapse(&cell));
                }
                "tr" if self.inner_tables == 0 && !table.row.is_empty() => {
                    table.rows.push(format!("| {} |", table.row.join(" | ")));
                    if table.header_row && table.rows.len() == 1 {
                        let separator = vec!["---"; table.row.len()];
                        table.rows.push(format!("| {} |", separator.join(" | ")));
                    }
                }
                _ => {}
            }
            return;
        }
        if heading_level(name).is_some() && self.heading.is_some() {
            if let Some((level, text)) = self.heading.take() {
                self.pieces.push(Piece::Heading { level, text });
            }
            return;
        }
        match name {
            "pre" => {
                self.flush();
                self.preformatted = self.preformatted.saturating_sub(1);
            }
            "ul" | "ol" => {
                self.flush();
                self.lists.pop();
            }
            "li" => self.flush(),
            _ if is_block(name) || self.heading_as_text(name) => self.flush(),
            _ => {}
        }
    }

    fn text(&mut self, text: &str) {
        // A footnote's back-link arrow (`↩`, with or without its text/emoji variant selector)
        // points the browser back to the reference; it is no text of the document.
        let without_arrows;
        let text = if text.contains(BACK_LINK_ARROW) {
            without_arrows = text
                .replace(BACK_LINK_ARROW, "")
                .replace(['\u{fe0e}', '\u{fe0f}'], "");
            &without_arrows
        } else {
            text
        };
        if self.preformatted > 0 && self.heading.is_none() && self.table.is_none() {
            self.block.push_str(text);
            return;
        }
        if self.superscript > 0
            && !text.trim().is_empty()
            && text.trim().bytes().all(|b| b.is_ascii_digit())
        {
            self.push(&superscript_digits(text.trim()));
            return;
        }
        // Runs of whitespace are one space, as a browser shows them.
        let mut collapsed = String::with_capacity(text.len());
        let mut space = false;
        for c in text.chars() {
            if c.is_whitespace() {
                space = true;
            } else {
                if space {
                    collapsed.push(' ');
                    space = false;
                }
                collapsed.push(c);
            }
        }
        if space {
            collapsed.push(' ');
        }
        self.push(&collapsed);
    }

    fn push(&mut self, text: &str) {
        if let Some(table) = &mut self.table {
            if let Some(cell) = &mut table.cell {
                cell.push_str(text);
            }
        } else if let Some((_, heading)) = &mut self.heading {
            heading.push_str(text);
        } else {
            self.block.push_str(text);
        }
    }

    /// Write the block being built as a piece, with its list marker and indentation.
    fn flush(&mut self) {
        let block = std::mem::take(&mut self.block);
        let lines: Vec<&str> = block
            .split('\n')
            .map(|line| {
                if self.preformatted > 0 {
                    line.trim_end()
                } else {
                    line.trim()
                }
            })
            .skip_while(|line| line.is_empty())
            .collect();
        let lines = match lines.iter().rposition(|line| !line.is_empty()) {
            Some(last) => &lines[..=last],
            None => return,
        };
        let list_item = !self.lists.is_empty();
        let indent = "  ".repeat(self.lists.len().saturating_sub(1).min(MAX_INDENT));
        let mut marker = self.marker.take();
        let mut text = String::new();
        for (i, line) in lines.iter().enumerate() {
            if i > 0 {
                text.push('\n');
            }
            text.push_str(&indent);
            match marker.take() {
                Some(marker) => text.push_str(&marker),
                None if list_item => text.push_str("  "),
                None => {}
            }
            text.push_str(line);
        }
        self.pieces.push(Piece::Block { text, list_item });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_str(html: &str) -> Ingested {
        read(Path::new("page.html"), html).expect("valid HTML")
    }

    #[test]
    fn headings_lists_tables_and_chrome() {
        let ingested = read_str(
            "<!DOCTYPE html><html><head><title>x</title><style>p{}</style></head><body>\
             <header><nav><a href=/>Home</a></nav></header>\
             <h1>Policy</h1><p>Intro   text\n with <b>bold</b>.</p><script>var x;</script>\
             <h2>Fees</h2><ul><li>one</li><li>two<ol><li>inner</li></ol></li></ul>\
             <table><tr><th>item</th><th>fee</th></tr><tr><td>copy</td><td>$1</td></tr></table>\
             <pre>a\n  b</pre><footer>Copyright</footer></body></html>",
        );
        let root = &ingested.tree.root;
        assert_eq!(root.label, "Policy");
        assert_eq!(root.content, "Intro text with bold.");
        assert_eq!(root.children[0].label, "Fees");
        assert_eq!(
            root.children[0].content,
            "- one\n- two\n  1. inner\n\n| item | fee |\n| --- | --- |\n| copy | $1 |\n\na\n  b"
        );
        assert!(ingested.warnings.is_empty());
    }

    #[test]
    fn footnote_numbers_are_superscripts_and_back_links_are_dropped() {
        let root = read_str(
            "<body><h1>Policy</h1><p>Agencies spend money.<sup><a href=#fn1>1</a></sup> \
             The 1<sup>st</sup> rule.</p><ol><li id=fn1><sup>12</sup> A note. \
             <a href=#fnr1>&#8617;&#xFE0E;</a></li></ol></body>",
        )
        .tree
        .root;
        assert_eq!(
            root.content,
            "Agencies spend money.\u{b9} The 1st rule.\n\n1. \u{b9}\u{b2} A note."
        );
    }

    #[test]
    fn main_element_is_the_content() {
        let tree = read_str(
            "<body><h1>Site name</h1><main><h1>Rules</h1><p>Text.</p></main><h2>Other</h2></body>",
        )
        .tree;
        assert_eq!(tree.root.label, "Rules");
        assert!(tree.root.children.is_empty());
    }

    #[test]
    fn a_fragment_is_its_text_with_headings_as_text() {
        assert_eq!(
            fragment_text("<h3> FROM: <br/>A<br/>B</h3><p>x &amp; y</p><style>p {}</style>"),
            "FROM:\nA\nB\n\nx & y"
        );
    }

    #[test]
    fn html_is_told_by_its_opening() {
        assert!(opens_like_html("<!DOCTYPE html>\n<html>"));
        assert!(opens_like_html("<!-- saved -->\n<HTML lang=en>"));
        assert!(opens_like_html("<body>"));
        assert!(!opens_like_html("<p align=center>logo</p>\n# Title"));
        assert!(!opens_like_html("<html-ish>"));
    }
}
