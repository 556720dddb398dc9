//! The extractive generator on handwritten regulatory text: question types, verbatim evidence
//! with exact offsets, determinism, rejections with their reasons, and report arithmetic.

use proto::{JobSpec, RejectReason, ShardMessage, ShardSection};
use worker::generate::extractive::ExtractiveGenerator;
use worker::generate::{Generator, ShardGeneration, locate_quote};

const CITATION: &str = "21 U.S.C. 999";

/// A section exercising every pattern, with a few sentences that must be rejected.
const SECTION: &str = "\
(a) Definitions
For the purposes of this section—
(1) The term \u{201c}drug\u{201d} means an article intended for use in the diagnosis, cure, or treatment of disease.
(2) The term \"device\" includes an instrument, apparatus, or implement intended for medical use.
(3) The term \"records\" means records.
(4) The term \"\" means nothing that could be asked about in this part.
(b) Reports
Each manufacturer shall submit to the Secretary a report of every serious adverse event associated with its drug.
The manufacturer shall submit each such report no later than 15 business days after the manufacturer receives it.
Each shall act.
(c) Prohibited acts
No person shall introduce into interstate commerce any drug that is adulterated or misbranded.
The distributor must not remove or alter the label of any drug held for sale.
(d) Exemptions
The Secretary may grant an exemption from the labeling requirements of this section by regulation.
This section does not apply to drugs dispensed by a licensed practitioner in the course of practice.
(e) Relation to other laws
Nothing herein limits the authority granted under section 201(g) of this title to inspect facilities.
";

fn shard(text: &str, max_items: u32) -> ShardMessage {
    let spec = JobSpec {
        shard_token_budget: 8000,
        max_items_per_section: max_items,
        ..JobSpec::extractive("A chatbot that specializes in food and drug law.")
    };
    let section = ShardSection {
        node_id: "n-999".into(),
        citation: CITATION.into(),
        section_path: vec![
            "Title 21".into(),
            "Chapter 9".into(),
            "§ 999. Drug reports".into(),
        ],
        text: text.into(),
    };
    ShardMessage::new("job-1".into(), spec, vec![section])
}

fn generate(text: &str, max_items: u32) -> ShardGeneration {
    ExtractiveGenerator::new().generate_shard(&shard(text, max_items))
}

fn question_for<'a>(generation: &'a ShardGeneration, needle: &str) -> &'a str {
    generation
        .items
        .iter()
        .find(|item| item.answer.contains(needle))
        .map(|item| item.question.as_str())
        .unwrap_or_else(|| panic!("no item answers with {needle:?}"))
}

fn type_of<'a>(generation: &'a ShardGeneration, needle: &str) -> Vec<&'a str> {
    generation
        .items
        .iter()
        .filter(|item| item.answer.contains(needle))
        .map(|item| item.question_type.as_str())
        .collect()
}

#[test]
fn regulatory_sentences_get_the_right_question_types() {
    let g = generate(SECTION, 50);
    assert_eq!(
        type_of(&g, "The term \u{201c}drug\u{201d} means"),
        ["definition"]
    );
    assert_eq!(
        question_for(&g, "The term \u{201c}drug\u{201d} means"),
        "Under 21 U.S.C. 999(a)(1), what does the term \"drug\" mean?"
    );
    assert_eq!(
        question_for(&g, "The term \"device\" includes"),
        "Under 21 U.S.C. 999(a)(2), what does the term \"device\" include?"
    );
    assert_eq!(
        type_of(&g, "Each manufacturer shall submit"),
        ["obligation"]
    );
    assert_eq!(
        question_for(&g, "Each manufacturer shall submit"),
        "Under 21 U.S.C. 999(b), what must each manufacturer submit?"
    );
    assert_eq!(
        type_of(&g, "no later than 15 business days"),
        ["obligation", "threshold"]
    );
    let threshold = g
        .items
        .iter()
        .find(|i| i.question_type == "threshold")
        .expect("a threshold item");
    assert_eq!(
        threshold.question,
        "Under 21 U.S.C. 999(b), within how many business days must the manufacturer submit each such report?"
    );
    assert_eq!(type_of(&g, "No person shall introduce"), ["prohibition"]);
    assert_eq!(
        question_for(&g, "No person shall introduce"),
        "Under 21 U.S.C. 999(c), what may no person do?"
    );
    assert_eq!(
        question_for(&g, "The distributor must not"),
        "Under 21 U.S.C. 999(c), what must the distributor not remove?"
    );
    assert_eq!(type_of(&g, "The Secretary may grant"), ["permission"]);
    assert_eq!(
        question_for(&g, "The Secretary may grant"),
        "Under 21 U.S.C. 999(d), what may the Secretary grant?"
    );
    assert_eq!(type_of(&g, "does not apply to drugs"), ["scope"]);
    assert_eq!(
        question_for(&g, "does not apply to drugs"),
        "Under 21 U.S.C. 999(d), to what does this section not apply?"
    );
    assert_eq!(type_of(&g, "section 201(g)"), ["cross_reference"]);
    assert_eq!(
        question_for(&g, "section 201(g)"),
        "What does 21 U.S.C. 999(e) provide with respect to section 201(g) of this title?"
    );
    let types: Vec<&str> = g.report.question_types.keys().map(String::as_str).collect();
    assert_eq!(
        types,
        [
            "cross_reference",
            "definition",
            "obligation",
            "permission",
            "prohibition",
            "scope",
            "threshold"
        ]
    );
}

#[test]
fn every_answer_is_verbatim_in_the_source_with_correct_offsets() {
    let g = generate(SECTION, 50);
    assert!(!g.items.is_empty());
    for item in &g.items {
        assert_eq!(item.node_id, "n-999");
        assert!(!item.evidence.is_empty());
        for quote in &item.evidence {
            assert_eq!(&SECTION[quote.start..quote.end], quote.text, "{item:?}");
            assert_eq!(quote.node_id, "n-999");
        }
        // The answer is the quoted sentence(s), whitespace-collapsed.
        let joined: Vec<String> = item
            .evidence
            .iter()
            .map(|q| q.text.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(item.answer, joined.join(" "));
        for quote in &item.evidence {
            assert!(locate_quote(SECTION, &quote.text).is_some());
        }
        assert!(item.question.ends_with('?'));
        assert_eq!(item.verdict, "accept");
        assert_eq!(item.prompt_version, "extractive-1");
        let criteria: Vec<&str> = item.scores.iter().map(|s| s.criterion.as_str()).collect();
        assert_eq!(criteria, ["grounded", "specificity"]);
        assert!(item.scores.iter().all(|s| (0.0..=1.0).contains(&s.value)));
    }
}

#[test]
fn bad_candidates_are_rejected_and_counted_with_their_reasons() {
    let g = generate(SECTION, 50);
    let rejected = |reason| g.report.rejected.get(&reason).copied().unwrap_or(0);
    // `Each shall act.`
    assert_eq!(rejected(RejectReason::AnswerTooShort), 1);
    // `The term "records" means records.`: the answer adds nothing to the question.
    assert_eq!(rejected(RejectReason::QuestionLeaksAnswer), 1);
    // `The term "" means ...`: a question with an empty term.
    assert_eq!(rejected(RejectReason::MalformedQuestion), 1);
    assert_eq!(rejected(RejectReason::Duplicate), 0);
    assert_eq!(rejected(RejectReason::EvidenceNotInSource), 0);
    assert!(
        g.items
            .iter()
            .all(|i| !i.answer.contains("records means records"))
    );

    // The same question twice under one paragraph is a duplicate; under another it is not.
    let twice = "(a) The Secretary may grant an exemption from the labeling requirements.\n\
                 The Secretary may grant an exemption from the labeling requirements.\n\
                 (b) The Secretary may grant an exemption from the labeling requirements.\n";
    let g = generate(twice, 50);
    let questions: Vec<&str> = g.items.iter().map(|i| i.question.as_str()).collect();
    assert_eq!(
        questions,
        [
            "Under 21 U.S.C. 999(a), what may the Secretary grant?",
            "Under 21 U.S.C. 999(b), what may the Secretary grant?"
        ]
    );
    assert_eq!(g.report.rejected.get(&RejectReason::Duplicate), Some(&1));
}

#[test]
fn report_counts_add_up() {
    for max in [1, 3, 50] {
        let g = generate(SECTION, max);
        let r = &g.report;
        assert_eq!(r.generator, "extractive");
        assert_eq!(r.sections, 1);
        assert_eq!(r.accepted, g.items.len() as u64);
        assert_eq!(r.candidates, r.accepted + r.rejected_total(), "max {max}");
        assert_eq!(r.question_types.values().sum::<u64>(), r.accepted);
        assert_eq!(r.usage, proto::TokenUsage::default());
        assert!(g.items.len() <= max as usize);
    }
}

#[test]
fn the_section_cap_keeps_a_diversity_of_types() {
    let g = generate(SECTION, 3);
    let types: Vec<&str> = g.items.iter().map(|i| i.question_type.as_str()).collect();
    assert_eq!(types, ["definition", "obligation", "threshold"]);
    let all = generate(SECTION, 50);
    assert_eq!(
        g.report
            .rejected
            .get(&RejectReason::OverSectionCap)
            .copied(),
        Some(all.report.accepted - 3)
    );
}

#[test]
fn list_items_are_read_with_their_chapeau() {
    let text = "A cosmetic shall be deemed to be adulterated—\n\
                (a)\nIf it consists in whole or in part of any filthy, putrid, or decomposed substance.\n\
                (b)\nIf its container is composed, in whole or in part, of any poisonous substance.\n";
    let g = generate(text, 10);
    let questions: Vec<&str> = g.items.iter().map(|i| i.question.as_str()).collect();
    assert_eq!(
        questions,
        [
            "Under 21 U.S.C. 999(a), when shall a cosmetic be deemed to be adulterated?",
            "Under 21 U.S.C. 999(b), when shall a cosmetic be deemed to be adulterated?",
        ]
    );
    let first = &g.items[0];
    assert_eq!(first.evidence.len(), 2);
    assert_eq!(
        first.evidence[0].text,
        "A cosmetic shall be deemed to be adulterated—"
    );
    assert!(
        first
            .answer
            .starts_with("A cosmetic shall be deemed to be adulterated— If it consists")
    );
    assert_eq!(first.question_type, "definition");
}

/// Subdivisions as the USLM reader writes them: `(x) Heading. Text`, or a heading alone on its
/// line above deeper paragraphs.
const HEADED: &str = "\
(a) Types of fees. Beginning in fiscal year 2023, the Secretary shall assess and collect fees in accordance with this section as follows:
  (1) Human drug application fee.
    (A) In general. Each person that submits a human drug application shall be subject to a fee as follows:
      (i) A fee established under subsection (c) for an application for which clinical data are required for approval.
      (ii) A fee established under subsection (c) for an application for which clinical data are not required for approval.
    (B) Payment. The fee required by subparagraph (A) shall be due upon submission of the application.
  (2) Repealed. Pub. L. 101-647, title XXIII, § 2301(b), Nov. 29, 1990.
(b) Misbranded food. A food shall be deemed to be misbranded—
  (1) False or misleading label. If its labeling is false or misleading in any particular.
  (2) Package form. If in package form unless it bears a label containing the name of the manufacturer, except that reasonable variations shall be permitted by regulations.
";

#[test]
fn headings_are_no_answers_and_the_text_under_them_is() {
    let g = generate(HEADED, 50);
    let headings = [
        "Types of fees.",
        "Human drug application fee.",
        "In general.",
        "Payment.",
        "Misbranded food.",
        "False or misleading label.",
        "Package form.",
    ];
    for item in &g.items {
        for heading in headings {
            assert!(!item.answer.ends_with(heading), "{}", item.answer);
            assert!(
                item.evidence.iter().all(|q| !q.text.starts_with(heading)),
                "{:?}",
                item.evidence
            );
        }
        assert!(!item.answer.contains("Repealed"), "{}", item.answer);
        assert!(
            !item.question.contains("regarding in general"),
            "{}",
            item.question
        );
    }
    let answers: Vec<&str> = g.items.iter().map(|i| i.answer.as_str()).collect();
    assert!(answers.contains(
        &"Each person that submits a human drug application shall be subject to a fee as follows: \
          A fee established under subsection (c) for an application for which clinical data are \
          required for approval."
    ));
    assert!(answers.contains(
        &"The fee required by subparagraph (A) shall be due upon submission of the application."
    ));
    // A condition of what the chapeau deems is read with it, even with a clause of its own.
    assert!(answers.contains(
        &"A food shall be deemed to be misbranded— If in package form unless it bears a label \
          containing the name of the manufacturer, except that reasonable variations shall be \
          permitted by regulations."
    ));
    assert_eq!(
        question_for(&g, "shall be due upon submission"),
        "What does 21 U.S.C. 999(a)(1)(B) require regarding payment?"
    );
    assert_eq!(
        g.report.candidates,
        g.report.accepted + g.report.rejected_total()
    );
}

#[test]
fn a_list_of_fragments_is_answered_whole() {
    let text = "(d) Knowledge\n\
                For purposes of this subsection, the term \u{201c}knowledge\u{201d} means\u{2014}\n\
                (A) the actual knowledge that the manufacturer had; or\n\
                (B) the knowledge which a reasonable person would have had under like circumstances.\n\
                (e) Other\n\
                The Secretary may issue guidance on the meaning of knowledge under this subsection.\n";
    let g = generate(text, 10);
    let definition = &g.items[0];
    assert_eq!(
        definition.question,
        "Under 21 U.S.C. 999(d), what does the term \"knowledge\" mean?"
    );
    assert_eq!(definition.evidence.len(), 1);
    let quote = &definition.evidence[0];
    assert!(quote.text.starts_with("For purposes of this subsection"));
    assert!(quote.text.ends_with("under like circumstances."));
    assert_eq!(&text[quote.start..quote.end], quote.text);
    assert!(
        definition
            .answer
            .contains("means\u{2014} (A) the actual knowledge")
    );
    // The items are not asked about one by one.
    assert_eq!(g.report.candidates, 2);
    assert_eq!(g.items[1].question_type, "permission");
}

#[test]
fn negations_dates_and_possibilities_keep_their_meaning() {
    let text = "Nothing in this section shall alter the authority of the Secretary over labeling.\n\
                Nothing in this chapter shall be construed to limit the powers of any State.\n\
                Office of the President, May 23, 2012.\n\
                These challenges may result in duplicative acquisitions of similar code.\n";
    let g = generate(text, 10);
    let questions: Vec<&str> = g.items.iter().map(|i| i.question.as_str()).collect();
    assert_eq!(
        questions,
        [
            "Under 21 U.S.C. 999, what may this section not alter?",
            "Under 21 U.S.C. 999, how may this chapter not be construed?",
            "Under 21 U.S.C. 999, what date is specified regarding drug reports?",
        ]
    );
    assert_eq!(g.items[2].question_type, "threshold");
}

#[test]
fn wrapped_markdown_and_glossaries_are_understood() {
    let text = "## Enforcement Responsibilities\n\n\
                Community leaders are responsible for clarifying and enforcing our standards of\n\
                acceptable behavior and will take appropriate and fair corrective action.\n\n\
                **Source Code:** Computer commands written in a computer programming language that is meant to be read by people.\n";
    let g = generate(text, 10);
    assert_eq!(
        question_for(&g, "Community leaders"),
        "Under 21 U.S.C. 999, what are community leaders responsible for?"
    );
    let leaders = g
        .items
        .iter()
        .find(|i| i.answer.contains("Community"))
        .unwrap();
    assert!(
        leaders.evidence[0]
            .text
            .contains("standards of\nacceptable")
    );
    assert!(leaders.answer.contains("standards of acceptable"));
    assert_eq!(
        question_for(&g, "Computer commands"),
        "Under 21 U.S.C. 999, what does \"Source Code\" mean?"
    );
}

#[test]
fn output_is_deterministic() {
    let a = generate(SECTION, 4);
    let b = generate(SECTION, 4);
    assert_eq!(a.items, b.items);
    assert_eq!(a.report, b.report);
}

#[tokio::test]
async fn the_generator_trait_reports_no_model() {
    let generator = ExtractiveGenerator::new();
    assert_eq!(generator.name(), "extractive");
    let shard = shard(SECTION, 50);
    assert_eq!(generator.model(&shard.spec), None);
    assert_eq!(generator.judge_model(&shard.spec), None);
    let g = generator.generate(&shard).await.unwrap();
    assert_eq!(g.items, generate(SECTION, 50).items);
}

#[test]
fn a_large_shard_is_processed_quickly() {
    let mut text = String::new();
    for i in 0..2000 {
        text.push_str(&format!("({}) {}", i % 26, SECTION.replace("(a)", "")));
    }
    let started = std::time::Instant::now();
    let g = generate(&text, 1_000_000);
    assert!(g.report.candidates > 20_000, "{}", g.report.candidates);
    // Several MB per second even unoptimised; release is much faster.
    assert!(started.elapsed().as_secs() < 60, "{:?}", started.elapsed());
}
