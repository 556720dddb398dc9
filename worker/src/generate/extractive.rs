//! The built-in, model-free generator: questions over the source's own regulatory sentences.
//!
//! For every section of a shard:
//!
//! 1. **Structure.** The text is read line by line. Paragraph enumerators at the start of a line
//!    (`(a)`, `(1)`, `(A)`, `(ii)`, also chained as `(g)(1)` or alone on their line) give each
//!    paragraph its subsection path, so a question cites `21 U.S.C. 364a(b)(1)` rather than the
//!    whole section; short unpunctuated lines (`(c) Exemptions`, `## Scope`) are headings, as is
//!    a phrase that names rather than says after an enumerator, run in (`(e) Package form. If
//!    ...`) or alone above deeper paragraphs (`(1) Human drug application fee.`): a heading is no
//!    sentence, the text under it is. `(E) Repealed. Pub. L. ...` has no sentences. Bullets and
//!    enumerated items under a sentence ending in `:` or `—` are items of that "chapeau" until a
//!    heading or a paragraph at its depth.
//! 2. **Sentences.** Paragraphs are split at `.`/`?`/`!` followed by whitespace and a capital,
//!    digit or bracket, except after abbreviations (`U.S.C.`, `Sec.`, `e.g.`, `i.e.`, `No.`,
//!    `Pub. L.`, ...); decimals and citations such as `1.5` or `§ 1.3` never split, and a
//!    footnote number stays with its sentence (`billion.¹`).
//! 3. **Classification.** Each sentence is matched against regulatory patterns, in this order:
//!    definitions (`the term "X" means`, `X means`, `**X:**` glossary entries, `X shall be deemed
//!    ... if`), scope (`applies to`, `does not apply`, `is exempt from`, `shall not be construed`),
//!    prohibitions (`shall not`, `must not`, `may not`, `no person shall`, `it is unlawful`,
//!    `is prohibited`), obligations (`shall`, `must`, `is required to`, `is responsible for`,
//!    `should`), permissions (`may`, `is authorized to`, `is permitted to`), and, as a fallback,
//!    cross-references (`section 201(g)`, `§ 1.3`, `paragraph (b)`, `part 12`). A sentence with a
//!    quantity (days, years, percent, dollars, dates, measures) also yields a threshold question.
//!    An item that says nothing on its own (`(b) If it consists of ...`), or a condition (`If
//!    ...`) of what its chapeau deems, is read with its chapeau (`A cosmetic shall be deemed to be
//!    adulterated—`): the answer quotes both. A list of fragments (`means— (A) ...; or (B) ...`)
//!    is one rule: one answer quotes the chapeau and the whole list (up to [`MAX_LIST_BYTES`]),
//!    so no item answers with half a definition.
//! 4. **Questions** come from templates filled with the sentence's own actor, verb and modal
//!    (`Under 21 U.S.C. 364a(b)(1), within how many business days must the responsible person
//!    submit a serious adverse event report?`). The answer is the sentence, whitespace-collapsed;
//!    the evidence is the exact span with its byte offsets in the section text.
//! 5. **Critique**, deterministic, each failure counted under a [`RejectReason`]: evidence
//!    verbatim in the source, answer length (at least 20 characters and 4 words), a well-formed
//!    question, no answer that only repeats the question (a circular definition), no duplicate
//!    question in the section, and the section cap `max_items_per_section`, which keeps items
//!    round-robin across question types so that a capped section still covers its kinds of rule.
//!
//! Headings, sentences that match no pattern, chapeaus on their own, fragments starting in lower
//! case (other than list definitions, `(6) the term "X" means ...;`) and sentences longer than
//! [`MAX_SENTENCE_BYTES`] are not candidates. Output depends on the input only: no clock, no
//! hash-map iteration, so a re-run is byte-identical.
//!
//! The critique helpers ([`check_answer`], [`check_question`]) and the analyser ([`section_rules`]) are shared with the
//! `openai` generator.

use std::collections::BTreeSet;

use async_trait::async_trait;
use proto::{JobSpec, RejectReason, Score, ShardMessage, ShardSection};

use super::sentences::split_sentences;
use super::{GenerateError, GeneratedItem, Generator, Quote, ShardGeneration, locate_quote};

/// Recorded in every row this generator makes.
pub const PROMPT_VERSION: &str = "extractive-1";

/// Sentences longer than this are not used as answers.
pub const MAX_SENTENCE_BYTES: usize = 1500;

/// A chapeau and its list of fragments longer than this is not used as an answer.
pub const MAX_LIST_BYTES: usize = 2500;

/// A run-in heading longer than this (that is not a list of topics) is read as a sentence.
const MAX_HEADING_WORDS: usize = 30;

/// Shortest acceptable answer, in characters and in words.
const MIN_ANSWER_CHARS: usize = 20;
const MIN_ANSWER_WORDS: usize = 4;
/// Longest acceptable question, in bytes.
const MAX_QUESTION_BYTES: usize = 400;

/// Kinds of question, recorded as `question_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum QuestionType {
    Definition,
    Obligation,
    Prohibition,
    Permission,
    Threshold,
    CrossReference,
    Scope,
}

impl QuestionType {
    pub const ALL: [QuestionType; 7] = [
        QuestionType::Definition,
        QuestionType::Obligation,
        QuestionType::Prohibition,
        QuestionType::Permission,
        QuestionType::Threshold,
        QuestionType::CrossReference,
        QuestionType::Scope,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            QuestionType::Definition => "definition",
            QuestionType::Obligation => "obligation",
            QuestionType::Prohibition => "prohibition",
            QuestionType::Permission => "permission",
            QuestionType::Threshold => "threshold",
            QuestionType::CrossReference => "cross_reference",
            QuestionType::Scope => "scope",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// The extractive generator. Stateless; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExtractiveGenerator;

impl ExtractiveGenerator {
    pub fn new() -> Self {
        ExtractiveGenerator
    }

    /// Generate synchronously (the [`Generator`] impl calls this).
    pub fn generate_shard(&self, shard: &ShardMessage) -> ShardGeneration {
        let mut generation = ShardGeneration::default();
        generation.report.shard_id = shard.shard_id.clone();
        generation.report.generator = self.name().to_string();
        generation.report.sections = shard.sections.len() as u64;
        let cap = shard.spec.max_items_per_section as usize;
        for section in &shard.sections {
            let candidates = section_candidates(section);
            critique_section(section, candidates, cap, &mut generation);
        }
        generation.report.accepted = generation.items.len() as u64;
        generation
    }
}

#[async_trait]
impl Generator for ExtractiveGenerator {
    fn name(&self) -> &'static str {
        "extractive"
    }

    fn model(&self, _spec: &JobSpec) -> Option<String> {
        None
    }

    fn judge_model(&self, _spec: &JobSpec) -> Option<String> {
        None
    }

    async fn generate(&self, shard: &ShardMessage) -> Result<ShardGeneration, GenerateError> {
        Ok(self.generate_shard(shard))
    }
}

/// The rules the analyser finds in a section: each candidate's kind and the source text it rests
/// on, in text order. The `openai` generator's plan step sizes and steers generation with them.
pub fn section_rules(section: &ShardSection) -> Vec<(QuestionType, Quote)> {
    section_candidates(section)
        .into_iter()
        .filter_map(|candidate| Some((candidate.qtype, candidate.evidence.into_iter().next()?)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Critique helpers (shared with the openai generator)
// ---------------------------------------------------------------------------------------------

/// Answer length check: at least 20 characters and 4 words.
pub fn check_answer(answer: &str) -> Result<(), RejectReason> {
    let answer = answer.trim();
    if answer.chars().count() < MIN_ANSWER_CHARS
        || answer.split_whitespace().count() < MIN_ANSWER_WORDS
    {
        return Err(RejectReason::AnswerTooShort);
    }
    Ok(())
}

/// Question checks: well formed (a capitalised question of at least 4 words ending in `?`, with
/// balanced brackets and quotes and no empty quotes or template leftovers), and not answered by
/// itself (every content word of the answer already in the question).
pub fn check_question(question: &str, answer: &str) -> Result<(), RejectReason> {
    let q = question.trim();
    let well_formed = q.ends_with('?')
        && q.len() <= MAX_QUESTION_BYTES
        && q.split_whitespace().count() >= 4
        && q.chars().next().is_some_and(|c| c.is_uppercase())
        && !q.contains("\"\"")
        && !q.contains("{{")
        && q.matches('"').count().is_multiple_of(2)
        && q.matches('(').count() == q.matches(')').count();
    if !well_formed {
        return Err(RejectReason::MalformedQuestion);
    }
    let question_words: BTreeSet<String> = content_words(q).collect();
    let mut answer_words = content_words(answer).peekable();
    if answer_words.peek().is_some() && answer_words.all(|w| question_words.contains(&w)) {
        return Err(RejectReason::QuestionLeaksAnswer);
    }
    Ok(())
}

/// Lower-cased content words without a plural `s`, for the leak check.
fn content_words(text: &str) -> impl Iterator<Item = String> + '_ {
    const STOP: &[&str] = &[
        "a", "an", "and", "any", "are", "as", "at", "be", "by", "do", "doe", "for", "in", "i",
        "is", "it", "mean", "include", "must", "may", "of", "on", "or", "shall", "such", "term",
        "that", "the", "this", "to", "under", "what", "with",
    ];
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            let w = w.to_lowercase();
            match w.strip_suffix('s') {
                Some(stem) if w.len() > 3 => stem.to_string(),
                _ => w,
            }
        })
        .filter(|w| !STOP.contains(&w.as_str()))
}

/// Questions seen in a section, compared case- and punctuation-insensitively.
#[derive(Debug, Default)]
struct Dedup {
    seen: BTreeSet<String>,
}

impl Dedup {
    /// `Err(Duplicate)` when an equivalent question was already admitted.
    fn admit(&mut self, question: &str) -> Result<(), RejectReason> {
        let key: String = question
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect::<Vec<_>>()
            .join(" ");
        if self.seen.insert(key) {
            Ok(())
        } else {
            Err(RejectReason::Duplicate)
        }
    }
}

/// Indices of `types` to keep under `cap`: round-robin across question types in order of first
/// appearance, earliest first within a type; returned in input order.
pub fn select_diverse(types: &[&str], cap: usize) -> Vec<usize> {
    if types.len() <= cap {
        return (0..types.len()).collect();
    }
    let mut order: Vec<&str> = Vec::new();
    for t in types {
        if !order.contains(t) {
            order.push(t);
        }
    }
    let mut queues: Vec<std::collections::VecDeque<usize>> = order
        .iter()
        .map(|t| (0..types.len()).filter(|&i| types[i] == *t).collect())
        .collect();
    let mut kept = Vec::with_capacity(cap);
    while kept.len() < cap {
        for queue in &mut queues {
            if kept.len() == cap {
                break;
            }
            if let Some(i) = queue.pop_front() {
                kept.push(i);
            }
        }
    }
    kept.sort_unstable();
    kept
}

// ---------------------------------------------------------------------------------------------
// Candidates and critique
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Candidate {
    question: String,
    answer: String,
    evidence: Vec<Quote>,
    qtype: QuestionType,
    specificity: f64,
}

fn critique_section(
    section: &ShardSection,
    candidates: Vec<Candidate>,
    cap: usize,
    generation: &mut ShardGeneration,
) {
    generation.report.candidates += candidates.len() as u64;
    let mut dedup = Dedup::default();
    let mut passed = Vec::with_capacity(candidates.len());
    for candidate in candidates {
        let verdict = check_evidence(section, &candidate)
            .and_then(|()| check_answer(&candidate.answer))
            .and_then(|()| check_question(&candidate.question, &candidate.answer))
            .and_then(|()| dedup.admit(&candidate.question));
        match verdict {
            Ok(()) => passed.push(candidate),
            Err(reason) => generation.reject(&section.node_id, reason),
        }
    }
    let types: Vec<&str> = passed.iter().map(|c| c.qtype.as_str()).collect();
    let keep = select_diverse(&types, cap);
    for _ in keep.len()..passed.len() {
        generation.reject(&section.node_id, RejectReason::OverSectionCap);
    }
    for index in keep {
        let candidate = passed[index].clone();
        *generation
            .report
            .question_types
            .entry(candidate.qtype.as_str().to_string())
            .or_insert(0) += 1;
        generation.items.push(GeneratedItem {
            node_id: section.node_id.clone(),
            question: candidate.question,
            answer: candidate.answer,
            evidence: candidate.evidence,
            scores: vec![
                Score {
                    criterion: "grounded".into(),
                    value: 1.0,
                },
                Score {
                    criterion: "specificity".into(),
                    value: candidate.specificity,
                },
            ],
            verdict: "accept".into(),
            question_type: candidate.qtype.as_str().to_string(),
            prompt_version: PROMPT_VERSION.to_string(),
        });
    }
}

/// Every quote must be the exact text at its offsets, and its whitespace-collapsed form (the form
/// the answer uses) must match the source at those offsets.
fn check_evidence(section: &ShardSection, candidate: &Candidate) -> Result<(), RejectReason> {
    let text = &section.text;
    let grounded = !candidate.evidence.is_empty()
        && candidate.evidence.iter().all(|q| {
            text.get(q.start..q.end) == Some(q.text.as_str())
                && locate_quote(&text[q.start..], &collapse(&q.text)) == Some((0, q.text.len()))
        });
    if grounded {
        Ok(())
    } else {
        Err(RejectReason::EvidenceNotInSource)
    }
}

fn collapse(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn section_candidates(section: &ShardSection) -> Vec<Candidate> {
    let text = section.text.as_str();
    let section_heading = section_heading(section);
    let (units, chapeaus) = units(text);
    let quote = |start: usize, end: usize| Quote {
        node_id: section.node_id.clone(),
        text: text[start..end].to_string(),
        start,
        end,
    };
    let heading_of = |span: Option<(usize, usize)>| {
        span.and_then(|(s, e)| clean_heading(&text[s..e]))
            .or_else(|| section_heading.clone())
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < units.len() {
        let unit = &units[i];
        let sentence = &text[unit.start..unit.end];
        let chapeau = unit.chapeau.map(|c| &chapeaus[c]);

        // A list of fragments (`means— (A) ...; or (B) ...`) is one rule: one answer quoting the
        // chapeau and the whole list.
        if let Some(index) = unit.chapeau
            && let Some(ch) = chapeau
            && is_fragment(sentence)
        {
            // The list runs while its chapeau (or one nested in it) is open: a heading ends it.
            let in_list = |u: &&Unit| u.depth > ch.depth && u.chapeau.is_some_and(|c| c >= index);
            let last = units[i..]
                .iter()
                .take_while(in_list)
                .last()
                .map_or(unit.end, |u| u.end);
            let count = units[i..].iter().take_while(in_list).count();
            let head = &text[ch.start..ch.end];
            let kind = classify(head, &head.to_ascii_lowercase(), true)
                .filter(|k| !matches!(k, Kind::CrossRef { .. }));
            if let Some(kind) = kind {
                if last - ch.start <= MAX_LIST_BYTES {
                    let cite = cite(&section.citation, &ch.path);
                    let heading = heading_of(ch.heading);
                    let ctx = Ctx {
                        cite: &cite,
                        heading: heading.as_deref(),
                        subsection: !ch.path.is_empty(),
                    };
                    out.push(Candidate {
                        question: kind.question(&ctx),
                        answer: collapse(&text[ch.start..last]),
                        evidence: vec![quote(ch.start, last)],
                        qtype: kind.qtype(),
                        specificity: kind.specificity(&ctx, false),
                    });
                }
                i += count.max(1);
                continue;
            }
        }

        i += 1;
        // Chapeaus and over-long sentences are no answers of their own.
        if sentence.len() > MAX_SENTENCE_BYTES || ends_as_chapeau(sentence) {
            continue;
        }
        let lower = sentence.to_ascii_lowercase();
        let own = classify(sentence, &lower, false);
        // Nor is a stray fragment, except a definition in a list (`(6) the term "X" means ...;`).
        if sentence.starts_with(char::is_lowercase) && !matches!(own, Some(Kind::Term { .. })) {
            continue;
        }
        let cite = cite(&section.citation, &unit.path);
        let heading = heading_of(unit.heading);
        let ctx = Ctx {
            cite: &cite,
            heading: heading.as_deref(),
            subsection: !unit.path.is_empty(),
        };
        // An item that says nothing on its own (`(b) If it consists of ...`) is read with its
        // chapeau (`A cosmetic shall be deemed to be adulterated—`); so is a condition of what
        // its chapeau deems, whatever its own clauses say (`If in package form unless ...,
        // except that ... variations shall be permitted`).
        let says_nothing = matches!(own, None | Some(Kind::CrossRef { .. }));
        let combined = chapeau.and_then(|ch| {
            let head = &text[ch.start..ch.end];
            classify(head, &head.to_ascii_lowercase(), true)
                .filter(|kind| match kind {
                    Kind::CrossRef { .. } => false,
                    Kind::Deemed { .. } => says_nothing || sentence.starts_with("If "),
                    _ => says_nothing,
                })
                .map(|kind| (kind, ch))
        });
        if let Some((kind, ch)) = combined {
            out.push(Candidate {
                question: kind.question(&ctx),
                answer: format!(
                    "{} {}",
                    collapse(&text[ch.start..ch.end]),
                    collapse(sentence)
                ),
                evidence: vec![quote(ch.start, ch.end), quote(unit.start, unit.end)],
                qtype: kind.qtype(),
                specificity: kind.specificity(&ctx, false),
            });
            continue;
        }
        let quantity = quantity(&lower);
        if let Some(kind) = &own {
            out.push(Candidate {
                question: kind.question(&ctx),
                answer: collapse(sentence),
                evidence: vec![quote(unit.start, unit.end)],
                qtype: kind.qtype(),
                specificity: kind.specificity(&ctx, quantity.is_some()),
            });
        }
        if let Some(quantity) = quantity {
            let clause = own.as_ref().and_then(Kind::clause);
            out.push(Candidate {
                question: quantity.question(&ctx, clause),
                answer: collapse(sentence),
                evidence: vec![quote(unit.start, unit.end)],
                qtype: QuestionType::Threshold,
                specificity: specificity(clause.is_some_and(|c| c.subject.is_some()), &ctx, true),
            });
        }
    }
    out
}

/// A list item that only continues its chapeau: it starts in lower case or ends with `;`, `,`,
/// `; and`, `; or`.
fn is_fragment(sentence: &str) -> bool {
    let s = sentence.trim_end();
    let last_word = s.rsplit(char::is_whitespace).next().unwrap_or("");
    s.starts_with(char::is_lowercase)
        || s.ends_with([';', ','])
        || (matches!(last_word, "and" | "or")
            && s[..s.len() - last_word.len()]
                .trim_end()
                .ends_with([';', ',']))
}

// ---------------------------------------------------------------------------------------------
// Structure: paragraphs, enumerators, headings, chapeaus, sentences
// ---------------------------------------------------------------------------------------------

/// One sentence with its context.
#[derive(Debug)]
struct Unit {
    start: usize,
    end: usize,
    /// Enumerator path, e.g. `(b)(1)`.
    path: String,
    /// Nearest heading span.
    heading: Option<(usize, usize)>,
    /// Nesting depth of its paragraph (enumerators and bullets).
    depth: usize,
    /// The chapeau introducing the list this sentence is an item of (index into the chapeaus).
    chapeau: Option<usize>,
}

/// A sentence ending in `:` or `—` that introduces the deeper paragraphs after it.
#[derive(Debug)]
struct Chapeau {
    start: usize,
    end: usize,
    depth: usize,
    path: String,
    heading: Option<(usize, usize)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Lower,
    Upper,
    Digit,
    LowerRoman,
    UpperRoman,
}

#[derive(Debug)]
struct Level<'a> {
    style: Style,
    label: &'a str,
    heading: Option<(usize, usize)>,
}

struct Parser<'a> {
    text: &'a str,
    levels: Vec<Level<'a>>,
    top_heading: Option<(usize, usize)>,
    paragraph: Option<(usize, usize, usize)>,
    /// Every chapeau seen, and the indices of those still open.
    chapeaus: Vec<Chapeau>,
    open: Vec<usize>,
    units: Vec<Unit>,
    spans: Vec<(usize, usize)>,
}

fn units(text: &str) -> (Vec<Unit>, Vec<Chapeau>) {
    let mut parser = Parser {
        text,
        levels: Vec::new(),
        top_heading: None,
        paragraph: None,
        chapeaus: Vec::new(),
        open: Vec::new(),
        units: Vec::new(),
        spans: Vec::new(),
    };
    let mut lines = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        lines.push((offset, offset + line.len()));
        offset += line.len();
    }
    for (i, &(start, end)) in lines.iter().enumerate() {
        let next = lines.get(i + 1).map(|&(s, e)| text[s..e].trim_end());
        parser.line(start, end, next);
    }
    parser.flush();
    (parser.units, parser.chapeaus)
}

impl<'a> Parser<'a> {
    /// `next`: the line after this one. When it starts in lower case, this line does not end a
    /// paragraph or heading.
    fn line(&mut self, line_start: usize, line_end: usize, next: Option<&str>) {
        let continued = next
            .and_then(|line| line.trim_start().chars().next())
            .is_some_and(char::is_lowercase);
        let text = self.text;
        let raw = &text[line_start..line_end];
        let lead = raw.len() - raw.trim_start().len();
        let (start, end) = (line_start + lead, line_start + raw.trim_end().len());
        if start >= end {
            self.flush();
            return;
        }
        let mut pos = start;
        if text[pos..end].starts_with('#') {
            self.flush();
            let heading = text[pos..end].trim_start_matches('#');
            let lead = heading.len() - heading.trim_start().len();
            self.top_heading = Some((end - heading.len() + lead, end));
            self.levels.clear();
            self.open.clear();
            return;
        }
        let bullet = bullet_len(&text[pos..end]);
        pos += bullet;
        let mut enumerated = false;
        while let Some((label, next)) = enumerator(text, pos, end) {
            if !enumerated && bullet == 0 {
                self.flush();
            }
            enumerated = true;
            self.push_level(label);
            pos = next;
        }
        if bullet > 0 {
            self.flush();
        }
        if pos >= end {
            return;
        }
        // A subdivision that only records its status (`(E) Repealed. Pub. L. 101–647, ...`,
        // `(x) Omitted.`) has no operative text.
        if enumerated && is_status_note(&text[pos..end]) {
            self.close_chapeaus(self.levels.len());
            return;
        }
        // A run-in heading (`(A) In general. Each person ...`, as the USLM reader writes
        // subdivision headings) names the paragraph and is no sentence of it; so is a heading
        // alone on its line when deeper paragraphs follow (`(1) Human drug application fee.`).
        if enumerated && bullet == 0 {
            let deeper_follows = !continued && self.deeper(line_start, next);
            if let Some((heading_end, after)) = heading_at(text, pos, end, deeper_follows) {
                if let Some(level) = self.levels.last_mut() {
                    level.heading = Some((pos, heading_end));
                }
                if after >= end {
                    self.close_chapeaus(self.levels.len());
                    return;
                }
                pos = after;
            }
        }
        let rest = &text[pos..end];
        if bullet == 0 && !continued && is_heading_line(rest) {
            self.flush();
            self.close_chapeaus(if enumerated { self.levels.len() } else { 0 });
            match self.levels.last_mut() {
                Some(level) if enumerated => level.heading = Some((pos, end)),
                _ => self.top_heading = Some((pos, end)),
            }
            return;
        }
        match &mut self.paragraph {
            Some((_, paragraph_end, _)) => *paragraph_end = end,
            None => self.paragraph = Some((pos, end, self.levels.len() + usize::from(bullet > 0))),
        }
    }

    /// A paragraph or heading at `depth` ends the lists of the chapeaus at its depth or deeper.
    fn close_chapeaus(&mut self, depth: usize) {
        while self
            .open
            .last()
            .is_some_and(|&c| self.chapeaus[c].depth >= depth)
        {
            self.open.pop();
        }
    }

    /// Whether `next` (the line after the one at `line_start`) opens a deeper paragraph: it is
    /// indented further, or its enumerator is of a style no open level has.
    fn deeper(&self, line_start: usize, next: Option<&str>) -> bool {
        let Some(next) = next else { return false };
        let indent = |line: &str| line.len() - line.trim_start().len();
        let line = &self.text[line_start..];
        let line = line.split('\n').next().unwrap_or(line);
        if indent(next) > indent(line) {
            return true;
        }
        let next = next.trim_start();
        enumerator(next, bullet_len(next), next.len()).is_some_and(|(label, _)| {
            let style = style_of(label, &self.levels);
            self.levels.iter().all(|level| level.style != style)
        })
    }

    fn push_level(&mut self, label: &'a str) {
        let style = style_of(label, &self.levels);
        if let Some(at) = self.levels.iter().position(|l| l.style == style) {
            self.levels.truncate(at);
        }
        self.levels.push(Level {
            style,
            label,
            heading: None,
        });
    }

    fn flush(&mut self) {
        let Some((start, end, depth)) = self.paragraph.take() else {
            return;
        };
        self.close_chapeaus(depth);
        let chapeau = self.open.last().copied();
        let path: String = self
            .levels
            .iter()
            .map(|l| format!("({})", l.label))
            .collect();
        let heading = self
            .levels
            .iter()
            .rev()
            .find_map(|l| {
                l.heading
                    .filter(|&(s, e)| !is_generic_heading(&self.text[s..e]))
            })
            .or(self.top_heading);
        self.spans.clear();
        split_sentences(self.text, start, end, &mut self.spans);
        if let Some(&(s, e)) = self.spans.last()
            && ends_as_chapeau(&self.text[s..e])
        {
            self.open.push(self.chapeaus.len());
            self.chapeaus.push(Chapeau {
                start: s,
                end: e,
                depth,
                path: path.clone(),
                heading,
            });
        }
        for &(s, e) in &self.spans {
            self.units.push(Unit {
                start: s,
                end: e,
                path: path.clone(),
                heading,
                depth,
                chapeau,
            });
        }
    }
}

/// Length of a leading list marker (`* `, `- `, `+ `, `• `, `1. `, `2) `), else 0.
fn bullet_len(line: &str) -> usize {
    for marker in ["* ", "- ", "+ ", "• "] {
        if let Some(rest) = line.strip_prefix(marker) {
            return line.len() - rest.trim_start().len();
        }
    }
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    if (1..=3).contains(&digits)
        && matches!(line.as_bytes().get(digits), Some(b'.' | b')'))
        && line.as_bytes().get(digits + 1) == Some(&b' ')
    {
        let rest = &line[digits + 2..];
        return digits + 2 + (rest.len() - rest.trim_start().len());
    }
    0
}

/// A paragraph enumerator `(x)` at `pos`: its label and the position after it and its spaces.
fn enumerator(text: &str, pos: usize, end: usize) -> Option<(&str, usize)> {
    let bytes = text.as_bytes();
    if bytes.get(pos) != Some(&b'(') {
        return None;
    }
    let label_len = bytes[pos + 1..end]
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric())
        .count();
    let close = pos + 1 + label_len;
    if !(1..=4).contains(&label_len) || bytes.get(close) != Some(&b')') {
        return None;
    }
    let label = &text[pos + 1..close];
    let mixed =
        label.bytes().any(|b| b.is_ascii_digit()) && label.bytes().any(|b| b.is_ascii_alphabetic());
    if mixed {
        return None;
    }
    let after = close + 1;
    match bytes.get(after) {
        None => Some((label, after)),
        Some(b'(') if after < end => Some((label, after)),
        Some(b) if b.is_ascii_whitespace() => {
            let rest = &text[after..end];
            Some((label, after + (rest.len() - rest.trim_start().len())))
        }
        _ if after >= end => Some((label, after)),
        _ => None,
    }
}

fn is_roman(label: &str) -> bool {
    !label.is_empty()
        && label
            .bytes()
            .all(|b| matches!(b.to_ascii_lowercase(), b'i' | b'v' | b'x' | b'l'))
}

/// The style of an enumerator; `(i)`, `(v)`, `(x)` are letters only right after `(h)`, `(u)`,
/// `(w)` at the same level.
fn style_of(label: &str, levels: &[Level<'_>]) -> Style {
    let first = label.as_bytes()[0];
    if first.is_ascii_digit() {
        return Style::Digit;
    }
    let upper = first.is_ascii_uppercase();
    let (letter, roman) = if upper {
        (Style::Upper, Style::UpperRoman)
    } else {
        (Style::Lower, Style::LowerRoman)
    };
    if !is_roman(label) {
        return letter;
    }
    if label.len() == 1 {
        let previous = match first.to_ascii_lowercase() {
            b'i' => "h",
            b'v' => "u",
            b'x' => "w",
            _ => "",
        };
        let follows_letter = levels
            .iter()
            .any(|l| l.style == letter && l.label.eq_ignore_ascii_case(previous));
        if follows_letter || first.eq_ignore_ascii_case(&b'l') {
            return letter;
        }
    }
    roman
}

/// A short line starting with a capital and ending without punctuation or a function word: a
/// heading.
fn is_heading_line(line: &str) -> bool {
    const OPEN_ENDED: &[&str] = &[
        "a", "an", "and", "by", "for", "in", "of", "on", "or", "the", "to", "with",
    ];
    let starts_upper = line.chars().next().is_some_and(|c| c.is_uppercase());
    let last = line.chars().next_back().unwrap_or('.');
    let last_word = line.split_whitespace().next_back().unwrap_or("");
    starts_upper
        && !matches!(last, '.' | ':' | ';' | ',' | '!' | '?' | '—' | '–' | '-')
        && !OPEN_ENDED.contains(&last_word.to_ascii_lowercase().as_str())
        && line.split_whitespace().count() <= 12
}

/// The heading at `pos`, right after a paragraph's enumerator: the end of its words (before the
/// full stop) and the start of what follows it on the line (`end` if nothing does). Its first
/// sentence is a heading when it names rather than says: it opens neither a clause
/// ([`opens_a_clause`]) nor an instruction ([`opens_as_instruction`]), and
///
/// - run in, followed by the paragraph's text (`Package form. If in package form ...`): its main
///   clause has no verb ([`main_clause_verbs`]), and it is short or a list of topics (`Imports;
///   list of registered foreign establishments; samples ...`), since a long phrase without a
///   verb is rather an item of a list;
/// - alone on its line with deeper paragraphs after it (`deeper_follows`): its main clause has
///   no modal (`Refund of fee if the application is withdrawn, or is no longer received.`).
fn heading_at(text: &str, pos: usize, end: usize, deeper_follows: bool) -> Option<(usize, usize)> {
    let mut spans = Vec::new();
    split_sentences(text, pos, end, &mut spans);
    let &(start, first_end) = spans.first()?;
    let words = text[start..first_end].strip_suffix('.')?;
    if start != pos || opens_a_clause(words) || opens_as_instruction(words) {
        return None;
    }
    let heading = match spans.get(1) {
        Some(_) => {
            let short =
                words.split_whitespace().count() <= MAX_HEADING_WORDS || words.contains(';');
            short && main_clause_verbs(words).next().is_none()
        }
        None => {
            deeper_follows && main_clause_verbs(words).all(|verb| !MODALS.contains(&verb.as_str()))
        }
    };
    heading.then(|| {
        (
            start + words.len(),
            spans.get(1).map_or(end, |&(next, _)| next),
        )
    })
}

/// Modal verbs: a phrase with one in its main clause says what someone shall or may do.
const MODALS: &[&str] = &[
    "can", "could", "may", "might", "must", "shall", "should", "will", "would",
];

/// Whether a phrase starts the way a sentence does and a heading does not: with a determiner
/// (`The`, `Each`), a conjunction (`If`, `Unless`) or an introductory phrase (`In the case of`,
/// `With respect to`), or with a word in lower case.
fn opens_a_clause(phrase: &str) -> bool {
    const OPENERS: &[&str] = &[
        "a ",
        "all ",
        "an ",
        "any ",
        "each ",
        "every ",
        "except ",
        "for ",
        "if ",
        "in a case ",
        "in any ",
        "in the case ",
        "it ",
        "no person ",
        "nothing ",
        "notwithstanding ",
        "subject to ",
        "such ",
        "that ",
        "the ",
        "there ",
        "these ",
        "this ",
        "those ",
        "unless ",
        "upon ",
        "when ",
        "whenever ",
        "where ",
        "whoever ",
        "with respect to ",
    ];
    let lower = phrase.to_lowercase();
    !phrase.starts_with(|c: char| c.is_uppercase() || c.is_ascii_digit())
        || OPENERS.iter().any(|opener| lower.starts_with(opener))
}

/// The finite verbs and modals of a phrase's main clause, lower-cased. A subordinate clause runs
/// from `where`, `which`, `that`, ... to the next comma or to a second verb (not joined to the
/// first by `and`/`or`), which is the main clause's again; an infinitive (`to have been
/// received`) is no finite verb. `Misrepresentation of strength, etc., where drug is unrecognized
/// in compendium` has none; `Witnesses who are not covered by paragraph (a) are entitled ...`
/// has the second `are`; `Manufacturer of implant shall be named a party` has `shall`.
fn main_clause_verbs(phrase: &str) -> impl Iterator<Item = String> + '_ {
    const SUBORDINATORS: &[&str] = &[
        "because", "if", "that", "unless", "until", "when", "whenever", "where", "which", "while",
        "who", "whom", "whose",
    ];
    const FINITE: &[&str] = &[
        "applies", "are", "did", "do", "does", "had", "has", "have", "includes", "is", "means",
        "was", "were",
    ];
    // Whether a subordinate clause is open, and whether it has had its verb.
    let mut subordinate: Option<bool> = None;
    let mut previous = String::new();
    phrase.split_whitespace().filter_map(move |word| {
        let lower = bare(word).to_lowercase();
        let finite = previous != "to"
            && (FINITE.contains(&lower.as_str()) || MODALS.contains(&lower.as_str()));
        let main = match subordinate {
            _ if !finite => false,
            None => true,
            Some(false) => {
                subordinate = Some(true);
                false
            }
            Some(true) if matches!(previous.as_str(), "and" | "or" | "not") => false,
            Some(true) => {
                subordinate = None;
                true
            }
        };
        if SUBORDINATORS.contains(&lower.as_str()) {
            subordinate = Some(false);
        }
        if word.ends_with(',') {
            subordinate = None;
        }
        previous = lower.clone();
        main.then_some(lower)
    })
}

/// Whether a phrase opens like an instruction, a verb and its object (`Prepare the appropriate
/// Environmental Document ...`), rather than a noun or a gerund (`Making a notification`): its
/// second word is a determiner.
fn opens_as_instruction(phrase: &str) -> bool {
    const DETERMINERS: &[&str] = &[
        "a", "all", "an", "any", "each", "every", "her", "his", "its", "such", "the", "their",
        "these", "this",
    ];
    let mut words = phrase
        .split_whitespace()
        .map(|word| bare(word).to_lowercase());
    match (words.next(), words.next()) {
        (Some(first), Some(second)) => {
            !first.ends_with("ing")
                && !first.ends_with("ly")
                && DETERMINERS.contains(&second.as_str())
        }
        _ => false,
    }
}

/// `Repealed.`, `Omitted.`, `Reserved.`, `Transferred.`, with or without a note after it.
fn is_status_note(text: &str) -> bool {
    ["Repealed", "Omitted", "Reserved", "Transferred"]
        .iter()
        .any(|status| {
            text.strip_prefix(status)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        })
}

/// A heading that says nothing of its paragraph's topic (`In general`): questions take the
/// heading above it instead.
fn is_generic_heading(heading: &str) -> bool {
    heading
        .trim_end_matches(['.', '—', '–', '-', ' '])
        .eq_ignore_ascii_case("in general")
}

fn ends_as_chapeau(sentence: &str) -> bool {
    let s = sentence.trim_end();
    s.ends_with(':') || s.ends_with('—') || s.ends_with('–') || s.ends_with(" -")
}

// ---------------------------------------------------------------------------------------------
// Citations and headings
// ---------------------------------------------------------------------------------------------

/// `21 U.S.C. 364a` + `(b)(1)` → `21 U.S.C. 364a(b)(1)`; `Section 2.1 of Policy` + `(a)` →
/// `Section 2.1(a) of Policy`.
fn cite(citation: &str, path: &str) -> String {
    let citation = citation.trim();
    let base = if citation.is_empty() {
        "this section"
    } else {
        citation
    };
    let numbered = |s: &str| {
        s.ends_with(|c: char| c.is_ascii_alphanumeric()) && s.contains(|c: char| c.is_ascii_digit())
    };
    if path.is_empty() {
        base.to_string()
    } else if numbered(base) && !base.contains(" of ") {
        format!("{base}{path}")
    } else if let Some((designation, document)) = base.split_once(" of ")
        && numbered(designation)
        && !designation.contains(" > ")
    {
        format!("{designation}{path} of {document}")
    } else {
        format!("{base}, paragraph {path}")
    }
}

/// The section's own heading, from the last label of its path (`§ 364a. Adverse events`).
fn section_heading(section: &ShardSection) -> Option<String> {
    section
        .section_path
        .last()
        .and_then(|label| clean_heading(label))
}

/// Strip numbering and markup from a heading and lower-case its first letter when it is not an
/// acronym: `2. Scope and Applicability` → `scope and applicability`. Headings that would make a
/// clumsy question topic (empty, over 8 words, joined topics with `;` or `:`, all capitals) give
/// `None`.
fn clean_heading(heading: &str) -> Option<String> {
    let words: Vec<&str> = heading
        .split_whitespace()
        .skip_while(|w| {
            w.contains(|c: char| c.is_ascii_digit() || c == '§') || w.eq_ignore_ascii_case("sec.")
        })
        .collect();
    let mut joined = words.join(" ");
    joined = joined
        .trim_matches(|c: char| matches!(c, '*' | '_' | '.' | ':' | '—' | '–' | '-' | ' '))
        .to_string();
    let shouting = words.len() > 3 && !joined.contains(char::is_lowercase);
    if joined.is_empty() || joined.contains([';', ':']) || words.len() > 8 || shouting {
        return None;
    }
    let mut chars = joined.chars();
    Some(match (chars.next(), chars.next()) {
        (Some(first), Some(second)) if first.is_uppercase() && second.is_lowercase() => {
            let mut out: String = first.to_lowercase().collect();
            out.push_str(&joined[first.len_utf8()..]);
            out
        }
        _ => joined,
    })
}

// ---------------------------------------------------------------------------------------------
// Classification
// ---------------------------------------------------------------------------------------------

/// What a question is built from.
struct Ctx<'a> {
    cite: &'a str,
    heading: Option<&'a str>,
    subsection: bool,
}

impl Ctx<'_> {
    fn regarding(&self, subject: Option<&str>) -> String {
        match subject.or(self.heading) {
            Some(topic) if !topic.is_empty() => format!(" regarding {topic}"),
            _ => String::new(),
        }
    }
}

/// Deterministic specificity: 0.4, plus 0.2 for each of a named actor or term, a subsection-level
/// citation, and a concrete detail (a quantity or a defined term).
fn specificity(actor: bool, ctx: &Ctx<'_>, detail: bool) -> f64 {
    0.4 + 0.2 * f64::from(u8::from(actor) + u8::from(ctx.subsection) + u8::from(detail))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Modal {
    Must,
    Should,
    May,
}

impl Modal {
    fn word(self) -> &'static str {
        match self {
            Modal::Must => "must",
            Modal::Should => "should",
            Modal::May => "may",
        }
    }
}

/// Actor, modal and verb of a rule sentence.
#[derive(Debug, Clone)]
struct Clause {
    subject: Option<String>,
    modal: Modal,
    /// Main verb (with a particle, `comply with`) when the sentence is active and the verb can
    /// stand as a question's last word.
    verb: Option<String>,
    /// A short object after the verb, for threshold questions.
    object: Option<String>,
    /// The modal governs an active verb (`shall submit`), not a passive (`shall be kept`).
    active: bool,
}

#[derive(Debug, Clone)]
enum DefVerb {
    Means,
    Includes,
    Excludes,
    RefersTo,
}

#[derive(Debug, Clone)]
enum Kind {
    Term {
        term: String,
        the_term: bool,
        verb: DefVerb,
    },
    Deemed {
        subject: Option<String>,
        /// `shall be`, `is`, `are`.
        aux: &'static str,
        /// `deemed` or `considered`.
        word: &'static str,
        tail: String,
    },
    Applies {
        subject: Option<String>,
        aux: String,
        negative: bool,
    },
    Exempt {
        subject: Option<String>,
        copula: String,
    },
    Construed {
        subject: Option<String>,
    },
    Unlawful {
        actor: Option<String>,
    },
    /// `No person shall ...`, asked as "what may no person do?".
    NoOne {
        actor: String,
        passive: bool,
    },
    Prohibited {
        clause: Clause,
    },
    Obligation {
        clause: Clause,
        responsible: Option<String>,
    },
    Permission {
        clause: Clause,
    },
    CrossRef {
        reference: String,
    },
}

impl Kind {
    fn qtype(&self) -> QuestionType {
        match self {
            Kind::Term { .. } | Kind::Deemed { .. } => QuestionType::Definition,
            Kind::Applies { .. } | Kind::Exempt { .. } | Kind::Construed { .. } => {
                QuestionType::Scope
            }
            Kind::Unlawful { .. } | Kind::NoOne { .. } | Kind::Prohibited { .. } => {
                QuestionType::Prohibition
            }
            Kind::Obligation { .. } => QuestionType::Obligation,
            Kind::Permission { .. } => QuestionType::Permission,
            Kind::CrossRef { .. } => QuestionType::CrossReference,
        }
    }

    fn clause(&self) -> Option<&Clause> {
        match self {
            Kind::Prohibited { clause, .. }
            | Kind::Obligation { clause, .. }
            | Kind::Permission { clause } => Some(clause),
            _ => None,
        }
    }

    fn specificity(&self, ctx: &Ctx<'_>, quantity: bool) -> f64 {
        let (actor, detail) = match self {
            Kind::Term { .. } => (true, true),
            Kind::Deemed { subject, .. }
            | Kind::Applies { subject, .. }
            | Kind::Exempt { subject, .. }
            | Kind::Construed { subject } => (subject.is_some(), quantity),
            Kind::Unlawful { actor } => (actor.is_some(), quantity),
            Kind::NoOne { .. } => (true, quantity),
            Kind::Prohibited { clause, .. }
            | Kind::Obligation { clause, .. }
            | Kind::Permission { clause } => (clause.subject.is_some(), quantity),
            Kind::CrossRef { .. } => (false, true),
        };
        specificity(actor, ctx, detail)
    }

    fn question(&self, ctx: &Ctx<'_>) -> String {
        let cite = ctx.cite;
        match self {
            Kind::Term {
                term,
                the_term,
                verb,
            } => {
                let named = if *the_term {
                    format!("the term \"{term}\"")
                } else {
                    format!("\"{term}\"")
                };
                let verb = match verb {
                    DefVerb::Means => "mean",
                    DefVerb::Includes => "include",
                    DefVerb::Excludes => "not include",
                    DefVerb::RefersTo => "refer to",
                };
                format!("Under {cite}, what does {named} {verb}?")
            }
            Kind::Deemed {
                subject,
                aux,
                word,
                tail,
            } => match (subject, *aux) {
                (Some(s), "shall be") => {
                    format!("Under {cite}, when shall {s} be {word} {tail}?")
                }
                (Some(s), aux) => format!("Under {cite}, when {aux} {s} {word} {tail}?"),
                (None, _) => format!("Under {cite}, what is {word} {tail}?"),
            },
            Kind::Applies {
                subject,
                aux,
                negative,
            } => match (subject, negative) {
                (Some(s), false) if aux == "is" => {
                    format!("Under {cite}, to what is {s} applicable?")
                }
                (Some(s), true) if aux == "is" => {
                    format!("Under {cite}, to what is {s} not applicable?")
                }
                (Some(s), false) => format!("Under {cite}, to what {aux} {s} apply?"),
                (Some(s), true) => format!("Under {cite}, to what {aux} {s} not apply?"),
                (None, false) => format!("What is the scope of {cite}?"),
                (None, true) => format!("What does {cite} exclude from its scope?"),
            },
            Kind::Exempt { subject, copula } => match subject {
                Some(s) if copula == "shall be" => {
                    format!("Under {cite}, what shall {s} be exempt from?")
                }
                Some(s) => format!("Under {cite}, what {copula} {s} exempt from?"),
                None => format!("What is exempt under {cite}?"),
            },
            Kind::Construed { subject } => match subject {
                Some(s) => format!("Under {cite}, how may {s} not be construed?"),
                None => format!("What rule of construction does {cite} state?"),
            },
            Kind::Unlawful { actor } => match actor {
                Some(a) => format!("Under {cite}, what is it unlawful for {a} to do?"),
                None => format!("What is unlawful under {cite}?"),
            },
            Kind::NoOne { actor, passive } => {
                if *passive {
                    format!("Under {cite}, what restriction applies to any {actor}?")
                } else {
                    format!("Under {cite}, what may no {actor} do?")
                }
            }
            Kind::Prohibited { clause } => match (&clause.subject, clause.active) {
                (Some(s), true) => format!(
                    "Under {cite}, what {} {s} not {}?",
                    clause.modal.word(),
                    clause.verb.as_deref().unwrap_or("do")
                ),
                (Some(s), false) => format!("Under {cite}, what restriction applies to {s}?"),
                (None, _) => format!("What does {cite} prohibit{}?", ctx.regarding(None)),
            },
            Kind::Obligation {
                clause,
                responsible,
            } => match (&clause.subject, responsible, &clause.verb) {
                (Some(s), Some(copula), _) => {
                    format!("Under {cite}, what {copula} {s} responsible for?")
                }
                (Some(s), None, Some(verb)) => {
                    format!("Under {cite}, what {} {s} {verb}?", clause.modal.word())
                }
                (Some(s), None, None) if clause.active => {
                    format!("Under {cite}, what {} {s} do?", clause.modal.word())
                }
                (Some(s), None, None) => match clause.modal {
                    Modal::Should => format!("Under {cite}, what is recommended regarding {s}?"),
                    _ => format!("Under {cite}, what is required regarding {s}?"),
                },
                (None, _, _) => match clause.modal {
                    Modal::Should => {
                        format!("What does {cite} recommend{}?", ctx.regarding(None))
                    }
                    _ => format!("What does {cite} require{}?", ctx.regarding(None)),
                },
            },
            Kind::Permission { clause } => match (&clause.subject, &clause.verb) {
                (Some(s), Some(verb)) => format!("Under {cite}, what may {s} {verb}?"),
                (Some(s), None) if clause.active => format!("Under {cite}, what may {s} do?"),
                (Some(s), None) => format!("Under {cite}, what is permitted regarding {s}?"),
                (None, _) => format!("What does {cite} permit{}?", ctx.regarding(None)),
            },
            Kind::CrossRef { reference } => {
                format!("What does {cite} provide with respect to {reference}?")
            }
        }
    }
}

/// Classify one sentence (`lower` is its ASCII-lower-cased copy, same byte offsets).
/// `chapeau`: the sentence introduces a list, so conditions may sit in the items.
fn classify(s: &str, lower: &str, chapeau: bool) -> Option<Kind> {
    definition(s, lower, chapeau)
        .or_else(|| scope(s, lower))
        .or_else(|| prohibition(s, lower))
        .or_else(|| obligation(s, lower))
        .or_else(|| permission(s, lower))
        .or_else(|| cross_reference(s, lower))
}

/// Occurrences of `phrase` in `lower` at word boundaries.
fn phrase_positions<'a>(lower: &'a str, phrase: &'a str) -> impl Iterator<Item = usize> + 'a {
    lower
        .match_indices(phrase)
        .map(|(p, _)| p)
        .filter(move |&p| {
            let before = lower[..p].chars().next_back();
            let after = lower[p + phrase.len()..].chars().next();
            !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
        })
}

fn find_phrase(lower: &str, phrase: &str) -> Option<usize> {
    phrase_positions(lower, phrase).next()
}

/// Words with their byte offsets.
fn words_at(text: &str, from: usize) -> impl Iterator<Item = (usize, &str)> + '_ {
    text[from..]
        .split_whitespace()
        .map(move |w| (w.as_ptr() as usize - text.as_ptr() as usize, w))
}

fn bare(word: &str) -> &str {
    word.trim_matches(|c: char| !c.is_alphanumeric())
}

const DETERMINERS: &[&str] = &[
    "a", "all", "an", "any", "each", "every", "its", "no", "such", "that", "the", "their", "these",
    "this", "those",
];

/// Adverbs that may stand between a modal and its verb, or before a subject.
const ADVERBS: &[&str] = &[
    "accordingly",
    "additionally",
    "also",
    "even",
    "further",
    "furthermore",
    "generally",
    "hereafter",
    "however",
    "instead",
    "moreover",
    "nevertheless",
    "now",
    "probably",
    "still",
    "then",
    "thereafter",
    "therefore",
    "thus",
];

const NOT_A_SUBJECT_START: &[&str] = &[
    "after",
    "either",
    "neither",
    "no",
    "none",
    "nothing",
    "also",
    "although",
    "and",
    "as",
    "at",
    "because",
    "before",
    "but",
    "by",
    "during",
    "except",
    "for",
    "from",
    "he",
    "how",
    "if",
    "in",
    "it",
    "nor",
    "not",
    "notwithstanding",
    "on",
    "once",
    "or",
    "otherwise",
    "she",
    "so",
    "subject",
    "then",
    "there",
    "thereafter",
    "they",
    "though",
    "to",
    "under",
    "unless",
    "until",
    "upon",
    "what",
    "when",
    "where",
    "whether",
    "which",
    "while",
    "who",
    "with",
    "within",
];

const NOT_IN_SUBJECT: &[&str] = &[
    "if", "is", "are", "that", "unless", "when", "where", "which", "who", "whom", "whose",
];

/// A short noun phrase that can stand as a question's actor, from the text before a verb: the
/// last comma-separated segment that is one, skipping parentheticals (`the Secretary, acting
/// through the Commissioner, shall`; `Not later than 1 year after ..., the Secretary shall`) but
/// not lists (`manufacturers, packers, and distributors shall` has no single actor).
fn subject_before(s: &str, end: usize) -> Option<String> {
    for segment in s[..end].trim().rsplit(", ") {
        let segment = segment.trim().trim_end_matches(',');
        let Some(first) = segment.split_whitespace().next() else {
            continue;
        };
        let first = first.to_ascii_lowercase();
        if first == "and" || first == "or" {
            return None;
        }
        if let Some(np) = noun_phrase(segment) {
            return Some(np);
        }
        let parenthetical = first.ends_with("ing")
            || NOT_A_SUBJECT_START.contains(&first.as_str())
            || ADVERBS.contains(&first.as_str());
        if !parenthetical {
            return None;
        }
    }
    None
}

fn noun_phrase(text: &str) -> Option<String> {
    let text = text.trim();
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() || words.len() > 8 {
        return None;
    }
    if text.contains([
        '(', ')', ',', ';', ':', '"', '“', '”', '[', ']', '*', '_', '—', '–', '<', '>', '?',
    ]) {
        return None;
    }
    let first = words[0].to_ascii_lowercase();
    // `acting through the Commissioner` is a participle clause; `Labeling` alone is a noun.
    let participle = first.ends_with("ing")
        && words.get(1).is_some_and(|w| {
            let w = w.to_ascii_lowercase();
            DETERMINERS.contains(&w.as_str()) || PREPOSITIONS.contains(&w.as_str())
        });
    if participle
        || NOT_A_SUBJECT_START.contains(&first.as_str())
        || ADVERBS.contains(&first.as_str())
        || words
            .iter()
            .any(|w| NOT_IN_SUBJECT.contains(&w.to_ascii_lowercase().as_str()))
        || (words.len() == 1 && DETERMINERS.contains(&first.as_str()))
        || !words[0].starts_with(|c: char| c.is_alphanumeric())
    {
        return None;
    }
    let acronym = words[0].chars().all(|c| !c.is_lowercase());
    let common_second = words
        .get(1)
        .is_some_and(|w| w.starts_with(|c: char| c.is_lowercase()));
    let lower_first = DETERMINERS.contains(&first.as_str())
        || matches!(first.as_str(), "you" | "we")
        || (common_second && !acronym);
    let mut out = String::with_capacity(text.len());
    if lower_first {
        out.push_str(&first);
    } else {
        out.push_str(words[0]);
    }
    for w in &words[1..] {
        out.push(' ');
        out.push_str(w);
    }
    Some(out.trim_end_matches(['.', ',']).to_string())
}

const PARTICLE_ALWAYS: &[&str] = &["with", "for", "upon"];
const TAKES_TO: &[&str] = &[
    "adhere",
    "agree",
    "apply",
    "conform",
    "consent",
    "contribute",
    "object",
    "refer",
    "respond",
];
const TAKES_IN: &[&str] = &["engage", "participate", "invest"];
const DITRANSITIVE: &[&str] = &[
    "deliver", "disclose", "furnish", "give", "issue", "make", "pay", "provide", "report", "send",
    "submit", "transmit",
];
const PREPOSITIONS: &[&str] = &[
    "about",
    "according",
    "after",
    "against",
    "as",
    "at",
    "before",
    "by",
    "during",
    "from",
    "if",
    "in",
    "into",
    "no",
    "not",
    "of",
    "on",
    "only",
    "over",
    "so",
    "through",
    "to",
    "under",
    "unless",
    "until",
    "when",
    "where",
    "whether",
    "which",
    "who",
    "within",
    "without",
];
const OBJECT_STOPS: &[&str] = &[
    "about",
    "after",
    "and",
    "or",
    "among",
    "between",
    "concerning",
    "pursuant",
    "regarding",
    "than",
    "through",
    "without",
    "as",
    "at",
    "before",
    "by",
    "during",
    "for",
    "from",
    "if",
    "in",
    "including",
    "into",
    "no",
    "not",
    "of",
    "on",
    "that",
    "to",
    "under",
    "unless",
    "upon",
    "when",
    "where",
    "which",
    "who",
    "with",
    "within",
];

/// Analyse the clause around a modal occurrence at `modal_start..modal_end` (lower-case offsets).
fn clause_at(s: &str, modal_start: usize, modal_end: usize, modal: Modal) -> Clause {
    let subject = subject_before(s, modal_start);
    let mut words = words_at(s, modal_end)
        .map(|(_, w)| w)
        .skip_while(|w| {
            let w = bare(w).to_ascii_lowercase();
            w == "not" || ADVERBS.contains(&w.as_str()) || (w.ends_with("ly") && w.len() > 4)
        })
        .peekable();
    let mut verb = None;
    let mut object = None;
    let mut active = false;
    if let Some(raw) = words.next() {
        let v = raw.to_ascii_lowercase();
        let clean = v.len() >= 2 && v.bytes().all(|b| b.is_ascii_lowercase());
        let function_word = matches!(v.as_str(), "be" | "been" | "have" | "not")
            || PREPOSITIONS.contains(&v.as_str())
            || DETERMINERS.contains(&v.as_str());
        active = clean && !function_word;
        if active {
            let next_raw = words.peek().copied();
            let next = next_raw.map(|n| bare(n).to_ascii_lowercase());
            let ends_sentence = next_raw.is_none() || raw.ends_with([',', ';', '.']);
            match next.as_deref() {
                _ if ends_sentence => {}
                Some(p)
                    if PARTICLE_ALWAYS.contains(&p)
                        || (p == "to" && TAKES_TO.contains(&v.as_str()))
                        || (p == "in" && TAKES_IN.contains(&v.as_str())) =>
                {
                    verb = Some(format!("{v} {p}"));
                }
                Some("that" | "whether") => verb = Some(v.clone()),
                Some("to") if DITRANSITIVE.contains(&v.as_str()) => {
                    verb = Some(v.clone());
                    words.next();
                    // Skip the indirect object (`to the Secretary`) up to the direct object.
                    let mut skipped = 0;
                    while let Some(w) = words.peek() {
                        let w = bare(w).to_ascii_lowercase();
                        if skipped > 0 && DETERMINERS.contains(&w.as_str()) && w != "the" {
                            break;
                        }
                        words.next();
                        skipped += 1;
                        if skipped > 5 {
                            break;
                        }
                    }
                    object = object_phrase(&mut words);
                }
                Some(p) if PREPOSITIONS.contains(&p) => {}
                Some(_) => {
                    verb = Some(v.clone());
                    object = object_phrase(&mut words);
                }
                None => {}
            }
        }
    }
    Clause {
        subject,
        modal,
        verb,
        object,
        active,
    }
}

/// A short object noun phrase: up to 6 words, stopping at punctuation, prepositions and
/// participles.
fn object_phrase<'a>(words: &mut impl Iterator<Item = &'a str>) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for raw in words {
        let w = bare(raw);
        let lower = w.to_ascii_lowercase();
        if w.is_empty()
            || OBJECT_STOPS.contains(&lower.as_str())
            || (!out.is_empty() && lower.ends_with("ed"))
            || !w.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-')
        {
            break;
        }
        out.push(w);
        if out.len() > 6 || raw.ends_with([',', ';', ':', '.']) {
            break;
        }
    }
    while out
        .last()
        .is_some_and(|w| DETERMINERS.contains(&w.to_ascii_lowercase().as_str()))
    {
        out.pop();
    }
    (!out.is_empty() && out.len() <= 6).then(|| out.join(" "))
}

fn definition(s: &str, lower: &str, chapeau: bool) -> Option<Kind> {
    // `**Term:** text` glossary entries.
    if let Some(rest) = s.strip_prefix("**")
        && let Some(close) = rest.find(":**").or_else(|| rest.find("**:"))
        && close > 0
        && close <= 80
    {
        return Some(Kind::Term {
            term: rest[..close].trim().to_string(),
            the_term: false,
            verb: DefVerb::Means,
        });
    }
    if let Some(kind) = term_definition(s, lower) {
        return Some(kind);
    }
    // `X means ...` / `"X" means ...`.
    if let Some(at) = find_phrase(lower, "means")
        && let Some(next) = lower[at + 5..].split_whitespace().next()
        && !matches!(
            bare(next),
            "of" | "by" | "for" | "to" | "may" | "shall" | "must" | "is" | "are" | "will" | "that"
        )
    {
        let before = s[..at].trim_end();
        let candidate = before.rsplit(',').next().unwrap_or(before).trim();
        let stripped =
            candidate.trim_matches(|c: char| matches!(c, '"' | '“' | '”' | '*' | '_' | '\''));
        if !stripped.is_empty()
            && stripped.split_whitespace().count() <= 6
            && let Some(term) = noun_phrase(stripped)
            && !matches!(
                term.to_ascii_lowercase().as_str(),
                "this" | "that" | "it" | "which" | "what" | "such"
            )
        {
            return Some(Kind::Term {
                term: stripped.to_string(),
                the_term: false,
                verb: DefVerb::Means,
            });
        }
    }
    deemed(s, lower, chapeau)
}

/// `the term "X" means ...`, `the term X includes ...`.
fn term_definition(s: &str, lower: &str) -> Option<Kind> {
    const VERBS: &[(&str, DefVerb)] = &[
        ("does not include", DefVerb::Excludes),
        ("shall not include", DefVerb::Excludes),
        ("means", DefVerb::Means),
        ("shall mean", DefVerb::Means),
        ("has the meaning", DefVerb::Means),
        ("is defined as", DefVerb::Means),
        ("includes", DefVerb::Includes),
        ("shall include", DefVerb::Includes),
        ("refers to", DefVerb::RefersTo),
    ];
    let first_verb = |from: usize| {
        VERBS
            .iter()
            .filter_map(|(p, v)| {
                phrase_positions(lower, p)
                    .find(|&at| at >= from)
                    .map(|at| (at, v.clone()))
            })
            .min_by_key(|(at, _)| *at)
    };
    let at = find_phrase(lower, "the term")?;
    let rest = s[at + "the term".len()..].trim_start();
    let rest_at = s.len() - rest.len();
    let (term, term_end) = match rest.chars().next() {
        Some(open @ ('"' | '“' | '\'' | '‘')) => {
            let close = match open {
                '“' => '”',
                '‘' => '’',
                other => other,
            };
            let inner = &rest[open.len_utf8()..];
            let end = inner.find(close)?;
            let term = inner[..end].trim_end_matches([',', '.']).to_string();
            (term, rest_at + open.len_utf8() + end + close.len_utf8())
        }
        _ => {
            let (verb_at, _) = first_verb(rest_at)?;
            (s[rest_at..verb_at].trim().to_string(), verb_at)
        }
    };
    let (verb_at, verb) = first_verb(term_end)?;
    (verb_at - term_end <= 300 && term.split_whitespace().count() <= 8).then_some(Kind::Term {
        term,
        the_term: true,
        verb,
    })
}

/// `X shall be deemed Y if ...`: a legal fiction, asked as "when".
fn deemed(s: &str, lower: &str, chapeau: bool) -> Option<Kind> {
    let (at, word) = ["deemed", "considered"]
        .iter()
        .filter_map(|w| find_phrase(lower, w).map(|at| (at, *w)))
        .min_by_key(|(at, _)| *at)?;
    let head = lower[..at].trim_end();
    let aux = ["shall be", "is", "are"]
        .into_iter()
        .find(|aux| head.ends_with(&format!(" {aux}")))?;
    let tail_words: Vec<&str> = s[at + word.len()..]
        .split_whitespace()
        .take_while(|w| {
            !matches!(
                bare(w).to_ascii_lowercase().as_str(),
                "if" | "unless" | "when" | "where" | "for" | "in" | "by" | "under" | "with"
            )
        })
        .take(9)
        .collect();
    let mut tail = tail_words.join(" ");
    let cut = tail
        .find(['—', '–', ',', ';', ':', '.'])
        .unwrap_or(tail.len());
    tail.truncate(cut);
    let mut tail = tail.trim();
    while let Some((rest, last)) = tail.rsplit_once(' ')
        && matches!(last, "and" | "or" | "a" | "an" | "the" | "of" | "to")
    {
        tail = rest.trim_end();
    }
    let tail = tail.to_string();
    let conditional = ["if", "unless", "when", "where", "in the case of"]
        .iter()
        .any(|c| phrase_positions(lower, c).any(|p| p > at));
    if tail.is_empty() || tail.split_whitespace().count() > 8 || !(conditional || chapeau) {
        return None;
    }
    Some(Kind::Deemed {
        subject: subject_before(s, head.len() - aux.len()),
        aux,
        word,
        tail,
    })
}

fn scope(s: &str, lower: &str) -> Option<Kind> {
    const APPLY: &[(&str, &str, bool)] = &[
        ("shall not apply", "shall", true),
        ("does not apply", "does", true),
        ("do not apply", "do", true),
        ("will not apply", "will", true),
        ("is not applicable", "is", true),
        ("shall apply", "shall", false),
        ("applies", "does", false),
        ("apply to", "do", false),
        ("is applicable", "is", false),
    ];
    let has_modal = ["shall", "must", "may"]
        .iter()
        .any(|m| find_phrase(lower, m).is_some());
    for (phrase, aux, negative) in APPLY {
        if let Some(at) = find_phrase(lower, phrase) {
            let word_before = lower[..at].split_whitespace().next_back().unwrap_or("");
            if matches!(
                word_before,
                "which" | "that" | "who" | "whom" | "it" | "may" | "to"
            ) {
                continue;
            }
            let subject = subject_before(s, at);
            if subject.is_none() && has_modal && !negative {
                return None;
            }
            return Some(Kind::Applies {
                subject,
                aux: aux.to_string(),
                negative: *negative,
            });
        }
    }
    for (phrase, copula) in [
        ("shall be exempt from", "shall be"),
        ("is exempt from", "is"),
        ("are exempt from", "are"),
    ] {
        if let Some(at) = find_phrase(lower, phrase) {
            return Some(Kind::Exempt {
                subject: subject_before(s, at),
                copula: copula.to_string(),
            });
        }
    }
    for phrase in [
        "shall not be construed",
        "may not be construed",
        "shall be construed",
    ] {
        if let Some(at) = find_phrase(lower, phrase) {
            let head = s[..at].trim();
            let negated = head.starts_with("Nothing") || head.starts_with("No ");
            let subject = if let Some(rest) = head.strip_prefix("Nothing in ") {
                noun_phrase(rest)
            } else if let Some(rest) = head.strip_prefix("No ") {
                noun_phrase(rest).map(|np| format!("any {np}"))
            } else if phrase.contains("not") {
                subject_before(s, at)
            } else {
                None
            };
            if !phrase.contains("not") && !negated {
                return None;
            }
            return Some(Kind::Construed { subject });
        }
    }
    None
}

/// A prohibition without a usable actor: asked as "What does ... prohibit?".
fn generic_prohibition() -> Kind {
    Kind::Prohibited {
        clause: Clause {
            subject: None,
            modal: Modal::Must,
            verb: None,
            object: None,
            active: false,
        },
    }
}

fn prohibition(s: &str, lower: &str) -> Option<Kind> {
    // `Nothing in this section shall alter ...`: what this section may not do.
    if let Some(rest) = s.strip_prefix("Nothing in ") {
        for modal in ["shall", "may", "must"] {
            if let Some(at) = find_phrase(lower, modal) {
                let mut clause = clause_at(s, at, at + modal.len(), Modal::May);
                clause.subject = noun_phrase(&rest[..at - "Nothing in ".len()]);
                return Some(Kind::Prohibited { clause });
            }
        }
    }
    // `It is unlawful for X to ...`
    for phrase in ["it is unlawful", "it shall be unlawful", "it is prohibited"] {
        if let Some(at) = find_phrase(lower, phrase) {
            let rest = &lower[at + phrase.len()..];
            let actor = rest
                .trim_start()
                .strip_prefix("for ")
                .and_then(|r| r.find(" to ").map(|to| (r, to)))
                .and_then(|(r, to)| {
                    let offset = lower.len() - r.len();
                    noun_phrase(s[offset..offset + to].trim_end_matches(['—', '–', ',', ' ']))
                });
            return Some(Kind::Unlawful { actor });
        }
    }
    // `No person shall ...`, `No drug may ...`
    if lower.starts_with("no ")
        && let Some((at, modal)) = ["shall", "may", "must"]
            .into_iter()
            .filter_map(|m| find_phrase(lower, m).map(|at| (at, m)))
            .min_by_key(|(at, _)| *at)
    {
        let next = lower[at + modal.len()..]
            .split_whitespace()
            .next()
            .unwrap_or("");
        return Some(match noun_phrase(&s[3..at]) {
            Some(actor) => Kind::NoOne {
                actor,
                passive: next == "be",
            },
            // `No person, firm, or corporation shall ...`: still a prohibition.
            None => generic_prohibition(),
        });
    }
    for (phrase, modal) in [
        ("shall not", Modal::Must),
        ("must not", Modal::Must),
        ("may not", Modal::May),
        ("is prohibited from", Modal::Must),
        ("are prohibited from", Modal::Must),
    ] {
        for at in phrase_positions(lower, phrase) {
            let next = lower[at + phrase.len()..]
                .split_whitespace()
                .map(bare)
                .take(2)
                .collect::<Vec<_>>();
            // Limits (`may not exceed 5 percent`) are thresholds; `apply`/`construed` are scope.
            if matches!(
                next.first().copied(),
                Some("exceed" | "apply" | "affect" | "limit")
            ) || next.get(1).is_some_and(|w| *w == "construed")
            {
                continue;
            }
            let word_before = lower[..at].split_whitespace().next_back().unwrap_or("");
            if matches!(word_before, "which" | "that" | "who") {
                continue;
            }
            let mut clause = clause_at(s, at, at + phrase.len(), modal);
            if phrase.ends_with("from") {
                clause.verb = None;
            }
            return Some(Kind::Prohibited { clause });
        }
    }
    for phrase in [
        "is prohibited",
        "are prohibited",
        "shall be prohibited",
        "is forbidden",
    ] {
        if find_phrase(lower, phrase).is_some() {
            return Some(generic_prohibition());
        }
    }
    None
}

fn obligation(s: &str, lower: &str) -> Option<Kind> {
    const PHRASES: &[(&str, Modal)] = &[
        ("shall", Modal::Must),
        ("must", Modal::Must),
        ("is required to", Modal::Must),
        ("are required to", Modal::Must),
        ("should", Modal::Should),
        ("is expected to", Modal::Should),
        ("are expected to", Modal::Should),
    ];
    let found = PHRASES
        .iter()
        .filter_map(|(p, m)| {
            phrase_positions(lower, p)
                .find(|&at| {
                    let before = lower[..at].split_whitespace().next_back().unwrap_or("");
                    !matches!(before, "which" | "who" | "that" | "as")
                })
                .map(|at| (at, p.len(), *m))
        })
        .min_by_key(|(at, _, _)| *at);
    if let Some((at, len, modal)) = found {
        return Some(Kind::Obligation {
            clause: clause_at(s, at, at + len, modal),
            responsible: None,
        });
    }
    for (phrase, copula) in [("is responsible for", "is"), ("are responsible for", "are")] {
        if let Some(at) = find_phrase(lower, phrase) {
            let mut clause = clause_at(s, at, at + phrase.len(), Modal::Must);
            clause.verb = None;
            return Some(Kind::Obligation {
                responsible: Some(copula.to_string()),
                clause,
            });
        }
    }
    None
}

/// Verbs after `may` that state a possibility, not a permission.
const POSSIBILITY: &[&str] = &[
    "affect", "appear", "arise", "become", "cause", "contain", "differ", "exist", "happen", "lead",
    "occur", "render", "result", "seem", "vary",
];

fn permission(s: &str, lower: &str) -> Option<Kind> {
    for at in phrase_positions(lower, "may") {
        let before = lower[..at].split_whitespace().next_back().unwrap_or("");
        if matches!(
            before,
            "which" | "that" | "who" | "it" | "there" | "as" | "case" | "you" | "they" | "we"
        ) {
            continue;
        }
        let next = lower[at + 3..].split_whitespace().next().unwrap_or("");
        // `may not` is a prohibition, `May 4, 2016` a date, `may result` a possibility.
        if next == "not"
            || next.starts_with(|c: char| c.is_ascii_digit())
            || POSSIBILITY.contains(&bare(next))
        {
            continue;
        }
        let mut clause = clause_at(s, at, at + 3, Modal::May);
        if next == "be" {
            clause.verb = None;
        }
        return Some(Kind::Permission { clause });
    }
    for phrase in [
        "is authorized to",
        "are authorized to",
        "is permitted to",
        "are permitted to",
    ] {
        if let Some(at) = find_phrase(lower, phrase) {
            return Some(Kind::Permission {
                clause: clause_at(s, at, at + phrase.len(), Modal::May),
            });
        }
    }
    None
}

/// `section 201(g)`, `§ 1.3`, `paragraph (b) of this section`, `part 12`, `subpart B`.
fn cross_reference(s: &str, lower: &str) -> Option<Kind> {
    const KEYS: &[&str] = &[
        "section ",
        "sections ",
        "§§ ",
        "§ ",
        "subsection ",
        "paragraph ",
        "subparagraph ",
        "clause ",
        "part ",
        "subpart ",
        "chapter ",
    ];
    let (at, key) = KEYS
        .iter()
        .filter_map(|k| {
            lower
                .match_indices(k)
                .map(|(p, _)| p)
                .find(|&p| {
                    let next = lower[p + k.len()..].chars().next();
                    let boundary = !lower[..p]
                        .chars()
                        .next_back()
                        .is_some_and(char::is_alphanumeric);
                    boundary
                        && next.is_some_and(|c| {
                            c.is_ascii_digit()
                                || c == '('
                                || (*k == "subpart " && c.is_ascii_alphabetic())
                        })
                })
                .map(|p| (p, *k))
        })
        .min_by_key(|(p, _)| *p)?;
    let start = at;
    let ident_start = at + key.len();
    let ident_len = s[ident_start..]
        .find(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | ':'))
        .unwrap_or(s.len() - ident_start);
    let mut end = ident_start + ident_len;
    // Drop a sentence's closing period or an unbalanced closing parenthesis.
    while end > ident_start {
        let ident = &s[ident_start..end];
        let unbalanced = ident.matches(')').count() > ident.matches('(').count();
        if ident.ends_with('.') || (ident.ends_with(')') && unbalanced) {
            end -= 1;
        } else {
            break;
        }
    }
    if end == ident_start {
        return None;
    }
    for suffix in [
        " of this title",
        " of this chapter",
        " of this part",
        " of this section",
        " of this subchapter",
        " of this Act",
    ] {
        if s[end..].starts_with(suffix) {
            end += suffix.len();
            break;
        }
    }
    Some(Kind::CrossRef {
        reference: s[start..end].to_string(),
    })
}

// ---------------------------------------------------------------------------------------------
// Quantities
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Quantity {
    /// A duration, with its plural unit for `how many` questions (`business days`).
    Time {
        unit: String,
        lead: Lead,
    },
    Money,
    Percent,
    Date,
    Measure,
}

/// The words before a duration: a deadline (`within`, `not later than`) or a period (`for a
/// period of`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lead {
    Within,
    Period,
    Other,
}

const MONTHS: &[&str] = &[
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

const NUMBER_WORDS: &[&str] = &[
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "fifteen",
    "twenty",
    "thirty",
    "forty",
    "forty-five",
    "sixty",
    "ninety",
    "hundred",
];

const TIME_UNITS: &[(&str, &str)] = &[
    ("day", "days"),
    ("days", "days"),
    ("week", "weeks"),
    ("weeks", "weeks"),
    ("month", "months"),
    ("months", "months"),
    ("year", "years"),
    ("years", "years"),
    ("hour", "hours"),
    ("hours", "hours"),
    ("minute", "minutes"),
    ("minutes", "minutes"),
];

const MEASURE_UNITS: &[&str] = &[
    "gallons",
    "grams",
    "inches",
    "kilograms",
    "liters",
    "meters",
    "mg",
    "micrograms",
    "miles",
    "milligrams",
    "milliliters",
    "ml",
    "ounces",
    "pounds",
    "ppm",
    "feet",
    "degrees",
];

fn is_number(word: &str) -> bool {
    let w = word.trim_end_matches([',', '.', ';', ':', ')']);
    (!w.is_empty()
        && w.bytes().next().is_some_and(|b| b.is_ascii_digit())
        && w.bytes()
            .all(|b| b.is_ascii_digit() || b == b',' || b == b'.'))
        || NUMBER_WORDS.contains(&w)
}

/// The first quantity in a sentence (`lower` is lower-cased).
fn quantity(lower: &str) -> Option<Quantity> {
    let words: Vec<&str> = lower.split_whitespace().collect();
    for (i, raw) in words.iter().enumerate() {
        let next = words.get(i + 1).map_or("", |n| bare(n));
        if raw.starts_with('$') && raw[1..].starts_with(|c: char| c.is_ascii_digit()) {
            return Some(Quantity::Money);
        }
        let is_day = |w: &str| w.parse::<u8>().is_ok_and(|d| (1..=31).contains(&d));
        let is_year = |w: &str| w.len() == 4 && w.parse::<u16>().is_ok();
        let month = bare(raw);
        if MONTHS.contains(&month)
            && is_day(next)
            && words.get(i + 2).is_some_and(|y| is_year(bare(y)))
        {
            return Some(Quantity::Date);
        }
        let token = raw.trim_end_matches([',', '.', ';', ':', ')']);
        if token
            .strip_suffix('%')
            .is_some_and(|n| is_number(n.trim_start_matches('(')))
        {
            return Some(Quantity::Percent);
        }
        // A number ending a clause (`paragraph 5,`) has no unit after it.
        if !is_number(token.trim_start_matches('(')) || token.len() != raw.len() {
            continue;
        }
        let after_next = words.get(i + 2).map_or("", |n| bare(n));
        if next == "percent" || (next == "per" && after_next == "centum") {
            return Some(Quantity::Percent);
        }
        let qualified = matches!(next, "business" | "calendar" | "working");
        let unit_word = if qualified { after_next } else { next };
        if let Some((_, plural)) = TIME_UNITS.iter().find(|(u, _)| *u == unit_word) {
            let unit = if qualified && *plural == "days" {
                format!("{next} days")
            } else {
                plural.to_string()
            };
            return Some(Quantity::Time {
                unit,
                lead: lead(&words[i.saturating_sub(3)..i]),
            });
        }
        if next == "dollars" {
            return Some(Quantity::Money);
        }
        if MEASURE_UNITS.contains(&next) {
            return Some(Quantity::Measure);
        }
    }
    None
}

fn lead(before: &[&str]) -> Lead {
    let before: Vec<&str> = before.iter().map(|w| bare(w)).collect();
    let joined = before.join(" ");
    if joined.ends_with("within")
        || joined.ends_with("later than")
        || joined.ends_with("before the end of")
    {
        Lead::Within
    } else if joined.ends_with("period of") || joined.ends_with("for") {
        Lead::Period
    } else {
        Lead::Other
    }
}

impl Quantity {
    fn question(&self, ctx: &Ctx<'_>, clause: Option<&Clause>) -> String {
        let cite = ctx.cite;
        if let Quantity::Time { unit, lead } = self
            && let Some(Clause {
                subject: Some(subject),
                modal,
                verb: Some(verb),
                object,
                ..
            }) = clause
        {
            let object = object.as_ref().map(|o| format!(" {o}")).unwrap_or_default();
            let modal = modal.word();
            match lead {
                Lead::Within => {
                    return format!(
                        "Under {cite}, within how many {unit} {modal} {subject} {verb}{object}?"
                    );
                }
                Lead::Period if !object.is_empty() || verb.contains(' ') => {
                    return format!(
                        "Under {cite}, for how many {unit} {modal} {subject} {verb}{object}?"
                    );
                }
                _ => {}
            }
        }
        let what = match self {
            Quantity::Time {
                lead: Lead::Within, ..
            } => "deadline applies",
            Quantity::Time { .. } => "time period is specified",
            Quantity::Money => "dollar amount is specified",
            Quantity::Percent => "percentage is specified",
            Quantity::Date => "date is specified",
            Quantity::Measure => "quantity is specified",
        };
        let subject = clause.and_then(|c| c.subject.as_deref());
        format!("Under {cite}, what {what}{}?", ctx.regarding(subject))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_name_and_sentences_say() {
        fn heading(text: &str, deeper_follows: bool) -> Option<&str> {
            heading_at(text, 0, text.len(), deeper_follows).map(|(end, _)| &text[..end])
        }
        // Run in, followed by the paragraph's text.
        assert_eq!(
            heading(
                "Package form. If in package form unless it bears a label.",
                false
            ),
            Some("Package form")
        );
        assert_eq!(
            heading(
                "Misrepresentation of strength, etc., where drug is unrecognized in compendium. \
                 If it is a drug.",
                false
            ),
            Some("Misrepresentation of strength, etc., where drug is unrecognized in compendium")
        );
        assert_eq!(
            heading(
                "Applications not considered to have been received. The Secretary shall refund.",
                false
            ),
            Some("Applications not considered to have been received")
        );
        assert_eq!(
            heading(
                "15 or more days in advance. As soon as practicable, it shall.",
                false
            ),
            Some("15 or more days in advance")
        );
        for sentence in [
            "Manufacturer of implant shall be named a party. In any civil action, it shall.",
            "In the case of a violation of paragraph (16), up to $500,000 per violation. It is.",
            "Witnesses who are not covered by paragraph (a) are entitled to fees. They are.",
            "Prepare the appropriate Environmental Document. If the Lead Agency applies it.",
            "The Secretary shall act. The Secretary may wait.",
            "Each person shall pay. Payment is due.",
        ] {
            assert_eq!(heading(sentence, false), None, "{sentence}");
        }
        // Alone on its line: a heading only when deeper paragraphs follow.
        let refund = "Refund of fee if the application is withdrawn, or is no longer received.";
        assert_eq!(heading(refund, true), Some(&refund[..refund.len() - 1]));
        assert_eq!(heading(refund, false), None);
        assert_eq!(heading("Human drug application fee.", false), None);
        assert_eq!(heading("The Secretary shall act.", true), None);
    }

    #[test]
    fn enumerators_nest_by_style() {
        let text = "(a) Heading\n(1) One shall act.\n(A) Two shall act.\n(i) Three shall act.\n(h) x\n(i) Four shall act.\n(b)(1) Five shall act.";
        let paths: Vec<String> = units(text).0.into_iter().map(|u| u.path).collect();
        assert_eq!(
            paths,
            vec![
                "(a)(1)",
                "(a)(1)(A)",
                "(a)(1)(A)(i)",
                "(h)",
                "(i)",
                "(b)(1)"
            ]
        );
    }

    #[test]
    fn subjects_are_short_noun_phrases() {
        assert_eq!(
            noun_phrase("The responsible person").as_deref(),
            Some("the responsible person")
        );
        assert_eq!(noun_phrase("Congress").as_deref(), Some("Congress"));
        assert_eq!(noun_phrase("If the Secretary determines"), None);
        assert_eq!(noun_phrase("A person who manufactures drugs"), None);
    }

    #[test]
    fn diverse_selection_round_robins_types() {
        let types = [
            "obligation",
            "obligation",
            "obligation",
            "definition",
            "threshold",
        ];
        assert_eq!(select_diverse(&types, 3), vec![0, 3, 4]);
        assert_eq!(select_diverse(&types, 4), vec![0, 1, 3, 4]);
        assert_eq!(select_diverse(&types, 9), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn paragraphs_are_cited_inside_the_designation() {
        assert_eq!(cite("21 U.S.C. 364a", "(b)(1)"), "21 U.S.C. 364a(b)(1)");
        assert_eq!(
            cite("Section 2.1 of Harbor Policy", "(a)"),
            "Section 2.1(a) of Harbor Policy"
        );
        assert_eq!(
            cite("Policy > Scope", "(a)"),
            "Policy > Scope, paragraph (a)"
        );
        assert_eq!(
            cite("Section 2.1 of Harbor Policy", ""),
            "Section 2.1 of Harbor Policy"
        );
        assert_eq!(cite("", "(a)"), "this section, paragraph (a)");
    }
}
