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

use proto::{NodeStatus, PrincipleNode, PrincipleTree};
use quick_xml::events::BytesStart;

use super::xml::{TextLines, XmlEvent, XmlReader, collapse, local_name};
use super::{IngestError, Ingested, MAX_DEPTH, file_stem};

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
    let mut xml = XmlReader::new(path, text);
    let mut open: Vec<Division> = Vec::new();
    // For each open element outside sections: whether it is a division.
    let mut elements: Vec<bool> = Vec::new();
    let mut capture: Option<Field> = None;
    let mut roots: Vec<PrincipleNode> = Vec::new();
    loop {
        match xml.next()? {
            XmlEvent::Start(element) => {
                let name = local_name(&element);
                if SKIPPED.contains(&name) {
                    xml.skip(&element)?;
                    continue;
                }
                if open.len() >= MAX_DEPTH {
                    return Err(
                        xml.invalid(format!("divisions nested deeper than {MAX_DEPTH} levels"))
                    );
                }
                if name == "section" {
                    let section = read_section(&mut xml, &element, &open)?;
                    match open.last_mut() {
                        Some(parent) => parent.node.children.push(section),
                        None => roots.push(section),
                    }
                    continue;
                }
                let kind = division_kind(name);
                let parent_is_division = elements.last() == Some(&true);
                if let Some(kind) = kind {
                    open.push(Division {
                        node: PrincipleNode::new("", kind),
                        value: None,
                        num: String::new(),
                        heading: String::new(),
                        status: xml.attr(&element, "status")?,
                    });
                } else if parent_is_division && let Some(division) = open.last_mut() {
                    if name == "num" {
                        division.value = xml.attr(&element, "value")?;
                        capture = Some(Field::Num);
                    } else if name == "heading" {
                        capture = Some(Field::Heading);
                    }
                }
                elements.push(kind.is_some());
            }
            XmlEvent::End => {
                if elements.pop() == Some(true) {
                    if let Some(division) = open.pop() {
                        let node = finish_division(division, &open);
                        match open.last_mut() {
                            Some(parent) => parent.node.children.push(node),
                            None => roots.push(node),
                        }
                    }
                } else if elements.last() == Some(&true) {
                    capture = None;
                }
            }
            XmlEvent::Text(text) => {
                if let Some(division) = open.last_mut() {
                    match capture {
                        Some(Field::Num) => division.num.push_str(&text),
                        Some(Field::Heading) => division.heading.push_str(&text),
                        None => {}
                    }
                }
            }
            XmlEvent::Empty(_) => {}
            XmlEvent::Eof => break,
        }
    }
    let root = match roots.len() {
        0 => {
            return Err(IngestError::Invalid {
                path: path.to_owned(),
                line: None,
                message: "no USLM divisions or sections found".into(),
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Capture {
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
    let mut value = None;
    let mut num = String::new();
    let mut heading = String::new();
    let mut body = TextLines::default();
    let mut parts: Vec<Part> = Vec::new();
    let mut depth = 0usize;
    let mut capture = Capture::Body;
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
                let part = match name {
                    "num" if parts.is_empty() => {
                        value = xml.attr(&element, "value")?;
                        capture = Capture::SectionNum;
                        Part::Capture
                    }
                    "heading" if parts.is_empty() => {
                        capture = Capture::SectionHeading;
                        Part::Capture
                    }
                    "num" => {
                        capture = Capture::Enumerator;
                        Part::Capture
                    }
                    "heading" => {
                        capture = Capture::SubHeading;
                        Part::Capture
                    }
                    "tr" => {
                        body.start_line(depth.saturating_sub(1));
                        body.push("|");
                        Part::Row
                    }
                    "td" | "th" => {
                        body.push(" ");
                        Part::Cell
                    }
                    _ if SUBDIVISIONS.contains(&name) => {
                        depth += 1;
                        body.start_line(depth - 1);
                        Part::Subdivision
                    }
                    _ if BLOCKS.contains(&name) => {
                        if body.has_body() {
                            body.start_line(depth.saturating_sub(1));
                        }
                        Part::Block
                    }
                    _ => Part::Inline,
                };
                parts.push(part);
            }
            XmlEvent::Empty(element) => {
                if matches!(local_name(&element), "td" | "th") {
                    body.push(" |");
                }
            }
            XmlEvent::End => match parts.pop() {
                None => break,
                Some(Part::Subdivision) => depth = depth.saturating_sub(1),
                Some(Part::Capture) => {
                    match capture {
                        Capture::SubHeading => body.end_heading(),
                        Capture::Enumerator => body.separate(),
                        Capture::Body | Capture::SectionNum | Capture::SectionHeading => {}
                    }
                    capture = Capture::Body;
                }
                Some(Part::Row) => body.break_line(),
                Some(Part::Cell) => body.push(" |"),
                Some(Part::Block | Part::Inline) => {}
            },
            XmlEvent::Text(text) => match capture {
                Capture::Body => body.push(&text),
                Capture::Enumerator | Capture::SubHeading => body.push_prefix(&text),
                Capture::SectionNum => num.push_str(&text),
                Capture::SectionHeading => heading.push_str(&text),
            },
            XmlEvent::Eof => return Err(xml.invalid("end of file inside a section")),
        }
    }

    let num = collapse(&num);
    let heading = collapse(&heading);
    let mut node = PrincipleNode::new(label(&num, &heading, "section"), "section");
    node.status = node_status(status, &heading);
    node.content = body.finish();
    let number = value.unwrap_or_else(|| {
        num.trim_start_matches(|c: char| c == '§' || c.is_whitespace())
            .trim_end_matches('.')
            .to_owned()
    });
    node.citation = format!("{} {number}", usc(title_number(ancestors)));
    Ok(node)
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
