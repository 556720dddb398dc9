//! Shard planning: cut the principle tree into subtree shards under a token budget.
//!
//! Invariants (tested): every generation unit (a section in force with text) lands in exactly one
//! shard; a shard holds whole sections only and stays within the budget unless it is a single
//! section larger than the budget; shard ids depend only on the job specification and the
//! sections' ids and text, so re-planning an unchanged tree yields the same ids.

use proto::shard::approx_tokens;
use proto::{JobSpec, PrincipleNode, PrincipleTree, ShardMessage, ShardSection};

/// Plan the shards of a job, in document order.
pub fn plan_shards(tree: &PrincipleTree, job_id: &str, spec: &JobSpec) -> Vec<ShardMessage> {
    let mut planner = Planner {
        budget: spec.shard_token_budget.max(1),
        groups: Vec::new(),
        path: Vec::new(),
    };
    planner.node(&tree.root);
    planner
        .groups
        .into_iter()
        .map(|sections| ShardMessage::new(job_id.to_string(), spec.clone(), sections))
        .collect()
}

/// Order shards for publishing: most sections first (each section costs the LLM generator a
/// generation and a judge call), then most source tokens; ties keep plan order. Workers take
/// shards in queue order, so the last shards of a job are its smallest ones and the fleet's LLM
/// slots idle least while they finish (longest-processing-time-first scheduling). Parts are still
/// merged in plan order.
pub fn largest_first(shards: &mut [ShardMessage]) {
    shards.sort_by_key(|shard| std::cmp::Reverse((shard.sections.len(), shard.source_tokens())));
}

struct Planner {
    budget: usize,
    groups: Vec<Vec<ShardSection>>,
    /// Labels of the ancestors of the node being planned.
    path: Vec<String>,
}

fn own_tokens(node: &PrincipleNode) -> usize {
    if node.is_generation_unit() {
        approx_tokens(&node.content)
    } else {
        0
    }
}

fn subtree_tokens(node: &PrincipleNode) -> usize {
    own_tokens(node) + node.children.iter().map(subtree_tokens).sum::<usize>()
}

impl Planner {
    /// The section for `node`; `self.path` must already end with the node's own label.
    fn section(&self, node: &PrincipleNode) -> ShardSection {
        ShardSection {
            node_id: node.id.clone(),
            citation: node.citation.clone(),
            section_path: self.path.clone(),
            text: node.content.clone(),
        }
    }

    /// All generation units of a subtree, in document order.
    fn collect(&mut self, node: &PrincipleNode, into: &mut Vec<ShardSection>) {
        self.path.push(node.label.clone());
        if node.is_generation_unit() {
            into.push(self.section(node));
        }
        for child in &node.children {
            self.collect(child, into);
        }
        self.path.pop();
    }

    fn node(&mut self, node: &PrincipleNode) {
        let total = subtree_tokens(node);
        if total == 0 {
            return;
        }
        if total <= self.budget {
            let mut group = Vec::new();
            self.collect(node, &mut group);
            self.groups.push(group);
            return;
        }
        self.path.push(node.label.clone());
        let mut current = Vec::new();
        let mut current_tokens = 0;
        if node.is_generation_unit() {
            current.push(self.section(node));
            current_tokens = own_tokens(node);
        }
        for child in &node.children {
            let child_tokens = subtree_tokens(child);
            if child_tokens == 0 {
                continue;
            }
            if child_tokens > self.budget {
                self.flush(&mut current, &mut current_tokens);
                self.node(child);
                continue;
            }
            if current_tokens + child_tokens > self.budget {
                self.flush(&mut current, &mut current_tokens);
            }
            self.collect(child, &mut current);
            current_tokens += child_tokens;
        }
        self.flush(&mut current, &mut current_tokens);
        self.path.pop();
    }

    fn flush(&mut self, current: &mut Vec<ShardSection>, tokens: &mut usize) {
        if !current.is_empty() {
            self.groups.push(std::mem::take(current));
        }
        *tokens = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proto::NodeStatus;

    use super::*;

    fn spec(budget: usize) -> JobSpec {
        JobSpec {
            shard_token_budget: budget,
            ..JobSpec::extractive("test")
        }
    }

    /// A deterministic pseudo-random tree: varied depth, fan-out and text sizes.
    fn tree(seed: u64, nodes: usize) -> PrincipleTree {
        let mut state = seed;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize
        };
        let mut root = PrincipleNode::new("Root", "document");
        for i in 0..nodes {
            let mut node = PrincipleNode::new(format!("Section {i}"), "section");
            node.content = "word ".repeat(next() % 400);
            if next() % 10 == 0 {
                node.status = NodeStatus::Inactive {
                    reason: "repealed".into(),
                };
            }
            // Attach under a random existing node by walking down a random path.
            let mut parent = &mut root;
            while !parent.children.is_empty() && next() % 3 != 0 {
                let pick = next() % parent.children.len();
                parent = &mut parent.children[pick];
            }
            parent.children.push(node);
        }
        PrincipleTree::new(root)
    }

    #[test]
    fn every_unit_lands_in_exactly_one_shard_within_budget() {
        for seed in 0..40 {
            let tree = tree(seed, 120);
            for budget in [50, 200, 1000, 100_000] {
                let shards = plan_shards(&tree, "al-test", &spec(budget));
                let mut seen: HashMap<String, usize> = HashMap::new();
                for shard in &shards {
                    assert!(!shard.sections.is_empty());
                    let tokens = shard.source_tokens();
                    assert!(
                        tokens <= budget || shard.sections.len() == 1,
                        "seed {seed} budget {budget}: shard of {tokens} tokens and {} sections",
                        shard.sections.len()
                    );
                    for section in &shard.sections {
                        *seen.entry(section.node_id.clone()).or_default() += 1;
                    }
                }
                let units: Vec<_> = tree
                    .generation_units()
                    .iter()
                    .map(|n| n.id.clone())
                    .collect();
                assert_eq!(seen.len(), units.len(), "seed {seed} budget {budget}");
                assert!(units.iter().all(|id| seen.get(id) == Some(&1)));
            }
        }
    }

    #[test]
    fn section_paths_run_from_the_root_to_the_section() {
        let tree = tree(7, 60);
        let labels: HashMap<&str, &str> = tree
            .nodes()
            .iter()
            .map(|n| (n.id.as_str(), n.label.as_str()))
            .collect();
        for shard in plan_shards(&tree, "al-test", &spec(300)) {
            for section in shard.sections {
                assert_eq!(
                    section.section_path.first().map(String::as_str),
                    Some("Root")
                );
                assert_eq!(
                    section.section_path.last().map(String::as_str),
                    labels.get(section.node_id.as_str()).copied()
                );
            }
        }
    }

    #[test]
    fn shard_ids_are_stable_and_change_only_where_text_changes() {
        let tree_a = tree(3, 80);
        let first = plan_shards(&tree_a, "al-1", &spec(500));
        let again = plan_shards(&tree(3, 80), "al-2", &spec(500));
        let ids = |s: &[ShardMessage]| s.iter().map(|m| m.shard_id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&first), ids(&again), "ids do not depend on the job id");

        let other = JobSpec {
            instructions: "other".into(),
            ..spec(500)
        };
        let other_spec = plan_shards(&tree_a, "al-1", &other);
        assert!(ids(&first).iter().all(|id| !ids(&other_spec).contains(id)));

        // Editing one section changes only the shard that holds it.
        let mut edited = tree_a.clone();
        let target = edited.generation_units()[0].id.clone();
        edit(&mut edited.root, &target);
        edited.assign_ids();
        let after = plan_shards(&edited, "al-1", &spec(500));
        let changed: Vec<_> = ids(&after)
            .into_iter()
            .filter(|id| !ids(&first).contains(id))
            .collect();
        assert_eq!(changed.len(), 1, "{changed:?}");
    }

    #[test]
    fn publishing_order_is_largest_first_and_keeps_plan_order_on_ties() {
        let tree = tree(11, 120);
        let planned = plan_shards(&tree, "al-test", &spec(400));
        let mut ordered = planned.clone();
        largest_first(&mut ordered);
        let size = |s: &ShardMessage| (s.sections.len(), s.source_tokens());
        assert!(
            ordered.windows(2).all(|w| size(&w[0]) >= size(&w[1])),
            "not largest first"
        );
        assert!(
            size(&ordered[0]) > size(ordered.last().expect("shards")),
            "the test tree should have shards of different sizes"
        );
        let position = |id: &str| planned.iter().position(|s| s.shard_id == id);
        for pair in ordered.windows(2) {
            if size(&pair[0]) == size(&pair[1]) {
                assert!(position(&pair[0].shard_id) < position(&pair[1].shard_id));
            }
        }
        let mut ids: Vec<_> = ordered.iter().map(|s| s.shard_id.clone()).collect();
        let mut planned_ids: Vec<_> = planned.iter().map(|s| s.shard_id.clone()).collect();
        ids.sort();
        planned_ids.sort();
        assert_eq!(ids, planned_ids, "the same shards, reordered");
    }

    fn edit(node: &mut PrincipleNode, id: &str) -> bool {
        if node.id == id {
            node.content.push_str(" edited");
            return true;
        }
        node.children.iter_mut().any(|child| edit(child, id))
    }
}
