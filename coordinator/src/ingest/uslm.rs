//! USLM reader: the US Code in the House's XML format (`<uscDoc>`, namespace
//! `http://xml.house.gov/schemas/uslm/1.0`).
//!
//! The tree follows the code's divisions (title > subtitle > chapter > subchapter > part > subpart,
//! plus untitled `<level>` groupings as subject groups) and stops at sections: a section is the
//! unit a person cites (`21 U.S.C. 361`) and reads as a whole, and its subsections, paragraphs,
//! clauses and so on are flattened into its content, one line each, indented by depth and keeping
//! their enumerators and headings: `(a) Heading. text…` then `  (1) text…`. Notes, tables of
//! contents, source credits and footnotes are not operative text and are skipped. Sections with a
//! `status` attribute, or whose heading starts with Repealed, Omitted or Transferred, are
//! inactive. The reader streams with quick-xml and keeps no recursion of its own.

use std::path::Path;

use proto::{NodeStatus, PrincipleNode};
use quick_xml::events::BytesStart;

use super::xml::{TextLines, XmlEvent, XmlReader, collapse, local_name};
use super::{IngestError, Ingested, MAX_DEPTH};

/// Elements that hold no operative text.
const SKIPPED: [&str; 5] = ["meta", "notes", "note", "toc", "sourceCredit"];

/// Elements inside a section that start a new, deeper line.
const SUBDIVISIONS: [&str; 17] = [
    "subsection",
    "paragraph",
    "subparagraph",
    "clause",
    "subclause",
    "item",
    "subitem",
    "subsubitem",
    "level",
    // Quoted law (in amendments) can hold whole divisions.
    "section",
    "title",
    "subtitle",
    "chapter",
    "subchapter",
    "part",
    "subpart",
    "division",
];

/// Elements inside a section that hold running text.
const BLOCKS: [&str; 5] = ["chapeau", "content", "continuation", "proviso", "p"];

/// An open division above section level.
struct Division {
    node: PrincipleNode,
    /// The `value` of its `<num>`: `9` of `CHAPTER 9—`.
    value: Option<String>,
    num: String,
    heading: String,
    status: Option<String>,
}

/// Where character data goes while a division's `<num>` or `<heading>` is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Num,
    Heading,
}

pub(super) fn read(path: &Path, text: &str) -> Result<Ingested, IngestError> {
    let mut reader = Reader {
        xml: XmlReader::new(path, text),
        open: Vec::new(),
        elements: Vec::new(),
        capture: None,
        roots: Vec::new(),
    };
    loop {
        match reader.xml.next()? {
            XmlEvent::Start(element) => reader.start(&element)?,
            XmlEvent::End => reader.end(),
            XmlEvent::Text(text) => reader.text(&text),
            XmlEvent::Empty(_) => {}
            XmlEvent::Eof => break,
        }
    }
    super::single_tree(path, reader.roots, "no USLM divisions or sections found")
}

/// Reads the divisions above section level; sections are read by [`read_section`].
struct Reader<'a> {
    xml: XmlReader<'a>,
    /// Open divisions, outermost first.
    open: Vec<Division>,
    /// For each open element outside sections: whether it is a division.
    elements: Vec<bool>,
    capture: Option<Field>,
    /// Finished top-level divisions (and sections outside any division).
    roots: Vec<PrincipleNode>,
}

impl Reader<'_> {
    fn start(&mut self, element: &BytesStart<'_>) -> Result<(), IngestError> {
        let name = local_name(element);
        if SKIPPED.contains(&name) {
            return self.xml.skip(element);
        }
        if self.open.len() >= MAX_DEPTH {
            return Err(self
                .xml
                .invalid(format!("divisions nested deeper than {MAX_DEPTH} levels")));
        }
        if name == "section" {
            let section = read_section(&mut self.xml, element, &self.open)?;
            self.attach(section);
            return Ok(());
        }
        let kind = division_kind(name);
        if let Some(kind) = kind {
            self.open.push(Division {
                node: PrincipleNode::new("", kind),
                value: None,
                num: String::new(),
                heading: String::new(),
                status: self.xml.attr(element, "status")?,
            });
        } else if self.elements.last() == Some(&true)
            && let Some(division) = self.open.last_mut()
        {
            if name == "num" {
                division.value = self.xml.attr(element, "value")?;
                self.capture = Some(Field::Num);
            } else if name == "heading" {
                self.capture = Some(Field::Heading);
            }
        }
        self.elements.push(kind.is_some());
        Ok(())
    }

    fn end(&mut self) {
        if self.elements.pop() == Some(true) {
            if let Some(division) = self.open.pop() {
                let node = finish_division(division, &self.open);
                self.attach(node);
            }
        } else if self.elements.last() == Some(&true) {
            // A child of a division closed: if it was the `<num>` or `<heading>`, that field is
            // complete.
            self.capture = None;
        }
    }

    fn text(&mut self, text: &str) {
        if let Some(division) = self.open.last_mut() {
            match self.capture {
                Some(Field::Num) => division.num.push_str(text),
                Some(Field::Heading) => division.heading.push_str(text),
                None => {}
            }
        }
    }

    fn attach(&mut self, node: PrincipleNode) {
        match self.open.last_mut() {
            Some(parent) => parent.node.children.push(node),
            None => self.roots.push(node),
        }
    }
}

fn division_kind(name: &str) -> Option<&'static str> {
    Some(match name {
        "title" => "title",
        "subtitle" => "subtitle",
        "chapter" => "chapter",
        "subchapter" => "subchapter",
        "part" => "part",
        "subpart" => "subpart",
        "level" => "subject_group",
        "appendix" => "appendix",
        _ => return None,
    })
}

fn finish_division(division: Division, ancestors: &[Division]) -> PrincipleNode {
    let Division {
        mut node,
        num,
        heading,
        status,
        ..
    } = division;
    let heading = collapse(&heading);
    node.status = node_status(status, &heading);
    node.label = label(&collapse(&num), &heading, &node.kind);
    let title =
        title_number(ancestors).or(division.value.as_deref().filter(|_| node.kind == "title"));
    let mut parts: Vec<String> = ancestors
        .iter()
        .filter_map(|a| citation_part(&a.node.kind, a.value.as_deref()?))
        .collect();
    parts.extend(
        division
            .value
            .as_deref()
            .and_then(|v| citation_part(&node.kind, v)),
    );
    node.citation = if parts.is_empty() {
        usc(title)
    } else {
        format!("{} {}", usc(title), parts.join(", "))
    };
    node
}

/// This division's piece of a citation: `ch. 9`, `subch. VI`, `pt. A`, `subpt. 1`.
fn citation_part(kind: &str, value: &str) -> Option<String> {
    let abbreviation = match kind {
        "subtitle" => "subtitle",
        "chapter" => "ch.",
        "subchapter" => "subch.",
        "part" => "pt.",
        "subpart" => "subpt.",
        "appendix" => "app.",
        _ => return None,
    };
    Some(format!("{abbreviation} {value}"))
}

fn title_number(ancestors: &[Division]) -> Option<&str> {
    ancestors
        .iter()
        .find(|a| a.node.kind == "title")
        .and_then(|a| a.value.as_deref())
}

/// `21 U.S.C.`
fn usc(title: Option<&str>) -> String {
    match title {
        Some(title) => format!("{title} U.S.C."),
        None => "U.S.C.".to_owned(),
    }
}

/// The label as the document prints it: `§ 361. Adulterated cosmetics`, `CHAPTER 9—FEDERAL …`.
fn label(num: &str, heading: &str, kind: &str) -> String {
    match (num.is_empty(), heading.is_empty()) {
        (true, true) => kind.to_owned(),
        (true, false) => heading.to_owned(),
        (false, true) => num.to_owned(),
        _ if num.ends_with(['—', '–', '-']) => format!("{num}{heading}"),
        _ => format!("{num} {heading}"),
    }
}

/// Inactive when the element has a `status` (repealed, transferred, omitted, …) or its heading
/// says so.
fn node_status(status: Option<String>, heading: &str) -> NodeStatus {
    let said = heading
        .trim_start_matches(|c: char| c == '[' || c.is_whitespace())
        .split(|c: char| !c.is_alphabetic())
        .next()
        .map(str::to_lowercase)
        .filter(|word| ["repealed", "omitted", "transferred"].contains(&word.as_str()));
    match status.or(said) {
        Some(reason) => NodeStatus::Inactive { reason },
        None => NodeStatus::Active,
    }
}

/// What an open element inside a section means to the flattening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Subdivision,
    /// A `<num>` or `<heading>`: see [`Capture`].
    Capture,
    Block,
    Row,
    Cell,
    Inline,
}

/// Where character data goes inside a section.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Capture {
    #[default]
    Body,
    SectionNum,
    SectionHeading,
    /// The enumerator of a subdivision: `(a)`.
    Enumerator,
    /// The heading of a subdivision, ended with a full stop.
    SubHeading,
}

/// Read a section whose start tag was just read, up to and including its end tag.
fn read_section(
    xml: &mut XmlReader<'_>,
    start: &BytesStart<'_>,
    ancestors: &[Division],
) -> Result<PrincipleNode, IngestError> {
    let status = xml.attr(start, "status")?;
    let mut section = Section::default();
    loop {
        match xml.next()? {
            XmlEvent::Start(element) => {
                let name = local_name(&element);
                let footnote_ref =
                    name == "ref" && xml.attr(&element, "class")?.as_deref() == Some("footnoteRef");
                if SKIPPED.contains(&name) || footnote_ref {
                    xml.skip(&element)?;
                    continue;
                }
                let value = if name == "num" {
                    xml.attr(&element, "value")?
                } else {
                    None
                };
                section.start(name, value);
            }
            XmlEvent::Empty(element) => section.empty(local_name(&element)),
            XmlEvent::End => {
                if section.end() {
                    return Ok(section.into_node(status, ancestors));
                }
            }
            XmlEvent::Text(text) => section.text(&text),
            XmlEvent::Eof => return Err(xml.invalid("end of file inside a section")),
        }
    }
}

/// A section being read: its number and heading, and its operative text flattened into lines.
#[derive(Debug, Default)]
struct Section {
    /// The `value` of the section's `<num>`: `361` of `§ 361.`.
    value: Option<String>,
    num: String,
    heading: String,
    body: TextLines,
    /// Open elements inside the section, outermost first.
    parts: Vec<Part>,
    /// Open subdivisions: 1 inside a subsection, 2 inside a paragraph, ...
    depth: usize,
    capture: Capture,
}

impl Section {
    fn start(&mut self, name: &str, num_value: Option<String>) {
        let direct_child = self.parts.is_empty();
        let part = match name {
            "num" if direct_child => {
                self.value = num_value;
                self.capture = Capture::SectionNum;
                Part::Capture
            }
            "heading" if direct_child => {
                self.capture = Capture::SectionHeading;
                Part::Capture
            }
            "num" => {
                self.capture = Capture::Enumerator;
                Part::Capture
            }
            "heading" => {
                self.capture = Capture::SubHeading;
                Part::Capture
            }
            "tr" => {
                self.body.start_line(self.indent());
                self.body.push("|");
                Part::Row
            }
            "td" | "th" => {
                self.body.push(" ");
                Part::Cell
            }
            _ if SUBDIVISIONS.contains(&name) => {
                self.depth += 1;
                self.body.start_line(self.indent());
                Part::Subdivision
            }
            _ if BLOCKS.contains(&name) => {
                if self.body.has_body() {
                    self.body.start_line(self.indent());
                }
                Part::Block
            }
            _ => Part::Inline,
        };
        self.parts.push(part);
    }

    fn empty(&mut self, name: &str) {
        if matches!(name, "td" | "th") {
            self.body.push(" |");
        }
    }

    /// An element closed; returns whether it was the section itself.
    fn end(&mut self) -> bool {
        match self.parts.pop() {
            None => return true,
            Some(Part::Subdivision) => self.depth = self.depth.saturating_sub(1),
            Some(Part::Capture) => {
                match self.capture {
                    Capture::SubHeading => self.body.end_heading(),
                    Capture::Enumerator => self.body.separate(),
                    Capture::Body | Capture::SectionNum | Capture::SectionHeading => {}
                }
                self.capture = Capture::Body;
            }
            Some(Part::Row) => self.body.break_line(),
            Some(Part::Cell) => self.body.push(" |"),
            Some(Part::Block | Part::Inline) => {}
        }
        false
    }

    fn text(&mut self, text: &str) {
        match self.capture {
            Capture::Body => self.body.push(text),
            Capture::Enumerator | Capture::SubHeading => self.body.push_prefix(text),
            Capture::SectionNum => self.num.push_str(text),
            Capture::SectionHeading => self.heading.push_str(text),
        }
    }

    /// Lines of a subsection are not indented, a paragraph's by one step, and so on.
    fn indent(&self) -> usize {
        self.depth.saturating_sub(1)
    }

    fn into_node(self, status: Option<String>, ancestors: &[Division]) -> PrincipleNode {
        let num = collapse(&self.num);
        let heading = collapse(&self.heading);
        let mut node = PrincipleNode::new(label(&num, &heading, "section"), "section");
        node.status = node_status(status, &heading);
        node.content = self.body.finish();
        let number = self.value.unwrap_or_else(|| {
            num.trim_start_matches(|c: char| c == '§' || c.is_whitespace())
                .trim_end_matches('.')
                .to_owned()
        });
        node.citation = format!("{} {number}", usc(title_number(ancestors)));
        node
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"<?xml version="1.0"?>
<uscDoc xmlns="http://xml.house.gov/schemas/uslm/1.0"><meta><title>not me</title></meta><main>
<title identifier="/us/usc/t9"><num value="9">Title 9—</num><heading>THINGS</heading>
<chapter identifier="/us/usc/t9/ch2"><num value="2">CHAPTER 2—</num><heading>STUFF</heading>
<toc><tocItem>1</tocItem></toc>
<section identifier="/us/usc/t9/s5"><num value="5">§ 5.</num><heading> Rules</heading>
<chapeau>A person shall—</chapeau>
<subsection><num value="a">(a)</num><heading> General rule</heading><content> do
  this<ref class="footnoteRef" idref="f1">1</ref><note type="footnote">So in original.</note>;</content>
<paragraph><num value="1">(1)</num><content> and that &amp; more.</content></paragraph>
<continuation>as the case may be.</continuation></subsection>
<subsection><num value="b">(b)</num><content>Other.</content></subsection>
<sourceCredit>(Pub. L. 1)</sourceCredit><notes><note><p>Amendments</p></note></notes>
</section>
<section status="repealed" identifier="/us/usc/t9/s6"><num value="6">§ 6.</num><heading> Repealed. Pub. L. 2</heading></section>
</chapter></title></main></uscDoc>"#;

    #[test]
    fn flattens_a_section_below_its_divisions() {
        let tree = read(Path::new("t.xml"), DOC).expect("valid USLM").tree;
        assert_eq!(tree.root.label, "Title 9—THINGS");
        assert_eq!(tree.root.citation, "9 U.S.C.");
        let chapter = &tree.root.children[0];
        assert_eq!(chapter.citation, "9 U.S.C. ch. 2");
        let section = &chapter.children[0];
        assert_eq!(section.label, "§ 5. Rules");
        assert_eq!(section.citation, "9 U.S.C. 5");
        assert_eq!(
            section.content,
            "A person shall—\n(a) General rule. do this;\n  (1) and that & more.\nas the case may be.\n(b) Other."
        );
        assert_eq!(
            chapter.children[1].status,
            NodeStatus::Inactive {
                reason: "repealed".into()
            }
        );
    }

    #[test]
    fn headings_that_say_repealed_make_a_node_inactive() {
        assert!(
            matches!(node_status(None, "Omitted"), NodeStatus::Inactive { reason } if reason == "omitted")
        );
        assert_eq!(node_status(None, "Definitions"), NodeStatus::Active);
    }
}
