//! Near-duplicate items: MinHash signatures of the questions with LSH banding find candidate
//! pairs, the exact Jaccard similarity of their shingle sets decides.
//!
//! Two items are near duplicates when their questions' word sets reach the threshold, their
//! numbers and references are the same, and their answers' word sets overlap at least
//! [`ANSWER_SIMILARITY`]: the same question asked again about the same rule. Short questions
//! that differ in one word ("what must the Secretary appoint?" / "... invite?") reach 0.8 while
//! asking about different rules; their different answers keep both.
//!
//! A question's shingles are its content words, lower-cased and crudely stemmed (plural `s`,
//! `-ing`, `-ed`), stop words and question words removed, numbers kept. Word sets rather than
//! word n-grams make reordered paraphrases ("Before closing, what must the lender send?" /
//! "What must the lender send before closing?") identical, while a changed content word
//! ("maximum" / "minimum") lowers the similarity below the default threshold.
//!
//! Numbers and provision references (`364a(b)(1)`, `§ 3.2`, `15`) must match exactly: two
//! questions that cite different subsections or thresholds ask different things however alike
//! their words, which template-like questions ("What must the Secretary include under 356e(b)(2)?"
//! and "... 356e(b)(4)?") often are.
//!
//! [`NearDuplicates`] admits questions in order: the first of a group is kept, every later one
//! whose similarity to a kept question reaches the threshold is rejected. The worker runs it per
//! shard and the coordinator over the whole job at merge, both in a deterministic order, so the
//! same items survive on every run. Banding (20 bands of 5 rows) finds pairs at similarity 0.8
//! with probability above 0.999 and pairs at 0.5 with probability 0.47; below a threshold of
//! about 0.5 some pairs are missed, which is why the threshold is documented as 0.5 to 1.

use std::collections::{BTreeSet, HashMap};

use proto::hash::digest;

const BANDS: usize = 20;
const ROWS: usize = 5;
const HASHES: usize = BANDS * ROWS;

/// Answer word-set similarity from which two items with near-duplicate questions are duplicates.
pub const ANSWER_SIMILARITY: f64 = 0.5;

const STOP_WORDS: &[&str] = &[
    "a", "about", "an", "and", "any", "are", "as", "at", "be", "by", "can", "do", "does", "for",
    "from", "how", "if", "in", "is", "it", "its", "of", "on", "or", "that", "the", "their",
    "there", "this", "to", "under", "what", "when", "where", "which", "who", "whom", "why", "with",
];

/// The numbers and references of a question: whitespace-separated tokens with a digit, outer
/// punctuation trimmed (`364a(b)(1),` -> `364a(b)(1)`).
pub fn references(question: &str) -> BTreeSet<String> {
    question
        .split_whitespace()
        .map(|t| {
            t.trim_start_matches(|c: char| !c.is_alphanumeric() && c != '(')
                .trim_end_matches(|c: char| !c.is_alphanumeric() && c != ')')
                .to_lowercase()
        })
        .filter(|t| t.chars().any(|c| c.is_ascii_digit()))
        .collect()
}

/// The normalised shingle set of a question.
pub fn shingles(question: &str) -> BTreeSet<String> {
    question
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| !STOP_WORDS.contains(&w.as_str()))
        .map(|w| stem(&w))
        .collect()
}

fn stem(word: &str) -> String {
    for suffix in ["ing", "ed", "es", "s"] {
        if let Some(stem) = word.strip_suffix(suffix)
            && stem.len() >= 3
            && !stem.chars().all(|c| c.is_ascii_digit())
        {
            return stem.to_string();
        }
    }
    word.to_string()
}

/// Jaccard similarity of two shingle sets (two empty sets are identical).
pub fn jaccard(a: &BTreeSet<String>, b: &BTreeSet<String>) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let shared = a.intersection(b).count();
    shared as f64 / (a.len() + b.len() - shared) as f64
}

fn signature(set: &BTreeSet<String>) -> [u64; HASHES] {
    let mut signature = [u64::MAX; HASHES];
    for shingle in set {
        let base = digest(&[shingle.as_bytes()], 16);
        let h1 = u64::from_str_radix(&base, 16).unwrap_or(0);
        let h2 = h1.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15;
        for (i, slot) in signature.iter_mut().enumerate() {
            // Kirsch–Mitzenmacher: h1 + i·h2 simulates independent hash functions.
            let h = h1.wrapping_add((i as u64).wrapping_mul(h2 | 1));
            *slot = (*slot).min(h);
        }
    }
    signature
}

/// An admitted item as compared.
#[derive(Debug)]
struct Shingled {
    question: BTreeSet<String>,
    references: BTreeSet<String>,
    answer: BTreeSet<String>,
}

impl Shingled {
    fn duplicates(&self, other: &Shingled, threshold: f64) -> bool {
        self.references == other.references
            && jaccard(&self.question, &other.question) >= threshold
            && jaccard(&self.answer, &other.answer) >= ANSWER_SIMILARITY
    }
}

/// Admits items in order and rejects those too similar to one already admitted.
#[derive(Debug)]
pub struct NearDuplicates {
    threshold: f64,
    /// Every admitted item.
    kept: Vec<Shingled>,
    buckets: HashMap<(usize, u64), Vec<usize>>,
}

impl NearDuplicates {
    /// `threshold` is the Jaccard similarity from which two questions are duplicates (0.5–1).
    pub fn new(threshold: f64) -> Self {
        NearDuplicates {
            threshold,
            kept: Vec::new(),
            buckets: HashMap::new(),
        }
    }

    /// `true` and remembered when the item is not a near duplicate of an admitted one.
    pub fn admit(&mut self, question: &str, answer: &str) -> bool {
        let item = Shingled {
            question: shingles(question),
            references: references(question),
            answer: shingles(answer),
        };
        let signature = signature(&item.question);
        let bands: Vec<(usize, u64)> = signature
            .chunks(ROWS)
            .enumerate()
            .map(|(band, rows)| {
                let key = rows.iter().fold(0xcbf2_9ce4_8422_2325u64, |acc, &r| {
                    (acc ^ r).wrapping_mul(0x100_0000_01b3)
                });
                (band, key)
            })
            .collect();
        let mut checked = BTreeSet::new();
        for band in &bands {
            for &index in self.buckets.get(band).into_iter().flatten() {
                if checked.insert(index) && item.duplicates(&self.kept[index], self.threshold) {
                    return false;
                }
            }
        }
        let index = self.kept.len();
        self.kept.push(item);
        for band in bands {
            self.buckets.entry(band).or_default().push(index);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "The lender must send the disclosure within three business days.";

    #[test]
    fn paraphrases_are_duplicates_and_distinct_rules_are_not() {
        let mut seen = NearDuplicates::new(0.8);
        assert!(seen.admit(
            "What must the lender send to the borrower before closing?",
            ANSWER
        ));
        assert!(!seen.admit(
            "Before closing, what must a lender send the borrower?",
            ANSWER
        ));
        assert!(!seen.admit(
            "what MUST the lenders send to the borrower before closing",
            ANSWER
        ));
        assert!(seen.admit("What is the maximum loan amount under section 3.2?", ANSWER));
        assert!(seen.admit("What is the minimum loan amount under section 3.2?", ANSWER));
        assert!(seen.admit("Who may approve an exception to the loan limit?", ANSWER));
        assert!(seen.admit("What is the maximum loan amount under section 3.3?", ANSWER));
    }

    #[test]
    fn alike_questions_with_different_answers_are_kept() {
        let mut seen = NearDuplicates::new(0.8);
        assert!(seen.admit(
            "Under 21 U.S.C. 399a(a), what must the Secretary establish?",
            "The Secretary shall establish an office to be known as the Office of the Chief Scientist."
        ));
        assert!(seen.admit(
            "Under 21 U.S.C. 399a(a), what must the Secretary appoint?",
            "The Secretary shall appoint a Chief Scientist to lead such Office."
        ));
        assert!(!seen.admit(
            "What must the Secretary appoint under 21 U.S.C. 399a(a)?",
            "Under it the Secretary shall appoint a Chief Scientist to lead the Office."
        ));
    }

    #[test]
    fn different_references_are_different_questions() {
        let mut seen = NearDuplicates::new(0.8);
        assert!(seen.admit(
            "Under 21 U.S.C. 356e(b)(2), what must the Secretary include?",
            ANSWER
        ));
        assert!(seen.admit(
            "Under 21 U.S.C. 356e(b)(4), what must the Secretary include?",
            ANSWER
        ));
        assert!(!seen.admit(
            "What must the Secretary include, under 21 U.S.C. 356e(b)(4)?",
            ANSWER
        ));
        assert_eq!(
            references("Is § 3.2(a), or 15 days, enough?"),
            ["15", "3.2(a)"].into_iter().map(String::from).collect()
        );
    }

    #[test]
    fn threshold_one_keeps_everything_but_identical_word_sets() {
        let mut seen = NearDuplicates::new(1.0);
        assert!(seen.admit("How many days does the borrower have to appeal?", ANSWER));
        assert!(seen.admit(
            "How many business days does the borrower have to appeal?",
            ANSWER
        ));
        assert!(!seen.admit("How many days does a borrower have, to appeal?", ANSWER));
    }

    #[test]
    fn many_questions_are_checked_against_all_kept_ones() {
        let mut seen = NearDuplicates::new(0.8);
        for i in 0..500 {
            assert!(seen.admit(
                &format!("What does rule {i} of part {} require?", i * 7),
                ANSWER
            ));
        }
        assert!(!seen.admit("What does rule 250 of part 1750 require", ANSWER));
        assert_eq!(jaccard(&shingles("a the of"), &shingles("")), 1.0);
    }
}
