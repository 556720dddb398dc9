//! The extractive generator on US Code Title 21, read and planned as a job reads it (fails when
//! `../shared/corpora` is absent; `PRINCIPIA_CORPORA` overrides the location): no
//! answer or quote ends on a list lead-in followed by a bare sub-heading, and no quote is a bare
//! heading. Headings are known from the XML itself (each section's `<heading>` elements), not
//! guessed from the text.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use coordinator::ingest::read_file;
use coordinator::plan::plan_shards;
use proto::JobSpec;
use quick_xml::events::Event;
use quick_xml::{Reader, XmlVersion};
use worker::generate::GeneratedItem;
use worker::generate::extractive::ExtractiveGenerator;

/// The sections whose answers ended on `as follows: In general.` or `misbranded— Package form.`
const REPORTED: [&str; 7] = [
    "21 U.S.C. 379h",
    "21 U.S.C. 379h–1",
    "21 U.S.C. 379j–12",
    "21 U.S.C. 379j–21",
    "21 U.S.C. 379j–42",
    "21 U.S.C. 379j–72",
    "21 U.S.C. 343",
];

fn title_21() -> PathBuf {
    let dir = std::env::var_os("PRINCIPIA_CORPORA").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpora"),
        PathBuf::from,
    );
    let path = dir.join("us-code-title21/usc21.xml");
    assert!(
        path.is_file(),
        "this test reads {}: not found (set PRINCIPIA_CORPORA)",
        path.display()
    );
    path
}

fn collapse(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What the XML says of a section: the text of its `<heading>` elements (its own and its
/// subdivisions') and of its `<content>` elements, whitespace-collapsed, without a final full
/// stop or dash.
#[derive(Default)]
struct Section {
    headings: BTreeSet<String>,
    contents: BTreeSet<String>,
}

impl Section {
    /// Whether `text` is only a heading of this section, and no clause: `In general.`,
    /// `Package form`; not `Manufacturer of implant shall be named a party.`, nor `Testing and
    /// evaluation of advertising.`, which in § 1708 is also an item of a list.
    fn is_bare_heading(&self, text: &str) -> bool {
        const VERBS: &[&str] = &[
            "are", "can", "has", "have", "is", "may", "means", "must", "shall", "should", "was",
            "were", "will",
        ];
        let text = collapse(text);
        let text = text.trim_end_matches('.');
        self.headings.contains(text)
            && !self.contents.contains(text)
            && !text
                .split(|c: char| !c.is_alphanumeric())
                .any(|word| VERBS.contains(&word))
    }

    /// Whether `text` ends on a list lead-in (`:`, `—`, `--`, `as follows`) followed by a bare
    /// heading: `... in accordance with this section as follows: In general.`
    fn ends_on_lead_in_and_heading(&self, text: &str) -> bool {
        let text = collapse(text);
        [":", "—", "--", "as follows"].iter().any(|lead_in| {
            text.match_indices(lead_in).any(|(at, _)| {
                let tail = text[at + lead_in.len()..].trim();
                !tail.is_empty() && self.is_bare_heading(tail)
            })
        })
    }
}

/// The sections of a USLM title by citation (`21 U.S.C. 379h`).
fn sections(xml: &str) -> BTreeMap<String, Section> {
    let mut reader = Reader::from_str(xml);
    let mut sections: BTreeMap<String, Section> = BTreeMap::new();
    // The open section's citation and the element depth it opened at; the open heading or
    // content: whether it is a heading, its depth and its text so far.
    let mut section: Option<(String, usize)> = None;
    let mut open: Option<(bool, usize, String)> = None;
    let mut depth = 0;
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Start(start) => {
                depth += 1;
                match start.local_name().as_ref() {
                    "section" => {
                        let identifier = start
                            .try_get_attribute("identifier")
                            .expect("an attribute")
                            .map(|a| {
                                a.normalized_value(XmlVersion::Implicit1_0)
                                    .expect("a value")
                                    .into_owned()
                            });
                        if let Some(number) = identifier
                            .as_deref()
                            .and_then(|id| id.strip_prefix("/us/usc/t21/s"))
                        {
                            section = Some((format!("21 U.S.C. {number}"), depth));
                        }
                    }
                    name @ ("heading" | "content") if section.is_some() && open.is_none() => {
                        open = Some((name == "heading", depth, String::new()));
                    }
                    _ => {}
                }
            }
            Event::End(_) => {
                if let (Some((heading, at, text)), Some((citation, _))) = (&open, &section)
                    && *at == depth
                {
                    let text = collapse(text).trim_end_matches(['.', '—']).to_string();
                    let section = sections.entry(citation.clone()).or_default();
                    if *heading {
                        section.headings.insert(text);
                    } else {
                        section.contents.insert(text);
                    }
                    open = None;
                }
                if section.as_ref().is_some_and(|&(_, at)| at == depth) {
                    section = None;
                }
                depth -= 1;
            }
            Event::Text(text) => {
                if let Some((_, _, open)) = &mut open {
                    open.push_str(&text.into_inner());
                }
            }
            Event::GeneralRef(reference) => {
                if let Some((_, _, open)) = &mut open
                    && let Some(c) = reference.resolve_char_ref().expect("a character reference")
                {
                    open.push(c);
                }
            }
            Event::Eof => return sections,
            _ => {}
        }
    }
}

/// Every item the extractive generator makes on Title 21 with no section cap, and the citation of
/// its section.
fn title_21_items(path: &Path) -> Vec<(String, GeneratedItem)> {
    let tree = read_file(path, None).expect("title 21 reads").tree;
    let spec = JobSpec {
        max_items_per_section: u32::MAX,
        ..JobSpec::extractive("A chatbot that specializes in food and drug law.")
    };
    let generator = ExtractiveGenerator::new();
    let mut items = Vec::new();
    for shard in plan_shards(&tree, "job-title-21", &spec) {
        let generation = generator.generate_shard(&shard);
        for item in generation.items {
            let section = shard
                .sections
                .iter()
                .find(|s| s.node_id == item.node_id)
                .expect("an item's section is in its shard");
            items.push((section.citation.clone(), item));
        }
    }
    items
}

#[test]
fn title_21_answers_and_quotes_never_end_on_a_lead_in_and_a_bare_heading() {
    let path = title_21();
    let sections = sections(&std::fs::read_to_string(&path).expect("read usc21.xml"));
    assert!(sections["21 U.S.C. 343"].headings.contains("Package form"));
    assert!(sections["21 U.S.C. 379h"].headings.contains("In general"));
    let items = title_21_items(&path);
    let none = Section::default();
    let mut bad = Vec::new();
    for (citation, item) in &items {
        let section = sections.get(citation).unwrap_or(&none);
        let bad_answer = section.ends_on_lead_in_and_heading(&item.answer);
        let bad_quote = item.evidence.iter().any(|quote| {
            section.is_bare_heading(&quote.text) || section.ends_on_lead_in_and_heading(&quote.text)
        });
        if bad_answer || bad_quote {
            bad.push(format!("{citation}: {}", item.answer));
        }
    }
    eprintln!(
        "title 21: {} extractive items, {} ending on a lead-in and a bare heading",
        items.len(),
        bad.len()
    );
    assert!(bad.is_empty(), "{}", bad.join("\n"));

    // The sections where it was reported still have items; the text under the headings is in
    // the answers.
    let answers = |citation: &str| -> Vec<&str> {
        items
            .iter()
            .filter(|(c, _)| c == citation)
            .map(|(_, item)| item.answer.as_str())
            .collect()
    };
    for citation in REPORTED {
        assert!(!answers(citation).is_empty(), "no items for {citation}");
    }
    assert!(answers("21 U.S.C. 343").iter().any(|answer| {
        answer.starts_with(
            "A food shall be deemed to be misbranded— If in package form unless it bears a label",
        )
    }));
    assert!(answers("21 U.S.C. 379h").iter().any(|answer| {
        answer.contains("shall be subject to a fee as follows: A fee established under subsection")
    }));
}
