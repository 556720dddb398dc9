//! Principia's coordinator: ingest documents into a principle tree, plan shards, publish them,
//! track and merge the results; and the `principia` command line.
//!
//! Only the `worker` crate talks to an LLM; this crate never does.

pub mod cli;
pub mod combine;
pub mod embedded;
pub mod estimate;
pub mod fleet;
pub mod ingest;
pub mod lookup;
pub mod merge;
pub mod plan;
pub mod progress;
pub mod report;
pub mod telemetry;
