//! The plan step: what a section supports and how many items it deserves, decided before any LLM
//! call from the section's own substance.
//!
//! The extractive analyser ([`section_rules`]) finds the section's rules: definitions,
//! obligations, prohibitions, permissions, thresholds, cross-references and scope statements.
//! Each rule is one planned aspect. A section with operative rules (obligations, prohibitions,
//! permissions, thresholds) also gets an applied scenario; one with scope statements also gets an
//! out-of-scope question the assistant should decline. The target is the number of aspects,
//! clamped to the job's `min..=max` items per section: a one-line section asks for the minimum,
//! a definitions section with twelve terms for the maximum. When there are more aspects than the
//! maximum, they are chosen round-robin across kinds so that every kind of rule is covered.
//! A section with text but no recognised rule still gets the minimum, aimed at what it states.
//!
//! The plan costs no call and is deterministic, so it is identical on every run and the
//! estimate (`principia estimate`) can reproduce it exactly.

use proto::ShardSection;

use super::extractive::{QuestionType, section_rules, select_diverse};

/// Longest excerpt of a rule's text quoted in the plan.
const FOCUS_CHARS: usize = 160;

/// One thing the section's items should cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedAspect {
    /// A question type (`definition`, ..., `scenario`, `out_of_scope`, `other`).
    pub kind: &'static str,
    /// What to ask about: an excerpt of the rule, or a description.
    pub focus: String,
}

/// The plan of one section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionPlan {
    /// Items to ask the generator for.
    pub target: u32,
    /// What they should cover, at most `max` aspects.
    pub aspects: Vec<PlannedAspect>,
}

impl SectionPlan {
    /// The plan as prompt lines: `- kind: focus`.
    pub fn render(&self) -> String {
        self.aspects
            .iter()
            .map(|a| format!("- {}: {}", a.kind, a.focus))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Plan a section for a job that wants `min..=max` items per section.
pub fn plan_section(section: &ShardSection, min: u32, max: u32) -> SectionPlan {
    let min = min.min(max);
    if max == 0 || section.text.trim().is_empty() {
        return SectionPlan {
            target: 0,
            aspects: Vec::new(),
        };
    }
    let rules = section_rules(section);
    let mut aspects: Vec<PlannedAspect> = Vec::with_capacity(rules.len() + 2);
    for (kind, quote) in &rules {
        let aspect = PlannedAspect {
            kind: kind.as_str(),
            focus: format!("\"{}\"", excerpt(&quote.text)),
        };
        if !aspects.contains(&aspect) {
            aspects.push(aspect);
        }
    }
    let operative = rules.iter().any(|(kind, _)| {
        matches!(
            kind,
            QuestionType::Obligation
                | QuestionType::Prohibition
                | QuestionType::Permission
                | QuestionType::Threshold
        )
    });
    if operative {
        aspects.push(PlannedAspect {
            kind: "scenario",
            focus: "a concrete situation a user could face, answered by applying the section's rules to it".into(),
        });
    }
    if rules.iter().any(|(kind, _)| *kind == QuestionType::Scope) {
        aspects.push(PlannedAspect {
            kind: "out_of_scope",
            focus: "a request the section excludes or does not cover, answered by declining and saying why, quoting the scope".into(),
        });
    }
    if aspects.is_empty() {
        aspects.push(PlannedAspect {
            kind: "other",
            focus: "what the section states, in the terms a user would ask about it".into(),
        });
    }
    let kinds: Vec<&str> = aspects.iter().map(|a| a.kind).collect();
    let keep = select_diverse(&kinds, max as usize);
    let aspects: Vec<PlannedAspect> = keep.into_iter().map(|i| aspects[i].clone()).collect();
    let target = (aspects.len() as u32).clamp(min.max(1), max);
    SectionPlan { target, aspects }
}

/// The first [`FOCUS_CHARS`] characters of `text`, whitespace collapsed, cut at a word.
fn excerpt(text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().count() <= FOCUS_CHARS {
        return collapsed.replace('"', "'");
    }
    let cut: String = collapsed.chars().take(FOCUS_CHARS).collect();
    let cut = cut.rsplit_once(' ').map_or(cut.as_str(), |(head, _)| head);
    format!("{}…", cut.replace('"', "'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str) -> ShardSection {
        ShardSection {
            node_id: "n".into(),
            citation: "Policy § 1".into(),
            section_path: vec!["Policy".into(), "§ 1".into()],
            text: text.into(),
        }
    }

    #[test]
    fn target_follows_the_substance_of_the_section() {
        let short = plan_section(&section("This policy is published by the board."), 1, 8);
        assert_eq!(short.target, 1);
        assert_eq!(short.aspects[0].kind, "other");

        let rich = plan_section(
            &section(
                "(a) The term \"borrower\" means a member who holds a loan.\n\
                 (b) A lender shall send the disclosure to the borrower within 3 business days.\n\
                 (c) A lender must not charge a fee for the disclosure.\n\
                 (d) A borrower may cancel the loan within 30 days of signing.\n\
                 (e) This section does not apply to business loans.",
            ),
            1,
            8,
        );
        assert!(rich.target >= 6, "{rich:?}");
        let kinds: Vec<&str> = rich.aspects.iter().map(|a| a.kind).collect();
        for kind in [
            "definition",
            "obligation",
            "prohibition",
            "permission",
            "scenario",
            "out_of_scope",
        ] {
            assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
        }
        assert!(rich.render().contains("- definition: \""));
    }

    #[test]
    fn target_stays_within_the_job_bounds() {
        let many: String = (1..=20)
            .map(|i| {
                format!(
                    "({i}) The term \"item {i}\" means the {i}th thing listed in the schedule.\n"
                )
            })
            .collect();
        let capped = plan_section(&section(&many), 1, 4);
        assert_eq!(capped.target, 4);
        assert_eq!(capped.aspects.len(), 4);
        let floor = plan_section(&section("Nothing operative here at all."), 3, 8);
        assert_eq!(floor.target, 3);
        assert_eq!(plan_section(&section("   "), 1, 8).target, 0);
        assert_eq!(plan_section(&section("Some text."), 1, 0).target, 0);
    }
}
