//! DOCX reader: the document's heading styles and outline levels make the tree.
//!
//! A DOCX file is a zip archive (read with `zip`) of XML parts (streamed with quick-xml). A
//! paragraph is a heading when its style, or a style it is based on, is named `heading N` (level
//! N) or `Title` (the document's title), or declares an outline level; an outline level set on the
//! paragraph itself wins. List paragraphs (`w:numPr`) become `- item` or `1. item` lines with the
//! numbering format of `numbering.xml`; tables become `| a | b |` rows; tabs and line breaks are
//! kept. Only the body is read: headers, footers, comments and footnotes live in other parts, and
//! the fallback copy of text boxes (`mc:Fallback`) and table-of-contents paragraphs are skipped. A document without heading styles
//! goes through the plain-text heuristics with a warning.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;

use quick_xml::events::BytesStart;

use super::outline::{self, Piece};
use super::xml::{XmlEvent, XmlReader, local_name};
use super::{Format, IngestError, Ingested};

/// Largest XML part read (decompressed), against zip bombs.
const MAX_PART_BYTES: u64 = 256 * 1024 * 1024;
/// Longest `basedOn` chain followed.
const MAX_STYLE_CHAIN: usize = 16;
/// List nesting beyond this is not indented further.
const MAX_INDENT: usize = 8;

pub(super) fn read(path: &Path, bytes: &[u8]) -> Result<Ingested, IngestError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| corrupt(path, format!("not a zip archive ({e})")))?;
    let Some(document) = part(path, &mut archive, "word/document.xml")? else {
        return Err(corrupt(
            path,
            "the zip archive has no word/document.xml (not a Word document)".into(),
        ));
    };
    let styles = match part(path, &mut archive, "word/styles.xml")? {
        Some(xml) => Styles::read(&path.join("word/styles.xml"), &xml)?,
        None => Styles::default(),
    };
    let numbering = match part(path, &mut archive, "word/numbering.xml")? {
        Some(xml) => Numbering::read(&path.join("word/numbering.xml"), &xml)?,
        None => Numbering::default(),
    };
    let pieces = Body::new(&styles, numbering).read(&path.join("word/document.xml"), &document)?;
    outline::from_pieces(path, pieces, "heading styles or outline levels")
}

fn corrupt(path: &Path, message: String) -> IngestError {
    IngestError::Corrupt {
        path: path.to_owned(),
        format: Format::Docx,
        message,
    }
}

/// The text of a part of the archive, or `None` if there is no such part.
fn part(
    path: &Path,
    archive: &mut zip::ZipArchive<Cursor<&[u8]>>,
    name: &str,
) -> Result<Option<String>, IngestError> {
    let file = match archive.by_name(name) {
        Ok(file) => file,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(corrupt(path, format!("{name}: {e}"))),
    };
    let mut bytes = Vec::new();
    file.take(MAX_PART_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| corrupt(path, format!("{name}: {e}")))?;
    if bytes.len() as u64 > MAX_PART_BYTES {
        return Err(corrupt(
            path,
            format!("{name} is larger than {MAX_PART_BYTES} bytes"),
        ));
    }
    let text = String::from_utf8(bytes)
        .map_err(|e| corrupt(path, format!("{name} is not UTF-8 ({e})")))?;
    Ok(Some(text.trim_start_matches('\u{feff}').to_owned()))
}

/// One paragraph style as declared in `styles.xml`.
#[derive(Debug, Default)]
struct StyleDef {
    name: Option<String>,
    based_on: Option<String>,
    outline_level: Option<usize>,
    numbered: bool,
}

/// Paragraph styles by id.
#[derive(Debug, Default)]
struct Styles(HashMap<String, StyleDef>);

impl Styles {
    fn read(path: &Path, xml: &str) -> Result<Self, IngestError> {
        let mut styles = HashMap::new();
        let mut reader = XmlReader::new(path, xml);
        let mut open: Vec<String> = Vec::new();
        let mut current: Option<(String, StyleDef)> = None;
        loop {
            let (element, empty) = match reader.next()? {
                XmlEvent::Start(e) => (e, false),
                XmlEvent::Empty(e) => (e, true),
                XmlEvent::End => {
                    if open.pop().as_deref() == Some("style")
                        && let Some((id, style)) = current.take()
                    {
                        styles.insert(id, style);
                    }
                    continue;
                }
                XmlEvent::Text(_) => continue,
                XmlEvent::Eof => break,
            };
            let name = local_name(&element).to_owned();
            match name.as_str() {
                "style" if !empty => {
                    let paragraph =
                        reader.attr_local(&element, "type")?.as_deref() == Some("paragraph");
                    current = match reader.attr_local(&element, "styleId")? {
                        Some(id) if paragraph => Some((id, StyleDef::default())),
                        _ => None,
                    };
                }
                _ => {
                    if let Some((_, style)) = &mut current {
                        let val = || reader.attr_local(&element, "val");
                        match name.as_str() {
                            "name" => style.name = val()?,
                            "basedOn" => style.based_on = val()?,
                            "outlineLvl" => {
                                style.outline_level = val()?.and_then(|v| v.parse().ok())
                            }
                            "numId" => style.numbered = val()?.is_some_and(|v| v != "0"),
                            _ => {}
                        }
                    }
                }
            }
            if !empty {
                open.push(name);
            }
        }
        Ok(Styles(styles))
    }

    /// The heading level of a style (0 for a title), following `basedOn`.
    fn heading_level(&self, id: &str) -> Option<usize> {
        let mut id = id;
        for _ in 0..MAX_STYLE_CHAIN {
            let style = self.0.get(id);
            let name = style.and_then(|s| s.name.as_deref()).unwrap_or(id);
            if let Some(level) = level_from_name(name) {
                return Some(level);
            }
            let style = style?;
            if let Some(level) = style.outline_level {
                return (level < 9).then_some(level + 1);
            }
            id = style.based_on.as_deref()?;
        }
        None
    }

    /// Whether a style is one of Word's table-of-contents styles (`TOC Heading`, `toc 1`...):
    /// a generated contents list repeats the headings and is not principle text.
    fn is_table_of_contents(&self, id: &str) -> bool {
        let name = self
            .0
            .get(id)
            .and_then(|s| s.name.as_deref())
            .unwrap_or(id)
            .to_ascii_lowercase();
        name.strip_prefix("toc").is_some_and(|rest| {
            rest.is_empty()
                || rest.starts_with(|c: char| c == ' ' || c.is_ascii_digit())
                || rest == "heading"
        })
    }

    /// Whether a style makes its paragraphs list items, following `basedOn`.
    fn numbered(&self, id: &str) -> bool {
        let mut id = id;
        for _ in 0..MAX_STYLE_CHAIN {
            let Some(style) = self.0.get(id) else {
                return false;
            };
            if style.numbered {
                return true;
            }
            let Some(parent) = style.based_on.as_deref() else {
                return false;
            };
            id = parent;
        }
        false
    }
}

/// `heading 2` / `Heading2` -> 2, `Title` -> 0.
fn level_from_name(name: &str) -> Option<usize> {
    let lower = name.to_ascii_lowercase();
    if lower == "title" {
        return Some(0);
    }
    let number = lower.strip_prefix("heading")?.trim_start();
    number.parse::<usize>().ok().filter(|n| (1..=9).contains(n))
}

/// List formats from `numbering.xml` and the running counters of the document's lists.
#[derive(Debug, Default)]
struct Numbering {
    /// `numId` -> `abstractNumId`.
    nums: HashMap<String, String>,
    /// (`abstractNumId`, level) -> (format, start).
    levels: HashMap<(String, usize), (String, u64)>,
    /// (`numId`, level) -> the last number given.
    counters: HashMap<(String, usize), u64>,
}

impl Numbering {
    fn read(path: &Path, xml: &str) -> Result<Self, IngestError> {
        let mut numbering = Numbering::default();
        let mut reader = XmlReader::new(path, xml);
        let mut open: Vec<String> = Vec::new();
        let mut num: Option<String> = None;
        let mut abstract_num: Option<String> = None;
        let mut level: Option<(usize, String, u64)> = None;
        loop {
            let (element, empty) = match reader.next()? {
                XmlEvent::Start(e) => (e, false),
                XmlEvent::Empty(e) => (e, true),
                XmlEvent::End => {
                    match open.pop().as_deref() {
                        Some("lvl") => {
                            if let (Some(id), Some((ilvl, format, start))) =
                                (&abstract_num, level.take())
                            {
                                numbering.levels.insert((id.clone(), ilvl), (format, start));
                            }
                        }
                        Some("abstractNum") => abstract_num = None,
                        Some("num") => num = None,
                        _ => {}
                    }
                    continue;
                }
                XmlEvent::Text(_) => continue,
                XmlEvent::Eof => break,
            };
            let name = local_name(&element).to_owned();
            match name.as_str() {
                "abstractNum" => abstract_num = reader.attr_local(&element, "abstractNumId")?,
                "num" => num = reader.attr_local(&element, "numId")?,
                "abstractNumId" => {
                    if let (Some(num), Some(val)) = (&num, reader.attr_local(&element, "val")?) {
                        numbering.nums.insert(num.clone(), val);
                    }
                }
                "lvl" => {
                    let ilvl = reader
                        .attr_local(&element, "ilvl")?
                        .and_then(|v| v.parse().ok());
                    level = ilvl.map(|ilvl| (ilvl, "decimal".to_owned(), 1));
                }
                "numFmt" => {
                    if let (Some(level), Some(format)) =
                        (&mut level, reader.attr_local(&element, "val")?)
                    {
                        level.1 = format;
                    }
                }
                "start" => {
                    if let (Some(level), Some(start)) =
                        (&mut level, reader.attr_local(&element, "val")?)
                    {
                        level.2 = start.parse().unwrap_or(1);
                    }
                }
                _ => {}
            }
            if !empty {
                open.push(name);
            }
        }
        Ok(numbering)
    }

    /// The marker of the next item of list `num_id` at `level` (`- `, `3. `, `b. `, `iv. `).
    fn marker(&mut self, num_id: Option<&str>, level: usize) -> String {
        let Some(num_id) = num_id else {
            return "- ".to_owned();
        };
        let (format, start) = self
            .nums
            .get(num_id)
            .and_then(|abstract_id| self.levels.get(&(abstract_id.clone(), level)))
            .cloned()
            .unwrap_or_else(|| ("bullet".to_owned(), 1));
        self.counters
            .retain(|(id, l), _| id != num_id || *l <= level);
        let counter = self
            .counters
            .entry((num_id.to_owned(), level))
            .and_modify(|n| *n += 1)
            .or_insert(start);
        let n = *counter;
        match format.as_str() {
            "bullet" => "- ".to_owned(),
            "none" => String::new(),
            "lowerLetter" => format!("{}. ", letter(n)),
            "upperLetter" => format!("{}. ", letter(n).to_ascii_uppercase()),
            "lowerRoman" => format!("{}. ", roman(n)),
            "upperRoman" => format!("{}. ", roman(n).to_ascii_uppercase()),
            _ => format!("{n}. "),
        }
    }
}

/// 1 -> a, 26 -> z, 27 -> aa (Word's letter numbering repeats the letter).
fn letter(n: u64) -> String {
    let n = n.max(1) - 1;
    let c = char::from(b'a' + (n % 26) as u8);
    std::iter::repeat_n(c, (n / 26 + 1) as usize).collect()
}

fn roman(n: u64) -> String {
    const NUMERALS: [(u64, &str); 13] = [
        (1000, "m"),
        (900, "cm"),
        (500, "d"),
        (400, "cd"),
        (100, "c"),
        (90, "xc"),
        (50, "l"),
        (40, "xl"),
        (10, "x"),
        (9, "ix"),
        (5, "v"),
        (4, "iv"),
        (1, "i"),
    ];
    let mut n = n.clamp(1, 3999);
    let mut out = String::new();
    for (value, numeral) in NUMERALS {
        while n >= value {
            out.push_str(numeral);
            n -= value;
        }
    }
    out
}

/// A paragraph being read.
#[derive(Debug, Default)]
struct Paragraph {
    style: Option<String>,
    outline_level: Option<usize>,
    num_id: Option<String>,
    list_level: Option<usize>,
    text: String,
}

/// An open table: finished rows, the open row's cells, the open cell.
#[derive(Debug, Default)]
struct Table {
    rows: Vec<String>,
    row: Vec<String>,
    cell: Option<String>,
    /// Tables inside the open table's cells (their text goes into the cell).
    inner: usize,
}

/// The body of `document.xml` as pieces.
struct Body<'s> {
    styles: &'s Styles,
    numbering: Numbering,
    pieces: Vec<Piece>,
    /// Open paragraphs, innermost last (text boxes put paragraphs inside paragraphs).
    paragraphs: Vec<Paragraph>,
    table: Option<Table>,
}

impl<'s> Body<'s> {
    fn new(styles: &'s Styles, numbering: Numbering) -> Self {
        Body {
            styles,
            numbering,
            pieces: Vec::new(),
            paragraphs: Vec::new(),
            table: None,
        }
    }

    fn read(mut self, path: &Path, xml: &str) -> Result<Vec<Piece>, IngestError> {
        let mut reader = XmlReader::new(path, xml);
        let mut open: Vec<String> = Vec::new();
        loop {
            match reader.next()? {
                XmlEvent::Start(element) => {
                    let name = local_name(&element).to_owned();
                    if matches!(
                        name.as_str(),
                        "Fallback" | "pPrChange" | "rPrChange" | "del"
                    ) {
                        reader.skip(&element)?;
                        continue;
                    }
                    self.element(&reader, &element, &name, &open)?;
                    open.push(name);
                }
                XmlEvent::Empty(element) => {
                    let name = local_name(&element).to_owned();
                    self.element(&reader, &element, &name, &open)?;
                    if name == "p" {
                        self.end_paragraph();
                    }
                }
                XmlEvent::End => {
                    if let Some(name) = open.pop() {
                        self.end(&name);
                    }
                }
                XmlEvent::Text(text) => {
                    if open.last().map(String::as_str) == Some("t")
                        && let Some(paragraph) = self.paragraphs.last_mut()
                    {
                        paragraph.text.push_str(&text);
                    }
                }
                XmlEvent::Eof => break,
            }
        }
        Ok(self.pieces)
    }

    /// An element opens (or is empty); `open` holds its ancestors' local names.
    fn element(
        &mut self,
        reader: &XmlReader<'_>,
        element: &BytesStart<'_>,
        name: &str,
        open: &[String],
    ) -> Result<(), IngestError> {
        let parent = open.last().map(String::as_str);
        let in_paragraph_properties = open.iter().any(|n| n == "pPr");
        match name {
            "p" => self.paragraphs.push(Paragraph::default()),
            "tbl" => match &mut self.table {
                Some(table) => table.inner += 1,
                None => self.table = Some(Table::default()),
            },
            "tr" => {
                if let Some(table) = self.table.as_mut().filter(|t| t.inner == 0) {
                    table.row.clear();
                }
            }
            "tc" => {
                if let Some(table) = self.table.as_mut().filter(|t| t.inner == 0) {
                    table.cell = Some(String::new());
                }
            }
            "tab" | "br" | "cr" | "noBreakHyphen" if parent == Some("r") => {
                if let Some(paragraph) = self.paragraphs.last_mut() {
                    paragraph.text.push(match name {
                        "tab" => '\t',
                        "noBreakHyphen" => '-',
                        _ => '\n',
                    });
                }
            }
            "pStyle" | "outlineLvl" | "numId" | "ilvl" if in_paragraph_properties => {
                let value = reader.attr_local(element, "val")?;
                if let Some(paragraph) = self.paragraphs.last_mut() {
                    match name {
                        "pStyle" => paragraph.style = value,
                        "outlineLvl" => {
                            paragraph.outline_level = value.and_then(|v| v.parse().ok())
                        }
                        "numId" => paragraph.num_id = value,
                        _ => paragraph.list_level = value.and_then(|v| v.parse().ok()),
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn end(&mut self, name: &str) {
        match name {
            "p" => self.end_paragraph(),
            "tc" => {
                if let Some(table) = self.table.as_mut().filter(|t| t.inner == 0) {
                    let cell = table.cell.take().unwrap_or_default();
                    table.row.push(super::xml::collapse(&cell));
                }
            }
            "tr" => {
                if let Some(table) = self.table.as_mut().filter(|t| t.inner == 0)
                    && !table.row.is_empty()
                {
                    table.rows.push(format!("| {} |", table.row.join(" | ")));
                }
            }
            "tbl" => match &mut self.table {
                Some(table) if table.inner > 0 => table.inner -= 1,
                Some(_) => {
                    let table = self.table.take().unwrap_or_default();
                    if !table.rows.is_empty() {
                        self.pieces.push(Piece::Block {
                            text: table.rows.join("\n"),
                            list_item: false,
                        });
                    }
                }
                None => {}
            },
            _ => {}
        }
    }

    fn end_paragraph(&mut self) {
        let Some(paragraph) = self.paragraphs.pop() else {
            return;
        };
        if let Some(cell) = self.table.as_mut().and_then(|t| t.cell.as_mut()) {
            cell.push(' ');
            cell.push_str(&paragraph.text);
            return;
        }
        let text = paragraph.text.trim().to_owned();
        let style = paragraph.style.as_deref();
        if style.is_some_and(|s| self.styles.is_table_of_contents(s)) {
            return;
        }
        let level = match paragraph.outline_level {
            Some(level) => (level < 9).then_some(level + 1),
            None => style.and_then(|s| self.styles.heading_level(s)),
        };
        if let Some(level) = level {
            self.pieces.push(Piece::Heading { level, text });
            return;
        }
        let numbered = match paragraph.num_id.as_deref() {
            Some(id) => id != "0",
            None => style.is_some_and(|s| self.styles.numbered(s)),
        };
        if numbered && !text.is_empty() {
            let list_level = paragraph.list_level.unwrap_or(0);
            let marker = self
                .numbering
                .marker(paragraph.num_id.as_deref(), list_level);
            let indent = "  ".repeat(list_level.min(MAX_INDENT));
            self.pieces.push(Piece::Block {
                text: format!("{indent}{marker}{text}"),
                list_item: true,
            });
        } else {
            self.pieces.push(Piece::Block {
                text,
                list_item: false,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn style_names_give_levels() {
        assert_eq!(level_from_name("heading 2"), Some(2));
        assert_eq!(level_from_name("Heading3"), Some(3));
        assert_eq!(level_from_name("Title"), Some(0));
        assert_eq!(level_from_name("Normal"), None);
        assert_eq!(level_from_name("heading 10"), None);
    }

    #[test]
    fn styles_resolve_through_based_on_and_contents_styles_are_known() {
        let xml = r#"<w:styles xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">
            <w:style w:type="paragraph" w:styleId="H2"><w:name w:val="heading 2"/></w:style>
            <w:style w:type="paragraph" w:styleId="Clause"><w:name w:val="Clause"/>
              <w:basedOn w:val="H2"/></w:style>
            <w:style w:type="paragraph" w:styleId="Rule"><w:name w:val="Rule"/>
              <w:pPr><w:outlineLvl w:val="3"/></w:pPr></w:style>
            <w:style w:type="paragraph" w:styleId="Body"><w:name w:val="Body"/>
              <w:pPr><w:outlineLvl w:val="9"/><w:numPr><w:numId w:val="4"/></w:numPr></w:pPr></w:style>
            <w:style w:type="paragraph" w:styleId="TOC1"><w:name w:val="toc 1"/></w:style>
            <w:style w:type="character" w:styleId="Strong"><w:name w:val="heading 1"/></w:style>
          </w:styles>"#;
        let styles = Styles::read(Path::new("styles.xml"), xml).unwrap();
        assert_eq!(styles.heading_level("Clause"), Some(2));
        assert_eq!(styles.heading_level("Rule"), Some(4));
        assert_eq!(styles.heading_level("Body"), None);
        assert!(styles.numbered("Body"));
        assert!(!styles.numbered("Clause"));
        assert!(styles.is_table_of_contents("TOC1"));
        assert!(styles.is_table_of_contents("TOCHeading"));
        assert!(!styles.is_table_of_contents("Clause"));
        assert!(!styles.0.contains_key("Strong"), "only paragraph styles");
    }

    #[test]
    fn list_markers_follow_the_format() {
        assert_eq!(letter(1), "a");
        assert_eq!(letter(28), "bb");
        assert_eq!(roman(14), "xiv");
    }
}
