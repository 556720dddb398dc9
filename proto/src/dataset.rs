//! The dataset schema: one row per accepted item, and its Parquet codec.
//!
//! The Arrow schema below is the contract documented in the README. Columns use only types that
//! pyarrow, pandas, DuckDB and Hugging Face `datasets` read without conversion (strings, lists,
//! structs, float64, int64, timestamps). Parts and merged datasets use the same schema; a shard's
//! [`crate::ShardReport`] travels in the Parquet key-value metadata of its part.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, TimestampMillisecondType, UInt64Type};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float64Array, ListArray, RecordBatch, StringArray, StructArray,
    TimestampMillisecondArray, UInt64Array,
};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::hash::digest;

/// Version of the dataset schema, stored in every file's metadata.
pub const DATASET_SCHEMA_VERSION: &str = "1";
/// Metadata key of the schema version.
pub const SCHEMA_VERSION_KEY: &str = "principia.schema_version";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// Where an evidence quote sits: byte offsets into the node's text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceSpan {
    pub node_id: String,
    pub start: u64,
    pub end: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub criterion: String,
    pub value: f64,
}

/// One accepted item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub record_id: String,
    pub job_id: String,
    pub shard_id: String,
    pub node_id: String,
    pub citation: String,
    pub section_path: Vec<String>,
    pub question: String,
    pub answer: String,
    pub messages: Vec<Message>,
    /// Verbatim quotes from the source that support the answer.
    pub evidence: Vec<String>,
    /// Where each quote of `evidence` sits (same order).
    pub evidence_spans: Vec<EvidenceSpan>,
    pub scores: Vec<Score>,
    /// The critique's verdict (`accept`, or `accept_after_refine`).
    pub verdict: String,
    /// Kind of question (`definition`, `obligation`, `prohibition`, `threshold`, ...).
    pub question_type: String,
    pub generator: String,
    pub model: Option<String>,
    pub judge_model: Option<String>,
    pub prompt_version: String,
    /// Milliseconds since the Unix epoch, UTC.
    pub created_at: i64,
}

/// Deterministic record id: independent of the job id, so that the same request yields the same
/// ids whichever way it ran.
pub fn record_id(shard_id: &str, node_id: &str, question: &str, answer: &str) -> String {
    format!(
        "rec-{}",
        digest(
            &[
                b"record",
                shard_id.as_bytes(),
                node_id.as_bytes(),
                question.as_bytes(),
                answer.as_bytes()
            ],
            24
        )
    )
}

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("column `{0}` is missing or has the wrong type")]
    Column(&'static str),
}

fn message_fields() -> Fields {
    Fields::from(vec![
        Field::new("role", DataType::Utf8, false),
        Field::new("content", DataType::Utf8, false),
    ])
}

fn span_fields() -> Fields {
    Fields::from(vec![
        Field::new("node_id", DataType::Utf8, false),
        Field::new("start", DataType::UInt64, false),
        Field::new("end", DataType::UInt64, false),
    ])
}

fn score_fields() -> Fields {
    Fields::from(vec![
        Field::new("criterion", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
    ])
}

fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", item, true)))
}

/// The Arrow schema of the dataset.
pub fn schema() -> SchemaRef {
    let utf8 = |name: &str| Field::new(name, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        utf8("record_id"),
        utf8("job_id"),
        utf8("shard_id"),
        utf8("node_id"),
        utf8("citation"),
        Field::new("section_path", list_of(DataType::Utf8), false),
        utf8("question"),
        utf8("answer"),
        Field::new(
            "messages",
            list_of(DataType::Struct(message_fields())),
            false,
        ),
        Field::new("evidence", list_of(DataType::Utf8), false),
        Field::new(
            "evidence_spans",
            list_of(DataType::Struct(span_fields())),
            false,
        ),
        Field::new("scores", list_of(DataType::Struct(score_fields())), false),
        utf8("verdict"),
        utf8("question_type"),
        utf8("generator"),
        Field::new("model", DataType::Utf8, true),
        Field::new("judge_model", DataType::Utf8, true),
        utf8("prompt_version"),
        Field::new(
            "created_at",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
    ]))
}

fn strings<'a>(values: impl IntoIterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn list(item: DataType, lengths: Vec<usize>, values: ArrayRef) -> ArrayRef {
    Arc::new(ListArray::new(
        Arc::new(Field::new("item", item, true)),
        OffsetBuffer::from_lengths(lengths),
        values,
        None,
    ))
}

fn string_list(records: &[Record], get: impl Fn(&Record) -> &Vec<String>) -> ArrayRef {
    let lengths = records.iter().map(|r| get(r).len()).collect();
    let values = strings(
        records
            .iter()
            .flat_map(|r| get(r).iter().map(String::as_str)),
    );
    list(DataType::Utf8, lengths, values)
}

/// Build a record batch in the dataset schema.
pub fn to_batch(records: &[Record]) -> Result<RecordBatch, DatasetError> {
    let text = |get: fn(&Record) -> &str| strings(records.iter().map(get));

    let messages = records.iter().flat_map(|r| &r.messages);
    let messages = StructArray::new(
        message_fields(),
        vec![
            strings(messages.clone().map(|m| m.role.as_str())),
            strings(messages.map(|m| m.content.as_str())),
        ],
        None,
    );
    let spans = records.iter().flat_map(|r| &r.evidence_spans);
    let spans = StructArray::new(
        span_fields(),
        vec![
            strings(spans.clone().map(|s| s.node_id.as_str())),
            Arc::new(UInt64Array::from_iter_values(
                spans.clone().map(|s| s.start),
            )),
            Arc::new(UInt64Array::from_iter_values(spans.map(|s| s.end))),
        ],
        None,
    );
    let scores = records.iter().flat_map(|r| &r.scores);
    let scores = StructArray::new(
        score_fields(),
        vec![
            strings(scores.clone().map(|s| s.criterion.as_str())),
            Arc::new(Float64Array::from_iter_values(scores.map(|s| s.value))),
        ],
        None,
    );

    let columns: Vec<ArrayRef> = vec![
        text(|r| &r.record_id),
        text(|r| &r.job_id),
        text(|r| &r.shard_id),
        text(|r| &r.node_id),
        text(|r| &r.citation),
        string_list(records, |r| &r.section_path),
        text(|r| &r.question),
        text(|r| &r.answer),
        list(
            DataType::Struct(message_fields()),
            records.iter().map(|r| r.messages.len()).collect(),
            Arc::new(messages),
        ),
        string_list(records, |r| &r.evidence),
        list(
            DataType::Struct(span_fields()),
            records.iter().map(|r| r.evidence_spans.len()).collect(),
            Arc::new(spans),
        ),
        list(
            DataType::Struct(score_fields()),
            records.iter().map(|r| r.scores.len()).collect(),
            Arc::new(scores),
        ),
        text(|r| &r.verdict),
        text(|r| &r.question_type),
        text(|r| &r.generator),
        Arc::new(StringArray::from(
            records
                .iter()
                .map(|r| r.model.as_deref())
                .collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            records
                .iter()
                .map(|r| r.judge_model.as_deref())
                .collect::<Vec<_>>(),
        )),
        text(|r| &r.prompt_version),
        Arc::new(
            TimestampMillisecondArray::from_iter_values(records.iter().map(|r| r.created_at))
                .with_timezone("UTC"),
        ),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}

/// Read records back from a batch in the dataset schema.
pub fn from_batch(batch: &RecordBatch) -> Result<Vec<Record>, DatasetError> {
    let column = |name: &'static str| batch.column_by_name(name).ok_or(DatasetError::Column(name));
    let text = |name: &'static str| -> Result<&StringArray, DatasetError> {
        column(name)?
            .as_string_opt::<i32>()
            .ok_or(DatasetError::Column(name))
    };
    let list = |name: &'static str| -> Result<&ListArray, DatasetError> {
        column(name)?
            .as_list_opt::<i32>()
            .ok_or(DatasetError::Column(name))
    };
    let record_id = text("record_id")?;
    let job_id = text("job_id")?;
    let shard_id = text("shard_id")?;
    let node_id = text("node_id")?;
    let citation = text("citation")?;
    let section_path = list("section_path")?;
    let question = text("question")?;
    let answer = text("answer")?;
    let messages = list("messages")?;
    let evidence = list("evidence")?;
    let evidence_spans = list("evidence_spans")?;
    let scores = list("scores")?;
    let verdict = text("verdict")?;
    let question_type = text("question_type")?;
    let generator = text("generator")?;
    let model = text("model")?;
    let judge_model = text("judge_model")?;
    let prompt_version = text("prompt_version")?;
    let created_at = column("created_at")?
        .as_primitive_opt::<TimestampMillisecondType>()
        .ok_or(DatasetError::Column("created_at"))?;

    let optional = |array: &StringArray, row: usize| {
        (!array.is_null(row)).then(|| array.value(row).to_string())
    };
    let mut records = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        records.push(Record {
            record_id: record_id.value(row).into(),
            job_id: job_id.value(row).into(),
            shard_id: shard_id.value(row).into(),
            node_id: node_id.value(row).into(),
            citation: citation.value(row).into(),
            section_path: string_items(section_path, row, "section_path")?,
            question: question.value(row).into(),
            answer: answer.value(row).into(),
            messages: struct_items(messages, row, "messages", |s, i| {
                Ok(Message {
                    role: struct_text(s, 0, i, "messages")?,
                    content: struct_text(s, 1, i, "messages")?,
                })
            })?,
            evidence: string_items(evidence, row, "evidence")?,
            evidence_spans: struct_items(evidence_spans, row, "evidence_spans", |s, i| {
                let number = |c: usize| {
                    s.column(c)
                        .as_primitive_opt::<UInt64Type>()
                        .map(|a| a.value(i))
                        .ok_or(DatasetError::Column("evidence_spans"))
                };
                Ok(EvidenceSpan {
                    node_id: struct_text(s, 0, i, "evidence_spans")?,
                    start: number(1)?,
                    end: number(2)?,
                })
            })?,
            scores: struct_items(scores, row, "scores", |s, i| {
                Ok(Score {
                    criterion: struct_text(s, 0, i, "scores")?,
                    value: s
                        .column(1)
                        .as_primitive_opt::<Float64Type>()
                        .map(|a| a.value(i))
                        .ok_or(DatasetError::Column("scores"))?,
                })
            })?,
            verdict: verdict.value(row).into(),
            question_type: question_type.value(row).into(),
            generator: generator.value(row).into(),
            model: optional(model, row),
            judge_model: optional(judge_model, row),
            prompt_version: prompt_version.value(row).into(),
            created_at: created_at.value(row),
        });
    }
    Ok(records)
}

fn string_items(
    list: &ListArray,
    row: usize,
    name: &'static str,
) -> Result<Vec<String>, DatasetError> {
    let values = list.value(row);
    let values = values
        .as_string_opt::<i32>()
        .ok_or(DatasetError::Column(name))?;
    Ok(values.iter().map(|v| v.unwrap_or("").to_string()).collect())
}

fn struct_items<T>(
    list: &ListArray,
    row: usize,
    name: &'static str,
    item: impl Fn(&StructArray, usize) -> Result<T, DatasetError>,
) -> Result<Vec<T>, DatasetError> {
    let values = list.value(row);
    let values = values.as_struct_opt().ok_or(DatasetError::Column(name))?;
    (0..values.len()).map(|i| item(values, i)).collect()
}

fn struct_text(
    s: &StructArray,
    column: usize,
    row: usize,
    name: &'static str,
) -> Result<String, DatasetError> {
    s.column(column)
        .as_string_opt::<i32>()
        .map(|a| a.value(row).to_string())
        .ok_or(DatasetError::Column(name))
}

/// Encode records as one Parquet file (zstd), with extra key-value metadata.
pub fn encode_parquet(
    records: &[Record],
    metadata: &[(&str, String)],
) -> Result<Vec<u8>, DatasetError> {
    write_parquet(schema(), records, None, metadata)
}

/// Column that `principia combine` adds after the dataset's columns: where each row came from
/// (a generated dataset or the user's own data). Readers of the dataset schema ignore it.
pub const SOURCE_COLUMN: &str = "source";

/// The dataset schema plus [`SOURCE_COLUMN`].
pub fn schema_with_source() -> SchemaRef {
    let mut fields: Vec<Field> = schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(SOURCE_COLUMN, DataType::Utf8, false));
    Arc::new(Schema::new(fields))
}

/// Encode records with their sources (same order and length) as one Parquet file in
/// [`schema_with_source`].
pub fn encode_parquet_with_source(
    records: &[Record],
    sources: &[&str],
    metadata: &[(&str, String)],
) -> Result<Vec<u8>, DatasetError> {
    if sources.len() != records.len() {
        return Err(DatasetError::Column(SOURCE_COLUMN));
    }
    write_parquet(schema_with_source(), records, Some(sources), metadata)
}

fn write_parquet(
    schema: SchemaRef,
    records: &[Record],
    sources: Option<&[&str]>,
    metadata: &[(&str, String)],
) -> Result<Vec<u8>, DatasetError> {
    let mut kv = vec![KeyValue::new(
        SCHEMA_VERSION_KEY.to_string(),
        DATASET_SCHEMA_VERSION.to_string(),
    )];
    kv.extend(
        metadata
            .iter()
            .map(|(k, v)| KeyValue::new(k.to_string(), v.clone())),
    );
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_key_value_metadata(Some(kv))
        .build();
    let mut buffer = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buffer, schema.clone(), Some(props))?;
    for (index, chunk) in records.chunks(8192).enumerate() {
        let batch = to_batch(chunk)?;
        let batch = match sources {
            None => batch,
            Some(sources) => {
                let start = index * 8192;
                let column: ArrayRef = Arc::new(StringArray::from(
                    sources[start..start + chunk.len()].to_vec(),
                ));
                let mut columns = batch.columns().to_vec();
                columns.push(column);
                RecordBatch::try_new(schema.clone(), columns)?
            }
        };
        writer.write(&batch)?;
    }
    writer.close()?;
    Ok(buffer)
}

/// Decode a Parquet file in the dataset schema, with its key-value metadata.
pub fn decode_parquet(
    bytes: Bytes,
) -> Result<(Vec<Record>, HashMap<String, String>), DatasetError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
    let metadata = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .filter_map(|e| e.value.clone().map(|v| (e.key.clone(), v)))
                .collect()
        })
        .unwrap_or_default();
    let mut records = Vec::new();
    for batch in builder.build()? {
        records.extend(from_batch(&batch?)?);
    }
    Ok((records, metadata))
}

/// Metadata key marking a reviewed export (value `1`).
pub const REVIEWED_KEY: &str = "principia.reviewed";

/// Review statuses a reviewed export may carry.
pub const REVIEW_STATUSES: &[&str] = &["approved", "pending", "rejected"];

/// The review state of one row of a reviewed export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewColumns {
    /// `approved`, `pending` or `rejected`.
    pub status: String,
    pub reason: Option<String>,
    pub human_edited: bool,
    /// Milliseconds since the Unix epoch of the last review, if any.
    pub reviewed_at: Option<i64>,
}

fn review_fields() -> Vec<Field> {
    vec![
        Field::new("review_status", DataType::Utf8, false),
        Field::new("review_reason", DataType::Utf8, true),
        Field::new("human_edited", DataType::Boolean, false),
        Field::new(
            "reviewed_at",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
    ]
}

/// The schema of a reviewed export: the dataset's columns, then `review_status`,
/// `review_reason`, `human_edited` and `reviewed_at`.
pub fn reviewed_schema() -> SchemaRef {
    let mut fields: Vec<Field> = schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.extend(review_fields());
    Arc::new(Schema::new(fields))
}

/// Encode records with their review state (`reviews[i]` belongs to `records[i]`) as one Parquet
/// file (zstd) in [`reviewed_schema`].
pub fn encode_reviewed_parquet(
    records: &[Record],
    reviews: &[ReviewColumns],
) -> Result<Vec<u8>, DatasetError> {
    assert_eq!(records.len(), reviews.len(), "one review state per record");
    let kv = vec![
        KeyValue::new(
            SCHEMA_VERSION_KEY.to_string(),
            DATASET_SCHEMA_VERSION.to_string(),
        ),
        KeyValue::new(REVIEWED_KEY.to_string(), "1".to_string()),
    ];
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_key_value_metadata(Some(kv))
        .build();
    let schema = reviewed_schema();
    let mut buffer = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buffer, schema.clone(), Some(props))?;
    for (chunk, states) in records.chunks(8192).zip(reviews.chunks(8192)) {
        let base = to_batch(chunk)?;
        let mut columns = base.columns().to_vec();
        columns.push(strings(states.iter().map(|r| r.status.as_str())));
        columns.push(Arc::new(StringArray::from(
            states
                .iter()
                .map(|r| r.reason.as_deref())
                .collect::<Vec<_>>(),
        )));
        columns.push(Arc::new(BooleanArray::from(
            states.iter().map(|r| r.human_edited).collect::<Vec<_>>(),
        )));
        columns.push(Arc::new(
            TimestampMillisecondArray::from(
                states.iter().map(|r| r.reviewed_at).collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        ));
        writer.write(&RecordBatch::try_new(schema.clone(), columns)?)?;
    }
    writer.close()?;
    Ok(buffer)
}

/// A string of a `Utf8`, `LargeUtf8` or `Utf8View` array (`None` when null or not a string).
fn any_string(array: &dyn Array, row: usize) -> Option<&str> {
    if array.is_null(row) {
        return None;
    }
    if let Some(a) = array.as_string_opt::<i32>() {
        return Some(a.value(row));
    }
    if let Some(a) = array.as_string_opt::<i64>() {
        return Some(a.value(row));
    }
    array.as_string_view_opt().map(|a| a.value(row))
}

fn is_string(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

/// The item type of a list column (`List`, `LargeList` or `ListView`).
fn list_item(data_type: &DataType) -> Option<&DataType> {
    match data_type {
        DataType::List(f) | DataType::LargeList(f) | DataType::ListView(f) => Some(f.data_type()),
        _ => None,
    }
}

/// One row's entries of a list column, whichever offset width it uses.
fn list_value(array: &dyn Array, row: usize) -> Option<ArrayRef> {
    if array.is_null(row) {
        return None;
    }
    if let Some(a) = array.as_list_opt::<i32>() {
        return Some(a.value(row));
    }
    array.as_list_opt::<i64>().map(|a| a.value(row))
}

/// Check that a Parquet file can be a `fine-tune` dataset: a `messages` column of
/// `list<struct<role: string, content: string>>` whose every row holds a `user` and an
/// `assistant` message with text, Principia's other columns (if present) of their types, review
/// columns (if present) with known values; at least one row. Returns the number of rows, or every
/// problem found (a few per kind), `; `-separated.
pub fn check_fine_tune_parquet(bytes: Bytes) -> Result<u64, String> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| format!("not a readable Parquet file: {e}"))?;
    let schema = builder.schema().clone();
    let mut errors = Vec::new();
    match schema.field_with_name("messages") {
        Err(_) => errors
            .push("no `messages` column (list<struct<role: string, content: string>>)".to_string()),
        Ok(field) => {
            let fine = list_item(field.data_type()).is_some_and(|item| match item {
                DataType::Struct(fields) => ["role", "content"].iter().all(|name| {
                    fields
                        .iter()
                        .any(|f| f.name() == name && is_string(f.data_type()))
                }),
                _ => false,
            });
            if !fine {
                errors.push(format!(
                    "column `messages` is {}, not list<struct<role: string, content: string>>",
                    field.data_type()
                ));
            }
        }
    }
    // Principia's own columns, where present, keep their types.
    let expected = schema_fields_by_name();
    for field in schema.fields() {
        let Some(wanted) = expected.iter().find(|f| f.name() == field.name()) else {
            continue;
        };
        let matches = match wanted.data_type() {
            DataType::Utf8 => is_string(field.data_type()),
            DataType::List(item) if is_string(item.data_type()) => {
                list_item(field.data_type()).is_some_and(is_string)
            }
            DataType::List(_) => list_item(field.data_type()).is_some(),
            DataType::Boolean => field.data_type() == &DataType::Boolean,
            DataType::Timestamp(_, _) => matches!(field.data_type(), DataType::Timestamp(_, _)),
            other => other == field.data_type(),
        };
        if !matches {
            errors.push(format!(
                "column `{}` is {}, expected {}",
                field.name(),
                field.data_type(),
                wanted.data_type()
            ));
        }
    }
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    let reader = builder
        .build()
        .map_err(|e| format!("not a readable Parquet file: {e}"))?;
    let mut rows = 0u64;
    let mut row_errors = Vec::new();
    let note = |errors: &mut Vec<String>, message: String| {
        if errors.len() < 5 {
            errors.push(message);
        }
    };
    for batch in reader {
        let batch = batch.map_err(|e| format!("reading the Parquet file failed: {e}"))?;
        let messages = batch.column_by_name("messages").expect("checked above");
        let status = batch.column_by_name("review_status");
        for i in 0..batch.num_rows() {
            let row = rows + i as u64;
            let mut has_user = false;
            let mut has_assistant = false;
            if let Some(entries) = list_value(messages.as_ref(), i)
                && let Some(entries) = entries.as_struct_opt()
            {
                let role = entries.column_by_name("role").expect("checked above");
                let content = entries.column_by_name("content").expect("checked above");
                for m in 0..entries.len() {
                    let text = any_string(content.as_ref(), m).unwrap_or("").trim();
                    match any_string(role.as_ref(), m) {
                        Some("user") if !text.is_empty() => has_user = true,
                        Some("assistant") if !text.is_empty() => has_assistant = true,
                        Some("user" | "assistant" | "system") => {}
                        other => note(
                            &mut row_errors,
                            format!(
                                "row {row}: message role {other:?} is not system, user or assistant"
                            ),
                        ),
                    }
                }
            }
            if !(has_user && has_assistant) {
                note(
                    &mut row_errors,
                    format!(
                        "row {row}: `messages` needs a user and an assistant message with text"
                    ),
                );
            }
            if let Some(status) = status {
                let value = any_string(status.as_ref(), i);
                if !value.is_some_and(|v| REVIEW_STATUSES.contains(&v)) {
                    note(
                        &mut row_errors,
                        format!(
                            "row {row}: review_status {value:?} is not one of {}",
                            REVIEW_STATUSES.join(", ")
                        ),
                    );
                }
            }
        }
        rows += batch.num_rows() as u64;
    }
    if !row_errors.is_empty() {
        return Err(row_errors.join("; "));
    }
    if rows == 0 {
        return Err("the file has no rows".into());
    }
    Ok(rows)
}

/// The dataset's and the review columns' fields.
fn schema_fields_by_name() -> Vec<Field> {
    reviewed_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: usize) -> Record {
        Record {
            record_id: format!("rec-{i}"),
            job_id: "al-1".into(),
            shard_id: "sh-1".into(),
            node_id: "n1".into(),
            citation: "1 CFR 1.1".into(),
            section_path: vec!["Title 1".into(), "§ 1.1".into()],
            question: "What is it?".into(),
            answer: "It is.".into(),
            messages: vec![
                Message {
                    role: "user".into(),
                    content: "What is it?".into(),
                },
                Message {
                    role: "assistant".into(),
                    content: "It is.".into(),
                },
            ],
            evidence: vec!["It is.".into()],
            evidence_spans: vec![EvidenceSpan {
                node_id: "n1".into(),
                start: 0,
                end: 6,
            }],
            scores: vec![Score {
                criterion: "faithfulness".into(),
                value: 1.0,
            }],
            verdict: "accept".into(),
            question_type: "definition".into(),
            generator: "extractive".into(),
            model: i.is_multiple_of(2).then(|| "m".to_string()),
            judge_model: None,
            prompt_version: "extractive-1".into(),
            created_at: 1_700_000_000_000,
        }
    }

    #[test]
    fn parquet_round_trip_keeps_every_field() {
        let records: Vec<Record> = (0..5).map(sample).collect();
        let bytes = encode_parquet(&records, &[("k", "v".into())]).unwrap();
        let (back, meta) = decode_parquet(Bytes::from(bytes)).unwrap();
        assert_eq!(back, records);
        assert_eq!(meta.get("k").map(String::as_str), Some("v"));
    }

    #[test]
    fn a_source_column_is_added_after_the_dataset_and_ignored_by_its_readers() {
        let records: Vec<Record> = (0..3).map(sample).collect();
        let bytes = encode_parquet_with_source(&records, &["gen", "gen", "mine"], &[]).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(bytes.clone())).unwrap();
        let fields = reader.schema().fields().len();
        assert_eq!(fields, schema().fields().len() + 1);
        let batch = reader.build().unwrap().next().unwrap().unwrap();
        let sources = batch
            .column_by_name(SOURCE_COLUMN)
            .unwrap()
            .as_string::<i32>();
        assert_eq!(sources.value(2), "mine");
        let (back, _) = decode_parquet(Bytes::from(bytes)).unwrap();
        assert_eq!(back, records);
        assert!(encode_parquet_with_source(&records, &["one"], &[]).is_err());
    }

    #[test]
    fn empty_file_round_trips() {
        let bytes = encode_parquet(&[], &[]).unwrap();
        let (back, _) = decode_parquet(Bytes::from(bytes)).unwrap();
        assert!(back.is_empty());
    }

    #[test]
    fn reviewed_exports_pass_the_fine_tune_check_and_bad_files_do_not() {
        let records: Vec<Record> = (0..3).map(sample).collect();
        let reviews: Vec<ReviewColumns> = (0..3)
            .map(|i| ReviewColumns {
                status: ["approved", "pending", "approved"][i].into(),
                reason: None,
                human_edited: i == 0,
                reviewed_at: (i != 1).then_some(1_700_000_000_000),
            })
            .collect();
        let bytes = encode_reviewed_parquet(&records, &reviews).unwrap();
        assert_eq!(check_fine_tune_parquet(Bytes::from(bytes.clone())), Ok(3));
        // The dataset columns still decode.
        let (back, meta) = decode_parquet(Bytes::from(bytes)).unwrap();
        assert_eq!(back, records);
        assert_eq!(meta.get(REVIEWED_KEY).map(String::as_str), Some("1"));
        // A plain dataset passes too.
        let plain = encode_parquet(&records, &[]).unwrap();
        assert_eq!(check_fine_tune_parquet(Bytes::from(plain)), Ok(3));

        // No messages column.
        let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, false)]));
        let batch =
            RecordBatch::try_new(schema.clone(), vec![strings(["hello"].into_iter())]).unwrap();
        let mut buffer = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut buffer, schema, None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let error = check_fine_tune_parquet(Bytes::from(buffer)).unwrap_err();
        assert!(error.contains("no `messages` column"), "{error}");

        // An empty assistant message and an unknown review status.
        let mut broken = sample(0);
        broken.messages[1].content = " ".into();
        let bad = encode_reviewed_parquet(
            &[broken],
            &[ReviewColumns {
                status: "maybe".into(),
                reason: None,
                human_edited: false,
                reviewed_at: None,
            }],
        )
        .unwrap();
        let error = check_fine_tune_parquet(Bytes::from(bad)).unwrap_err();
        assert!(error.contains("row 0: `messages` needs"), "{error}");
        assert!(error.contains("review_status Some(\"maybe\")"), "{error}");

        assert!(check_fine_tune_parquet(Bytes::from_static(b"PAR1 nope")).is_err());
        let empty = encode_parquet(&[], &[]).unwrap();
        assert_eq!(
            check_fine_tune_parquet(Bytes::from(empty)).unwrap_err(),
            "the file has no rows"
        );
    }
}
