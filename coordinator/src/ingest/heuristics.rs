//! Structure recovery for documents whose headings are not marked up: plain text, PDFs without
//! an outline, and HTML or DOCX files without heading elements or heading styles.
//!
//! The input is the document's paragraph blocks in reading order, with their type size where the
//! format has one (PDF). A block is a heading when its first line is numbered like one (`PART
//! 701`, `Section 4`, `§ 12.3`, `Article IV`, `Appendix A`, `1.2 Scope` on a line of its own) or
//! when the whole block is short and set in larger type than the body. Each distinct heading style
//! (type size, and the kind of numbering) is a level: larger type is higher, and among equal sizes
//! the style met first is higher, as reStructuredText ranks its underline styles. A first line
//! that looks like a title (short, no closing punctuation, not a heading itself) becomes the
//! title. A document with no heading at all gets one section per paragraph block (after its
//! title, if its first line looks like one).

use super::outline::{Section, join_blocks};

/// Longest line taken for a heading.
const MAX_HEADING_CHARS: usize = 120;
/// Larger type than the body by at least this many points makes a heading.
const LARGER_TYPE_POINTS: f32 = 0.75;
/// Words of a paragraph used as its label when sections are paragraph blocks.
const LABEL_WORDS: usize = 8;

/// A paragraph block: lines separated by `\n`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Block {
    pub(super) text: String,
    /// Source line of the block's first line, for formats that have lines.
    pub(super) line: Option<usize>,
    /// Type size in points, for formats that have one.
    pub(super) size: Option<f32>,
}

/// How the structure was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Found {
    /// Numbered or larger-type heading lines.
    Headings,
    /// No heading: one section per paragraph block.
    Paragraphs,
}

/// The document as a preamble and a flat list of sections, ready for
/// [`outline::build`](super::outline::build).
#[derive(Debug)]
pub(super) struct Recovered {
    pub(super) preamble: String,
    pub(super) sections: Vec<Section>,
    pub(super) found: Found,
}

/// The kind of numbering that opens a heading line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Numbering {
    /// `PART 701`, `Section 4`, `Article IV`, ...: the keyword, lower-cased.
    Keyword(String),
    /// `§ 12.3`.
    SectionSign,
    /// `1.2 Scope`: how many numbers.
    Dotted(usize),
}

/// What makes a heading look the way it does; each distinct style is one level.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Style {
    /// Type size in half points when larger than the body, else 0.
    size: i32,
    numbering: Option<Numbering>,
}

/// Find the headings among `blocks`; see the module documentation.
pub(super) fn recover(blocks: Vec<Block>) -> Recovered {
    let body_size = body_size(&blocks);
    let headings: Vec<Option<Style>> = blocks
        .iter()
        .map(|block| heading_style(block, body_size))
        .collect();
    let mut styles: Vec<(Style, usize)> = Vec::new();
    for (order, style) in headings.iter().flatten().enumerate() {
        if !styles.iter().any(|(s, _)| s == style) {
            styles.push((style.clone(), order));
        }
    }
    if styles.is_empty() {
        return paragraphs(blocks);
    }
    // Larger type first; among equal sizes, the style met first.
    styles.sort_by_key(|(style, order)| (std::cmp::Reverse(style.size), *order));
    let level_of = |style: &Style| 1 + styles.iter().position(|(s, _)| s == style).unwrap_or(0);

    let title_index = (headings[0].is_none()
        && headings.iter().skip(1).any(Option::is_some)
        && looks_like_title(&blocks[0].text))
    .then_some(0);

    let mut preamble = String::new();
    let mut sections: Vec<Section> = Vec::new();
    for (index, (block, style)) in blocks.into_iter().zip(headings).enumerate() {
        let (level, label, rest) = match style {
            Some(style) if style.size > 0 => (level_of(&style), one_line(&block.text), None),
            Some(style) => {
                let (first, rest) = block
                    .text
                    .split_once('\n')
                    .unwrap_or((block.text.as_str(), ""));
                (
                    level_of(&style),
                    one_line(first),
                    Some(rest.trim().to_owned()),
                )
            }
            None if title_index == Some(index) => (0, one_line(&block.text), None),
            None => {
                match sections.last_mut() {
                    Some(section) => {
                        section.content =
                            join_blocks(std::mem::take(&mut section.content), block.text)
                    }
                    None => preamble = join_blocks(std::mem::take(&mut preamble), block.text),
                }
                continue;
            }
        };
        sections.push(Section {
            level,
            line: block.line,
            label,
            content: rest.unwrap_or_default(),
        });
    }
    Recovered {
        preamble,
        sections,
        found: Found::Headings,
    }
}

/// One section per block, labelled with its first words; a first line that looks like a title
/// is the title.
fn paragraphs(blocks: Vec<Block>) -> Recovered {
    let titled = blocks.len() > 1 && looks_like_title(&blocks[0].text);
    let sections = blocks
        .into_iter()
        .enumerate()
        .map(|(index, block)| {
            if titled && index == 0 {
                Section {
                    level: 0,
                    line: block.line,
                    label: one_line(&block.text),
                    content: String::new(),
                }
            } else {
                Section {
                    level: 1,
                    line: block.line,
                    label: first_words(&block.text),
                    content: block.text,
                }
            }
        })
        .collect();
    Recovered {
        preamble: String::new(),
        sections,
        found: Found::Paragraphs,
    }
}

/// The type size of most of the text (weighted by characters), if the blocks have sizes.
fn body_size(blocks: &[Block]) -> Option<f32> {
    let mut weights: Vec<(i32, usize)> = Vec::new();
    for block in blocks {
        let Some(size) = block.size else { continue };
        let bucket = half_points(size);
        let chars = block.text.chars().count();
        match weights.iter_mut().find(|(b, _)| *b == bucket) {
            Some((_, weight)) => *weight += chars,
            None => weights.push((bucket, chars)),
        }
    }
    weights
        .into_iter()
        .max_by_key(|&(bucket, weight)| (weight, std::cmp::Reverse(bucket)))
        .map(|(bucket, _)| bucket as f32 / 2.0)
}

fn half_points(size: f32) -> i32 {
    (size * 2.0).round() as i32
}

/// The heading style of a block, or `None` for body text.
fn heading_style(block: &Block, body_size: Option<f32>) -> Option<Style> {
    let first = block.text.lines().next().unwrap_or("").trim();
    let single_line = !block.text.contains('\n');
    let numbering = numbering(first, single_line);
    let larger = match (block.size, body_size) {
        (Some(size), Some(body)) => size >= body + LARGER_TYPE_POINTS,
        _ => false,
    };
    if larger
        && block.text.chars().count() <= 2 * MAX_HEADING_CHARS
        && block.text.lines().count() <= 3
    {
        let size = block.size.map_or(0, half_points);
        return Some(Style { size, numbering });
    }
    numbering.map(|numbering| Style {
        size: 0,
        numbering: Some(numbering),
    })
}

/// The numbering that opens `line` if it reads as a heading. Bare numbers (`1.2 Scope`) only
/// count on a line of their own, since numbered list items look the same.
fn numbering(line: &str, single_line: bool) -> Option<Numbering> {
    if line.is_empty() || line.chars().count() > MAX_HEADING_CHARS || line.ends_with([',', ';']) {
        return None;
    }
    if let Some(rest) = line.strip_prefix('§') {
        let rest = rest.trim_start_matches('§').trim_start();
        let (number, after) = split_token(rest);
        return (number.starts_with(|c: char| c.is_ascii_digit()) && reads_as_title(after))
            .then_some(Numbering::SectionSign);
    }
    let (word, rest) = split_token(line);
    let keyword = word.trim_end_matches('.').to_lowercase();
    const KEYWORDS: [&str; 13] = [
        "part",
        "subpart",
        "chapter",
        "subchapter",
        "article",
        "section",
        "sec",
        "title",
        "division",
        "appendix",
        "annex",
        "schedule",
        "rule",
    ];
    if KEYWORDS.contains(&keyword.as_str()) {
        let (number, after) = split_token(rest.trim_start());
        return (is_enumerator(number) && reads_as_title(after))
            .then_some(Numbering::Keyword(keyword));
    }
    let dotted = word.trim_end_matches(['.', ')']);
    let numbers = dotted.split('.').collect::<Vec<_>>();
    let is_dotted = !dotted.is_empty()
        && numbers
            .iter()
            .all(|n| !n.is_empty() && n.len() <= 4 && n.bytes().all(|b| b.is_ascii_digit()));
    let after = rest.trim_start();
    (is_dotted
        && single_line
        && after.starts_with(|c: char| c.is_uppercase())
        && !line.ends_with(['.', ':']))
    .then_some(Numbering::Dotted(numbers.len()))
}

/// The first whitespace-separated token and the rest.
fn split_token(s: &str) -> (&str, &str) {
    s.split_once(char::is_whitespace).unwrap_or((s, ""))
}

/// `12`, `12.3`, `701`, `IV`, `A`, `4:`, `2.—`: a number, a roman numeral or one capital letter,
/// with trailing punctuation.
fn is_enumerator(token: &str) -> bool {
    let token = token.trim_end_matches(|c: char| c.is_ascii_punctuation() || c == '—' || c == '–');
    let token = token.split(['—', '–']).next().unwrap_or("");
    if token.is_empty() {
        return false;
    }
    let number = token
        .split(['.', '-'])
        .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric()))
        && token.starts_with(|c: char| c.is_ascii_digit());
    let roman = token.chars().all(|c| "IVXLCDM".contains(c));
    let letter = token.len() == 1 && token.chars().all(|c| c.is_ascii_uppercase());
    number || roman || letter
}

/// Whether the words after a heading's number read as its title: nothing, or a capitalised word
/// (`Section 2.1 Authority`), not running text (`Section 2.1 applies to ...`).
fn reads_as_title(after: &str) -> bool {
    let after = after.trim_start_matches(|c: char| {
        c.is_whitespace() || matches!(c, '.' | ':' | '—' | '–' | '-' | ')')
    });
    after.is_empty() || after.starts_with(|c: char| !c.is_lowercase())
}

/// A first line that names the document: short, one line, no closing punctuation.
fn looks_like_title(text: &str) -> bool {
    !text.contains('\n')
        && text.chars().count() <= MAX_HEADING_CHARS
        && !text.trim_end().ends_with(['.', ',', ';', ':'])
}

/// Lines joined into one, whitespace collapsed.
fn one_line(text: &str) -> String {
    super::xml::collapse(text)
}

/// The first words of a paragraph, with an ellipsis when there are more.
fn first_words(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() <= LABEL_WORDS {
        return words.join(" ");
    }
    let label = words[..LABEL_WORDS].join(" ");
    format!("{}…", label.trim_end_matches([',', ';', ':', '.']))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(text: &str, size: Option<f32>) -> Block {
        Block {
            text: text.into(),
            line: None,
            size,
        }
    }

    #[test]
    fn heading_numbering_is_recognised() {
        for heading in [
            "PART 701—ORGANIZATION AND OPERATIONS",
            "§ 12.3 Definitions.",
            "Section 4",
            "Sec. 12. Short title",
            "Article IV: Members",
            "Appendix A—Forms",
            "1.2 Scope",
        ] {
            assert!(numbering(heading, true).is_some(), "{heading}");
        }
        for text in [
            "Section 2.1 applies to all loans.",
            "1. the first item of a list.",
            "Part of the problem is this",
            "Title of this document",
            "12 members attended",
            "Section 4 and Section 5 apply, except",
        ] {
            assert!(numbering(text, true).is_none(), "{text}");
        }
        assert!(
            numbering("1.2 Scope", false).is_none(),
            "bare numbers need a line of their own"
        );
    }

    #[test]
    fn numbered_headings_nest_in_order_of_appearance() {
        let recovered = recover(vec![
            block("Lending Policy", None),
            block("Intro.", None),
            block("PART 1", None),
            block("Section 1.1 Purpose\nText one.", None),
            block("More.", None),
            block("PART 2", None),
            block("Section 2.1 Scope", None),
        ]);
        assert_eq!(recovered.found, Found::Headings);
        let outline: Vec<(usize, &str, &str)> = recovered
            .sections
            .iter()
            .map(|s| (s.level, s.label.as_str(), s.content.as_str()))
            .collect();
        assert_eq!(
            outline,
            [
                (0, "Lending Policy", "Intro."),
                (1, "PART 1", ""),
                (2, "Section 1.1 Purpose", "Text one.\n\nMore."),
                (1, "PART 2", ""),
                (2, "Section 2.1 Scope", ""),
            ]
        );
    }

    #[test]
    fn larger_type_ranks_above_numbering() {
        let recovered = recover(vec![
            block("Big Title", Some(20.0)),
            block("Part 1 Rules", Some(14.0)),
            block(
                "Body text that is long enough to set the body size of the page.",
                Some(10.0),
            ),
            block("Section 1 Fees", Some(10.0)),
            block(
                "More body text that is also long enough to count for the body.",
                Some(10.0),
            ),
        ]);
        let levels: Vec<(usize, &str)> = recovered
            .sections
            .iter()
            .map(|s| (s.level, s.label.as_str()))
            .collect();
        assert_eq!(
            levels,
            [(1, "Big Title"), (2, "Part 1 Rules"), (3, "Section 1 Fees")]
        );
    }

    #[test]
    fn without_headings_each_block_is_a_section() {
        let recovered = recover(vec![
            block(
                "First paragraph with more than eight words in it, really.",
                None,
            ),
            block("Second.", None),
        ]);
        assert_eq!(recovered.found, Found::Paragraphs);
        let labels: Vec<&str> = recovered
            .sections
            .iter()
            .map(|s| s.label.as_str())
            .collect();
        assert_eq!(
            labels,
            ["First paragraph with more than eight words in…", "Second."]
        );
        assert_eq!(recovered.sections[1].content, "Second.");

        let recovered = recover(vec![block("Lending Notes", None), block("We lend.", None)]);
        let outline: Vec<(usize, &str, &str)> = recovered
            .sections
            .iter()
            .map(|s| (s.level, s.label.as_str(), s.content.as_str()))
            .collect();
        assert_eq!(
            outline,
            [(0, "Lending Notes", ""), (1, "We lend.", "We lend.")]
        );
    }
}
