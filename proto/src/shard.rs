//! The shard message: the unit of work on the queue.
//!
//! A shard is a set of whole sections from one subtree, each with the labels of its ancestors, and
//! the job specification needed to process them. A shard's id is derived from the job's
//! fingerprint, the sections' ids and text and the ids of the nodes their lookups show, so a
//! re-run finds the shards it already finished, and editing a section regenerates the shards
//! that quote it as well as its own.

use serde::{Deserialize, Serialize};

use crate::hash::digest;
use crate::job::JobSpec;

/// Version of [`ShardMessage`]. A worker dead-letters a message of a version it does not know.
pub const SHARD_MESSAGE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardSection {
    pub node_id: String,
    pub citation: String,
    /// Labels from the root down to this section (inclusive).
    pub section_path: Vec<String>,
    /// The section's own text.
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardMessage {
    pub version: u32,
    pub job_id: String,
    pub shard_id: String,
    pub spec: JobSpec,
    pub sections: Vec<ShardSection>,
    /// Storage key of the job's lookup index ([`crate::lookup`]) for generators with tools; not
    /// part of the shard id (the index is a function of the tree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookup: Option<String>,
    /// Ids of the nodes the sections' lookups show (the sections they cite, the definitions of
    /// the terms they use), sorted; part of the shard id, since node ids follow text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub looked_up: Vec<String>,
}

impl ShardMessage {
    pub fn new(job_id: String, spec: JobSpec, sections: Vec<ShardSection>) -> Self {
        let shard_id = shard_id(&spec.fingerprint(), &sections, &[]);
        ShardMessage {
            version: SHARD_MESSAGE_VERSION,
            job_id,
            shard_id,
            spec,
            sections,
            lookup: None,
            looked_up: Vec::new(),
        }
    }

    /// Name the job's lookup index and the nodes the sections' lookups show; the id follows.
    pub fn set_lookup(&mut self, key: String, mut looked_up: Vec<String>) {
        looked_up.sort();
        looked_up.dedup();
        self.shard_id = shard_id(&self.spec.fingerprint(), &self.sections, &looked_up);
        self.lookup = Some(key);
        self.looked_up = looked_up;
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("shard message serializes")
    }

    /// Decode and check a message from the wire. Any error here is permanent for that message.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ShardDecodeError> {
        let message: ShardMessage = serde_json::from_slice(bytes)?;
        if message.version != SHARD_MESSAGE_VERSION {
            return Err(ShardDecodeError::Version(message.version));
        }
        let expected = shard_id(
            &message.spec.fingerprint(),
            &message.sections,
            &message.looked_up,
        );
        if message.shard_id != expected {
            return Err(ShardDecodeError::IdMismatch {
                claimed: message.shard_id,
                expected,
            });
        }
        if message.sections.is_empty() {
            return Err(ShardDecodeError::Empty);
        }
        Ok(message)
    }

    /// Approximate number of source tokens.
    pub fn source_tokens(&self) -> usize {
        self.sections.iter().map(|s| approx_tokens(&s.text)).sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ShardDecodeError {
    #[error("shard message is not valid JSON of the expected shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error("shard message version {0} is not supported (expected {SHARD_MESSAGE_VERSION})")]
    Version(u32),
    #[error("shard id {claimed} does not match its content (expected {expected})")]
    IdMismatch { claimed: String, expected: String },
    #[error("shard has no sections")]
    Empty,
}

/// Deterministic shard id from the job fingerprint, the sections' ids and text, and the ids of
/// the nodes their lookups show (none: the id of a shard without lookups).
pub fn shard_id(job_fingerprint: &str, sections: &[ShardSection], looked_up: &[String]) -> String {
    let mut parts: Vec<&[u8]> = vec![b"shard", job_fingerprint.as_bytes()];
    for section in sections {
        parts.push(section.node_id.as_bytes());
        parts.push(section.text.as_bytes());
    }
    if !looked_up.is_empty() {
        parts.push(b"looked-up");
        parts.extend(looked_up.iter().map(|id| id.as_bytes()));
    }
    format!("sh-{}", digest(&parts, 24))
}

/// Token estimate used for planning and budgets: about four bytes of English text per token.
pub fn approx_tokens(text: &str) -> usize {
    text.len().div_ceil(4)
}
