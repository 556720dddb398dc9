//! Principia's shared vocabulary: the principle tree, the job specification, the shard message that
//! travels over the queue, the per-shard report, and the dataset schema with its Parquet codec.
//!
//! Everything here is pure data and pure functions: no file, network or clock access. Wire types
//! carry an explicit `version` so that a worker can refuse a message it does not understand
//! (dead-letter) instead of misreading it.

pub mod dataset;
pub mod events;
pub mod hash;
pub mod job;
pub mod lookup;
pub mod report;
pub mod shard;
pub mod tree;

pub use dataset::{DatasetError, EvidenceSpan, Message, Record, Score};
pub use events::ShardEvent;
pub use job::{GeneratorKind, GeneratorSpec, Grounding, JobSpec};
pub use report::{RejectReason, ShardReport, TokenUsage, UncoveredSection};
pub use shard::{SHARD_MESSAGE_VERSION, ShardMessage, ShardSection};
pub use tree::{NodeStatus, PrincipleNode, PrincipleTree};
