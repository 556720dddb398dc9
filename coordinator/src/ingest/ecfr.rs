//! eCFR reader: GPO's bulk XML for the Code of Federal Regulations (`ECFR-titleN.xml`).
//!
//! Each `DIVn` element is a node: DIV1 title, DIV2 subtitle, DIV3 chapter, DIV4 subchapter, DIV5
//! part, DIV6 subpart, DIV7 subject group, DIV8 section, DIV9 appendix (the `TYPE` attribute wins
//! where present). `HEAD` is the label, `N` the number used in citations (`1 CFR 1.1`,
//! `1 CFR part 1`) and the `NODE` attribute (`1:1.0.1`) gives the title number. Paragraphs (`P`, `FP…`, headings inside extracts, notes, examples, table
//! rows) become the content, one per line; the paragraph labels `(a)`, `(1)` are already in the
//! text. Front matter, tables of contents, authority and source notes, citations of amending
//! documents, editorial notes and footnotes are skipped. A `[Reserved]` heading marks the node
//! inactive. The reader streams and keeps no recursion of its own.

use std::path::Path;

use proto::{NodeStatus, PrincipleNode};
use quick_xml::events::BytesStart;

use super::xml::{TextLines, XmlEvent, XmlReader, collapse, local_name};
use super::{IngestError, Ingested, MAX_DEPTH};

/// Elements whose text is not part of any section's content.
const SKIPPED: [&str; 10] = [
    "HEADER", "AMDDATE", "CFRTOC", "AUTH", "SOURCE", "CITA", "SECAUTH", "EDNOTE", "FTNT", "PRTPAGE",
];

/// What an open element means to the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Division,
    Head,
    Block,
    Row,
    Cell,
    Inline,
}

/// An open `DIVn` element.
struct Division {
    node: PrincipleNode,
    number: Option<String>,
    head: String,
    body: TextLines,
}

pub(super) fn read(path: &Path, text: &str) -> Result<Ingested, IngestError> {
    let mut reader = Reader {
        xml: XmlReader::new(path, text),
        title: None,
        open: Vec::new(),
        roles: Vec::new(),
        in_head: false,
        roots: Vec::new(),
    };
    loop {
        match reader.xml.next()? {
            XmlEvent::Start(element) => reader.start(&element)?,
            XmlEvent::Empty(element) => reader.empty(&element),
            XmlEvent::End => reader.end(),
            XmlEvent::Text(text) => reader.text(&text),
            XmlEvent::Eof => break,
        }
    }
    super::single_tree(path, reader.roots, "no eCFR divisions (DIV1 … DIV9) found")
}

struct Reader<'a> {
    xml: XmlReader<'a>,
    /// The title number, from the first `NODE` attribute.
    title: Option<String>,
    /// Open divisions, outermost first.
    open: Vec<Division>,
    /// Open elements, outermost first.
    roles: Vec<Role>,
    in_head: bool,
    /// Finished top-level divisions.
    roots: Vec<PrincipleNode>,
}

impl Reader<'_> {
    fn start(&mut self, element: &BytesStart<'_>) -> Result<(), IngestError> {
        let name = local_name(element);
        if SKIPPED.contains(&name) {
            return self.xml.skip(element);
        }
        let role = if let Some(div) = division_number(name) {
            self.open_division(element, div)?;
            Role::Division
        } else if name == "HEAD" && self.roles.last() == Some(&Role::Division) {
            self.in_head = true;
            Role::Head
        } else {
            let role = content_role(name);
            if let Some(body) = self.body() {
                match role {
                    Role::Block => body.break_line(),
                    Role::Row => {
                        body.break_line();
                        body.push("|");
                    }
                    Role::Cell => body.push(" "),
                    Role::Division | Role::Head | Role::Inline => {}
                }
            }
            role
        };
        self.roles.push(role);
        Ok(())
    }

    fn open_division(&mut self, element: &BytesStart<'_>, div: u8) -> Result<(), IngestError> {
        if self.open.len() >= MAX_DEPTH {
            return Err(self
                .xml
                .invalid(format!("divisions nested deeper than {MAX_DEPTH} levels")));
        }
        let kind = kind(self.xml.attr(element, "TYPE")?.as_deref(), div);
        let number = self.xml.attr(element, "N")?.map(|n| collapse(&n));
        if self.title.is_none() {
            // `NODE="4:1.0.1"`: the title number, then the position in the title.
            // (A DIV1's `N` is the volume, not the title.)
            self.title = self
                .xml
                .attr(element, "NODE")?
                .and_then(|node| Some(node.split_once(':')?.0.trim().to_owned()))
                .filter(|t| !t.is_empty());
        }
        let mut node = PrincipleNode::new("", kind);
        node.citation = citation(kind, number.as_deref(), &self.open, self.title.as_deref());
        self.open.push(Division {
            node,
            number,
            head: String::new(),
            body: TextLines::default(),
        });
        Ok(())
    }

    fn empty(&mut self, element: &BytesStart<'_>) {
        if content_role(local_name(element)) == Role::Cell
            && let Some(body) = self.body()
        {
            body.push(" |");
        }
    }

    fn end(&mut self) {
        match self.roles.pop() {
            Some(Role::Division) => {
                if let Some(division) = self.open.pop() {
                    let node = finish(division, self.title.as_deref());
                    match self.open.last_mut() {
                        Some(parent) => parent.node.children.push(node),
                        None => self.roots.push(node),
                    }
                }
            }
            Some(Role::Head) => self.in_head = false,
            Some(Role::Block | Role::Row) => {
                if let Some(body) = self.body() {
                    body.break_line();
                }
            }
            Some(Role::Cell) => {
                if let Some(body) = self.body() {
                    body.push(" |");
                }
            }
            Some(Role::Inline) | None => {}
        }
    }

    fn text(&mut self, text: &str) {
        if let Some(division) = self.open.last_mut() {
            if self.in_head {
                division.head.push_str(text);
            } else {
                division.body.push(text);
            }
        }
    }

    /// The content of the innermost open division.
    fn body(&mut self) -> Option<&mut TextLines> {
        self.open.last_mut().map(|d| &mut d.body)
    }
}

/// `n` of a `DIVn` element name.
fn division_number(name: &str) -> Option<u8> {
    match name.strip_prefix("DIV")?.as_bytes() {
        [digit @ b'1'..=b'9'] => Some(digit - b'0'),
        _ => None,
    }
}

/// Node kind from the `TYPE` attribute, or from the DIV number when the type is missing or
/// unknown.
fn kind(division_type: Option<&str>, div: u8) -> &'static str {
    match division_type {
        Some("TITLE") => "title",
        Some("SUBTITLE") => "subtitle",
        Some("CHAPTER") => "chapter",
        Some("SUBCHAP") => "subchapter",
        Some("PART") => "part",
        Some("SUBPART") => "subpart",
        Some("SUBJGRP") => "subject_group",
        Some("SECTION") => "section",
        Some("APPENDIX") => "appendix",
        _ => match div {
            1 => "title",
            2 => "subtitle",
            3 => "chapter",
            4 => "subchapter",
            5 => "part",
            6 => "subpart",
            7 => "subject_group",
            8 => "section",
            _ => "appendix",
        },
    }
}

/// How text inside a division's content is laid out.
fn content_role(name: &str) -> Role {
    match name {
        "TR" | "ROW" | "BOXHD" => Role::Row,
        "TD" | "TH" | "ENT" | "CHED" => Role::Cell,
        "P" | "FRP" | "NOTE" | "NOTES" | "EXTRACT" | "EXAMPLE" | "HEAD" | "TTITLE" | "TNOTE"
        | "TABLE" | "GPOTABLE" | "DIV" => Role::Block,
        _ if name.starts_with("FP") || name.starts_with("HD") => Role::Block,
        _ => Role::Inline,
    }
}

/// A division's citation from its number and its ancestors: `1 CFR part 1, subpart A`. Sections
/// without an `N` attribute get theirs from the heading when they close.
fn citation(
    kind: &str,
    number: Option<&str>,
    ancestors: &[Division],
    title: Option<&str>,
) -> String {
    let cfr = cfr(title);
    let parent = || {
        ancestors
            .last()
            .map_or_else(|| cfr.clone(), |a| a.node.citation.clone())
    };
    let nearest = |kind: &str| {
        ancestors
            .iter()
            .rev()
            .find(|a| a.node.kind == kind)
            .and_then(|a| a.number.as_deref())
    };
    let Some(n) = number else {
        return parent();
    };
    match kind {
        "title" => cfr,
        "subtitle" => format!("{cfr} subtitle {n}"),
        "chapter" => format!("{cfr} chapter {n}"),
        "subchapter" => match nearest("chapter") {
            Some(chapter) => format!("{cfr} chapter {chapter}, subchapter {n}"),
            None => format!("{cfr} subchapter {n}"),
        },
        "part" => format!("{cfr} part {n}"),
        "subpart" | "appendix" => {
            let n = if kind == "subpart" {
                format!("subpart {n}")
            } else {
                n.to_owned()
            };
            match nearest("part") {
                Some(part) => format!("{cfr} part {part}, {n}"),
                None => format!("{cfr} {n}"),
            }
        }
        "section" => format!("{cfr} {}", section_number(n).unwrap_or(n)),
        _ => parent(),
    }
}

/// `1.1` from `§ 1.1`, `457.104-457.109` from `§§ 457.104-457.109`, `1.1` from the heading
/// `§ 1.1   Definitions.`.
fn section_number(text: &str) -> Option<&str> {
    let rest = text.trim_start().strip_prefix('§')?;
    let rest = rest.trim_start_matches('§').trim_start();
    let number = rest.split_whitespace().next()?.trim_end_matches(['.', ',']);
    (!number.is_empty()).then_some(number)
}

/// `1 CFR`, the citation of a title.
fn cfr(title: Option<&str>) -> String {
    match title {
        Some(title) => format!("{title} CFR"),
        None => "CFR".to_owned(),
    }
}

fn finish(division: Division, title: Option<&str>) -> PrincipleNode {
    let Division {
        mut node,
        number,
        head,
        body,
    } = division;
    node.label = collapse(&head);
    if node.label.is_empty() {
        node.label = match &number {
            Some(n) => format!("{} {n}", node.kind),
            None => node.kind.clone(),
        };
    }
    node.content = body.finish();
    if node.kind == "section"
        && number.is_none()
        && let Some(n) = section_number(&node.label)
    {
        node.citation = format!("{} {n}", cfr(title));
    }
    if node.label.to_ascii_lowercase().contains("[reserved]") {
        node.status = NodeStatus::Inactive {
            reason: "reserved".into(),
        };
    }
    node
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_numbers_from_n_and_head() {
        assert_eq!(section_number("§ 1.1"), Some("1.1"));
        assert_eq!(
            section_number("§§ 457.104-457.109"),
            Some("457.104-457.109")
        );
        assert_eq!(section_number("§ 2.1   Scope and purpose."), Some("2.1"));
        assert_eq!(section_number("Appendix I"), None);
    }

    #[test]
    fn reads_a_minimal_title() {
        let xml = r#"<DLPSTEXTCLASS><TEXT><BODY><ECFRBRWS>
            <DIV1 N="1" NODE="7:1" TYPE="TITLE"><HEAD>Title 7</HEAD>
            <DIV5 N="2" TYPE="PART"><HEAD>PART 2 - X</HEAD>
            <DIV8 TYPE="SECTION"><HEAD>§ 2.3   Things.</HEAD>
            <P>(a) One <I>two</I>.</P><FP>Three</FP>
            <TABLE><TR><TH>a</TH><TD/></TR></TABLE>
            <CITA>[1 FR 2]</CITA></DIV8>
            <DIV8 N="§ 2.4" TYPE="SECTION"><HEAD>§ 2.4   [Reserved]</HEAD></DIV8>
            </DIV5></DIV1></ECFRBRWS></BODY></TEXT></DLPSTEXTCLASS>"#;
        let tree = read(Path::new("t.xml"), xml).expect("valid eCFR").tree;
        let part = &tree.root.children[0];
        assert_eq!(part.citation, "7 CFR part 2");
        let section = &part.children[0];
        assert_eq!(section.citation, "7 CFR 2.3");
        assert_eq!(section.content, "(a) One two.\nThree\n| a | |");
        assert!(part.children[1].status != NodeStatus::Active);
    }
}
