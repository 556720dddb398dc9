//! Document readers: principle documents in, one [`PrincipleTree`] out.
//!
//! Eight formats are read: markdown (headings make the tree), SeekrFlow's JSON tree, GPO eCFR bulk
//! XML, USLM XML (the US Code), HTML (`h1`-`h6`), DOCX (heading styles and outline levels), PDF
//! (the outline, else numbering and type size) and plain text (numbered headings, else paragraph
//! blocks). [`read_file`] detects the format from the bytes and the file name when it is not
//! given, [`read_files`] puts several documents under one collection root, and [`to_seekr_json`]
//! writes a tree back out in SeekrFlow's four-key format.
//!
//! Every failure is an [`IngestError`] whose message is one line naming the file (and the line,
//! or the JSON path, where there is one). Readers never recurse on input nesting that the input
//! controls (PDF form XObjects, which the text decoder follows by recursion, are walked and checked
//! first), so deep or huge inputs end in an error or a tree, never in a stack overflow or a hang.

mod docx;
mod ecfr;
mod heuristics;
mod html;
mod markdown;
mod outline;
mod pdf;
mod seekr_json;
mod text;
mod uslm;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use proto::{PrincipleNode, PrincipleTree};
use serde_json::{Value, json};

/// Deepest tree a reader builds (root = 0); deeper input is an error.
pub const MAX_DEPTH: usize = 64;

/// The document formats Principia reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Format {
    /// CommonMark with GFM tables; headings make the tree.
    Markdown,
    /// SeekrFlow's JSON tree: nodes with `label`, `content`, `children`, `level`.
    #[value(name = "json")]
    SeekrJson,
    /// GPO eCFR bulk XML (`<DLPSTEXTCLASS>` … `DIVn`).
    Ecfr,
    /// USLM XML, the format of the US Code (`<uscDoc>`).
    Uslm,
    /// HTML: `h1`-`h6` make the tree; navigation, scripts and styles are dropped.
    Html,
    /// Word DOCX: heading styles and outline levels make the tree.
    Docx,
    /// PDF with a text layer: the outline (bookmarks) makes the tree, else numbered or
    /// larger-type heading lines.
    Pdf,
    /// Plain text: numbered heading lines make the tree, else each paragraph block is a section.
    Text,
}

impl Format {
    pub const ALL: [Format; 8] = [
        Format::Markdown,
        Format::SeekrJson,
        Format::Ecfr,
        Format::Uslm,
        Format::Html,
        Format::Docx,
        Format::Pdf,
        Format::Text,
    ];

    /// The name used on the command line and in job specs.
    pub fn name(self) -> &'static str {
        match self {
            Format::Markdown => "markdown",
            Format::SeekrJson => "json",
            Format::Ecfr => "ecfr",
            Format::Uslm => "uslm",
            Format::Html => "html",
            Format::Docx => "docx",
            Format::Pdf => "pdf",
            Format::Text => "text",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A format name that is not one of [`Format::ALL`]'s names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown format {0:?}: expected one of {names}",
    names = Format::ALL.map(Format::name).join(", ")
)]
pub struct UnknownFormat(pub String);

impl FromStr for Format {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL
            .into_iter()
            .find(|format| format.name() == s)
            .ok_or_else(|| UnknownFormat(s.to_owned()))
    }
}

/// A document read into a tree, with what the reader had to normalise on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    pub tree: PrincipleTree,
    /// One line each, naming the file (and line or JSON path), like errors.
    pub warnings: Vec<String>,
}

/// Why a document could not be read. Every message is one line that names the file.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{}: cannot read: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: empty file", .path.display())]
    Empty { path: PathBuf },
    #[error("{}: binary file (NUL byte at offset {offset})", .path.display())]
    Binary { path: PathBuf, offset: usize },
    #[error("{}:{line}: invalid UTF-8 (byte offset {offset})", .path.display())]
    InvalidUtf8 {
        path: PathBuf,
        line: usize,
        offset: usize,
    },
    #[error("{}: no headings: a principle document needs at least one heading", .path.display())]
    NoHeadings { path: PathBuf },
    /// A DOCX or PDF file that its format's decoder rejects (a bad zip, a damaged PDF, ...).
    #[error("{}: not a readable {format} file: {message}", .path.display())]
    Corrupt {
        path: PathBuf,
        format: Format,
        message: String,
    },
    #[error(
        "{}: the PDF is encrypted with a password: save an unprotected copy and read that",
        .path.display()
    )]
    EncryptedPdf { path: PathBuf },
    /// A PDF whose pages are images: a scan.
    #[error(
        "{}: the PDF has no text layer ({pages} page(s) without text; a scanned document?): \
         OCR is needed first (e.g. `ocrmypdf in.pdf out.pdf`), then read the OCR'd PDF",
        .path.display()
    )]
    NoTextLayer { path: PathBuf, pages: usize },
    #[error("{}:{line}: malformed XML: {message}", .path.display())]
    MalformedXml {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}:{line}:{column}: malformed JSON: {message}", .path.display())]
    MalformedJson {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A JSON document that parses but is not a valid SeekrFlow tree.
    #[error("{}: {json_path}: {message}", .path.display())]
    InvalidTree {
        path: PathBuf,
        json_path: String,
        message: String,
    },
    /// Well-formed input whose structure cannot become a tree (empty heading, nesting too deep,
    /// unrecognised XML vocabulary, ...).
    #[error("{}: {message}", Location(.path, .line))]
    Invalid {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
    #[error("no input files")]
    NoInput,
}

/// `path` or `path:line`, as compilers print it.
struct Location<'a>(&'a Path, &'a Option<usize>);

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self.1 {
            Some(line) => write!(f, "{}:{line}", self.0.display()),
            None => write!(f, "{}", self.0.display()),
        }
    }
}

/// Guess the format of a document from its content and its file name.
///
/// PDF by its `%PDF-` header, DOCX by the zip signature (or a `.docx` name: the DOCX reader then
/// says what is wrong with the file). Text: XML is told apart by its root element (`<uscDoc>` or
/// the USLM namespace; `<DLPSTEXTCLASS>`, `<ECFR…>` or `<DIVn>`), JSON by an opening `{` (or `[`
/// followed by `{`), HTML by a doctype or `<html>`/`<head>`/`<body>` opening (or an `.html`/`.htm`
/// name); `.md` files and text with markdown headings are markdown, any other text is plain text.
///
/// # Errors
///
/// Binary content that is neither PDF nor DOCX, invalid UTF-8, an empty file, and XML that is
/// neither USLM nor eCFR (when it declares itself XML or the file is named `*.xml`).
pub fn detect_format(path: &Path, bytes: &[u8]) -> Result<Format, IngestError> {
    if bytes.is_empty() {
        return Err(IngestError::Empty {
            path: path.to_owned(),
        });
    }
    if let Some(format) = binary_format(path, bytes) {
        return Ok(format);
    }
    sniff(path, decode(path, bytes)?)
}

/// Read one document into a tree. `format: None` detects it from the content.
///
/// # Errors
///
/// An unreadable file, or content that is not a document of the format: see [`IngestError`].
pub fn read_file(path: &Path, format: Option<Format>) -> Result<Ingested, IngestError> {
    let bytes = std::fs::read(path).map_err(|source| IngestError::Io {
        path: path.to_owned(),
        source,
    })?;
    let format = match format {
        Some(format) => format,
        None => detect_format(path, &bytes)?,
    };
    match format {
        Format::Docx => docx::read(path, &bytes),
        Format::Pdf => pdf::read(path, &bytes),
        Format::Markdown => markdown::read(path, decode(path, &bytes)?),
        Format::SeekrJson => seekr_json::read(path, decode(path, &bytes)?),
        Format::Ecfr => ecfr::read(path, decode(path, &bytes)?),
        Format::Uslm => uslm::read(path, decode(path, &bytes)?),
        Format::Html => html::read(path, decode(path, &bytes)?),
        Format::Text => text::read(path, decode(path, &bytes)?),
    }
}

/// Read several documents into one tree: each document's root becomes a child of a root labelled
/// `Principles` (kind `collection`), in the order given. One path gives that document's own tree.
///
/// # Errors
///
/// No paths, or the first document that cannot be read.
pub fn read_files(paths: &[PathBuf], format: Option<Format>) -> Result<Ingested, IngestError> {
    match paths {
        [] => Err(IngestError::NoInput),
        [path] => read_file(path, format),
        _ => {
            let mut root = PrincipleNode::new("Principles", "collection");
            let mut warnings = Vec::new();
            for path in paths {
                let ingested = read_file(path, format)?;
                root.children.push(ingested.tree.root);
                warnings.extend(ingested.warnings);
            }
            Ok(Ingested {
                tree: PrincipleTree::new(root),
                warnings,
            })
        }
    }
}

/// The tree in SeekrFlow's JSON format: every node has exactly `label`, `content`, `children` and
/// `level`, where `level` is the depth as a string (`"0"` for the root).
pub fn to_seekr_json(tree: &PrincipleTree) -> Value {
    fn node(n: &PrincipleNode, depth: usize) -> Value {
        let children: Vec<Value> = n.children.iter().map(|c| node(c, depth + 1)).collect();
        json!({
            "label": n.label,
            "content": n.content,
            "children": children,
            "level": depth.to_string(),
        })
    }
    node(&tree.root, 0)
}

/// Check that the bytes are text and return them as a string, without a byte-order mark.
fn decode<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a str, IngestError> {
    // `contains` on bytes is a memchr; `position` only runs for the error message.
    if bytes.contains(&0)
        && let Some(offset) = bytes.iter().position(|&b| b == 0)
    {
        return Err(IngestError::Binary {
            path: path.to_owned(),
            offset,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let offset = e.valid_up_to();
        IngestError::InvalidUtf8 {
            path: path.to_owned(),
            line: line_at(&bytes[..offset], offset),
            offset,
        }
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(IngestError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(text)
}

/// PDF and DOCX, told by their signatures, or a `.docx` name.
fn binary_format(path: &Path, bytes: &[u8]) -> Option<Format> {
    // PDF readers accept the header anywhere in the first kilobyte.
    let head = &bytes[..bytes.len().min(1024)];
    if head.windows(5).any(|w| w == b"%PDF-") {
        Some(Format::Pdf)
    } else if bytes.starts_with(b"PK\x03\x04") || has_extension(path, &["docx"]) {
        Some(Format::Docx)
    } else {
        None
    }
}

fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| extensions.iter().any(|e| ext.eq_ignore_ascii_case(e)))
}

fn sniff(path: &Path, text: &str) -> Result<Format, IngestError> {
    let start = text.trim_start();
    if start.starts_with('{')
        || start
            .strip_prefix('[')
            .is_some_and(|rest| rest.trim_start().starts_with(['{', ']']))
    {
        return Ok(Format::SeekrJson);
    }
    let must_be_xml = start.starts_with("<?xml") || has_extension(path, &["xml"]);
    if has_extension(path, &["html", "htm", "xhtml"])
        || (!must_be_xml && html::opens_like_html(start))
    {
        return Ok(Format::Html);
    }
    if start.starts_with('<') {
        match xml::root_format(path, text) {
            Ok(Some(format)) => return Ok(format),
            Ok(None) | Err(_) if !must_be_xml => {} // markdown or text opening with a tag
            Ok(None) => {
                return Err(IngestError::Invalid {
                    path: path.to_owned(),
                    line: None,
                    message: "unrecognised XML: expected a USLM <uscDoc> or an eCFR \
                              <DLPSTEXTCLASS> document"
                        .into(),
                });
            }
            Err(e) => return Err(e),
        }
    }
    if has_extension(path, &["md", "markdown"]) || markdown::has_headings(text) {
        Ok(Format::Markdown)
    } else {
        Ok(Format::Text)
    }
}

/// The tree of a document whose top-level divisions are `roots`: the one root, or a collection
/// named after the file when there are several. With none, the error says `missing`.
fn single_tree(
    path: &Path,
    mut roots: Vec<PrincipleNode>,
    missing: &str,
) -> Result<Ingested, IngestError> {
    let root = match roots.len() {
        0 => {
            return Err(IngestError::Invalid {
                path: path.to_owned(),
                line: None,
                message: missing.to_owned(),
            });
        }
        1 => roots.remove(0),
        _ => {
            let mut root = PrincipleNode::new(file_stem(path), "collection");
            root.children = roots;
            root
        }
    };
    Ok(Ingested {
        tree: PrincipleTree::new(root),
        warnings: Vec::new(),
    })
}

/// 1-based line number of byte `offset` in `bytes`.
fn line_at(bytes: &[u8], offset: usize) -> usize {
    let end = offset.min(bytes.len());
    bytes[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

/// The file name without extension, as a root label for documents without a title of their own.
fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "document".to_owned())
}

/// Helpers shared by the two XML readers: a reader that resolves entities, tracks nesting and
/// reports errors with line numbers, and a builder that turns character data into lines.
mod xml {
    use std::borrow::Cow;
    use std::path::Path;

    use quick_xml::events::{BytesRef, BytesStart, Event};
    use quick_xml::{Reader, XmlVersion};

    use super::{Format, IngestError, line_at};

    /// Nesting beyond this many levels is not indented further in flattened text.
    const MAX_INDENT: usize = 8;

    /// What the readers see of the XML: elements and text, nothing else.
    pub(super) enum XmlEvent<'a> {
        Start(BytesStart<'a>),
        Empty(BytesStart<'a>),
        End,
        Text(Cow<'a, str>),
        Eof,
    }

    /// A streaming XML reader over a whole document held in memory.
    pub(super) struct XmlReader<'a> {
        reader: Reader<&'a [u8]>,
        text: &'a str,
        path: &'a Path,
        open: usize,
    }

    impl<'a> XmlReader<'a> {
        pub(super) fn new(path: &'a Path, text: &'a str) -> Self {
            XmlReader {
                reader: Reader::from_str(text),
                text,
                path,
                open: 0,
            }
        }

        pub(super) fn next(&mut self) -> Result<XmlEvent<'a>, IngestError> {
            loop {
                let event = self
                    .reader
                    .read_event()
                    .map_err(|e| self.malformed(self.reader.error_position(), &e))?;
                return Ok(match event {
                    Event::Start(e) => {
                        self.open += 1;
                        XmlEvent::Start(e)
                    }
                    Event::End(_) => {
                        self.open = self.open.saturating_sub(1);
                        XmlEvent::End
                    }
                    Event::Empty(e) => XmlEvent::Empty(e),
                    Event::Text(t) => XmlEvent::Text(t.into_inner()),
                    Event::CData(t) => XmlEvent::Text(t.into_inner()),
                    Event::GeneralRef(r) => XmlEvent::Text(self.entity(&r)?),
                    Event::Eof if self.open > 0 => {
                        return Err(self.malformed(
                            self.reader.buffer_position(),
                            &format!(
                                "unexpected end of file with {} element(s) still open",
                                self.open
                            ),
                        ));
                    }
                    Event::Eof => XmlEvent::Eof,
                    Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {
                        continue;
                    }
                });
            }
        }

        /// Skip the rest of an element whose start was just read, children and all.
        pub(super) fn skip(&mut self, start: &BytesStart<'_>) -> Result<(), IngestError> {
            self.reader
                .read_to_end(start.name())
                .map_err(|e| self.malformed(self.reader.error_position(), &e))?;
            self.open = self.open.saturating_sub(1);
            Ok(())
        }

        /// The value of an attribute, with entities resolved.
        pub(super) fn attr(
            &self,
            element: &BytesStart<'_>,
            name: &str,
        ) -> Result<Option<String>, IngestError> {
            let attr = element
                .try_get_attribute(name)
                .map_err(|e| self.malformed(self.reader.buffer_position(), &e))?;
            attr.map(|a| {
                a.normalized_value(XmlVersion::Implicit1_0)
                    .map(Cow::into_owned)
                    .map_err(|e| self.malformed(self.reader.buffer_position(), &e))
            })
            .transpose()
        }

        /// The value of the attribute whose local name is `local` (`val` of `w:val`), whatever
        /// its prefix, with entities resolved.
        pub(super) fn attr_local(
            &self,
            element: &BytesStart<'_>,
            local: &str,
        ) -> Result<Option<String>, IngestError> {
            for attr in element.attributes() {
                let attr = attr.map_err(|e| self.malformed(self.reader.buffer_position(), &e))?;
                if attr.key.local_name().as_ref() == local {
                    return attr
                        .normalized_value(XmlVersion::Implicit1_0)
                        .map(|value| Some(value.into_owned()))
                        .map_err(|e| self.malformed(self.reader.buffer_position(), &e));
                }
            }
            Ok(None)
        }

        /// A structural error at the current position.
        pub(super) fn invalid(&self, message: impl Into<String>) -> IngestError {
            IngestError::Invalid {
                path: self.path.to_owned(),
                line: Some(self.line(self.reader.buffer_position())),
                message: message.into(),
            }
        }

        fn malformed(&self, position: u64, error: &dyn std::fmt::Display) -> IngestError {
            IngestError::MalformedXml {
                path: self.path.to_owned(),
                line: self.line(position),
                message: collapse(&error.to_string()),
            }
        }

        fn line(&self, position: u64) -> usize {
            let offset = usize::try_from(position).unwrap_or(usize::MAX);
            line_at(self.text.as_bytes(), offset)
        }

        fn entity(&self, reference: &BytesRef<'_>) -> Result<Cow<'a, str>, IngestError> {
            if let Some(c) = reference
                .resolve_char_ref()
                .map_err(|e| self.malformed(self.reader.buffer_position(), &e))?
            {
                return Ok(Cow::Owned(c.to_string()));
            }
            Ok(Cow::Borrowed(match &**reference {
                "amp" => "&",
                "lt" => "<",
                "gt" => ">",
                "quot" => "\"",
                "apos" => "'",
                // Undeclared (HTML) entities are kept as written rather than rejected.
                other => return Ok(Cow::Owned(format!("&{other};"))),
            }))
        }
    }

    /// The local name of an element (`uscDoc`, `DIV5`, `td` of `xhtml:td`).
    pub(super) fn local_name<'e>(element: &'e BytesStart<'_>) -> &'e str {
        let name = element.name().into_inner();
        name.rsplit_once(':').map_or(name, |(_, local)| local)
    }

    /// The format of an XML document from its root element, or `None` if it is neither USLM
    /// nor eCFR.
    pub(super) fn root_format(path: &Path, text: &str) -> Result<Option<Format>, IngestError> {
        let mut reader = XmlReader::new(path, text);
        loop {
            match reader.next()? {
                XmlEvent::Start(e) | XmlEvent::Empty(e) => {
                    let name = local_name(&e);
                    let uslm_namespace = reader
                        .attr(&e, "xmlns")?
                        .is_some_and(|ns| ns.contains("xml.house.gov/schemas/uslm"));
                    let is_div = name
                        .strip_prefix("DIV")
                        .is_some_and(|n| n.len() == 1 && n.as_bytes()[0].is_ascii_digit());
                    return Ok(if name == "uscDoc" || uslm_namespace {
                        Some(Format::Uslm)
                    } else if name == "DLPSTEXTCLASS" || name.starts_with("ECFR") || is_div {
                        Some(Format::Ecfr)
                    } else {
                        None
                    });
                }
                XmlEvent::Eof => return Ok(None),
                XmlEvent::End | XmlEvent::Text(_) => {}
            }
        }
    }

    /// Plain text built from character data: runs of whitespace become one space, callers say
    /// where lines break and how far each line is indented.
    #[derive(Debug, Default)]
    pub(super) struct TextLines {
        text: String,
        line: String,
        indent: usize,
        space: bool,
        body: bool,
    }

    impl TextLines {
        /// Add running text.
        pub(super) fn push(&mut self, s: &str) {
            if self.push_words(s) {
                self.body = true;
            }
        }

        /// Add a line's lead-in (an enumerator or heading): text that does not count as body.
        pub(super) fn push_prefix(&mut self, s: &str) {
            self.push_words(s);
        }

        /// Whether the current line has running text after its lead-in.
        pub(super) fn has_body(&self) -> bool {
            self.body
        }

        /// End a heading in the lead-in with a full stop unless it already ends in punctuation.
        pub(super) fn end_heading(&mut self) {
            if !self.line.is_empty()
                && !self
                    .line
                    .ends_with(['.', ':', ';', ',', '!', '?', '—', '–', '-'])
            {
                self.line.push('.');
            }
            self.separate();
        }

        /// Make the next text a new word even if it does not start with whitespace.
        pub(super) fn separate(&mut self) {
            self.space = true;
        }

        /// Finish the current line (if any) and start the next at `indent` levels.
        pub(super) fn start_line(&mut self, indent: usize) {
            self.break_line();
            self.indent = indent;
        }

        /// Finish the current line, if it has any text.
        pub(super) fn break_line(&mut self) {
            if self.line.is_empty() {
                return;
            }
            if !self.text.is_empty() {
                self.text.push('\n');
            }
            for _ in 0..self.indent.min(MAX_INDENT) {
                self.text.push_str("  ");
            }
            self.text.push_str(&self.line);
            self.line.clear();
            self.space = false;
            self.body = false;
        }

        pub(super) fn finish(mut self) -> String {
            self.break_line();
            self.text
        }

        /// Append the words of `s`; whitespace at either end separates them from their
        /// neighbours. Returns whether there was a word.
        fn push_words(&mut self, s: &str) -> bool {
            if s.starts_with(char::is_whitespace) {
                self.space = true;
            }
            let mut pushed = false;
            for word in s.split_whitespace() {
                if self.space && !self.line.is_empty() {
                    self.line.push(' ');
                }
                self.line.push_str(word);
                self.space = true;
                pushed = true;
            }
            if pushed {
                self.space = s.ends_with(char::is_whitespace);
            }
            pushed
        }
    }

    /// `s` with whitespace runs collapsed to one space and no leading or trailing whitespace.
    pub(super) fn collapse(s: &str) -> String {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn text_lines_collapse_whitespace_and_indent() {
            let mut lines = TextLines::default();
            lines.push_prefix("(a)");
            lines.push_prefix(" Heading ");
            lines.end_heading();
            lines.push("  first\n  words ");
            lines.push("(");
            lines.push("l");
            lines.push(") end");
            lines.start_line(1);
            lines.push_prefix("(1)");
            lines.push(" second");
            assert_eq!(
                lines.finish(),
                "(a) Heading. first words (l) end\n  (1) second"
            );
        }

        #[test]
        fn a_heading_ending_in_punctuation_gets_no_full_stop() {
            let mut lines = TextLines::default();
            lines.push_prefix("Definitions:");
            lines.end_heading();
            lines.push("text");
            assert_eq!(lines.finish(), "Definitions: text");
        }
    }
}
