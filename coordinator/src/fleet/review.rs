//! Human review of a job's dataset: the principle tree with coverage counts, sections with their
//! items and evidence, decisions on items (approve, reject with a reason, edit), section text
//! edits that make a new tree version, regeneration of only the shards whose text changed, and the
//! reviewed export (Parquet with review columns, or fine-tuning JSONL).
//!
//! Decisions are data on the object store, the source of truth: one record per item at
//! `jobs/<id>/reviews/<record_id>.json`, written with PUT semantics (the same request twice leaves
//! the same state). The coordinator keeps decoded datasets, trees and the loaded reviews in memory
//! ([`ReviewCache`]) so that a job of 10,000 items answers a page in milliseconds; every page is
//! bounded (`limit`, at most [`MAX_PAGE`]).
//!
//! Items belong to the section of the newest tree whose node id they name, or, when that section's
//! text was edited since (its id changed with its text), the section with the same label path.
//! Such items are `stale`: their evidence offsets refer to the earlier text.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use proto::dataset::{ReviewColumns, decode_parquet, encode_reviewed_parquet};
use proto::hash::digest;
use proto::{PrincipleNode, PrincipleTree, Record};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::records::*;
use super::service::{Coordinator, ServiceError};
use crate::lookup::link_lookups;
use crate::plan::plan_shards;

/// Items or tree nodes per page at most.
pub const MAX_PAGE: usize = 500;
/// Items or tree nodes per page unless asked otherwise.
pub const DEFAULT_PAGE: usize = 50;
/// Longest edited question or answer, in bytes.
const MAX_ITEM_TEXT: usize = 20_000;
/// Longest rejection reason, in bytes.
const MAX_REASON: usize = 2_000;
/// Decoded datasets and trees kept in memory at most (each).
const CACHED: usize = 16;

/// One decoded dataset with an index by record id.
struct DatasetView {
    records: Vec<Record>,
    by_id: HashMap<String, usize>,
}

/// One node of a flattened tree (pre-order).
struct FlatNode {
    id: String,
    label: String,
    citation: String,
    kind: String,
    content: String,
    active: bool,
    unit: bool,
    parent: Option<usize>,
    children: Vec<usize>,
    /// Labels from the root down to this node.
    path: Vec<String>,
}

struct TreeView {
    nodes: Vec<FlatNode>,
    by_id: HashMap<String, usize>,
    /// First node of each label path.
    by_path: HashMap<Vec<String>, usize>,
}

impl TreeView {
    fn new(tree: &PrincipleTree) -> Self {
        let mut view = TreeView {
            nodes: Vec::new(),
            by_id: HashMap::new(),
            by_path: HashMap::new(),
        };
        // Iterative pre-order walk (trees can be deep).
        let mut stack: Vec<(&PrincipleNode, Option<usize>)> = vec![(&tree.root, None)];
        while let Some((node, parent)) = stack.pop() {
            let index = view.nodes.len();
            let mut path = parent
                .map(|p| view.nodes[p].path.clone())
                .unwrap_or_default();
            path.push(node.label.clone());
            view.by_id.entry(node.id.clone()).or_insert(index);
            view.by_path.entry(path.clone()).or_insert(index);
            view.nodes.push(FlatNode {
                id: node.id.clone(),
                label: node.label.clone(),
                citation: node.citation.clone(),
                kind: node.kind.clone(),
                content: node.content.clone(),
                active: node.is_active(),
                unit: node.is_generation_unit(),
                parent,
                children: Vec::new(),
                path,
            });
            if let Some(parent) = parent {
                view.nodes[parent].children.push(index);
            }
            for child in node.children.iter().rev() {
                stack.push((child, Some(index)));
            }
        }
        view
    }

    /// The node an item belongs to: by id, else (its section was edited since) by label path.
    fn node_of(&self, record: &Record) -> Option<usize> {
        self.by_id
            .get(&record.node_id)
            .or_else(|| self.by_path.get(&record.section_path))
            .copied()
    }
}

type Reviews = HashMap<String, ReviewRecord>;

/// What the review routes read, kept in memory; the store stays the source of truth.
#[derive(Default)]
pub struct ReviewCache {
    /// By storage key of the dataset.
    datasets: Mutex<HashMap<String, Arc<DatasetView>>>,
    /// By storage key of the tree.
    trees: Mutex<HashMap<String, Arc<TreeView>>>,
    /// Each job's reviews, loaded from the store on first use (`None` until then).
    reviews: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Reviews>>>>>,
    /// Serialises section edits (each makes the next tree version).
    edits: tokio::sync::Mutex<()>,
}

impl ReviewCache {
    /// Drop what is kept of a deleted job.
    pub fn forget(&self, job_id: &str) {
        let prefix = format!("jobs/{job_id}/");
        self.datasets
            .lock()
            .expect("review cache lock")
            .retain(|k, _| !k.starts_with(&prefix));
        self.trees
            .lock()
            .expect("review cache lock")
            .retain(|k, _| !k.starts_with(&prefix));
        self.reviews
            .lock()
            .expect("review cache lock")
            .remove(job_id);
    }
}

fn insert_bounded<T>(map: &Mutex<HashMap<String, Arc<T>>>, key: String, value: Arc<T>) {
    let mut map = map.lock().expect("review cache lock");
    if map.len() >= CACHED && !map.contains_key(&key) {
        let evict = map.keys().next().cloned();
        if let Some(evict) = evict {
            map.remove(&evict);
        }
    }
    map.insert(key, value);
}

/// Identity of an item's content (section, question and answer as generated), independent of
/// the shard that produced it.
pub fn item_key(record: &Record) -> String {
    digest(
        &[
            b"item",
            record.node_id.as_bytes(),
            record.question.as_bytes(),
            record.answer.as_bytes(),
        ],
        24,
    )
}

/// The tree version a dataset was generated from, by its storage key.
fn dataset_version(content_key: &str) -> u32 {
    content_key
        .rsplit('/')
        .next()
        .and_then(|name| name.strip_prefix("dataset.v"))
        .and_then(|rest| rest.strip_suffix(".parquet"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

// ----- wire shapes -----

/// Items of a section or subtree by review state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReviewCounts {
    /// Items in the dataset (accepted by generation).
    pub items: u64,
    pub approved: u64,
    /// Rejected by a reviewer.
    pub rejected: u64,
    /// Approved or rejected.
    pub reviewed: u64,
    pub pending: u64,
    /// Question or answer edited by a reviewer.
    pub edited: u64,
}

impl ReviewCounts {
    fn add_item(&mut self, review: Option<&ReviewRecord>) {
        self.items += 1;
        match review.map(|r| r.status).unwrap_or(ReviewStatus::Pending) {
            ReviewStatus::Approved => {
                self.approved += 1;
                self.reviewed += 1;
            }
            ReviewStatus::Rejected => {
                self.rejected += 1;
                self.reviewed += 1;
            }
            ReviewStatus::Pending => self.pending += 1,
        }
        if review.is_some_and(|r| r.human_edited) {
            self.edited += 1;
        }
    }

    fn add(&mut self, other: &ReviewCounts) {
        self.items += other.items;
        self.approved += other.approved;
        self.rejected += other.rejected;
        self.reviewed += other.reviewed;
        self.pending += other.pending;
        self.edited += other.edited;
    }
}

/// One node of the principle tree with its coverage.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReviewNode {
    pub node_id: String,
    pub label: String,
    pub citation: String,
    /// Kind of division (`section`, `part`, `heading`, ...).
    pub kind: String,
    /// In force (not repealed, reserved, ...).
    pub active: bool,
    /// A section generation works on (in force, with text of its own).
    pub has_text: bool,
    /// The section's text was edited since the dataset was generated (regenerate to refresh).
    pub text_changed: bool,
    /// Number of child nodes (load them with `parent=node_id`).
    pub children: u64,
    /// The section's own items.
    pub own: ReviewCounts,
    /// Items of the section and everything below it.
    pub subtree: ReviewCounts,
    /// Sections with text in the subtree.
    pub sections: u64,
    /// Sections with text in the subtree that have no item: the gaps to look at.
    pub sections_without_items: u64,
}

/// A page of tree nodes: the children of `parent` (or the root when no parent is given).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReviewTree {
    pub job_id: String,
    /// The job's status (`completed` once its dataset is ready; `running` while regenerating).
    pub status: JobStatus,
    /// Newest tree version (section edits add versions).
    pub tree_version: u32,
    /// The tree version the last generation ran on.
    pub generated_version: u32,
    /// The tree version the reviewed dataset comes from.
    pub dataset_version: u32,
    /// The node whose children these are (absent for the top level).
    pub parent: Option<ReviewNode>,
    /// Labels from the root down to `parent`, with their ids (for breadcrumbs).
    pub ancestors: Vec<NodeRef>,
    pub nodes: Vec<ReviewNode>,
    /// Nodes at this level in all.
    pub total: u64,
    pub limit: u64,
    pub offset: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeRef {
    pub node_id: String,
    pub label: String,
}

/// One evidence quote and where it sits in the section's text.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EvidenceView {
    pub quote: String,
    /// Node the offsets refer to.
    pub node_id: String,
    /// Citation of that node when it is not the item's own section (a section or definition the
    /// generator looked up).
    pub citation: Option<String>,
    /// Byte offsets into the section's UTF-8 text, as generation stored them.
    pub start: u64,
    pub end: u64,
    /// Offsets in Unicode code points into the current text (`Array.from(text)` in JavaScript);
    /// absent when the quote is not at that place in the current text (the text was edited).
    pub char_start: Option<u64>,
    pub char_end: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ItemScore {
    pub criterion: String,
    pub value: f64,
}

/// One item with its review state: `question` and `answer` are the reviewed ones (edits applied).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReviewItem {
    pub record_id: String,
    /// The section the item was generated from (its id then).
    pub node_id: String,
    pub citation: String,
    pub section_path: Vec<String>,
    pub question: String,
    pub answer: String,
    pub original_question: String,
    pub original_answer: String,
    pub question_type: String,
    pub verdict: String,
    pub scores: Vec<ItemScore>,
    pub evidence: Vec<EvidenceView>,
    pub status: ReviewStatus,
    pub reason: Option<String>,
    pub human_edited: bool,
    /// RFC 3339 time of the last decision; absent if never reviewed.
    pub updated_at: Option<String>,
    /// The section's text changed since the item was generated.
    pub stale: bool,
}

/// A section: its text and a page of its items.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReviewSection {
    pub job_id: String,
    pub tree_version: u32,
    pub node: ReviewNode,
    /// Labels from the root down to the section.
    pub path: Vec<String>,
    pub ancestors: Vec<NodeRef>,
    /// The section's own text (newest tree version).
    pub text: String,
    /// Items of the section matching the filter, in all.
    pub total: u64,
    pub limit: u64,
    pub offset: u64,
    pub items: Vec<ReviewItem>,
}

/// A decision on an item. `PUT` replaces the item's review with this (a missing `question` or
/// `answer` means not edited); `PATCH` changes only the fields given.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ReviewUpdate {
    /// `approved`, `rejected` (needs a `reason`) or `pending`; required with `PUT`.
    #[serde(default)]
    pub status: Option<ReviewStatus>,
    #[serde(default)]
    pub reason: Option<String>,
    /// The edited question (the generated one if equal to it).
    #[serde(default)]
    pub question: Option<String>,
    /// The edited answer (the generated one if equal to it).
    #[serde(default)]
    pub answer: Option<String>,
}

/// New text for a section.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SectionEdit {
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SectionEdited {
    pub job_id: String,
    /// The tree version that holds the edit (unchanged if the text was the same).
    pub tree_version: u32,
    pub previous_node_id: String,
    /// The section's id from now on (ids follow the text).
    pub node_id: String,
    pub path: Vec<String>,
    pub changed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegenerateResponse {
    pub job_id: String,
    pub status: JobStatus,
    /// The tree version being generated.
    pub tree_version: u32,
    pub shards_total: u64,
    /// Shards whose text changed: only these are generated again.
    pub shards_to_generate: u64,
    /// Shards whose parts are kept as they are.
    pub shards_reused: u64,
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Parquet,
    Jsonl,
}

/// What one review request works on.
struct Context {
    job: JobRecord,
    dataset: Arc<DatasetView>,
    tree: Arc<TreeView>,
    /// Node ids of the tree the dataset was generated from.
    generated_ids: Arc<TreeView>,
}

fn clamp_page(limit: Option<usize>, offset: Option<usize>) -> (usize, usize) {
    (
        limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE),
        offset.unwrap_or(0),
    )
}

fn check_text(what: &str, text: &str, max: usize) -> Result<(), ServiceError> {
    if text.trim().is_empty() {
        return Err(ServiceError::Invalid(format!("{what} must not be empty")));
    }
    if text.len() > max {
        return Err(ServiceError::Invalid(format!(
            "{what} is {} bytes; at most {max} are allowed",
            text.len()
        )));
    }
    Ok(())
}

/// Code point offset of byte offset `byte` in `text`, if it is a character boundary.
fn char_offset(text: &str, byte: usize) -> Option<u64> {
    text.is_char_boundary(byte)
        .then(|| text[..byte].chars().count() as u64)
}

impl Coordinator {
    async fn dataset_view(&self, key: &str) -> Result<Arc<DatasetView>, ServiceError> {
        if let Some(view) = self
            .review
            .datasets
            .lock()
            .expect("review cache lock")
            .get(key)
        {
            return Ok(view.clone());
        }
        let bytes = self
            .store
            .get(key)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("dataset {key}")))?;
        let view = tokio::task::spawn_blocking(move || {
            decode_parquet(bytes).map(|(records, _)| {
                let by_id = records
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (r.record_id.clone(), i))
                    .collect();
                DatasetView { records, by_id }
            })
        })
        .await
        .map_err(|e| ServiceError::Invalid(format!("decoding the dataset: {e}")))?
        .map_err(|e| ServiceError::Invalid(format!("the dataset is unreadable: {e}")))?;
        let view = Arc::new(view);
        insert_bounded(&self.review.datasets, key.to_string(), view.clone());
        Ok(view)
    }

    async fn stored_tree(&self, id: &str, version: u32) -> Result<PrincipleTree, ServiceError> {
        let key = job_tree_version_key(id, version);
        let bytes =
            self.store.get(&key).await?.ok_or_else(|| {
                ServiceError::NotFound(format!("tree version {version} of job {id}"))
            })?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ServiceError::Invalid(format!("tree {key} is unreadable: {e}")))
    }

    async fn tree_view(&self, id: &str, version: u32) -> Result<Arc<TreeView>, ServiceError> {
        let key = job_tree_version_key(id, version);
        if let Some(view) = self
            .review
            .trees
            .lock()
            .expect("review cache lock")
            .get(&key)
        {
            return Ok(view.clone());
        }
        let tree = self.stored_tree(id, version).await?;
        let view = Arc::new(TreeView::new(&tree));
        insert_bounded(&self.review.trees, key, view.clone());
        Ok(view)
    }

    /// The job's reviews, loaded from the store on first use.
    async fn reviews_of(
        &self,
        job_id: &str,
    ) -> Result<Arc<tokio::sync::Mutex<Option<Reviews>>>, ServiceError> {
        let slot = self
            .review
            .reviews
            .lock()
            .expect("review cache lock")
            .entry(job_id.to_string())
            .or_default()
            .clone();
        {
            let mut loaded = slot.lock().await;
            if loaded.is_none() {
                let keys = self.store.list(&reviews_prefix(job_id)).await?;
                let store = &self.store;
                let mut fetched = futures_util::stream::iter(keys)
                    .map(|key| async move { (store.get(&key).await, key) })
                    .buffer_unordered(32);
                let mut reviews = HashMap::new();
                while let Some((result, key)) = fetched.next().await {
                    if let Some(bytes) = result? {
                        match serde_json::from_slice::<ReviewRecord>(&bytes) {
                            Ok(review) => {
                                reviews.insert(review.record_id.clone(), review);
                            }
                            Err(error) => {
                                tracing::warn!(%key, %error, "ignoring an unreadable review");
                            }
                        }
                    }
                }
                *loaded = Some(reviews);
            }
        }
        Ok(slot)
    }

    /// The tenant's job with a dataset to review.
    async fn review_context(
        &self,
        id: &str,
        tenant: Option<&str>,
    ) -> Result<Context, ServiceError> {
        let job = self.job(id, tenant)?;
        let Some(file) = &job.output_file else {
            return Err(ServiceError::Conflict(format!(
                "job {id} has no dataset to review yet (status {})",
                job.status.as_str()
            )));
        };
        let dataset = self.dataset_view(&file.content_key).await?;
        let tree = self.tree_view(id, job.tree_version).await?;
        let generated_ids = self
            .tree_view(id, dataset_version(&file.content_key))
            .await?;
        Ok(Context {
            job,
            dataset,
            tree,
            generated_ids,
        })
    }

    /// Counts of every node of the newest tree: own and subtree items, sections, sections without
    /// items.
    fn node_counts(
        context: &Context,
        reviews: &Reviews,
    ) -> (Vec<ReviewCounts>, Vec<ReviewCounts>, Vec<(u64, u64)>) {
        let nodes = &context.tree.nodes;
        let mut own = vec![ReviewCounts::default(); nodes.len()];
        for record in &context.dataset.records {
            if let Some(index) = context.tree.node_of(record) {
                own[index].add_item(reviews.get(&record.record_id));
            }
        }
        let mut subtree = own.clone();
        let mut sections: Vec<(u64, u64)> = nodes
            .iter()
            .zip(&own)
            .map(|(n, c)| {
                let unit = u64::from(n.unit);
                (unit, u64::from(n.unit && c.items == 0))
            })
            .collect();
        // Pre-order: every child comes after its parent, so a reverse pass sums bottom-up.
        for index in (1..nodes.len()).rev() {
            if let Some(parent) = nodes[index].parent {
                let counts = subtree[index];
                subtree[parent].add(&counts);
                let (units, empty) = sections[index];
                sections[parent].0 += units;
                sections[parent].1 += empty;
            }
        }
        (own, subtree, sections)
    }

    fn node_view(
        context: &Context,
        index: usize,
        counts: &(Vec<ReviewCounts>, Vec<ReviewCounts>, Vec<(u64, u64)>),
    ) -> ReviewNode {
        let node = &context.tree.nodes[index];
        ReviewNode {
            node_id: node.id.clone(),
            label: node.label.clone(),
            citation: node.citation.clone(),
            kind: node.kind.clone(),
            active: node.active,
            has_text: node.unit,
            text_changed: !context.generated_ids.by_id.contains_key(&node.id),
            children: node.children.len() as u64,
            own: counts.0[index],
            subtree: counts.1[index],
            sections: counts.2[index].0,
            sections_without_items: counts.2[index].1,
        }
    }

    fn ancestors(context: &Context, index: usize) -> Vec<NodeRef> {
        let mut chain = Vec::new();
        let mut at = Some(index);
        while let Some(i) = at {
            let node = &context.tree.nodes[i];
            chain.push(NodeRef {
                node_id: node.id.clone(),
                label: node.label.clone(),
            });
            at = node.parent;
        }
        chain.reverse();
        chain
    }

    /// A page of the tree: the children of `parent`, or the root.
    pub async fn review_tree(
        &self,
        id: &str,
        tenant: Option<&str>,
        parent: Option<&str>,
        limit: Option<usize>,
        offset: Option<usize>,
    ) -> Result<ReviewTree, ServiceError> {
        let context = self.review_context(id, tenant).await?;
        let (limit, offset) = clamp_page(limit, offset);
        let slot = self.reviews_of(id).await?;
        let guard = slot.lock().await;
        let reviews = guard.as_ref().expect("reviews loaded");
        let counts = Self::node_counts(&context, reviews);
        drop(guard);
        let (parent_index, level): (Option<usize>, Vec<usize>) = match parent {
            None => (None, vec![0]),
            Some(node_id) => {
                let index = *context
                    .tree
                    .by_id
                    .get(node_id)
                    .ok_or_else(|| ServiceError::NotFound(format!("node {node_id}")))?;
                (Some(index), context.tree.nodes[index].children.clone())
            }
        };
        let nodes = level
            .iter()
            .skip(offset)
            .take(limit)
            .map(|&i| Self::node_view(&context, i, &counts))
            .collect();
        Ok(ReviewTree {
            job_id: id.to_string(),
            status: context.job.status,
            tree_version: context.job.tree_version,
            generated_version: context.job.generated_version,
            dataset_version: context
                .job
                .output_file
                .as_ref()
                .map(|f| dataset_version(&f.content_key))
                .unwrap_or(1),
            parent: parent_index.map(|i| Self::node_view(&context, i, &counts)),
            ancestors: parent_index
                .map(|i| Self::ancestors(&context, i))
                .unwrap_or_default(),
            nodes,
            total: level.len() as u64,
            limit: limit as u64,
            offset: offset as u64,
        })
    }

    /// One item with its review state, against the text of its section in the context's tree.
    fn item_in_tree(
        context: &Context,
        record: &Record,
        review: Option<&ReviewRecord>,
    ) -> ReviewItem {
        let node = context.tree.node_of(record).map(|i| &context.tree.nodes[i]);
        Self::item_view(
            &context.tree,
            record,
            review,
            node.map(|n| (n.id.as_str(), n.content.as_str())),
        )
    }

    fn item_view(
        tree: &TreeView,
        record: &Record,
        review: Option<&ReviewRecord>,
        text: Option<(&str, &str)>,
    ) -> ReviewItem {
        let (question, answer) = match review {
            Some(r) => (
                r.edited_question
                    .clone()
                    .unwrap_or_else(|| record.question.clone()),
                r.edited_answer
                    .clone()
                    .unwrap_or_else(|| record.answer.clone()),
            ),
            None => (record.question.clone(), record.answer.clone()),
        };
        let stale = text.is_some_and(|(node_id, _)| node_id != record.node_id);
        let evidence = record
            .evidence
            .iter()
            .enumerate()
            .map(|(i, quote)| {
                let span = record.evidence_spans.get(i);
                let (start, end, span_node) = span
                    .map(|s| (s.start, s.end, s.node_id.clone()))
                    .unwrap_or((0, 0, record.node_id.clone()));
                // Offsets into the current text, only where the quote is found there.
                // Offsets into the current text: the stored ones while the section's id (which
                // follows its text) is the one they were taken in, else where the quote is found.
                let located = text.and_then(|(node_id, text)| {
                    let (s, e) = (start as usize, end as usize);
                    if span.is_some() && span_node == node_id && s < e && text.get(s..e).is_some() {
                        return Some((s, e));
                    }
                    text.find(quote.as_str()).map(|s| (s, s + quote.len()))
                });
                let (char_start, char_end) = match (located, text) {
                    (Some((s, e)), Some((_, text))) => (char_offset(text, s), char_offset(text, e)),
                    _ => (None, None),
                };
                let citation = (span_node != record.node_id)
                    .then(|| tree.by_id.get(&span_node))
                    .flatten()
                    .map(|&i| tree.nodes[i].citation.clone());
                EvidenceView {
                    quote: quote.clone(),
                    citation,
                    node_id: span_node,
                    start,
                    end,
                    char_start,
                    char_end,
                }
            })
            .collect();
        ReviewItem {
            record_id: record.record_id.clone(),
            node_id: record.node_id.clone(),
            citation: record.citation.clone(),
            section_path: record.section_path.clone(),
            question,
            answer,
            original_question: record.question.clone(),
            original_answer: record.answer.clone(),
            question_type: record.question_type.clone(),
            verdict: record.verdict.clone(),
            scores: record
                .scores
                .iter()
                .map(|s| ItemScore {
                    criterion: s.criterion.clone(),
                    value: s.value,
                })
                .collect(),
            evidence,
            status: review.map(|r| r.status).unwrap_or(ReviewStatus::Pending),
            reason: review.and_then(|r| r.reason.clone()),
            human_edited: review.is_some_and(|r| r.human_edited),
            updated_at: review.map(|r| iso(r.updated_at_ms)),
            stale,
        }
    }

    /// A section of the newest tree: its text and a page of its items (optionally of one status).
    pub async fn review_section(
        &self,
        id: &str,
        tenant: Option<&str>,
        node_id: &str,
        status: Option<ReviewStatus>,
        limit: Option<usize>,
        offset: Option<usize>,
    ) -> Result<ReviewSection, ServiceError> {
        let context = self.review_context(id, tenant).await?;
        let (limit, offset) = clamp_page(limit, offset);
        let index = *context
            .tree
            .by_id
            .get(node_id)
            .ok_or_else(|| ServiceError::NotFound(format!("section {node_id}")))?;
        let slot = self.reviews_of(id).await?;
        let guard = slot.lock().await;
        let reviews = guard.as_ref().expect("reviews loaded");
        let counts = Self::node_counts(&context, reviews);
        let node = &context.tree.nodes[index];
        let matching: Vec<&Record> = context
            .dataset
            .records
            .iter()
            .filter(|r| context.tree.node_of(r) == Some(index))
            .filter(|r| {
                status.is_none_or(|s| {
                    reviews
                        .get(&r.record_id)
                        .map(|v| v.status)
                        .unwrap_or(ReviewStatus::Pending)
                        == s
                })
            })
            .collect();
        let items = matching
            .iter()
            .skip(offset)
            .take(limit)
            .map(|r| {
                Self::item_view(
                    &context.tree,
                    r,
                    reviews.get(&r.record_id),
                    Some((node.id.as_str(), node.content.as_str())),
                )
            })
            .collect();
        Ok(ReviewSection {
            job_id: id.to_string(),
            tree_version: context.job.tree_version,
            node: Self::node_view(&context, index, &counts),
            path: node.path.clone(),
            ancestors: Self::ancestors(&context, index),
            text: node.content.clone(),
            total: matching.len() as u64,
            limit: limit as u64,
            offset: offset as u64,
            items,
        })
    }

    /// One item with its review state.
    pub async fn review_item(
        &self,
        id: &str,
        tenant: Option<&str>,
        record_id: &str,
    ) -> Result<ReviewItem, ServiceError> {
        let context = self.review_context(id, tenant).await?;
        let record = context
            .dataset
            .by_id
            .get(record_id)
            .map(|&i| &context.dataset.records[i])
            .ok_or_else(|| ServiceError::NotFound(format!("item {record_id}")))?;
        let slot = self.reviews_of(id).await?;
        let guard = slot.lock().await;
        let reviews = guard.as_ref().expect("reviews loaded");
        Ok(Self::item_in_tree(&context, record, reviews.get(record_id)))
    }

    /// Record a decision on an item: `replace` (PUT) sets the whole review from `update`,
    /// otherwise (PATCH) only the fields given change. The same request twice is the same state.
    pub async fn update_review(
        &self,
        id: &str,
        tenant: Option<&str>,
        record_id: &str,
        update: ReviewUpdate,
        replace: bool,
    ) -> Result<ReviewItem, ServiceError> {
        let context = self.review_context(id, tenant).await?;
        let record = context
            .dataset
            .by_id
            .get(record_id)
            .map(|&i| &context.dataset.records[i])
            .ok_or_else(|| ServiceError::NotFound(format!("item {record_id}")))?;
        if replace && update.status.is_none() {
            return Err(ServiceError::Invalid(
                "status is required (approved, rejected or pending)".into(),
            ));
        }
        if let Some(question) = &update.question {
            check_text("question", question, MAX_ITEM_TEXT)?;
        }
        if let Some(answer) = &update.answer {
            check_text("answer", answer, MAX_ITEM_TEXT)?;
        }
        let slot = self.reviews_of(id).await?;
        let mut guard = slot.lock().await;
        let reviews = guard.as_mut().expect("reviews loaded");
        let current = reviews.get(record_id);
        let base = match (replace, current) {
            (false, Some(current)) => current.clone(),
            _ => ReviewRecord {
                record_id: record_id.to_string(),
                status: ReviewStatus::Pending,
                reason: None,
                edited_question: None,
                edited_answer: None,
                human_edited: false,
                updated_at_ms: 0,
                tenant: context.job.tenant.clone(),
                item_key: item_key(record),
            },
        };
        let mut next = base;
        if let Some(status) = update.status {
            next.status = status;
        }
        if replace || update.reason.is_some() {
            next.reason = update
                .reason
                .map(|r| r.trim().to_string())
                .filter(|r| !r.is_empty());
        }
        if replace || update.question.is_some() {
            next.edited_question = update.question.filter(|q| q != &record.question);
        }
        if replace || update.answer.is_some() {
            next.edited_answer = update.answer.filter(|a| a != &record.answer);
        }
        next.human_edited = next.edited_question.is_some() || next.edited_answer.is_some();
        if next.status == ReviewStatus::Rejected && next.reason.is_none() {
            return Err(ServiceError::Invalid(
                "rejecting an item needs a reason".into(),
            ));
        }
        if let Some(reason) = &next.reason
            && reason.len() > MAX_REASON
        {
            return Err(ServiceError::Invalid(format!(
                "reason is {} bytes; at most {MAX_REASON} are allowed",
                reason.len()
            )));
        }
        next.tenant = context.job.tenant.clone();
        next.item_key = item_key(record);
        let unchanged = current.is_some_and(|c| {
            ReviewRecord {
                updated_at_ms: c.updated_at_ms,
                ..next.clone()
            } == *c
        });
        if !unchanged {
            next.updated_at_ms = now_ms();
            let json = serde_json::to_vec(&next).expect("review serializes");
            self.store
                .put(&review_key(id, record_id), Bytes::from(json))
                .await?;
            reviews.insert(record_id.to_string(), next);
        }
        Ok(Self::item_in_tree(&context, record, reviews.get(record_id)))
    }

    /// Replace a section's text in the newest tree: stores the next tree version (node ids follow
    /// the text, so the section gets a new id; every other node keeps its own).
    pub async fn edit_section(
        &self,
        id: &str,
        tenant: Option<&str>,
        node_id: &str,
        text: String,
        max_bytes: usize,
    ) -> Result<SectionEdited, ServiceError> {
        if text.len() > max_bytes {
            return Err(ServiceError::Invalid(format!(
                "the text is {} bytes; at most {max_bytes} are allowed",
                text.len()
            )));
        }
        let _edit = self.review.edits.lock().await;
        let mut job = self.job(id, tenant)?;
        let mut tree = self.stored_tree(id, job.tree_version).await?;
        // Find the node and the child indices that lead to it.
        let mut route = Vec::new();
        if !find_route(&tree.root, node_id, &mut route) {
            return Err(ServiceError::NotFound(format!("section {node_id}")));
        }
        let mut node = &mut tree.root;
        let mut path = vec![node.label.clone()];
        for &i in &route {
            node = &mut node.children[i];
            path.push(node.label.clone());
        }
        if node.content == text {
            return Ok(SectionEdited {
                job_id: id.to_string(),
                tree_version: job.tree_version,
                previous_node_id: node_id.to_string(),
                node_id: node_id.to_string(),
                path,
                changed: false,
            });
        }
        node.content = text;
        tree.assign_ids();
        let mut node = &tree.root;
        for &i in &route {
            node = &node.children[i];
        }
        let new_id = node.id.clone();
        let version = job.tree_version + 1;
        let json = serde_json::to_vec(&tree).expect("tree serializes");
        self.store
            .put(&job_tree_version_key(id, version), Bytes::from(json))
            .await?;
        job.tree_version = version;
        self.save(job).await?;
        Ok(SectionEdited {
            job_id: id.to_string(),
            tree_version: version,
            previous_node_id: node_id.to_string(),
            node_id: new_id,
            path,
            changed: true,
        })
    }

    /// Generate the newest tree version: only shards whose text changed lack parts, so only they
    /// are published; the rest, and every decision, are kept.
    pub async fn regenerate(
        self: &Arc<Self>,
        id: &str,
        tenant: Option<&str>,
    ) -> Result<RegenerateResponse, ServiceError> {
        let _edit = self.review.edits.lock().await;
        let mut job = self.job(id, tenant)?;
        if !job.status.is_terminal() {
            return Err(ServiceError::Conflict(format!(
                "job {id} is {}; regenerate once it has finished",
                job.status.as_str()
            )));
        }
        if job.tree_version == job.generated_version && job.status == JobStatus::Completed {
            return Err(ServiceError::Conflict(format!(
                "no section of job {id} was edited since it was generated"
            )));
        }
        let tree = self.stored_tree(id, job.tree_version).await?;
        let mut shards = plan_shards(&tree, id, &job.spec);
        // The ids the shards will be published with (the index is stored when they are).
        link_lookups(id, &tree, &job.spec, &mut shards);
        let parts: HashSet<String> = self
            .store
            .list(&format!("jobs/{id}/parts/"))
            .await?
            .into_iter()
            .collect();
        let reused = shards
            .iter()
            .filter(|s| parts.contains(&worker::process::part_key(id, &s.shard_id)))
            .count() as u64;
        job.generated_version = job.tree_version;
        job.status = JobStatus::Queued;
        job.current_step = "publish".into();
        job.completed_at_ms = None;
        job.stopped_at_ms = None;
        job.shards_done = 0;
        job.shards_failed = 0;
        job.status_message = Some(format!(
            "regenerating tree version {}: {} of {} shards changed",
            job.tree_version,
            shards.len() as u64 - reused,
            shards.len()
        ));
        self.save(job.clone()).await?;
        let this = self.clone();
        let job_id = id.to_string();
        tokio::spawn(async move { this.prepare_and_publish(job_id).await });
        Ok(RegenerateResponse {
            job_id: id.to_string(),
            status: job.status,
            tree_version: job.tree_version,
            shards_total: shards.len() as u64,
            shards_to_generate: shards.len() as u64 - reused,
            shards_reused: reused,
        })
    }

    /// The reviewed dataset: edits applied, rejected items left out; Parquet with the review
    /// columns, or fine-tuning JSONL (`{"messages": [...]}` per line).
    pub async fn export_reviewed(
        &self,
        id: &str,
        tenant: Option<&str>,
        format: ExportFormat,
    ) -> Result<Bytes, ServiceError> {
        let context = self.review_context(id, tenant).await?;
        let slot = self.reviews_of(id).await?;
        let guard = slot.lock().await;
        let reviews = guard.as_ref().expect("reviews loaded");
        let mut records = Vec::with_capacity(context.dataset.records.len());
        let mut states = Vec::with_capacity(context.dataset.records.len());
        for record in &context.dataset.records {
            let review = reviews.get(&record.record_id);
            if review.is_some_and(|r| r.status == ReviewStatus::Rejected) {
                continue;
            }
            let mut record = record.clone();
            if let Some(review) = review {
                if let Some(question) = &review.edited_question {
                    record.question = question.clone();
                }
                if let Some(answer) = &review.edited_answer {
                    record.answer = answer.clone();
                }
                for message in &mut record.messages {
                    match message.role.as_str() {
                        "user" => message.content = record.question.clone(),
                        "assistant" => message.content = record.answer.clone(),
                        _ => {}
                    }
                }
            }
            states.push(ReviewColumns {
                status: review
                    .map(|r| r.status)
                    .unwrap_or(ReviewStatus::Pending)
                    .as_str()
                    .to_string(),
                reason: review.and_then(|r| r.reason.clone()),
                human_edited: review.is_some_and(|r| r.human_edited),
                reviewed_at: review.map(|r| r.updated_at_ms as i64),
            });
            records.push(record);
        }
        drop(guard);
        match format {
            ExportFormat::Jsonl => {
                let mut out = Vec::new();
                for record in &records {
                    let line = serde_json::json!({ "messages": record.messages });
                    serde_json::to_writer(&mut out, &line).expect("JSON serializes");
                    out.push(b'\n');
                }
                Ok(Bytes::from(out))
            }
            ExportFormat::Parquet => {
                tokio::task::spawn_blocking(move || encode_reviewed_parquet(&records, &states))
                    .await
                    .map_err(|e| ServiceError::Invalid(format!("encoding the export: {e}")))?
                    .map(Bytes::from)
                    .map_err(|e| ServiceError::Invalid(format!("encoding the export: {e}")))
            }
        }
    }

    /// Items of the job's current dataset that a regeneration keeps whatever the new parts hold:
    /// the human-edited items of shards that the new plan (`shard_ids`) no longer has.
    pub(super) async fn carried_items(
        &self,
        job: &JobRecord,
        shard_ids: &[String],
    ) -> Result<Vec<Record>, ServiceError> {
        let Some(file) = &job.output_file else {
            return Ok(Vec::new());
        };
        let previous = self.dataset_view(&file.content_key).await?;
        let plan: HashSet<&str> = shard_ids.iter().map(String::as_str).collect();
        let slot = self.reviews_of(&job.id).await?;
        let guard = slot.lock().await;
        let reviews = guard.as_ref().expect("reviews loaded");
        Ok(previous
            .records
            .iter()
            .filter(|r| !plan.contains(r.shard_id.as_str()))
            .filter(|r| reviews.get(&r.record_id).is_some_and(|v| v.human_edited))
            .cloned()
            .collect())
    }

    /// After a regeneration: a decision on an item that is gone goes to the new item with the same
    /// section, question and answer (a regenerated shard yields its unchanged sections' items
    /// again, under new record ids).
    pub(super) async fn carry_decisions(
        &self,
        job: &JobRecord,
        records: &[Record],
    ) -> Result<(), ServiceError> {
        let slot = self.reviews_of(&job.id).await?;
        let mut guard = slot.lock().await;
        let reviews = guard.as_mut().expect("reviews loaded");
        let present: HashSet<&str> = records.iter().map(|r| r.record_id.as_str()).collect();
        let mut orphans: HashMap<String, ReviewRecord> = HashMap::new();
        for review in reviews.values() {
            if !present.contains(review.record_id.as_str()) && !review.item_key.is_empty() {
                orphans.insert(review.item_key.clone(), review.clone());
            }
        }
        if orphans.is_empty() {
            return Ok(());
        }
        let mut moved = 0;
        for record in records {
            if reviews.contains_key(&record.record_id) {
                continue;
            }
            if let Some(orphan) = orphans.get(&item_key(record)) {
                let review = ReviewRecord {
                    record_id: record.record_id.clone(),
                    ..orphan.clone()
                };
                let json = serde_json::to_vec(&review).expect("review serializes");
                self.store
                    .put(&review_key(&job.id, &record.record_id), Bytes::from(json))
                    .await?;
                reviews.insert(record.record_id.clone(), review);
                moved += 1;
            }
        }
        tracing::info!(job_id = %job.id, moved, "review decisions carried to regenerated items");
        Ok(())
    }
}

/// The child indices from `node` down to the node `id`.
fn find_route(node: &PrincipleNode, id: &str, route: &mut Vec<usize>) -> bool {
    if node.id == id {
        return true;
    }
    for (i, child) in node.children.iter().enumerate() {
        route.push(i);
        if find_route(child, id, route) {
            return true;
        }
        route.pop();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_offsets_count_code_points_not_bytes() {
        let text = "Prêt à taux zéro: the rate is 0 %.";
        let start = text.find("the rate").unwrap();
        assert_eq!(char_offset(text, start), Some(18));
        assert_eq!(char_offset(text, 3), None, "inside the ê");
    }

    #[test]
    fn dataset_versions_come_from_the_key() {
        assert_eq!(dataset_version("jobs/al-1/dataset.parquet"), 1);
        assert_eq!(dataset_version("jobs/al-1/dataset.v3.parquet"), 3);
    }
}
