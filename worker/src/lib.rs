//! Principia's worker: everything that talks to an LLM, and shard processing.
//!
//! A worker takes shard messages from a [`queue`], runs a [`generate::Generator`] over their
//! sections, writes each shard's rows as one Parquet part to an [`store::ObjectStore`] with a
//! create-only put, and only then acknowledges the message.

pub mod amqp;
pub mod cache;
pub mod concurrency;
pub mod dedup;
pub mod generate;
pub mod limits;
pub mod llm;
pub mod metrics;
pub mod pool;
pub mod process;
pub mod queue;
pub mod s3;
pub mod store;
pub mod structured_output;
