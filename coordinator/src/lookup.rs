//! The lookup index of a job ([`proto::lookup`]): built from the principle tree when a job is
//! planned, stored on the object store beside the tree, and named in every shard of a job that
//! runs the `openai` generator, whose tools look things up in it.
//!
//! - **Cross-references**: `§ 2.1`, `§§ 2.1 and 2.3`, `section 321(g) of this title`,
//!   `Section 4.1`, `part 2 of this chapter`, `Part 3`. A reference followed by "of" anything
//!   other than "this title / chapter / part / subchapter / policy" points outside the document
//!   ("section 201 of the Act", "section 262 of title 42") and is left out; so is a reference to
//!   the node itself. When several nodes share a number (two titles, two policies), the one
//!   closest in the tree to the referring node wins.
//! - **Definitions**: `"Member" means ...`, `The term “drug” means ...`, and a paragraph opening
//!   with a capitalised term and "means" (`(a) Agency means ...`, the eCFR's italic terms once
//!   plain). The defining passage runs from the term to the end of its paragraph, continuing over
//!   the lines of an enumerated definition, up to [`MAX_DEFINITION_BYTES`].

use std::sync::LazyLock;

use bytes::Bytes;
use proto::lookup::{
    Definition, LOOKUP_INDEX_VERSION, LookupIndex, LookupNode, NodeIndex, Reference,
};
use proto::{GeneratorKind, JobSpec, PrincipleTree, ShardMessage};
use regex::Regex;
use worker::generate::tools::Lookups;
use worker::store::{ObjectStore, StoreError};

/// Longest defining passage kept.
pub const MAX_DEFINITION_BYTES: usize = 800;

/// Storage key of the lookup index of `tree` in job `job_id`. The tree's fingerprint is part of
/// the key, so an edited tree (a new tree version) gets its own index.
pub fn lookup_key(job_id: &str, tree: &PrincipleTree) -> String {
    format!("jobs/{job_id}/lookup/{}.json", tree.fingerprint())
}

/// A job's lookups and where their index is stored.
pub struct JobLookups {
    pub key: String,
    pub lookups: Lookups,
}

impl JobLookups {
    /// Write the index, unless it is there (its content is a function of the tree, so a
    /// concurrent writer writes the same bytes).
    pub async fn store(&self, store: &dyn ObjectStore) -> Result<(), StoreError> {
        if !store.exists(&self.key).await? {
            let json = serde_json::to_vec(self.lookups.index()).expect("lookup index serializes");
            store.put_if_absent(&self.key, Bytes::from(json)).await?;
        }
        Ok(())
    }
}

/// For a job whose generator looks things up (`openai`): build the tree's lookup index and name
/// it in every shard, with the nodes its sections' lookups show (the shard ids follow, so that
/// editing a cited section or a definition regenerates the shards that quote it). Store the
/// returned index before publishing the shards.
pub fn link_lookups(
    job_id: &str,
    tree: &PrincipleTree,
    spec: &JobSpec,
    shards: &mut [ShardMessage],
) -> Option<JobLookups> {
    if spec.generator.kind != GeneratorKind::Openai || shards.is_empty() {
        return None;
    }
    let key = lookup_key(job_id, tree);
    let lookups = Lookups::new(build_lookup_index(tree));
    for shard in shards.iter_mut() {
        let looked_up = shard
            .sections
            .iter()
            .flat_map(|section| lookups.consulted_by_hints(&lookups.hints(&section.node_id)))
            .map(|consulted| consulted.node_id)
            .collect();
        shard.set_lookup(key.clone(), looked_up);
    }
    Some(JobLookups { key, lookups })
}

/// The lookup index of `tree`; see the module docs.
pub fn build_lookup_index(tree: &PrincipleTree) -> LookupIndex {
    let mut nodes = Vec::new();
    let mut depth = Vec::new();
    tree.walk(|visit, ancestors| {
        let parent = (!ancestors.is_empty()).then(|| {
            // Pre-order: the parent is the last node pushed at depth - 1.
            depth
                .iter()
                .rposition(|&d| d + 1 == visit.depth)
                .expect("a parent precedes its children") as NodeIndex
        });
        depth.push(visit.depth);
        nodes.push(LookupNode {
            id: visit.node.id.clone(),
            citation: visit.node.citation.clone(),
            label: visit.node.label.clone(),
            kind: visit.node.kind.clone(),
            parent,
            active: visit.node.is_active(),
            text: visit.node.content.clone(),
            references: Vec::new(),
        });
    });
    let mut index = LookupIndex {
        version: LOOKUP_INDEX_VERSION,
        tree_fingerprint: tree.fingerprint(),
        nodes,
        definitions: Vec::new(),
    };
    let maps = index.maps();
    for i in 0..index.nodes.len() {
        let from = i as NodeIndex;
        let references = find_references(&index.nodes[i].text)
            .into_iter()
            .filter_map(|(start, end, key)| {
                let target = index.closest(from, maps.by_citation.get(&key)?)?;
                (target != from).then_some(Reference { start, end, target })
            })
            .collect();
        index.nodes[i].references = references;
        let definitions = find_definitions(&index.nodes[i].text);
        index.definitions.extend(
            definitions
                .into_iter()
                .map(|(term, start, end)| Definition {
                    term,
                    node: from,
                    start,
                    end,
                }),
        );
    }
    index
}

static SECTION_REFERENCE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)(§§?|\bsections?\b|\bsecs?\.)\s*(\d+[a-z]*(?:[.\-–]\d+[a-z]*)*)((?:\([0-9a-z]{1,6}\))*)",
    )
    .expect("valid regex")
});

static DIVISION_REFERENCE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(part|chapter|subchapter|subpart)\s+(\d+[a-z]*|[ivxl]+\b)")
        .expect("valid regex")
});

/// Further numbers of a list of sections: `§§ 2.1, 2.2 and 2.3`.
static LISTED_NUMBER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:,\s*(?:and\s+|or\s+)?|\s+(?:and|or|through)\s+)(\d+[a-z]*(?:[.\-–]\d+[a-z]*)*)((?:\([0-9a-z]{1,6}\))*)")
        .expect("valid regex")
});

static OUTSIDE_DOCUMENT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^\s+of\s+(this\s+(title|chapter|part|subchapter|subpart|policy|code)\b)?")
        .expect("valid regex")
});

/// References in `text` as `(start, end, citation key)`; see the module docs.
fn find_references(text: &str) -> Vec<(usize, usize, String)> {
    let mut found = Vec::new();
    for captures in SECTION_REFERENCE.captures_iter(text) {
        let whole = captures.get(0).expect("match");
        let number = captures.get(2).expect("number").as_str();
        let mut numbers = vec![(whole.start(), whole.end(), number.to_string())];
        let mut end = whole.end();
        while let Some(more) = LISTED_NUMBER.captures(&text[end..]) {
            let number = more.get(1).expect("number");
            numbers.push((
                end + number.start(),
                end + more[0].len(),
                number.as_str().into(),
            ));
            end += more[0].len();
        }
        if points_outside(&text[end..]) {
            continue;
        }
        found.extend(
            numbers
                .into_iter()
                .map(|(start, end, number)| (start, end, number.to_lowercase())),
        );
    }
    for captures in DIVISION_REFERENCE.captures_iter(text) {
        let whole = captures.get(0).expect("match");
        if points_outside(&text[whole.end()..]) {
            continue;
        }
        let key = format!(
            "{} {}",
            captures[1].to_lowercase(),
            captures[2].to_lowercase()
        );
        found.push((whole.start(), whole.end(), key));
    }
    found.sort();
    found
}

/// Whether the words after a reference send it to another document ("of the Act").
fn points_outside(after: &str) -> bool {
    OUTSIDE_DOCUMENT
        .captures(after)
        .is_some_and(|c| c.get(1).is_none())
}

static QUOTED_TERM: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?:\b[Tt]he\s+terms?\s+)?["“]([^"”\n]{1,80})["”],?\s+(?:means|shall mean|has the meaning|refers to)\b"#)
        .expect("valid regex")
});

static OPENING_TERM: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?m)^\s*(?:(?:\([0-9A-Za-z]{1,6}\)|[0-9]{1,3}\.|[-*•])\s*)*([A-Z][A-Za-z’'\-]*(?:\s+[A-Za-z’'\-]+){0,5}?)\s+(?:means|shall mean|has the meaning)\b",
    )
    .expect("valid regex")
});

/// Words that open a sentence but never a defined term.
const NOT_TERMS: [&str; 9] = [
    "this", "that", "it", "which", "such", "each", "any", "there", "what",
];

/// Definitions in `text` as `(term, start, end)`; see the module docs.
fn find_definitions(text: &str) -> Vec<(String, usize, usize)> {
    let mut found: Vec<(String, usize, usize)> = Vec::new();
    let quoted = QUOTED_TERM
        .captures_iter(text)
        .map(|c| (c.get(1).expect("term"), c.get(0).expect("match").start()));
    let opening = OPENING_TERM
        .captures_iter(text)
        .map(|c| {
            let term = c.get(1).expect("term");
            (term, term.start())
        })
        .filter(|(term, _)| {
            let first = term.as_str().split_whitespace().next().unwrap_or_default();
            !NOT_TERMS.contains(&first.to_lowercase().as_str())
        });
    let mut starts: Vec<_> = quoted.chain(opening).collect();
    starts.sort_by_key(|(_, start)| *start);
    starts.dedup_by_key(|(term, _)| term.start());
    let starts: Vec<(String, usize)> = starts
        .into_iter()
        .map(|(term, start)| (term.as_str().trim().to_string(), start))
        .collect();
    for (i, (term, start)) in starts.iter().enumerate() {
        if found.iter().any(|(t, ..)| t == term) {
            continue;
        }
        let next = starts.get(i + 1).map_or(text.len(), |(_, s)| *s);
        let end = passage_end(text, *start, next);
        found.push((term.clone(), *start, end));
    }
    found
}

/// End of the defining passage starting at `start`: the end of its paragraph, or of the lines of
/// an enumerated definition (a line ending in "means", "—" or ":"), but not past the next
/// definition (`next`) or [`MAX_DEFINITION_BYTES`].
fn passage_end(text: &str, start: usize, next: usize) -> usize {
    let limit = floor_boundary(text, (start + MAX_DEFINITION_BYTES).min(next));
    let mut end = start;
    for line in text[start..limit].split_inclusive('\n') {
        end += line.len();
        let trimmed = line.trim_end();
        let continues = trimmed.ends_with("means")
            || trimmed.ends_with('—')
            || trimmed.ends_with(':')
            || trimmed.ends_with(';')
            || trimmed.ends_with(" or")
            || trimmed.ends_with(" and");
        if !continues {
            break;
        }
    }
    let passage = text[start..end].trim_end();
    start + passage.len()
}

fn floor_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest;

    fn example_index() -> LookupIndex {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/harbor-lending-policy.md");
        build_lookup_index(&ingest::read_files(&[path], None).expect("example").tree)
    }

    fn node_by_label(index: &LookupIndex, prefix: &str) -> NodeIndex {
        index
            .nodes
            .iter()
            .position(|n| n.label.starts_with(prefix))
            .unwrap_or_else(|| panic!("no node {prefix}")) as NodeIndex
    }

    #[test]
    fn references_in_the_example_resolve_to_their_sections() {
        let index = example_index();
        let targets = |label: &str| -> Vec<String> {
            let node = &index.nodes[node_by_label(&index, label) as usize];
            node.references
                .iter()
                .map(|r| {
                    format!(
                        "{} -> {}",
                        &node.text[r.start..r.end],
                        index.nodes[r.target as usize].label
                    )
                })
                .collect()
        };
        assert_eq!(
            targets("Section 2.2"),
            ["Section 2.3 -> Section 2.3 Exceptions"]
        );
        assert_eq!(
            targets("Section 4.3"),
            ["Section 4.1 -> Section 4.1 Hardship Requests"]
        );
        assert_eq!(
            targets("Section 5.1"),
            [
                "Part 2 -> Part 2. Loan Approval",
                "Part 3 -> Part 3. Pricing and Disclosure"
            ]
        );
        // "Options offered under this section" is no reference; nothing points at itself.
        assert!(targets("Section 4.1").is_empty());
    }

    #[test]
    fn definitions_in_the_example_are_indexed_with_their_passage() {
        let index = example_index();
        let terms: Vec<&str> = index.definitions.iter().map(|d| d.term.as_str()).collect();
        assert_eq!(
            terms,
            [
                "Member",
                "Consumer loan",
                "Loan officer",
                "Debt-to-income ratio",
                "Hardship request"
            ]
        );
        let officer = &index.definitions[2];
        let text = index.definition_text(officer);
        assert!(
            text.starts_with("\"Loan officer\" means an employee"),
            "{text}"
        );
        assert!(text.ends_with("consumer loans."), "{text}");
        assert_eq!(
            index.nodes[officer.node as usize].label,
            "Section 1.2 Definitions"
        );
    }

    #[test]
    fn editing_a_definition_changes_the_ids_of_the_shards_that_look_it_up() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/harbor-lending-policy.md");
        let tree = ingest::read_files(&[path], None).expect("example").tree;
        let mut spec = JobSpec::extractive("A lending assistant.");
        spec.generator.kind = GeneratorKind::Openai;
        spec.shard_token_budget = 1; // one section a shard
        let plan = |tree: &PrincipleTree| {
            let mut shards = crate::plan::plan_shards(tree, "job", &spec);
            let lookups = link_lookups("job", tree, &spec, &mut shards).expect("openai");
            assert!(
                shards
                    .iter()
                    .all(|s| s.lookup.as_deref() == Some(lookups.key.as_str()))
            );
            shards
                .into_iter()
                .map(|s| (s.sections[0].section_path.last().unwrap().clone(), s))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let before = plan(&tree);
        let mut edited = tree.clone();
        let definitions = edited.root.children[0]
            .children
            .iter_mut()
            .find(|n| n.label == "Section 1.2 Definitions")
            .unwrap();
        definitions.content = definitions.content.replace(
            "a natural person who holds",
            "a person or business that holds",
        );
        edited.assign_ids();
        let after = plan(&edited);
        let changed: Vec<&str> = before
            .iter()
            .filter(|(label, shard)| after[*label].shard_id != shard.shard_id)
            .map(|(label, _)| label.as_str())
            .collect();
        // The definitions' own shard, and those of sections using "member" (none defines it).
        assert!(changed.contains(&"Section 1.2 Definitions"), "{changed:?}");
        assert!(
            changed.contains(&"Section 4.2 Collection Practices"),
            "{changed:?}"
        );
        // Fees never say "member", "consumer loan" or another defined term: same id.
        assert!(!changed.contains(&"Section 3.3 Fees"), "{changed:?}");
        let fees = &after["Section 3.3 Fees"];
        assert!(fees.looked_up.is_empty(), "{:?}", fees.looked_up);
        let shard =
            proto::ShardMessage::from_json(&after["Section 4.2 Collection Practices"].to_json());
        assert!(
            shard.is_ok(),
            "the id checks out on the wire with its looked-up nodes"
        );
    }

    #[test]
    fn references_outside_the_document_are_left_out() {
        let refs = find_references(
            "See § 2.1 and §§ 3.1, 3.2 and 3.4(a). Under section 201(g) of the Act and section 262 \
             of title 42, as defined in section 321(g) of this title, and part 10 of this chapter.",
        );
        let keys: Vec<&str> = refs.iter().map(|(_, _, k)| k.as_str()).collect();
        assert_eq!(keys, ["2.1", "3.1", "3.2", "3.4", "321", "part 10"]);
    }

    #[test]
    fn definitions_take_quoted_and_opening_terms() {
        let text = "(a) Agency means each authority of the Government.\n\
                    (b) The term “drug” means—\n(1) articles recognized; and\n(2) articles intended.\n\
                    This part means nothing here.\nOther text.";
        let found = find_definitions(text);
        let terms: Vec<&str> = found.iter().map(|(t, ..)| t.as_str()).collect();
        assert_eq!(terms, ["Agency", "drug"]);
        let (_, start, end) = &found[1];
        assert_eq!(
            &text[*start..*end],
            "The term “drug” means—\n(1) articles recognized; and\n(2) articles intended."
        );
    }
}
