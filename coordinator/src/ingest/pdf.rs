//! PDF reader: text in reading order, structure from the outline or from heading heuristics.
//!
//! `lopdf` parses the file (and opens PDFs encrypted with an empty user password); `pdf-extract`
//! decodes the text of every page, character by character with position and type size, in
//! content-stream order. Characters become lines (same baseline), lines become paragraph blocks
//! (same type size, normal leading, same page; wrapped lines joined with a space, list items kept
//! on lines of their own, page numbers dropped).
//!
//! When the document has an outline (bookmarks), each bookmark is a heading at its outline depth,
//! found in the text as the first line (or two) at or after its destination page that reads as its
//! title; the text up to the next bookmark is its content. Without an outline, the plain-text
//! heuristics find numbered and larger-type heading lines. A PDF without text (a scan) is an error
//! that says OCR is needed; one without any structure gets one section per paragraph block and a
//! warning.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Once;

use lopdf::{Document, Object, ObjectId};
use pdf_extract::{MediaBox, OutputDev, OutputError, Transform};

use super::heuristics::{self, Block, Found};
use super::outline::{self, Section, join_blocks};
use super::{Format, IngestError, Ingested, MAX_DEPTH};

/// Most outline entries read; more are ignored.
const MAX_BOOKMARKS: usize = 100_000;
/// A new block starts when the baseline drops by more than this many type sizes.
const PARAGRAPH_GAP: f64 = 1.6;
/// Type sizes within this many points are the same size.
const SAME_SIZE_POINTS: f64 = 0.5;

pub(super) fn read(path: &Path, bytes: &[u8]) -> Result<Ingested, IngestError> {
    let document = Document::load_mem(bytes).map_err(|e| corrupt(path, e.to_string()))?;
    if document.is_encrypted() {
        return Err(IngestError::EncryptedPdf {
            path: path.to_owned(),
        });
    }
    let pages = document.get_pages();
    if pages.is_empty() {
        return Err(corrupt(path, "the document has no pages".into()));
    }
    check_pages(path, &document, &pages)?;
    let lines = extract_lines(path, &document)?;
    if lines.is_empty() {
        return Err(IngestError::NoTextLayer {
            path: path.to_owned(),
            pages: pages.len(),
        });
    }
    let bookmarks = bookmarks(&document, &pages);
    let mut warnings = Vec::new();
    if !bookmarks.is_empty() {
        let (preamble, sections, missing) = sections_from_outline(&lines, &bookmarks);
        if !missing.is_empty() {
            warnings.push(format!(
                "{}: {} of {} bookmark(s) not found in the text, their sections are empty: {}",
                path.display(),
                missing.len(),
                bookmarks.len(),
                missing
                    .iter()
                    .take(5)
                    .map(|title| format!("{title:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if missing.len() < bookmarks.len() {
            let mut ingested = outline::build(path, preamble, sections)?;
            ingested.warnings.splice(0..0, warnings);
            return Ok(ingested);
        }
    }
    let recovered = heuristics::recover(blocks(&lines));
    let count = recovered.sections.len();
    let mut ingested = outline::build(path, recovered.preamble, recovered.sections)?;
    if recovered.found == Found::Paragraphs {
        warnings.push(format!(
            "{}: no structure found (no outline, no numbered or larger-type headings): \
             one section per paragraph block ({count} sections)",
            path.display()
        ));
    }
    ingested.warnings.splice(0..0, warnings);
    Ok(ingested)
}

fn corrupt(path: &Path, message: String) -> IngestError {
    IngestError::Corrupt {
        path: path.to_owned(),
        format: Format::Pdf,
        message,
    }
}

/// What the text decoder takes for granted of every page: a dictionary, a media box, content,
/// and form XObjects that do not draw themselves (it follows them by recursion).
fn check_pages(
    path: &Path,
    document: &Document,
    pages: &BTreeMap<u32, ObjectId>,
) -> Result<(), IngestError> {
    for (&number, &id) in pages {
        let page = document
            .get_dictionary(id)
            .map_err(|e| corrupt(path, format!("page {number}: {e}")))?;
        if inherited(document, page, b"MediaBox").is_none() {
            return Err(corrupt(path, format!("page {number} has no media box")));
        }
        document
            .get_page_content(id)
            .map_err(|e| corrupt(path, format!("page {number}: content: {e}")))?;
        if let Some(resources) =
            inherited(document, page, b"Resources").and_then(|r| dictionary(document, r))
        {
            check_forms(document, resources)
                .map_err(|message| corrupt(path, format!("page {number}: {message}")))?;
        }
    }
    Ok(())
}

/// Walk the form XObjects a page draws, depth first and without recursion: a form that draws
/// itself (directly or through others), or nesting deeper than [`MAX_DEPTH`], is an error. A form
/// without resources of its own uses its caller's, as the decoder does.
fn check_forms(document: &Document, page_resources: &lopdf::Dictionary) -> Result<(), String> {
    struct Frame<'d> {
        form: Option<ObjectId>,
        resources: &'d lopdf::Dictionary,
        children: Vec<ObjectId>,
        next: usize,
    }
    let mut stack = vec![Frame {
        form: None,
        resources: page_resources,
        children: forms(document, page_resources),
        next: 0,
    }];
    let mut on_path = HashSet::new();
    let mut done = HashSet::new();
    while let Some(frame) = stack.last_mut() {
        let Some(&child) = frame.children.get(frame.next) else {
            if let Some(form) = frame.form {
                on_path.remove(&form);
                done.insert(form);
            }
            stack.pop();
            continue;
        };
        frame.next += 1;
        if on_path.contains(&child) {
            return Err(format!("form XObject {} {} draws itself", child.0, child.1));
        }
        if done.contains(&child) {
            continue;
        }
        let caller_resources = frame.resources;
        if stack.len() > MAX_DEPTH {
            return Err(format!("form XObjects nest more than {MAX_DEPTH} deep"));
        }
        let resources = document
            .get_object(child)
            .and_then(Object::as_stream)
            .ok()
            .and_then(|form| form.dict.get(b"Resources").ok())
            .and_then(|r| dictionary(document, r))
            .unwrap_or(caller_resources);
        on_path.insert(child);
        stack.push(Frame {
            form: Some(child),
            resources,
            children: forms(document, resources),
            next: 0,
        });
    }
    Ok(())
}

/// The form XObjects named in a resource dictionary.
fn forms(document: &Document, resources: &lopdf::Dictionary) -> Vec<ObjectId> {
    let Some(xobjects) = resources
        .get(b"XObject")
        .ok()
        .and_then(|x| dictionary(document, x))
    else {
        return Vec::new();
    };
    xobjects
        .iter()
        .filter_map(|(_, object)| object.as_reference().ok())
        .filter(|&id| {
            document
                .get_object(id)
                .and_then(Object::as_stream)
                .is_ok_and(|stream| {
                    stream
                        .dict
                        .get(b"Subtype")
                        .and_then(Object::as_name)
                        .is_ok_and(|subtype| subtype == b"Form")
                })
        })
        .collect()
}

/// A page attribute, looked up the page tree (bounded: the tree may be cyclic).
fn inherited<'d>(
    document: &'d Document,
    page: &'d lopdf::Dictionary,
    key: &[u8],
) -> Option<&'d Object> {
    let mut node = page;
    for _ in 0..MAX_DEPTH {
        if let Ok(value) = node.get(key) {
            return Some(value);
        }
        let parent = node.get(b"Parent").and_then(Object::as_reference).ok()?;
        node = document.get_dictionary(parent).ok()?;
    }
    None
}

/// A line of text on a page.
#[derive(Debug, Clone)]
struct Line {
    page: u32,
    /// Baseline, in PDF units from the bottom of the page.
    y: f64,
    /// Type size in points (the largest on the line).
    size: f64,
    text: String,
    /// Where the last character ends, to tell word gaps.
    end_x: f64,
}

/// Collects characters into lines.
#[derive(Default)]
struct Lines {
    page: u32,
    lines: Vec<Line>,
}

impl OutputDev for Lines {
    fn begin_page(
        &mut self,
        page_num: u32,
        _media_box: &MediaBox,
        _art_box: Option<(f64, f64, f64, f64)>,
    ) -> Result<(), OutputError> {
        self.page = page_num;
        Ok(())
    }

    fn end_page(&mut self) -> Result<(), OutputError> {
        Ok(())
    }

    fn output_character(
        &mut self,
        trm: &Transform,
        width: f64,
        _spacing: f64,
        font_size: f64,
        char: &str,
    ) -> Result<(), OutputError> {
        // The size as pdf-extract's own text output computes it: the side of the square with the
        // area of the transformed size vector.
        let sx = font_size * (trm.m11 + trm.m21);
        let sy = font_size * (trm.m12 + trm.m22);
        let size = (sx * sy).abs().sqrt();
        let (x, y) = (trm.m31, trm.m32);
        let blank = char.trim().is_empty();
        let continues = self.lines.last().is_some_and(|line| {
            line.page == self.page
                && (line.y - y).abs() < 0.5 * size.max(line.size)
                && x > line.end_x - 2.0 * size
        });
        if !continues {
            if blank {
                return Ok(());
            }
            self.lines.push(Line {
                page: self.page,
                y,
                size: 0.0,
                text: String::new(),
                end_x: x,
            });
        }
        let Some(line) = self.lines.last_mut() else {
            return Ok(());
        };
        if x > line.end_x + 0.15 * size && !line.text.ends_with(' ') && !blank {
            line.text.push(' ');
        }
        if blank {
            if !line.text.ends_with(' ') {
                line.text.push(' ');
            }
        } else {
            line.text.push_str(char);
            line.size = line.size.max(size);
        }
        line.end_x = x + width * size;
        Ok(())
    }

    fn begin_word(&mut self) -> Result<(), OutputError> {
        Ok(())
    }

    fn end_word(&mut self) -> Result<(), OutputError> {
        Ok(())
    }

    fn end_line(&mut self) -> Result<(), OutputError> {
        Ok(())
    }
}

thread_local! {
    /// Whether this thread is running the text decoder, whose panics are errors, not news.
    static DECODING: Cell<bool> = const { Cell::new(false) };
    /// The message of the decoder's last panic on this thread.
    static DECODER_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Install, once per process, a panic hook that keeps the text decoder's panics (on malformed
/// content: `pdf-extract` unwraps freely) for the error message instead of printing them; every
/// other panic goes to the hook that was there before.
fn quiet_decoder_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if DECODING.with(Cell::get) {
                let message = super::xml::collapse(&info.to_string());
                DECODER_PANIC.with(|last| *last.borrow_mut() = Some(message));
            } else {
                previous(info);
            }
        }));
    });
}

/// The document's text lines, whitespace collapsed, page numbers dropped.
fn extract_lines(path: &Path, document: &Document) -> Result<Vec<Line>, IngestError> {
    let mut collector = Lines::default();
    // The page checks above rule out the decoder's commonest panics; any other one becomes an
    // error here instead of taking the process down.
    quiet_decoder_panics();
    DECODING.with(|decoding| decoding.set(true));
    let decoded = catch_unwind(AssertUnwindSafe(|| {
        pdf_extract::output_doc(document, &mut collector)
    }));
    DECODING.with(|decoding| decoding.set(false));
    match decoded {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(corrupt(path, format!("decoding the text: {e}"))),
        Err(_) => {
            let detail = DECODER_PANIC
                .with(|last| last.borrow_mut().take())
                .unwrap_or_default();
            return Err(corrupt(
                path,
                format!("the text decoder failed on malformed content ({detail})"),
            ));
        }
    }
    let mut lines = collector.lines;
    for line in &mut lines {
        line.text = super::xml::collapse(&line.text);
    }
    lines.retain(|line| !line.text.is_empty() && !is_page_number(&line.text));
    Ok(lines)
}

/// `12`, `- 12 -`, `Page 3`, `Page 3 of 10`.
fn is_page_number(text: &str) -> bool {
    let text = text.trim_matches(|c: char| c == '-' || c == '–' || c.is_whitespace());
    let text = text
        .strip_prefix("Page ")
        .or_else(|| text.strip_prefix("page "))
        .unwrap_or(text);
    let number = text.split(" of ").next().unwrap_or(text);
    !number.is_empty() && number.len() <= 4 && number.bytes().all(|b| b.is_ascii_digit())
}

/// Group lines into paragraph blocks; see the module documentation.
fn blocks(lines: &[Line]) -> Vec<Block> {
    let mut blocks: Vec<Block> = Vec::new();
    let mut previous: Option<&Line> = None;
    for line in lines {
        let continues = previous.is_some_and(|prev| {
            prev.page == line.page
                && (prev.size - line.size).abs() <= SAME_SIZE_POINTS
                && prev.y > line.y
                && prev.y - line.y <= PARAGRAPH_GAP * line.size
        });
        match blocks.last_mut() {
            Some(block) if continues => {
                let separator = if starts_list_item(&line.text) {
                    "\n"
                } else if ends_in_hyphen(&block.text) && line.text.starts_with(char::is_lowercase) {
                    ""
                } else {
                    " "
                };
                block.text.push_str(separator);
                block.text.push_str(&line.text);
            }
            _ => blocks.push(Block {
                text: line.text.clone(),
                line: None,
                size: Some(line.size as f32),
            }),
        }
        previous = Some(line);
    }
    blocks
}

fn starts_list_item(text: &str) -> bool {
    ["- ", "• ", "* ", "– "].iter().any(|m| text.starts_with(m))
        || text.split_once(' ').is_some_and(|(first, _)| {
            let inner = first
                .strip_prefix('(')
                .and_then(|f| f.strip_suffix(')'))
                .or_else(|| first.strip_suffix('.'))
                .unwrap_or("");
            !inner.is_empty()
                && inner.len() <= 3
                && inner.chars().all(|c| c.is_ascii_alphanumeric())
        })
}

fn ends_in_hyphen(text: &str) -> bool {
    let mut chars = text.chars().rev();
    chars.next() == Some('-') && chars.next().is_some_and(char::is_alphabetic)
}

/// An outline entry: depth (1 = top), title, destination page if known.
#[derive(Debug, Clone)]
struct Bookmark {
    level: usize,
    title: String,
    page: Option<u32>,
}

/// The outline in document order. Walked without recursion, each entry once, so a cyclic or
/// deep outline ends; entries without a title are skipped.
fn bookmarks(document: &Document, pages: &BTreeMap<u32, ObjectId>) -> Vec<Bookmark> {
    let page_numbers: BTreeMap<ObjectId, u32> = pages.iter().map(|(&n, &id)| (id, n)).collect();
    let first = document
        .catalog()
        .ok()
        .and_then(|catalog| catalog.get(b"Outlines").ok())
        .and_then(|outlines| dictionary(document, outlines))
        .and_then(|outlines| outlines.get(b"First").ok())
        .and_then(|first| first.as_reference().ok());
    let mut bookmarks = Vec::new();
    let mut seen = HashSet::new();
    // Pre-order: an entry, then its children, then its next sibling.
    let mut stack: Vec<(ObjectId, usize)> = first.map(|id| (id, 1)).into_iter().collect();
    while let Some((id, level)) = stack.pop() {
        if !seen.insert(id) || bookmarks.len() >= MAX_BOOKMARKS {
            continue;
        }
        let Ok(entry) = document.get_dictionary(id) else {
            continue;
        };
        if let Ok(next) = entry.get(b"Next").and_then(Object::as_reference) {
            stack.push((next, level));
        }
        if level < MAX_DEPTH
            && let Ok(child) = entry.get(b"First").and_then(Object::as_reference)
        {
            stack.push((child, level + 1));
        }
        let title = entry
            .get(b"Title")
            .ok()
            .and_then(|title| resolve(document, title))
            .and_then(|title| lopdf::decode_text_string(title).ok())
            .map(|title| super::xml::collapse(&title))
            .unwrap_or_default();
        if title.is_empty() {
            continue;
        }
        bookmarks.push(Bookmark {
            level,
            title,
            page: destination_page(document, entry, &page_numbers),
        });
    }
    bookmarks
}

fn resolve<'d>(document: &'d Document, object: &'d Object) -> Option<&'d Object> {
    match object {
        Object::Reference(id) => document.get_object(*id).ok(),
        other => Some(other),
    }
}

fn dictionary<'d>(document: &'d Document, object: &'d Object) -> Option<&'d lopdf::Dictionary> {
    resolve(document, object)?.as_dict().ok()
}

/// The page an outline entry points at: an explicit destination, or a GoTo action's. Named
/// destinations give no page (the title is then searched from the previous bookmark on).
fn destination_page(
    document: &Document,
    entry: &lopdf::Dictionary,
    page_numbers: &BTreeMap<ObjectId, u32>,
) -> Option<u32> {
    let destination = match entry.get(b"Dest") {
        Ok(destination) => destination,
        Err(_) => dictionary(document, entry.get(b"A").ok()?)?
            .get(b"D")
            .ok()?,
    };
    let array = resolve(document, destination)?.as_array().ok()?;
    let page = array.first()?.as_reference().ok()?;
    page_numbers.get(&page).copied()
}

/// Lower-cased, whitespace collapsed: how titles and lines are compared.
fn comparable(text: &str) -> String {
    super::xml::collapse(text).to_lowercase()
}

/// Whether `line` (or `line` and the next, for a wrapped heading) reads as `title`: equal, or the
/// title followed by more words. Returns how many lines the heading takes.
fn heading_lines(title: &str, line: &str, next: Option<&str>) -> Option<usize> {
    let starts_with_title = |text: &str| {
        text.strip_prefix(title)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '.', ':']))
    };
    if starts_with_title(line) {
        return Some(1);
    }
    let joined = format!("{line} {}", next?);
    (title.starts_with(line) && starts_with_title(&joined)).then_some(2)
}

/// Sections from the outline: each bookmark's heading is looked for in the lines after the
/// previous one's, on or after its page. Returns the preamble, the sections and the titles of
/// bookmarks not found.
fn sections_from_outline(
    lines: &[Line],
    bookmarks: &[Bookmark],
) -> (String, Vec<Section>, Vec<String>) {
    let texts: Vec<String> = lines.iter().map(|line| comparable(&line.text)).collect();
    // (bookmark index, first line of its heading, first line after it)
    let mut found: Vec<(usize, usize, usize)> = Vec::new();
    let mut missing = Vec::new();
    let mut cursor = 0;
    for (index, bookmark) in bookmarks.iter().enumerate() {
        let title = comparable(&bookmark.title);
        let hit = (cursor..lines.len()).find_map(|i| {
            if bookmark.page.is_some_and(|page| lines[i].page < page) {
                return None;
            }
            heading_lines(&title, &texts[i], texts.get(i + 1).map(String::as_str))
                .map(|taken| (i, i + taken))
        });
        match hit {
            Some((start, end)) => {
                found.push((index, start, end));
                cursor = end;
            }
            None => missing.push(bookmark.title.clone()),
        }
    }
    let text_of = |range: std::ops::Range<usize>| {
        blocks(&lines[range])
            .into_iter()
            .map(|block| block.text)
            .fold(String::new(), join_blocks)
    };
    let preamble = text_of(0..found.first().map_or(lines.len(), |&(_, start, _)| start));
    let mut sections = Vec::new();
    let mut found_iter = found.iter().peekable();
    for (index, bookmark) in bookmarks.iter().enumerate() {
        let content = match found_iter.peek() {
            Some(&&(i, _, end)) if i == index => {
                found_iter.next();
                let next_start = found_iter
                    .peek()
                    .map_or(lines.len(), |&&(_, start, _)| start);
                text_of(end..next_start)
            }
            _ => String::new(),
        };
        sections.push(Section {
            level: bookmark.level,
            line: None,
            label: bookmark.title.clone(),
            content,
        });
    }
    (preamble, sections, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(page: u32, y: f64, size: f64, text: &str) -> Line {
        Line {
            page,
            y,
            size,
            text: text.into(),
            end_x: 0.0,
        }
    }

    #[test]
    fn lines_become_blocks_by_size_and_leading() {
        let lines = [
            line(1, 700.0, 14.0, "Part 1 General"),
            line(1, 680.0, 10.0, "The debt-to-"),
            line(1, 668.0, 10.0, "income ratio wraps here:"),
            line(1, 656.0, 10.0, "- a list item"),
            line(1, 630.0, 10.0, "Second paragraph."),
            line(2, 700.0, 10.0, "Next page."),
        ];
        let texts: Vec<String> = blocks(&lines).into_iter().map(|b| b.text).collect();
        assert_eq!(
            texts,
            [
                "Part 1 General",
                "The debt-to-income ratio wraps here:\n- a list item",
                "Second paragraph.",
                "Next page."
            ]
        );
    }

    #[test]
    fn page_numbers_are_recognised() {
        for text in ["12", "- 3 -", "Page 4", "Page 4 of 10"] {
            assert!(is_page_number(text), "{text}");
        }
        for text in ["2024 was a year", "Section 4", "Page layout"] {
            assert!(!is_page_number(text), "{text}");
        }
    }

    #[test]
    fn bookmarks_find_their_headings_after_their_page() {
        let lines = [
            line(1, 700.0, 10.0, "Contents"),
            line(1, 680.0, 10.0, "Scope"),
            line(2, 700.0, 10.0, "Scope"),
            line(2, 680.0, 10.0, "Applies to all."),
            line(2, 650.0, 10.0, "A very long heading"),
            line(2, 638.0, 10.0, "that wraps"),
            line(2, 620.0, 10.0, "Body."),
        ];
        let bookmarks = [
            Bookmark {
                level: 1,
                title: "Scope".into(),
                page: Some(2),
            },
            Bookmark {
                level: 2,
                title: "A very long heading that wraps".into(),
                page: Some(2),
            },
            Bookmark {
                level: 1,
                title: "Nowhere".into(),
                page: None,
            },
        ];
        let (preamble, sections, missing) = sections_from_outline(&lines, &bookmarks);
        assert_eq!(preamble, "Contents\n\nScope");
        let contents: Vec<&str> = sections.iter().map(|s| s.content.as_str()).collect();
        assert_eq!(contents, ["Applies to all.", "Body.", ""]);
        assert_eq!(missing, ["Nowhere"]);
    }
}
