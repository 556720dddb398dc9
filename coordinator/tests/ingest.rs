//! Integration tests of the document readers: the real corpora in `../shared/corpora` (a test
//! that reads them fails when they are absent; `PRINCIPIA_CORPORA` overrides the location) and
//! every kind of bad input, written to temporary files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use coordinator::ingest::{
    Format, IngestError, Ingested, detect_format, read_file, read_files, to_seekr_json,
};
use coordinator::lookup::build_lookup_index;
use proto::lookup::citation_key;
use proto::{NodeStatus, PrincipleNode, PrincipleTree};

/// The corpora directory; a test that reads it fails when it is not there.
fn corpora() -> PathBuf {
    let dir = std::env::var_os("PRINCIPIA_CORPORA").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpora"),
        PathBuf::from,
    );
    assert!(
        dir.is_dir(),
        "these tests read the shared corpora: {} is not a directory (set PRINCIPIA_CORPORA)",
        dir.display()
    );
    dir
}

/// The federal source code policy's pages, in name order.
fn policy_pages() -> Vec<PathBuf> {
    let dir = corpora().join("federal-source-code-policy");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    paths.sort();
    paths
}

fn read(path: &Path) -> Ingested {
    read_file(path, None).unwrap_or_else(|e| panic!("{e}"))
}

/// How many nodes of each kind the tree has.
fn kinds(tree: &PrincipleTree) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for node in tree.nodes() {
        *counts.entry(node.kind.clone()).or_default() += 1;
    }
    counts
}

/// How many nodes sit at each depth (root = 0).
fn depths(tree: &PrincipleTree) -> Vec<usize> {
    let mut counts = vec![0; tree.depth() + 1];
    tree.walk(|visit, _| counts[visit.depth] += 1);
    counts
}

fn by_citation<'t>(tree: &'t PrincipleTree, citation: &str) -> &'t PrincipleNode {
    tree.nodes()
        .into_iter()
        .find(|n| n.citation == citation)
        .unwrap_or_else(|| panic!("no node cited as {citation:?}"))
}

fn by_label<'t>(tree: &'t PrincipleTree, label: &str) -> &'t PrincipleNode {
    tree.nodes()
        .into_iter()
        .find(|n| n.label == label)
        .unwrap_or_else(|| panic!("no node labelled {label:?}"))
}

fn count(tree: &PrincipleTree, kind: &str) -> usize {
    kinds(tree).get(kind).copied().unwrap_or(0)
}

/// Write `content` to a file called `name` in a fresh temporary directory.
fn temp_file(name: &str, content: impl AsRef<[u8]>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join(name);
    std::fs::write(&path, content).expect("write temporary file");
    (dir, path)
}

/// The error of reading `content` as a file called `name`, with checks that its message is one
/// line naming the file.
fn error_of(name: &str, content: impl AsRef<[u8]>, format: Option<Format>) -> String {
    let (_dir, path) = temp_file(name, content);
    let error = read_file(&path, format).expect_err("bad input must be an error");
    let message = error.to_string();
    assert!(!message.contains('\n'), "not one line: {message}");
    assert!(
        message.starts_with(&path.display().to_string()),
        "does not name the file: {message}"
    );
    message
}

// ---------------------------------------------------------------------------------------------
// Real corpora

#[test]
fn ecfr_titles_have_the_counts_of_the_corpora_readme() {
    let corpora = corpora();
    // (file, chapters, subchapters, parts, subparts, sections, appendices)
    let expected = [
        ("title-1.xml", 6, 5, 36, 23, 292, 0),
        ("title-3.xml", 1, 0, 4, 0, 27, 0),
        ("title-4.xml", 1, 6, 21, 11, 222, 1),
    ];
    for (file, chapters, subchapters, parts, subparts, sections, appendices) in expected {
        let path = corpora.join("cfr-format-dev").join(file);
        assert_eq!(
            detect_format(&path, &std::fs::read(&path).unwrap()).unwrap(),
            Format::Ecfr
        );
        let ingested = read(&path);
        let tree = &ingested.tree;
        assert_eq!(tree.root.kind, "title", "{file}");
        assert_eq!(count(tree, "title"), 1, "{file}");
        assert_eq!(count(tree, "chapter"), chapters, "{file}");
        assert_eq!(count(tree, "subchapter"), subchapters, "{file}");
        assert_eq!(count(tree, "part"), parts, "{file}");
        assert_eq!(count(tree, "subpart"), subparts, "{file}");
        assert_eq!(count(tree, "section"), sections, "{file}");
        assert_eq!(count(tree, "appendix"), appendices, "{file}");
        assert!(
            ingested.warnings.is_empty(),
            "{file}: {:?}",
            ingested.warnings
        );
    }
}

#[test]
fn ecfr_citations_content_and_reserved_sections() {
    let corpora = corpora();
    let tree = read(&corpora.join("cfr-format-dev/title-1.xml")).tree;
    assert_eq!(tree.root.citation, "1 CFR");
    assert_eq!(by_citation(&tree, "1 CFR part 1").kind, "part");
    assert_eq!(
        by_citation(&tree, "1 CFR chapter I, subchapter A").kind,
        "subchapter"
    );

    let definitions = by_citation(&tree, "1 CFR 1.1");
    assert_eq!(definitions.label, "§ 1.1 Definitions.");
    assert!(definitions.content.starts_with("As used in this chapter"));
    assert!(
        definitions
            .content
            .contains("\nAdministrative Committee means")
    );
    assert!(
        !definitions.content.contains("37 FR 23603"),
        "CITA is skipped"
    );

    let reserved = by_citation(&tree, "1 CFR 11.6");
    assert_eq!(
        reserved.status,
        NodeStatus::Inactive {
            reason: "reserved".into()
        }
    );

    // A table becomes pipe-separated rows.
    assert!(
        by_citation(&tree, "1 CFR 17.2")
            .content
            .contains("| Monday | Wednesday | Thursday |")
    );

    let title4 = read(&corpora.join("cfr-format-dev/title-4.xml")).tree;
    let appendix = title4
        .nodes()
        .into_iter()
        .find(|n| n.kind == "appendix")
        .unwrap();
    assert_eq!(appendix.citation, "4 CFR part 83, Appendix I");
    assert!(appendix.content.contains("memorandum of understanding"));
}

#[test]
fn us_code_title_21_has_the_counts_of_the_corpora_readme() {
    let corpora = corpora();
    let path = corpora.join("us-code-title21/usc21.xml");
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(detect_format(&path, &bytes).unwrap(), Format::Uslm);

    let started = Instant::now();
    let ingested = read(&path);
    eprintln!(
        "usc21.xml ({} bytes) read in {:?}",
        bytes.len(),
        started.elapsed()
    );

    let tree = &ingested.tree;
    assert_eq!(tree.root.label, "Title 21—FOOD AND DRUGS");
    assert_eq!(count(tree, "title"), 1);
    assert_eq!(count(tree, "chapter"), 31);
    assert_eq!(count(tree, "subchapter"), 42);
    assert_eq!(count(tree, "part"), 26);
    assert_eq!(count(tree, "subpart"), 10);
    assert_eq!(count(tree, "section"), 757);
    let inactive = tree
        .nodes()
        .into_iter()
        .filter(|n| n.kind == "section" && !n.is_active())
        .count();
    assert_eq!(inactive, 93);
}

#[test]
fn us_code_sections_are_cited_and_flattened() {
    let corpora = corpora();
    let tree = read(&corpora.join("us-code-title21/usc21.xml")).tree;

    let cosmetics = by_citation(&tree, "21 U.S.C. ch. 9, subch. VI");
    assert_eq!(cosmetics.kind, "subchapter");
    assert_eq!(cosmetics.children.len(), 14);

    let adulterated = by_citation(&tree, "21 U.S.C. 361");
    assert_eq!(adulterated.label, "§ 361. Adulterated cosmetics");
    assert!(
        adulterated
            .content
            .starts_with("A cosmetic shall be deemed to be adulterated—\n(a) If it bears")
    );
    assert!(adulterated.content.contains("cosmetic"));
    assert!(
        !adulterated.content.contains("Pub. L. 117–328"),
        "notes and source credit are skipped"
    );
    assert!(
        !adulterated.content.contains("So in original"),
        "footnotes are skipped"
    );

    // Subdivisions keep their enumerators and headings, indented by depth.
    let definitions = by_citation(&tree, "21 U.S.C. 321");
    assert!(
        definitions
            .content
            .contains("\n(a)\n  (1) The term “State”")
    );
    let drugs = by_citation(&tree, "21 U.S.C. 351");
    assert!(drugs.content.contains(
        "\n(a) Poisonous, insanitary, etc., ingredients; adequate controls in manufacture.\n  (1) If it consists"
    ));

    let repealed = by_citation(&tree, "21 U.S.C. 1 to 5");
    assert_eq!(
        repealed.status,
        NodeStatus::Inactive {
            reason: "repealed".into()
        }
    );
    assert!(repealed.content.is_empty());
}

#[test]
fn federal_source_code_policy_pages_make_one_collection() {
    let paths = policy_pages();
    assert_eq!(paths.len(), 9);

    let ingested = read_files(&paths, None).unwrap();
    let tree = &ingested.tree;
    assert_eq!(tree.root.label, "Principles");
    assert_eq!(tree.root.kind, "collection");
    // Root, 9 pages, their 9 `##` headings, 19 `###` headings.
    assert_eq!(depths(tree), vec![1, 9, 9, 19]);
    assert_eq!(count(tree, "document"), 9);
    assert_eq!(count(tree, "heading"), 28);
    assert!(ingested.warnings.is_empty(), "{:?}", ingested.warnings);

    let all_text: String = tree
        .nodes()
        .iter()
        .map(|n| format!("{}\n{}\n", n.label, n.content))
        .collect();
    assert!(
        !all_text.contains("layout: page"),
        "YAML front matter is dropped"
    );
    assert!(
        !all_text.contains("permalink:"),
        "YAML front matter is dropped"
    );
    let memorandum = by_citation(
        tree,
        "introduction > M-16-21 MEMORANDUM FOR THE HEADS OF DEPARTMENTS AND AGENCIES",
    );
    assert!(
        memorandum.content.starts_with(
            "FROM:\nTony Scott\nUnited States Chief Information Officer\n\nAnne E. Rung\n"
        ),
        "an HTML block is its text, <br/> a line break: {:?}",
        &memorandum.content[..120]
    );
    assert!(
        memorandum
            .content
            .contains("through more than 42,000 transactions.\u{b9} A significant proportion"),
        "a footnote reference is its superscript number"
    );
    assert!(
        memorandum.content.contains("\n\n- The White House:"),
        "list items"
    );
    let exceptions = by_label(tree, "6. Exceptions to Government Code Reuse");
    assert!(
        exceptions.content.contains(
            "Applicable exceptions are as follows:\n\n1. The sharing of the source code is \
             restricted by law"
        ),
        "an HTML list's items are lines of their own: {}",
        exceptions.content
    );
}

/// Inline HTML and HTML blocks (footnote links, `<sup>`, `<li>`, entities) are rendered to text:
/// no markup reaches a section, and so no markup reaches evidence quotes.
#[test]
fn federal_source_code_policy_sections_hold_no_html() {
    let paths = policy_pages();
    let tree = read_files(&paths, None).unwrap().tree;
    let mut footnotes = 0;
    for node in tree.nodes() {
        for markup in ["<a ", "</li>", "<sup", "<br", "&#", "\u{21a9}"] {
            assert!(
                !node.content.contains(markup) && !node.label.contains(markup),
                "{markup:?} in {}: {}",
                node.citation,
                node.content
            );
        }
        if node.label == "Footnotes" {
            footnotes += 1;
            assert!(
                node.content.starts_with("- ") && !node.content.trim_end().ends_with('-'),
                "footnotes are list items without their back-links: {}",
                node.content
            );
        }
    }
    assert_eq!(footnotes, 8, "every page but Scope ends with its footnotes");
    let definitions = by_label(&tree, "Appendix A: Definitions");
    assert!(
        definitions.children[0]
            .content
            .contains("\u{b3}\u{2079} As \u{201c}computer software\u{201d} is defined in 48 C.F.R. \u{a7} 2.101."),
        "{}",
        definitions.children[0].content
    );
}

#[test]
fn contributor_covenant_nests_by_heading_level() {
    let corpora = corpora();
    let ingested = read(&corpora.join("contributor-covenant/code_of_conduct.md"));
    let tree = &ingested.tree;
    assert!(ingested.warnings.is_empty(), "{:?}", ingested.warnings);
    assert_eq!(tree.root.label, "Contributor Covenant Code of Conduct");
    assert_eq!(depths(tree), vec![1, 7, 4]);
    let labels: Vec<&str> = tree
        .root
        .children
        .iter()
        .map(|n| n.label.as_str())
        .collect();
    assert_eq!(
        labels,
        [
            "Our Pledge",
            "Our Standards",
            "Enforcement Responsibilities",
            "Scope",
            "Enforcement",
            "Enforcement Guidelines",
            "Attribution"
        ]
    );
    let warning = by_citation(
        tree,
        "Contributor Covenant Code of Conduct > Enforcement Guidelines > 2. Warning",
    );
    assert!(
        warning.content.starts_with("**Community Impact**")
            || warning.content.starts_with("Community Impact")
    );
    assert!(
        !tree.root.content.contains("version"),
        "TOML front matter is dropped"
    );
    let standards = &tree.root.children[1];
    assert!(
        standards.content.contains("\n\n* Demonstrating")
            || standards.content.contains("\n\n- Demonstrating")
    );
}

#[test]
fn markdown_round_trips_through_seekr_json() {
    let corpora = corpora();
    let mut documents = vec![corpora.join("contributor-covenant/code_of_conduct.md")];
    documents.push(corpora.join("federal-source-code-policy/introduction.md"));
    let (_dir, tables) = temp_file(
        "tables.md",
        "# Rules\n\nIntro.\n\n## Fees\n\n| item | fee |\n|---|---|\n| copy | $1 |\n\n\
         1. first\n2. second\n   - nested\n\n> quoted\n\n```\ncode\n```\n",
    );
    documents.push(tables);
    for path in documents {
        let original = read(&path).tree;
        let json = to_seekr_json(&original);
        let (_dir, json_path) = temp_file("tree.json", serde_json::to_vec_pretty(&json).unwrap());
        let back = read_file(&json_path, None).unwrap();
        assert!(back.warnings.is_empty(), "{:?}", back.warnings);
        assert_eq!(
            back.tree,
            original,
            "{} does not survive the round trip",
            path.display()
        );
        assert_eq!(to_seekr_json(&back.tree), json);
    }
}

#[test]
fn seekr_json_has_exactly_four_keys_and_string_levels() {
    let (_dir, path) = temp_file("p.md", "# P\n\ntext\n\n## A\n\na\n\n### B\n\nb\n");
    let json = to_seekr_json(&read(&path).tree);
    let mut stack = vec![(&json, 0usize)];
    let mut nodes = 0;
    while let Some((node, depth)) = stack.pop() {
        nodes += 1;
        let object = node.as_object().expect("a node is an object");
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["children", "content", "label", "level"]);
        assert_eq!(
            object["level"],
            serde_json::Value::String(depth.to_string())
        );
        assert!(object["label"].is_string() && object["content"].is_string());
        for child in object["children"].as_array().expect("children is an array") {
            stack.push((child, depth + 1));
        }
    }
    assert_eq!(nodes, 3);
}

#[test]
fn ids_are_stable_across_reads() {
    let corpora = corpora();
    for path in [
        corpora.join("contributor-covenant/code_of_conduct.md"),
        corpora.join("cfr-format-dev/title-3.xml"),
    ] {
        let first = read(&path).tree;
        let second = read(&path).tree;
        assert_eq!(first.fingerprint(), second.fingerprint());
        let ids = |t: &PrincipleTree| t.nodes().iter().map(|n| n.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&first), ids(&second));
        assert!(ids(&first).iter().all(|id| !id.is_empty()));
    }
}

#[test]
fn mixed_formats_join_one_collection() {
    let corpora = corpora();
    let paths = [
        corpora.join("contributor-covenant/code_of_conduct.md"),
        corpora.join("cfr-format-dev/title-3.xml"),
    ];
    let tree = read_files(&paths, None).unwrap().tree;
    let kinds: Vec<&str> = tree.root.children.iter().map(|n| n.kind.as_str()).collect();
    assert_eq!(kinds, ["document", "title"]);
    assert_eq!(count(&tree, "section"), 27);
}

// ---------------------------------------------------------------------------------------------
// Formats

#[test]
fn formats_parse_and_print_by_name() {
    for format in Format::ALL {
        assert_eq!(format.to_string().parse::<Format>().unwrap(), format);
    }
    assert_eq!("json".parse::<Format>().unwrap(), Format::SeekrJson);
    assert_eq!("pdf".parse::<Format>().unwrap(), Format::Pdf);
    assert_eq!("text".parse::<Format>().unwrap(), Format::Text);
    assert!(
        "rtf"
            .parse::<Format>()
            .unwrap_err()
            .to_string()
            .ends_with("markdown, json, ecfr, uslm, html, docx, pdf, text")
    );
}

#[test]
fn formats_are_detected_from_content() {
    let detect = |name: &str, text: &str| detect_format(Path::new(name), text.as_bytes());
    assert_eq!(detect("a.txt", "# Title\n").unwrap(), Format::Markdown);
    assert_eq!(detect("a.txt", "PART 1\n\ntext\n").unwrap(), Format::Text);
    assert_eq!(detect("a", "Just words.\n").unwrap(), Format::Text);
    assert_eq!(detect("a.md", "Just words.\n").unwrap(), Format::Markdown);
    assert_eq!(detect("a.html", "<p>fragment</p>").unwrap(), Format::Html);
    assert_eq!(
        detect("a", "<!-- saved -->\n<!DOCTYPE html><p>x</p>").unwrap(),
        Format::Html
    );
    assert_eq!(detect("a", "%PDF-1.7\n...").unwrap(), Format::Pdf);
    assert_eq!(detect("a", "PK\x03\x04...").unwrap(), Format::Docx);
    assert_eq!(detect("a.docx", "not a zip").unwrap(), Format::Docx);
    assert_eq!(
        detect("a.md", "<!-- comment -->\n# Title\n").unwrap(),
        Format::Markdown
    );
    assert_eq!(
        detect("a.md", "[![badge](x)](y)\n# T\n").unwrap(),
        Format::Markdown
    );
    assert_eq!(
        detect(
            "a",
            r#"{"label":"x","content":"","children":[],"level":"0"}"#
        )
        .unwrap(),
        Format::SeekrJson
    );
    assert_eq!(
        detect("a", "  [ {\"label\": \"x\"} ]").unwrap(),
        Format::SeekrJson
    );
    assert_eq!(
        detect(
            "a",
            "<?xml version=\"1.0\"?>\n<uscDoc xmlns=\"http://xml.house.gov/schemas/uslm/1.0\"/>"
        )
        .unwrap(),
        Format::Uslm
    );
    assert_eq!(
        detect("a", "<DLPSTEXTCLASS><HEADER/></DLPSTEXTCLASS>").unwrap(),
        Format::Ecfr
    );
    assert_eq!(detect("a", "<ECFR><DIV1/></ECFR>").unwrap(), Format::Ecfr);

    let unknown = detect("a.xml", "<?xml version=\"1.0\"?><html/>")
        .unwrap_err()
        .to_string();
    assert!(unknown.starts_with("a.xml: unrecognised XML"), "{unknown}");
    assert!(matches!(
        detect("a", "\0\x01"),
        Err(IngestError::Binary { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Bad input

#[test]
fn missing_and_unreadable_paths_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.md");
    let message = read_file(&missing, None).unwrap_err().to_string();
    assert!(
        message.starts_with(&format!("{}: cannot read", missing.display())),
        "{message}"
    );

    let message = read_file(dir.path(), None).unwrap_err().to_string();
    assert!(
        message.starts_with(&format!("{}: cannot read", dir.path().display())),
        "{message}"
    );

    assert!(matches!(read_files(&[], None), Err(IngestError::NoInput)));
}

#[test]
fn empty_files_are_errors() {
    assert!(error_of("empty.md", "", None).ends_with(": empty file"));
    assert!(error_of("blank.md", " \n\t\n", None).ends_with(": empty file"));
    assert!(error_of("empty.json", "", Some(Format::SeekrJson)).ends_with(": empty file"));
}

#[test]
fn binary_and_invalid_utf8_files_are_errors() {
    let message = error_of("image.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", None);
    assert!(message.contains("binary file"), "{message}");
    let message = error_of("latin1.md", b"# Title\n\ncaf\xe9\n", None);
    assert!(message.contains(".md:3: invalid UTF-8"), "{message}");
}

#[test]
fn markdown_without_headings_is_an_error() {
    let message = error_of("flat.md", "Just a paragraph.\n\nAnd another.\n", None);
    assert!(
        message.ends_with("no headings: a principle document needs at least one heading"),
        "{message}"
    );
    let message = error_of("front.md", "---\ntitle: x\n---\n\ntext\n", None);
    assert!(message.contains("no headings"), "{message}");
}

#[test]
fn an_empty_heading_is_an_error_with_its_line() {
    let message = error_of("e.md", "# Title\n\ntext\n\n##\n\nmore\n", None);
    assert!(message.ends_with("e.md:5: empty heading"), "{message}");
}

#[test]
fn skipped_heading_levels_are_normalised_with_a_warning() {
    let (_dir, path) = temp_file(
        "skip.md",
        "# Top\n\nintro\n\n### Deep\n\ndeep\n\n## Next\n\nnext\n",
    );
    let ingested = read(&path);
    assert_eq!(
        ingested.warnings,
        [format!(
            "{}:5: heading level jumps from 1 to 3",
            path.display()
        )]
    );
    let root = &ingested.tree.root;
    let labels: Vec<&str> = root.children.iter().map(|n| n.label.as_str()).collect();
    assert_eq!(
        labels,
        ["Deep", "Next"],
        "the skipped level becomes a child at depth + 1"
    );

    let (_dir, path) = temp_file("untitled.md", "## A\n\n#### B\n");
    let ingested = read(&path);
    assert_eq!(
        ingested.warnings,
        [format!(
            "{}:3: heading level jumps from 2 to 4",
            path.display()
        )]
    );
    assert_eq!(ingested.tree.root.label, "untitled");
    assert_eq!(ingested.tree.root.children[0].children[0].label, "B");
}

#[test]
fn a_single_enormous_line_is_read_without_trouble() {
    let mut text = String::from("# Big\n\n");
    text.push_str(&"word ".repeat(10 * 1024 * 1024)); // 50 MB, no newline
    let (_dir, path) = temp_file("big.md", &text);
    let started = Instant::now();
    let tree = read(&path).tree;
    eprintln!("50 MB line read in {:?}", started.elapsed());
    assert_eq!(tree.root.content.len(), 10 * 1024 * 1024 * 5 - 1);

    let message = error_of("big-flat.md", &text[7..], None);
    assert!(message.contains("no headings"), "{message}");
}

#[test]
fn deeply_nested_markdown_is_flattened_not_overflowed() {
    let quotes = "> ".repeat(5_000);
    let lists: String = (0..1_000)
        .map(|depth| format!("{}- item {depth}\n", "  ".repeat(depth)))
        .collect();
    let (_dir, path) = temp_file("deep.md", format!("# Deep\n\n{quotes}x\n\n{lists}"));
    let tree = read(&path).tree;
    let content = &tree.root.content;
    assert!(content.contains("> > > x"), "{}", &content[..200]);
    assert!(content.contains("- item 999"));
    // Indentation stops growing, so the text stays linear in the input.
    assert!(content.len() < 100_000, "{} bytes", content.len());
}

#[test]
fn malformed_xml_is_an_error_with_its_line() {
    let uslm = "<?xml version=\"1.0\"?>\n<uscDoc xmlns=\"http://xml.house.gov/schemas/uslm/1.0\">\n<main>\n\
                <title><num value=\"1\">Title 1</num>\n<section><num>§ 1.</num></sectio>\n</title></main></uscDoc>\n";
    let message = error_of("t.xml", uslm, None);
    assert!(message.contains("t.xml:5: malformed XML"), "{message}");

    let unclosed = "<DLPSTEXTCLASS>\n<DIV1 N=\"1\" TYPE=\"TITLE\"><HEAD>T</HEAD>\n<DIV8><P>text\n";
    let message = error_of("c.xml", unclosed, None);
    assert!(message.contains("c.xml:4: malformed XML"), "{message}");
    assert!(message.contains("end of file"), "{message}");

    let bad_attribute = "<DLPSTEXTCLASS>\n\n<DIV1 N=1>\n</DIV1></DLPSTEXTCLASS>";
    let message = error_of("a.xml", bad_attribute, Some(Format::Ecfr));
    assert!(message.contains("malformed XML"), "{message}");
}

#[test]
fn xml_of_the_wrong_vocabulary_is_an_error() {
    let message = error_of("x.xml", "<DLPSTEXTCLASS><TEXT/></DLPSTEXTCLASS>", None);
    assert!(
        message.ends_with("no eCFR divisions (DIV1 … DIV9) found"),
        "{message}"
    );
    let message = error_of(
        "y.xml",
        "<DLPSTEXTCLASS><TEXT/></DLPSTEXTCLASS>",
        Some(Format::Uslm),
    );
    assert!(
        message.ends_with("no USLM divisions or sections found"),
        "{message}"
    );
}

#[test]
fn deeply_nested_xml_is_bounded() {
    let depth = 100_000;
    // Deep nesting inside a section is flattened.
    let uslm = format!(
        "<uscDoc xmlns=\"http://xml.house.gov/schemas/uslm/1.0\"><main><title><num value=\"1\">T</num>\
         <section><num value=\"1\">§ 1.</num>{}deep{}</section></title></main></uscDoc>",
        "<paragraph><num>(a)</num><content>x</content>".repeat(depth),
        "</paragraph>".repeat(depth),
    );
    let (_dir, path) = temp_file("deep-uslm.xml", uslm);
    let tree = read(&path).tree;
    assert_eq!(count(&tree, "section"), 1);

    // Deeply nested divisions are an error.
    let ecfr = format!(
        "<DLPSTEXTCLASS>\n{}\n{}</DLPSTEXTCLASS>",
        "<DIV5 N=\"1\" TYPE=\"PART\">".repeat(depth),
        "</DIV5>".repeat(depth)
    );
    let message = error_of("deep-ecfr.xml", ecfr, None);
    assert!(
        message.contains("deep-ecfr.xml:2: divisions nested deeper than 64 levels"),
        "{message}"
    );

    let uslm = format!(
        "<uscDoc xmlns=\"http://xml.house.gov/schemas/uslm/1.0\"><main>{}{}</main></uscDoc>",
        "<chapter>".repeat(depth),
        "</chapter>".repeat(depth)
    );
    let message = error_of("deep-chapters.xml", uslm, None);
    assert!(
        message.contains("nested deeper than 64 levels"),
        "{message}"
    );
}

#[test]
fn malformed_json_is_an_error_with_its_line() {
    let message = error_of(
        "m.json",
        "{\n  \"label\": \"x\",\n  \"content\": oops\n}",
        None,
    );
    assert!(message.contains("m.json:3:"), "{message}");
    assert!(message.contains("malformed JSON"), "{message}");
    assert!(
        !message.contains("at line"),
        "position is not repeated: {message}"
    );
}

#[test]
fn json_trees_with_wrong_types_name_the_json_path() {
    let node = |label: &str, level: &str| {
        format!(r#"{{"label":"{label}","content":"","children":[],"level":"{level}"}}"#)
    };
    let tree = |children: &[String]| {
        format!(
            r#"{{"label":"Root","content":"","children":[{}],"level":"0"}}"#,
            children.join(",")
        )
    };
    let wrong_level_type = tree(&[
        node("A", "1"),
        node("B", "1"),
        r#"{"label":"C","content":"","children":[],"level":2}"#.to_owned(),
    ]);
    let message = error_of("w.json", wrong_level_type, None);
    assert!(
        message.ends_with("w.json: $.children[2].level: expected a string, found a number"),
        "{message}"
    );

    let missing = tree(&[r#"{"label":"A","children":[],"level":"1"}"#.to_owned()]);
    assert!(error_of("m.json", missing, None).ends_with("$.children[0]: missing key \"content\""));

    let extra =
        tree(&[r#"{"label":"A","content":"","children":[],"level":"1","id":"x"}"#.to_owned()]);
    assert!(error_of("e.json", extra, None).contains("$.children[0]: unexpected key \"id\""));

    let not_array = r#"{"label":"A","content":"","children":{},"level":"0"}"#;
    assert!(
        error_of("n.json", not_array, None)
            .ends_with("$.children: expected an array, found an object")
    );

    let letters = r#"{"label":"A","content":"","children":[],"level":"zero"}"#;
    assert!(
        error_of("l.json", letters, None)
            .ends_with("$.level: expected a string of digits, found \"zero\"")
    );

    let empty_label = r#"{"label":" ","content":"","children":[],"level":"0"}"#;
    assert!(error_of("b.json", empty_label, None).ends_with("$.label: empty label"));

    assert!(
        error_of("s.json", "\"just a string\"", Some(Format::SeekrJson))
            .ends_with("$: expected a tree node (an object), found a string")
    );
    assert!(error_of("a.json", "[]", None).ends_with("$: empty array: no tree to read"));
}

#[test]
fn json_levels_that_disagree_with_depth_are_normalised_with_a_warning() {
    let text = r#"{"label":"Root","content":"r","level":"0","children":[
        {"label":"A","content":"a","level":"3","children":[]}]}"#;
    let (_dir, path) = temp_file("lv.json", text);
    let ingested = read(&path);
    assert_eq!(
        ingested.warnings,
        [format!(
            "{}: $.children[0].level: level \"3\" does not match the node's depth 1; using 1",
            path.display()
        )]
    );
    assert_eq!(to_seekr_json(&ingested.tree)["children"][0]["level"], "1");
    assert_eq!(ingested.tree.root.children[0].citation, "Root > A");
}

#[test]
fn an_array_of_json_trees_is_wrapped_under_one_root() {
    let text = r#"[{"label":"A","content":"a","children":[],"level":"0"},
                   {"label":"B","content":"b","children":[],"level":"0"}]"#;
    let (_dir, path) = temp_file("many.json", text);
    let ingested = read(&path);
    assert!(ingested.warnings.is_empty());
    assert_eq!(ingested.tree.root.label, "many");
    assert_eq!(ingested.tree.root.children.len(), 2);
}

#[test]
fn deeply_nested_json_is_an_error_not_a_stack_overflow() {
    let depth = 100_000;
    let mut text = String::new();
    for _ in 0..depth {
        text.push_str(r#"{"label":"x","content":"","level":"0","children":["#);
    }
    for _ in 0..depth {
        text.push_str("]}");
    }
    let message = error_of("deep.json", &text, None);
    assert!(message.contains("deep.json:1:"), "{message}");
    assert!(message.contains("nested too deeply"), "{message}");

    let message = error_of("brackets.json", "[".repeat(depth), Some(Format::SeekrJson));
    assert!(message.contains("nested too deeply"), "{message}");
}

// ---------------------------------------------------------------------------------------------
// HTML, DOCX, PDF and plain text, made here from the example policy

/// The example policy, read by the markdown reader: the reference tree.
fn example_policy() -> PrincipleTree {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/harbor-lending-policy.md");
    read(&path).tree
}

/// Every node as (depth, label, content), whitespace collapsed, in document order.
fn outline(tree: &PrincipleTree) -> Vec<(usize, String, String)> {
    let collapse = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut nodes = Vec::new();
    tree.walk(|visit, _| {
        let node = visit.node;
        nodes.push((visit.depth, collapse(&node.label), collapse(&node.content)))
    });
    nodes
}

/// Check that a tree read back from another format has the example's sections, labels and text.
fn assert_same_sections(read_back: &Ingested, original: &PrincipleTree, what: &str) {
    assert!(
        read_back.warnings.is_empty(),
        "{what}: {:?}",
        read_back.warnings
    );
    let (expected, actual) = (outline(original), outline(&read_back.tree));
    for (expected, actual) in expected.iter().zip(&actual) {
        assert_eq!(actual, expected, "{what}");
    }
    assert_eq!(actual.len(), expected.len(), "{what}: node count");
}

/// A node's content as blocks: paragraphs, and lists as their items without the `- ` marker.
enum ContentBlock<'a> {
    Paragraph(String),
    List(Vec<&'a str>),
}

fn content_blocks(content: &str) -> Vec<ContentBlock<'_>> {
    content
        .split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            if block.lines().all(|line| line.starts_with("- ")) {
                ContentBlock::List(block.lines().map(|line| &line[2..]).collect())
            } else {
                ContentBlock::Paragraph(block.split_whitespace().collect::<Vec<_>>().join(" "))
            }
        })
        .collect()
}

/// Nodes in document order with their depth.
fn nodes_with_depth(tree: &PrincipleTree) -> Vec<(usize, PrincipleNode)> {
    let mut nodes = Vec::new();
    tree.walk(|visit, _| nodes.push((visit.depth, visit.node.clone())));
    nodes
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The tree as a web page, written by hand: headings, paragraphs, lists, and page chrome
/// (navigation, script, style, footer) that the reader must drop.
fn to_html(tree: &PrincipleTree) -> String {
    let mut html = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Policy</title>\n\
         <style>body { font: 12px sans-serif }</style><script>window.track = 1;</script></head>\n\
         <body><nav><ul><li><a href=\"/\">Home</a></li><li><a href=\"/rates\">Rates</a></li></ul></nav>\n<main>\n",
    );
    for (depth, node) in nodes_with_depth(tree) {
        html.push_str(&format!(
            "<h{0}>{1}</h{0}>\n",
            depth + 1,
            html_escape(&node.label)
        ));
        for block in content_blocks(&node.content) {
            match block {
                ContentBlock::Paragraph(text) => {
                    html.push_str(&format!("<p>{}</p>\n", html_escape(&text)));
                }
                ContentBlock::List(items) => {
                    html.push_str("<ul>\n");
                    for item in items {
                        html.push_str(&format!("  <li>{}</li>\n", html_escape(item)));
                    }
                    html.push_str("</ul>\n");
                }
            }
        }
    }
    html.push_str(
        "</main>\n<footer><p>Copyright Harbor Community Credit Union</p></footer></body></html>\n",
    );
    html
}

/// The tree as plain text: labels on lines of their own, blank lines between blocks.
fn to_text(tree: &PrincipleTree) -> String {
    let mut text = String::new();
    for (_, node) in nodes_with_depth(tree) {
        text.push_str(&node.label);
        text.push_str("\n\n");
        if !node.content.is_empty() {
            text.push_str(&node.content);
            text.push_str("\n\n");
        }
    }
    text
}

/// The tree as a Word document made with docx-rs: `Heading N` styles, bulleted lists.
fn to_docx(tree: &PrincipleTree) -> Vec<u8> {
    use docx_rs::{
        AbstractNumbering, Docx, IndentLevel, Level, LevelJc, LevelText, NumberFormat, Numbering,
        NumberingId, Paragraph, Run, Start, Style, StyleType,
    };
    const BULLETS: usize = 7;
    let mut docx = Docx::new()
        .add_abstract_numbering(AbstractNumbering::new(BULLETS).add_level(Level::new(
            0,
            Start::new(1),
            NumberFormat::new("bullet"),
            LevelText::new("•"),
            LevelJc::new("left"),
        )))
        .add_numbering(Numbering::new(BULLETS, BULLETS));
    for level in 1..=3 {
        docx = docx.add_style(
            Style::new(format!("Heading{level}"), StyleType::Paragraph)
                .name(format!("heading {level}")),
        );
    }
    for (depth, node) in nodes_with_depth(tree) {
        docx = docx.add_paragraph(
            Paragraph::new()
                .add_run(Run::new().add_text(node.label.clone()))
                .style(&format!("Heading{}", depth + 1)),
        );
        for block in content_blocks(&node.content) {
            match block {
                ContentBlock::Paragraph(text) => {
                    docx = docx.add_paragraph(Paragraph::new().add_run(Run::new().add_text(text)));
                }
                ContentBlock::List(items) => {
                    for item in items {
                        docx = docx.add_paragraph(
                            Paragraph::new()
                                .add_run(Run::new().add_text(item))
                                .numbering(NumberingId::new(BULLETS), IndentLevel::new(0)),
                        );
                    }
                }
            }
        }
    }
    let mut bytes = std::io::Cursor::new(Vec::new());
    docx.build()
        .pack(&mut bytes)
        .expect("docx-rs writes the document");
    bytes.into_inner()
}

/// How a test PDF marks its headings.
#[derive(Clone, Copy, PartialEq)]
enum PdfHeadings {
    /// Bold body-size heading lines, and an outline (bookmarks) nesting them.
    Outline,
    /// Headings in larger type (18, 14, 12 points over a 10-point body), no outline.
    LargerType,
}

/// Text lines of a test PDF page: (font, size, text, space before the line).
struct PdfLine {
    bold: bool,
    size: f64,
    text: String,
    space_before: f64,
    /// The outline entry that starts here: (depth, title).
    bookmark: Option<(usize, String)>,
}

/// Words of `text` in lines of at most `width` characters.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(line) if line.len() + 1 + word.len() <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_owned()),
        }
    }
    lines
}

/// The lines of `tree` as a PDF would set them.
fn pdf_lines(tree: &PrincipleTree, headings: PdfHeadings) -> Vec<PdfLine> {
    const BODY: f64 = 10.0;
    let mut lines = Vec::new();
    for (depth, node) in nodes_with_depth(tree) {
        let size = match headings {
            PdfHeadings::Outline => BODY,
            PdfHeadings::LargerType => [18.0, 14.0, 12.0][depth.min(2)],
        };
        lines.push(PdfLine {
            bold: true,
            size,
            text: node.label.clone(),
            space_before: size,
            bookmark: Some((depth, node.label.clone())),
        });
        for block in content_blocks(&node.content) {
            let mut space_before = 0.6 * BODY;
            let items = match block {
                ContentBlock::Paragraph(text) => vec![text],
                ContentBlock::List(items) => items.iter().map(|item| format!("- {item}")).collect(),
            };
            for item in items {
                for text in wrap(&item, 85) {
                    lines.push(PdfLine {
                        bold: false,
                        size: BODY,
                        text,
                        space_before,
                        bookmark: None,
                    });
                    space_before = 0.0;
                }
            }
        }
    }
    lines
}

/// A PDF of `lines` made with lopdf: Helvetica, US Letter pages, optionally an outline.
fn to_pdf(lines: &[PdfLine], with_outline: bool) -> Vec<u8> {
    use lopdf::content::{Content, Operation};
    use lopdf::{Bookmark, Document, Object, Stream, dictionary};

    let mut doc = Document::with_version("1.5");
    let pages_id = doc.new_object_id();
    let regular = doc.add_object(dictionary! {
        "Type" => "Font", "Subtype" => "Type1", "BaseFont" => "Helvetica", "Encoding" => "WinAnsiEncoding",
    });
    let bold = doc.add_object(dictionary! {
        "Type" => "Font", "Subtype" => "Type1", "BaseFont" => "Helvetica-Bold", "Encoding" => "WinAnsiEncoding",
    });
    let resources = doc.add_object(dictionary! {
        "Font" => dictionary! { "F1" => regular, "F2" => bold },
    });
    let (top, bottom, left) = (740.0, 60.0, 72.0);
    let mut pages: Vec<Vec<Operation>> = vec![Vec::new()];
    let mut page_bookmarks: Vec<(usize, usize, String)> = Vec::new(); // (page, depth, title)
    // Baseline of the previous line on the current page.
    let mut previous: Option<f64> = None;
    for line in lines {
        let mut y = previous.map_or(top, |y| y - line.space_before - 1.3 * line.size);
        if y < bottom {
            pages.push(Vec::new());
            y = top;
        }
        previous = Some(y);
        if let Some((depth, title)) = &line.bookmark {
            page_bookmarks.push((pages.len() - 1, *depth, title.clone()));
        }
        let font = if line.bold { "F2" } else { "F1" };
        pages.last_mut().unwrap().extend([
            Operation::new("BT", vec![]),
            Operation::new("Tf", vec![font.into(), line.size.into()]),
            Operation::new("Td", vec![left.into(), y.into()]),
            Operation::new("Tj", vec![Object::string_literal(line.text.as_str())]),
            Operation::new("ET", vec![]),
        ]);
    }
    let mut page_ids = Vec::new();
    for operations in pages {
        let content = Content { operations };
        let content_id = doc.add_object(Stream::new(dictionary! {}, content.encode().unwrap()));
        page_ids.push(doc.add_object(dictionary! {
            "Type" => "Page", "Parent" => pages_id, "Contents" => content_id,
        }));
    }
    doc.objects.insert(
        pages_id,
        Object::Dictionary(dictionary! {
            "Type" => "Pages",
            "Kids" => page_ids.iter().map(|&id| id.into()).collect::<Vec<Object>>(),
            "Count" => page_ids.len() as i64,
            "Resources" => resources,
            "MediaBox" => vec![0.into(), 0.into(), 612.into(), 792.into()],
        }),
    );
    let catalog_id = doc.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages_id });
    doc.trailer.set("Root", catalog_id);
    if with_outline {
        // Each bookmark's parent is the last one opened at the depth above.
        let mut open: Vec<u32> = Vec::new();
        for (page, depth, title) in page_bookmarks {
            open.truncate(depth);
            let parent = open.last().copied();
            let id = doc.add_bookmark(Bookmark::new(title, [0.0; 3], 0, page_ids[page]), parent);
            open.push(id);
        }
        let outline = doc.build_outline().expect("bookmarks make an outline");
        doc.get_dictionary_mut(catalog_id)
            .unwrap()
            .set("Outlines", Object::Reference(outline));
    }
    let mut bytes = Vec::new();
    doc.save_to(&mut bytes).expect("lopdf writes the document");
    bytes
}

#[test]
fn html_docx_pdf_and_text_of_the_example_read_back_as_its_markdown_tree() {
    let original = example_policy();
    assert_eq!(original.nodes().len(), 20, "root + 5 parts + 14 sections");
    let pdf_outline = to_pdf(&pdf_lines(&original, PdfHeadings::Outline), true);
    let pdf_typography = to_pdf(&pdf_lines(&original, PdfHeadings::LargerType), false);
    let cases: Vec<(&str, Vec<u8>, Format)> = vec![
        ("policy.html", to_html(&original).into_bytes(), Format::Html),
        ("policy.txt", to_text(&original).into_bytes(), Format::Text),
        ("policy.docx", to_docx(&original), Format::Docx),
        ("policy-outline.pdf", pdf_outline, Format::Pdf),
        ("policy-type-sizes.pdf", pdf_typography, Format::Pdf),
    ];
    for (name, bytes, format) in cases {
        assert_eq!(
            detect_format(Path::new(name), &bytes).unwrap(),
            format,
            "{name}"
        );
        // Detection looks at the bytes: the same file without its extension is found too.
        assert_eq!(
            detect_format(Path::new("upload"), &bytes).unwrap(),
            format,
            "{name} without extension"
        );
        let (_dir, path) = temp_file(name, &bytes);
        assert_same_sections(&read(&path), &original, name);
    }
}

/// A few lines of body text, no headings.
fn plain_lines(texts: &[&str]) -> Vec<PdfLine> {
    texts
        .iter()
        .map(|text| PdfLine {
            bold: false,
            size: 10.0,
            text: (*text).to_owned(),
            space_before: 10.0,
            bookmark: None,
        })
        .collect()
}

#[test]
fn a_pdf_outline_gives_structure_that_the_text_alone_does_not() {
    let mut lines = plain_lines(&[
        "Introduction",
        "Why we lend.",
        "Eligibility",
        "Members only.",
    ]);
    lines[0].bookmark = Some((0, "Introduction".into()));
    lines[2].bookmark = Some((0, "Eligibility".into()));
    let (_dir, with_outline) = temp_file("outlined.pdf", to_pdf(&lines, true));
    let ingested = read(&with_outline);
    assert!(ingested.warnings.is_empty(), "{:?}", ingested.warnings);
    let sections: Vec<(&str, &str)> = ingested
        .tree
        .root
        .children
        .iter()
        .map(|n| (n.label.as_str(), n.content.as_str()))
        .collect();
    assert_eq!(
        sections,
        [
            ("Introduction", "Why we lend."),
            ("Eligibility", "Members only.")
        ]
    );

    // The same pages without the outline: no structure, the first line taken for the title, one
    // section per paragraph after it, a warning.
    let (_dir, without) = temp_file("flat.pdf", to_pdf(&lines, false));
    let ingested = read(&without);
    assert_eq!(ingested.tree.root.label, "Introduction");
    let labels: Vec<&str> = ingested
        .tree
        .root
        .children
        .iter()
        .map(|n| n.label.as_str())
        .collect();
    assert_eq!(labels, ["Why we lend.", "Eligibility", "Members only."]);
    assert_eq!(ingested.warnings.len(), 1, "{:?}", ingested.warnings);
    assert!(
        ingested.warnings[0].contains("no structure found"),
        "{:?}",
        ingested.warnings
    );
}

#[test]
fn encrypted_pdfs_need_their_password_unless_it_is_empty() {
    use lopdf::{Document, EncryptionState, EncryptionVersion, Permissions};
    let plain = to_pdf(&plain_lines(&["Members only."]), false);
    let encrypt = |user_password: &str| {
        let mut doc = Document::load_mem(&plain).unwrap();
        doc.trailer.set(
            "ID",
            vec![
                lopdf::Object::string_literal("principia-test-id"),
                lopdf::Object::string_literal("principia-test-id"),
            ],
        );
        let state = EncryptionState::try_from(EncryptionVersion::V2 {
            document: &doc,
            owner_password: "owner",
            user_password,
            key_length: 128,
            permissions: Permissions::all(),
        })
        .unwrap();
        doc.encrypt(&state).unwrap();
        let mut bytes = Vec::new();
        doc.save_to(&mut bytes).unwrap();
        bytes
    };
    let message = error_of("locked.pdf", encrypt("secret"), None);
    assert!(message.contains("encrypted with a password"), "{message}");

    let (_dir, path) = temp_file("owner-only.pdf", encrypt(""));
    assert_eq!(read(&path).tree.root.content, "Members only.");
}

#[test]
fn a_pdf_without_text_asks_for_ocr_instead_of_giving_an_empty_tree() {
    let message = error_of("scan.pdf", to_pdf(&[], false), None);
    assert!(message.contains("no text layer"), "{message}");
    assert!(message.contains("OCR"), "{message}");
}

#[test]
fn damaged_pdfs_are_errors() {
    let message = error_of("broken.pdf", "%PDF-1.7\nthis is not a PDF body\n", None);
    assert!(message.contains("not a readable pdf file"), "{message}");
    let whole = to_pdf(&plain_lines(&["Members only."]), false);
    let message = error_of("truncated.pdf", &whole[..whole.len() / 2], None);
    assert!(message.contains("pdf"), "{message}");
    let message = error_of("policy.md", "# Policy\n", Some(Format::Pdf));
    assert!(message.contains("not a readable pdf file"), "{message}");
}

#[test]
fn a_pdf_form_that_draws_itself_is_an_error_not_a_stack_overflow() {
    use lopdf::{Document, Object, Stream, dictionary};
    let mut doc = Document::load_mem(&to_pdf(&plain_lines(&["Members only."]), false)).unwrap();
    let form = doc.new_object_id();
    doc.objects.insert(
        form,
        Object::Stream(Stream::new(
            dictionary! {
                "Type" => "XObject", "Subtype" => "Form",
                "BBox" => vec![0.into(), 0.into(), 10.into(), 10.into()],
                "Resources" => dictionary! { "XObject" => dictionary! { "X1" => form } },
            },
            b"/X1 Do".to_vec(),
        )),
    );
    let page = doc.get_pages()[&1];
    let pages = doc
        .get_dictionary(page)
        .unwrap()
        .get(b"Parent")
        .unwrap()
        .as_reference()
        .unwrap();
    let resources = doc
        .get_dictionary(pages)
        .unwrap()
        .get(b"Resources")
        .unwrap()
        .as_reference()
        .unwrap();
    doc.get_dictionary_mut(resources)
        .unwrap()
        .set("XObject", dictionary! { "X1" => form });
    let contents = doc
        .get_dictionary(page)
        .unwrap()
        .get(b"Contents")
        .unwrap()
        .as_reference()
        .unwrap();
    let stream = doc
        .get_object_mut(contents)
        .unwrap()
        .as_stream_mut()
        .unwrap();
    let mut content = stream.content.clone();
    content.extend_from_slice(b"\n/X1 Do\n");
    stream.set_content(content);
    let mut bytes = Vec::new();
    doc.save_to(&mut bytes).unwrap();
    let message = error_of("loop.pdf", bytes, None);
    assert!(message.contains("page 1: form XObject"), "{message}");
    assert!(message.ends_with("draws itself"), "{message}");
}

#[test]
fn corrupt_docx_files_are_errors() {
    let message = error_of("bad.docx", b"PK\x03\x04 not really a zip archive", None);
    assert!(
        message.contains("not a readable docx file: not a zip archive"),
        "{message}"
    );
    let message = error_of("renamed.docx", "just text", None);
    assert!(message.contains("not a zip archive"), "{message}");

    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file("hello.txt", zip::write::SimpleFileOptions::default())
        .unwrap();
    std::io::Write::write_all(&mut zip, b"hello").unwrap();
    let other_zip = zip.finish().unwrap().into_inner();
    let message = error_of("archive.docx", other_zip, None);
    assert!(message.contains("no word/document.xml"), "{message}");

    let whole = to_docx(&example_policy());
    let message = error_of("truncated.docx", &whole[..whole.len() / 2], None);
    assert!(message.contains("docx"), "{message}");
}

#[test]
fn docx_outline_levels_and_tables_are_read() {
    use docx_rs::{Docx, Paragraph, Run, Table, TableCell, TableRow};
    let cell = |text: &str| {
        TableCell::new().add_paragraph(Paragraph::new().add_run(Run::new().add_text(text)))
    };
    let docx = Docx::new()
        .add_paragraph(
            Paragraph::new()
                .add_run(Run::new().add_text("Fees"))
                .outline_lvl(0),
        )
        .add_paragraph(Paragraph::new().add_run(Run::new().add_text("What we charge:")))
        .add_table(Table::new(vec![
            TableRow::new(vec![cell("item"), cell("fee")]),
            TableRow::new(vec![cell("late payment"), cell("$25")]),
        ]))
        .add_paragraph(
            Paragraph::new()
                .add_run(Run::new().add_text("Waivers"))
                .outline_lvl(1),
        )
        .add_paragraph(Paragraph::new().add_run(Run::new().add_text("On request.")));
    let mut bytes = std::io::Cursor::new(Vec::new());
    docx.build().pack(&mut bytes).unwrap();
    let (_dir, path) = temp_file("fees.docx", bytes.into_inner());
    let tree = read(&path).tree;
    assert_eq!(tree.root.label, "Fees");
    assert_eq!(
        tree.root.content,
        "What we charge:\n\n| item | fee |\n| late payment | $25 |"
    );
    assert_eq!(tree.root.children[0].label, "Waivers");
    assert_eq!(tree.root.children[0].content, "On request.");
}

#[test]
fn html_without_headings_is_read_with_a_warning() {
    let (_dir, path) = temp_file(
        "flat.html",
        "<html><body><p>Members may borrow.</p><p>Loans are approved weekly.</p></body></html>",
    );
    let ingested = read(&path);
    assert_eq!(ingested.tree.root.children.len(), 2);
    assert_eq!(
        ingested.tree.root.children[1].content,
        "Loans are approved weekly."
    );
    assert_eq!(ingested.warnings.len(), 1);
    assert!(
        ingested.warnings[0].contains("no h1-h6 headings and no numbered headings"),
        "{:?}",
        ingested.warnings
    );

    // Numbered paragraphs still give structure.
    let (_dir, path) = temp_file(
        "numbered.htm",
        "<body><p>Section 1 Scope</p><p>All loans.</p><p>Section 2 Fees</p><p>None.</p></body>",
    );
    let ingested = read(&path);
    let labels: Vec<&str> = ingested
        .tree
        .root
        .children
        .iter()
        .map(|n| n.label.as_str())
        .collect();
    assert_eq!(labels, ["Section 1 Scope", "Section 2 Fees"]);
    assert!(ingested.warnings[0].contains("headings recovered from numbered lines"));

    let message = error_of(
        "empty.html",
        "<html><body><nav>Home</nav></body></html>",
        None,
    );
    assert!(message.ends_with(": no text"), "{message}");
}

#[test]
fn uploads_of_every_readable_format_are_accepted_for_alignment() {
    use coordinator::fleet::records::PURPOSE_ALIGNMENT;
    use coordinator::fleet::service::{DEFAULT_MAX_UPLOAD_BYTES, validate_upload};
    for name in [
        "p.md",
        "p.markdown",
        "p.json",
        "p.xml",
        "p.txt",
        "p.html",
        "p.htm",
        "p.pdf",
        "p.docx",
    ] {
        assert_eq!(
            validate_upload(PURPOSE_ALIGNMENT, name, 10, DEFAULT_MAX_UPLOAD_BYTES),
            Vec::<String>::new(),
            "{name}"
        );
    }
    assert_eq!(
        validate_upload(PURPOSE_ALIGNMENT, "p.pptx", 10, DEFAULT_MAX_UPLOAD_BYTES).len(),
        1
    );
}

#[test]
fn damaged_copies_of_good_pdf_and_docx_files_never_panic() {
    let original = example_policy();
    let pdf = to_pdf(&pdf_lines(&original, PdfHeadings::Outline), true);
    let docx = to_docx(&original);
    // A fixed xorshift sequence: the same damage every run.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as usize
    };
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [("damaged.pdf", &pdf), ("damaged.docx", &docx)] {
        let path = dir.path().join(name);
        for round in 0..100 {
            let mut damaged = bytes.clone();
            for _ in 0..=round % 8 {
                let at = next() % damaged.len();
                damaged[at] = next() as u8;
            }
            if round % 5 == 0 {
                damaged.truncate((next() % damaged.len()).max(1));
            }
            std::fs::write(&path, &damaged).unwrap();
            let result = std::panic::catch_unwind(|| read_file(&path, None));
            match result {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    let message = error.to_string();
                    assert!(!message.contains('\n'), "{name} round {round}: {message}");
                    assert!(
                        message.starts_with(&path.display().to_string()),
                        "{message}"
                    );
                }
                Err(_) => panic!("{name} round {round}: the reader panicked"),
            }
        }
    }
}

// The lookup index built from the corpora

#[test]
fn cfr_cross_references_resolve_to_the_section_they_name() {
    let corpora = corpora();
    let tree = read(&corpora.join("cfr-format-dev/title-1.xml")).tree;
    let index = build_lookup_index(&tree);
    let mut resolved = 0;
    for node in &index.nodes {
        for reference in &node.references {
            resolved += 1;
            let written = node.text[reference.start..reference.end].to_lowercase();
            let target = &index.nodes[reference.target as usize];
            let key = citation_key(&target.citation);
            assert!(
                written.contains(&key),
                "{written:?} in {} resolved to {}",
                node.citation,
                target.citation
            );
            assert!(target.citation.starts_with("1 CFR"), "{}", target.citation);
        }
    }
    assert!(resolved > 50, "only {resolved} references resolved");
    let definitions = index.definitions.len();
    assert!(definitions > 10, "only {definitions} definitions found");
}

#[test]
fn us_code_references_and_definitions_resolve() {
    let corpora = corpora();
    let tree = read(&corpora.join("us-code-title21/usc21.xml")).tree;
    let index = build_lookup_index(&tree);
    let maps = index.maps();
    // "The term “drug” means" in 21 U.S.C. 321.
    let drug = maps.by_term["drug"]
        .iter()
        .map(|&i| &index.definitions[i])
        .find(|d| index.nodes[d.node as usize].citation == "21 U.S.C. 321")
        .expect("the definition of drug in 21 U.S.C. 321");
    let text = index.definition_text(drug);
    assert!(text.starts_with("The term “drug” means"), "{text}");
    assert!(text.len() > 100, "{text}");
    // "section 321 of this title" anywhere resolves to 21 U.S.C. 321.
    let to_321 = index
        .nodes
        .iter()
        .flat_map(|n| n.references.iter().map(move |r| (n, r)))
        .filter(|(n, r)| n.text[r.start..r.end].starts_with("section 321("))
        .map(|(_, r)| index.nodes[r.target as usize].citation.as_str())
        .collect::<Vec<_>>();
    assert!(to_321.len() > 20, "{}", to_321.len());
    assert!(to_321.iter().all(|c| *c == "21 U.S.C. 321"), "{to_321:?}");
}
