//! `principia combine`: generated datasets and the user's own training data, merged into one
//! deduplicated dataset, optionally with a held-out evaluation split.
//!
//! Inputs are read by extension. `.parquet` in the dataset schema keeps every column; any other
//! Parquet or `.jsonl` file is read by its columns, in this order of preference: `messages`
//! (chat format: an optional `system`, then one `user` and one `assistant` message),
//! `question`/`answer`, `prompt`/`completion`, `instruction`/`output` (an `input` column is
//! appended to the instruction). An optional `system` column gives the system message, optional
//! `node_id` and `citation` (or `section`) the section a row is about. Other columns are ignored;
//! a file with none of these shapes, a line that is not a JSON object, or a value of the wrong
//! type is an error naming the file and the line (or row).
//!
//! User rows become dataset rows with `generator` `user`, `verdict` `provided`, `question_type`
//! `other`, and a deterministic `record_id` from their source, question and answer. Every row's
//! `source` is its input's file stem, or the name given for it.
//!
//! Rows are then taken in input order and removed, each counted per source and reason, when the
//! question or answer is empty (`empty`), when question and answer repeat an earlier row's
//! (`exact_duplicate`; case and whitespace aside), or when [`NearDuplicates`] finds an earlier row
//! asking the same thing (`near_duplicate`). So a generated dataset listed first wins over a user
//! file that repeats its items, and the other way round.
//!
//! With an evaluation fraction F, rows are grouped by section (`node_id`, else `citation`; rows
//! with neither form one group). The evaluation split has round(F × rows) rows, each group
//! contributing floor(F × its size) plus one more for the groups with the largest remainders;
//! which rows a group gives is decided by a seeded hash of their record ids, so the same seed
//! gives the same split.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch, StructArray};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use proto::Record;
use proto::dataset::{DatasetError, Message};
use proto::hash::digest;
use serde::Serialize;
use serde_json::Value;
use worker::dedup::NearDuplicates;

/// One input file and the name of its rows' source (its file stem when `None`).
#[derive(Debug, Clone)]
pub struct CombineInput {
    pub path: PathBuf,
    pub source: Option<String>,
}

#[derive(Debug, Clone)]
pub struct CombineOptions {
    pub inputs: Vec<CombineInput>,
    /// Output prefix: `OUT.parquet`, `OUT.jsonl` (and `OUT.eval.parquet`, `OUT.eval.jsonl`).
    pub out: PathBuf,
    pub settings: CombineSettings,
}

/// How rows are deduplicated and split.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CombineSettings {
    /// Share of rows held out for evaluation (0 < F < 1), if any.
    pub eval_fraction: Option<f64>,
    pub seed: u64,
    /// Word-set similarity from which a question is a near duplicate (0.5–1).
    pub near_duplicate_threshold: f64,
}

/// One input's content: its source name, its file name (which says how to read it), its bytes.
#[derive(Debug, Clone)]
pub struct InputContent {
    pub source: String,
    pub name: String,
    pub bytes: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum CombineError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: unknown input type; combine reads .parquet and .jsonl files")]
    UnknownExtension { path: String },
    #[error("{path}:{line}: {message}")]
    Line {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("writing {path}: {source}")]
    Write { path: String, source: DatasetError },
    #[error("the evaluation fraction must be between 0 and 1 (exclusive), not {0}")]
    Fraction(f64),
    #[error("the near-duplicate threshold must be between 0.5 and 1, not {0}")]
    Threshold(f64),
    #[error("no input given")]
    NoInput,
}

/// What happened to one input's rows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SourceSummary {
    pub source: String,
    pub path: String,
    pub rows: u64,
    pub kept: u64,
    /// Removed rows per reason (`empty`, `exact_duplicate`, `near_duplicate`).
    pub removed: BTreeMap<String, u64>,
}

/// What `combine` did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CombineSummary {
    pub sources: Vec<SourceSummary>,
    pub rows: u64,
    pub kept: u64,
    pub removed: BTreeMap<String, u64>,
    pub train: u64,
    pub eval: u64,
    /// Section groups the evaluation split was stratified by (0 without a split).
    pub strata: u64,
    /// The files written (the CLI: paths; the API: file ids).
    pub outputs: Vec<String>,
}

/// A row with the name of its source.
#[derive(Debug, Clone, PartialEq)]
pub struct SourcedRecord {
    pub record: Record,
    pub source: String,
}

/// The combined rows.
#[derive(Debug, Clone, Default)]
pub struct Combined {
    pub train: Vec<SourcedRecord>,
    pub eval: Vec<SourcedRecord>,
    pub summary: CombineSummary,
}

/// Read every input, combine, and write the outputs.
pub fn combine_files(options: &CombineOptions) -> Result<CombineSummary, CombineError> {
    let mut inputs = Vec::with_capacity(options.inputs.len());
    for input in &options.inputs {
        let bytes = std::fs::read(&input.path).map_err(|source| CombineError::Io {
            path: input.path.display().to_string(),
            source,
        })?;
        inputs.push(InputContent {
            source: input.source.clone().unwrap_or_else(|| stem(&input.path)),
            name: input.path.display().to_string(),
            bytes: Bytes::from(bytes),
        });
    }
    let mut combined = combine_inputs(inputs, options.settings)?;
    let out = output_prefix(&options.out);
    let mut outputs = write_split(&out, "", &combined.train)?;
    if options.settings.eval_fraction.is_some() {
        outputs.extend(write_split(&out, ".eval", &combined.eval)?);
    }
    combined.summary.outputs = outputs;
    Ok(combined.summary)
}

/// Read and combine inputs already in memory (the API's uploaded files); nothing is written.
pub fn combine_inputs(
    inputs: Vec<InputContent>,
    settings: CombineSettings,
) -> Result<Combined, CombineError> {
    if inputs.is_empty() {
        return Err(CombineError::NoInput);
    }
    if let Some(f) = settings.eval_fraction
        && !(f > 0.0 && f < 1.0)
    {
        return Err(CombineError::Fraction(f));
    }
    if !(0.5..=1.0).contains(&settings.near_duplicate_threshold) {
        return Err(CombineError::Threshold(settings.near_duplicate_threshold));
    }
    let mut sources = Vec::with_capacity(inputs.len());
    for input in inputs {
        let records = read_input(Path::new(&input.name), &input.source, input.bytes)?;
        sources.push((input.source, input.name, records));
    }
    Ok(combine(
        sources,
        settings.near_duplicate_threshold,
        settings.eval_fraction,
        settings.seed,
    ))
}

/// `OUT` without a `.parquet` or `.jsonl` extension.
fn output_prefix(out: &Path) -> PathBuf {
    match out.extension().and_then(|e| e.to_str()) {
        Some("parquet" | "jsonl") => out.with_extension(""),
        _ => out.to_path_buf(),
    }
}

/// The file stem of a path or file name: the default source name.
pub fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// The rows as Parquet in the dataset schema plus `source`.
pub fn encode_parquet(rows: &[SourcedRecord]) -> Result<Vec<u8>, DatasetError> {
    let records: Vec<Record> = rows.iter().map(|r| r.record.clone()).collect();
    let sources: Vec<&str> = rows.iter().map(|r| r.source.as_str()).collect();
    proto::dataset::encode_parquet_with_source(&records, &sources, &[])
}

/// The rows as fine-tuning JSONL: `{"messages": [...]}` per line.
pub fn encode_jsonl(rows: &[SourcedRecord]) -> String {
    let mut jsonl = String::new();
    for row in rows {
        let line = serde_json::json!({ "messages": row.record.messages });
        jsonl.push_str(&line.to_string());
        jsonl.push('\n');
    }
    jsonl
}

/// Write `PREFIX{suffix}.parquet` and `PREFIX{suffix}.jsonl`; returns their paths.
fn write_split(
    prefix: &Path,
    suffix: &str,
    rows: &[SourcedRecord],
) -> Result<Vec<String>, CombineError> {
    let path = |ext: &str| {
        let mut name = prefix.as_os_str().to_owned();
        name.push(format!("{suffix}.{ext}"));
        PathBuf::from(name)
    };
    let parquet_path = path("parquet");
    let parquet = encode_parquet(rows).map_err(|source| CombineError::Write {
        path: parquet_path.display().to_string(),
        source,
    })?;
    write(&parquet_path, &parquet)?;
    let jsonl_path = path("jsonl");
    write(&jsonl_path, encode_jsonl(rows).as_bytes())?;
    Ok(vec![
        parquet_path.display().to_string(),
        jsonl_path.display().to_string(),
    ])
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), CombineError> {
    std::fs::write(path, bytes).map_err(|source| CombineError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// The rows of one input file as dataset rows.
pub fn read_input(path: &Path, source: &str, bytes: Bytes) -> Result<Vec<Record>, CombineError> {
    let name = path.display().to_string();
    match path.extension().and_then(|e| e.to_str()) {
        Some("jsonl") => read_jsonl(&name, source, &bytes),
        Some("parquet") => match proto::dataset::decode_parquet(bytes.clone()) {
            Ok((records, _)) => Ok(records),
            Err(DatasetError::Column(_)) => read_foreign_parquet(&name, source, bytes),
            Err(e) => Err(CombineError::File {
                path: name,
                message: e.to_string(),
            }),
        },
        _ => Err(CombineError::UnknownExtension { path: name }),
    }
}

/// The columns of one user row, before it becomes a dataset row.
#[derive(Debug, Default)]
struct UserRow {
    system: Option<String>,
    question: String,
    answer: String,
    node_id: String,
    citation: String,
}

const SHAPES: &str =
    "messages, question/answer, prompt/completion or instruction/output (optionally input)";

fn read_jsonl(path: &str, source: &str, bytes: &[u8]) -> Result<Vec<Record>, CombineError> {
    let text = std::str::from_utf8(bytes).map_err(|e| CombineError::File {
        path: path.to_string(),
        message: format!("not UTF-8 text ({e})"),
    })?;
    let mut records = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let error = |message: String| CombineError::Line {
            path: path.to_string(),
            line: index + 1,
            message,
        };
        let value: Value =
            serde_json::from_str(line).map_err(|e| error(format!("bad JSON ({e})")))?;
        let Value::Object(object) = value else {
            return Err(error("not a JSON object".into()));
        };
        let row = user_row(&|key| field(&object, key)).map_err(error)?;
        records.push(user_record(source, row));
    }
    Ok(records)
}

/// A column's value in a row: absent, a string, or chat messages.
enum Cell {
    Absent,
    Text(String),
    Messages(Vec<Message>),
}

fn field(object: &serde_json::Map<String, Value>, key: &str) -> Result<Cell, String> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(Cell::Absent),
        Some(Value::String(s)) => Ok(Cell::Text(s.clone())),
        Some(value) if key == "messages" => serde_json::from_value(value.clone())
            .map(Cell::Messages)
            .map_err(|e| format!("`messages` must be a list of {{role, content}} ({e})")),
        Some(_) => Err(format!("`{key}` must be a string")),
    }
}

/// Map a row's columns to question, answer, system message and section.
fn user_row(get: &dyn Fn(&str) -> Result<Cell, String>) -> Result<UserRow, String> {
    let text = |key: &str| -> Result<Option<String>, String> {
        match get(key)? {
            Cell::Absent => Ok(None),
            Cell::Text(s) => Ok(Some(s)),
            Cell::Messages(_) => Err(format!("`{key}` must be a string")),
        }
    };
    let mut row = UserRow {
        system: text("system")?,
        node_id: text("node_id")?.unwrap_or_default(),
        citation: match text("citation")? {
            Some(c) => c,
            None => text("section")?.unwrap_or_default(),
        },
        ..UserRow::default()
    };
    if let Cell::Messages(messages) = get("messages")? {
        let mut user = None;
        let mut assistant = None;
        for message in messages {
            match message.role.as_str() {
                "system" if user.is_none() => row.system = Some(message.content),
                "user" if user.is_none() => user = Some(message.content),
                "assistant" if user.is_some() && assistant.is_none() => {
                    assistant = Some(message.content)
                }
                "user" | "assistant" => {
                    return Err(
                        "only one user and one assistant message per conversation are supported"
                            .into(),
                    );
                }
                other => return Err(format!("message role `{other}` is not supported here")),
            }
        }
        let (Some(question), Some(answer)) = (user, assistant) else {
            return Err("`messages` needs a user message followed by an assistant message".into());
        };
        row.question = question;
        row.answer = answer;
        return Ok(row);
    }
    for (q, a) in [
        ("question", "answer"),
        ("prompt", "completion"),
        ("instruction", "output"),
    ] {
        let (question, answer) = (text(q)?, text(a)?);
        if question.is_none() && answer.is_none() {
            continue;
        }
        let (Some(mut question), Some(answer)) = (question, answer) else {
            return Err(format!(
                "`{q}` and `{a}` go together; one of them is missing"
            ));
        };
        if q == "instruction"
            && let Some(input) = text("input")?.filter(|i| !i.trim().is_empty())
        {
            question = format!("{question}\n\n{input}");
        }
        row.question = question;
        row.answer = answer;
        return Ok(row);
    }
    Err(format!("no recognised columns: expected {SHAPES}"))
}

fn user_record(source: &str, row: UserRow) -> Record {
    let mut messages = Vec::with_capacity(3);
    if let Some(system) = row.system.filter(|s| !s.trim().is_empty()) {
        messages.push(message("system", system));
    }
    messages.push(message("user", row.question.clone()));
    messages.push(message("assistant", row.answer.clone()));
    let record_id = format!(
        "rec-{}",
        digest(
            &[
                b"user",
                source.as_bytes(),
                row.question.as_bytes(),
                row.answer.as_bytes()
            ],
            24
        )
    );
    Record {
        record_id,
        job_id: String::new(),
        shard_id: String::new(),
        node_id: row.node_id,
        section_path: if row.citation.is_empty() {
            Vec::new()
        } else {
            vec![row.citation.clone()]
        },
        citation: row.citation,
        question: row.question,
        answer: row.answer,
        messages,
        evidence: Vec::new(),
        evidence_spans: Vec::new(),
        scores: Vec::new(),
        verdict: "provided".into(),
        question_type: "other".into(),
        generator: "user".into(),
        model: None,
        judge_model: None,
        prompt_version: String::new(),
        created_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    }
}

fn message(role: &str, content: String) -> Message {
    Message {
        role: role.into(),
        content,
    }
}

/// A Parquet file in another schema, read by its columns like a JSONL file.
fn read_foreign_parquet(
    path: &str,
    source: &str,
    bytes: Bytes,
) -> Result<Vec<Record>, CombineError> {
    let file_error = |message: String| CombineError::File {
        path: path.to_string(),
        message,
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| file_error(e.to_string()))?;
    let mut records = Vec::new();
    let mut row_number = 0;
    for batch in reader {
        let batch = batch.map_err(|e| file_error(e.to_string()))?;
        for row in 0..batch.num_rows() {
            row_number += 1;
            let get = |key: &str| parquet_cell(&batch, key, row);
            let user = user_row(&get).map_err(|message| CombineError::Line {
                path: path.to_string(),
                line: row_number,
                message: format!("(row) {message}"),
            })?;
            records.push(user_record(source, user));
        }
    }
    Ok(records)
}

fn parquet_cell(batch: &RecordBatch, key: &str, row: usize) -> Result<Cell, String> {
    let Some(column) = batch.column_by_name(key) else {
        return Ok(Cell::Absent);
    };
    if column.is_null(row) {
        return Ok(Cell::Absent);
    }
    if let Some(strings) = column.as_string_opt::<i32>() {
        return Ok(Cell::Text(strings.value(row).to_string()));
    }
    if let Some(strings) = column.as_string_opt::<i64>() {
        return Ok(Cell::Text(strings.value(row).to_string()));
    }
    if key == "messages"
        && let Some(list) = column.as_list_opt::<i32>()
        && let Some(items) = list.value(row).as_struct_opt()
    {
        return struct_messages(items).map(Cell::Messages);
    }
    Err(format!(
        "`{key}` has type {}, expected {}",
        column.data_type(),
        if key == "messages" {
            "list<struct<role, content>>"
        } else {
            "string"
        }
    ))
}

fn struct_messages(items: &StructArray) -> Result<Vec<Message>, String> {
    let text = |name: &str| {
        items
            .column_by_name(name)
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| format!("`messages` items need a string `{name}`"))
    };
    let (roles, contents) = (text("role")?, text("content")?);
    Ok((0..items.len())
        .map(|i| message(roles.value(i), contents.value(i).to_string()))
        .collect())
}

/// Normalised text for exact-duplicate detection: lower case, whitespace collapsed.
fn normalised(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Deduplicate across sources in order and split; see the module docs.
pub fn combine(
    sources: Vec<(String, String, Vec<Record>)>,
    near_duplicate_threshold: f64,
    eval_fraction: Option<f64>,
    seed: u64,
) -> Combined {
    let mut summary = CombineSummary::default();
    let mut exact: HashSet<(String, String)> = HashSet::new();
    let mut near = NearDuplicates::new(near_duplicate_threshold);
    let mut kept: Vec<SourcedRecord> = Vec::new();
    for (source, path, records) in sources {
        let mut counts = SourceSummary {
            source: source.clone(),
            path,
            rows: records.len() as u64,
            ..SourceSummary::default()
        };
        for record in records {
            let reason = if record.question.trim().is_empty() || record.answer.trim().is_empty() {
                Some("empty")
            } else if !exact.insert((normalised(&record.question), normalised(&record.answer))) {
                Some("exact_duplicate")
            } else if !near.admit(&record.question, &record.answer) {
                Some("near_duplicate")
            } else {
                None
            };
            match reason {
                Some(reason) => {
                    *counts.removed.entry(reason.into()).or_default() += 1;
                    *summary.removed.entry(reason.into()).or_default() += 1;
                }
                None => {
                    counts.kept += 1;
                    kept.push(SourcedRecord {
                        record,
                        source: source.clone(),
                    });
                }
            }
        }
        summary.rows += counts.rows;
        summary.kept += counts.kept;
        summary.sources.push(counts);
    }
    let (train, eval, strata) = match eval_fraction {
        Some(fraction) => split(kept, fraction, seed),
        None => (kept, Vec::new(), 0),
    };
    summary.train = train.len() as u64;
    summary.eval = eval.len() as u64;
    summary.strata = strata;
    Combined {
        train,
        eval,
        summary,
    }
}

fn stratum(record: &Record) -> &str {
    if record.node_id.is_empty() {
        &record.citation
    } else {
        &record.node_id
    }
}

/// A seeded, deterministic order key.
fn seeded(seed: u64, text: &str) -> String {
    digest(&[b"split", &seed.to_le_bytes(), text.as_bytes()], 16)
}

/// Stratified split by section: (train, eval, number of strata), both in input order.
fn split(
    rows: Vec<SourcedRecord>,
    fraction: f64,
    seed: u64,
) -> (Vec<SourcedRecord>, Vec<SourcedRecord>, u64) {
    let mut strata: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, row) in rows.iter().enumerate() {
        strata.entry(stratum(&row.record)).or_default().push(i);
    }
    let target = (fraction * rows.len() as f64).round() as usize;
    // floor(F × size) per stratum, then one more for the largest remainders.
    let mut quotas: HashMap<&str, usize> = HashMap::new();
    let mut remainders: Vec<(f64, String, &str)> = Vec::new();
    for (key, members) in &strata {
        let exact = fraction * members.len() as f64;
        quotas.insert(key, exact.floor() as usize);
        remainders.push((exact - exact.floor(), seeded(seed, key), key));
    }
    remainders.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let assigned: usize = quotas.values().sum();
    for (_, _, key) in remainders.iter().take(target.saturating_sub(assigned)) {
        *quotas.get_mut(key).expect("every stratum has a quota") += 1;
    }
    let mut held_out = vec![false; rows.len()];
    for (key, members) in &strata {
        let mut order = members.clone();
        order.sort_by_cached_key(|&i| seeded(seed, &rows[i].record.record_id));
        for &i in order.iter().take(quotas[key]) {
            held_out[i] = true;
        }
    }
    let count = strata.len() as u64;
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for (row, out) in rows.into_iter().zip(held_out) {
        if out { eval.push(row) } else { train.push(row) }
    }
    (train, eval, count)
}

/// The summary as lines for the terminal.
pub fn render(summary: &CombineSummary) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let reasons = |removed: &BTreeMap<String, u64>| {
        if removed.is_empty() {
            return String::new();
        }
        let parts: Vec<String> = removed.iter().map(|(r, n)| format!("{r} {n}")).collect();
        format!(" ({})", parts.join(", "))
    };
    for source in &summary.sources {
        let removed: u64 = source.removed.values().sum();
        let _ = writeln!(
            out,
            "{}: {} rows, {} kept, {} removed{}",
            source.source,
            source.rows,
            source.kept,
            removed,
            reasons(&source.removed)
        );
    }
    let removed: u64 = summary.removed.values().sum();
    let _ = writeln!(
        out,
        "total: {} rows, {} kept, {} removed{}",
        summary.rows,
        summary.kept,
        removed,
        reasons(&summary.removed)
    );
    if summary.strata > 0 {
        let _ = writeln!(
            out,
            "split: {} train, {} eval (stratified over {} sections)",
            summary.train, summary.eval, summary.strata
        );
    }
    for output in &summary.outputs {
        let _ = writeln!(out, "wrote {output}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jsonl(lines: &[&str]) -> Result<Vec<Record>, CombineError> {
        read_jsonl("mine.jsonl", "mine", lines.join("\n").as_bytes())
    }

    #[test]
    fn every_column_variant_maps_to_question_and_answer() {
        let records = jsonl(&[
            r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q1?"}, {"role": "assistant", "content": "A1."}]}"#,
            r#"{"question": "Q2?", "answer": "A2.", "citation": "§ 2", "id": 7}"#,
            "",
            r#"{"prompt": "Q3?", "completion": "A3."}"#,
            r#"{"instruction": "Summarise.", "input": "Text.", "output": "A4."}"#,
        ])
        .unwrap();
        let pairs: Vec<(&str, &str)> = records
            .iter()
            .map(|r| (r.question.as_str(), r.answer.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("Q1?", "A1."),
                ("Q2?", "A2."),
                ("Q3?", "A3."),
                ("Summarise.\n\nText.", "A4.")
            ]
        );
        assert_eq!(records[0].messages[0].content, "Be brief.");
        assert_eq!(records[0].messages.len(), 3);
        assert_eq!(records[1].citation, "§ 2");
        assert_eq!(records[1].generator, "user");
    }

    #[test]
    fn bad_lines_name_the_file_and_line() {
        let error = |lines: &[&str]| jsonl(lines).unwrap_err().to_string();
        let ok = r#"{"question": "Q?", "answer": "A."}"#;
        assert!(error(&[ok, "{not json"]).starts_with("mine.jsonl:2: bad JSON"));
        assert!(
            error(&[ok, ok, r#"{"text": "x"}"#]).contains("mine.jsonl:3: no recognised columns")
        );
        assert!(error(&[r#"{"question": "Q?"}"#]).contains("`answer` go together"));
        assert!(
            error(&[r#"{"question": 1, "answer": "A"}"#]).contains("`question` must be a string")
        );
        assert!(error(&["[1]"]).contains("not a JSON object"));
        assert!(
            error(&[r#"{"messages": [{"role": "user", "content": "Q"}]}"#])
                .contains("followed by an assistant")
        );
        let unknown = read_input(Path::new("x.csv"), "x", Bytes::new()).unwrap_err();
        assert!(unknown.to_string().contains("x.csv"), "{unknown}");
    }

    fn foreign_parquet(columns: Vec<(&str, arrow_array::ArrayRef)>) -> Bytes {
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        let mut buffer = Vec::new();
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(&mut buffer, batch.schema(), None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        Bytes::from(buffer)
    }

    #[test]
    fn foreign_parquet_is_read_by_its_columns() {
        use arrow_array::{ArrayRef, Int64Array, LargeStringArray, StringArray};
        use std::sync::Arc;
        let bytes = foreign_parquet(vec![
            ("id", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
            (
                "prompt",
                Arc::new(StringArray::from(vec!["Q1?", "Q2?"])) as ArrayRef,
            ),
            (
                "completion",
                Arc::new(LargeStringArray::from(vec!["A1.", "A2."])) as ArrayRef,
            ),
        ]);
        let records = read_input(Path::new("theirs.parquet"), "theirs", bytes).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(
            (records[1].question.as_str(), records[1].answer.as_str()),
            ("Q2?", "A2.")
        );

        let unknown = foreign_parquet(vec![(
            "text",
            Arc::new(StringArray::from(vec!["x"])) as ArrayRef,
        )]);
        let error = read_input(Path::new("theirs.parquet"), "theirs", unknown).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("theirs.parquet:1: (row) no recognised columns"),
            "{error}"
        );
        let typed = foreign_parquet(vec![
            ("question", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
            (
                "answer",
                Arc::new(StringArray::from(vec!["A."])) as ArrayRef,
            ),
        ]);
        let error = read_input(Path::new("t.parquet"), "t", typed).unwrap_err();
        assert!(
            error.to_string().contains("`question` has type Int64"),
            "{error}"
        );
    }

    fn rows(source: &str, pairs: &[(&str, &str, &str)]) -> (String, String, Vec<Record>) {
        let records = pairs
            .iter()
            .map(|(q, a, section)| {
                user_record(
                    source,
                    UserRow {
                        question: q.to_string(),
                        answer: a.to_string(),
                        citation: section.to_string(),
                        ..UserRow::default()
                    },
                )
            })
            .collect();
        (source.into(), format!("{source}.jsonl"), records)
    }

    #[test]
    fn duplicates_are_removed_across_sources_in_order_and_counted() {
        let first = rows(
            "generated",
            &[
                (
                    "What fee applies to a late payment?",
                    "A fee of 15 dollars applies.",
                    "s1",
                ),
                (
                    "Who may cancel a loan within 30 days?",
                    "The borrower may cancel it.",
                    "s2",
                ),
            ],
        );
        let second = rows(
            "mine",
            &[
                (
                    "what fee applies to a  late payment?",
                    "A fee of 15 dollars applies.",
                    "",
                ),
                (
                    "Who can cancel a loan within 30 days?",
                    "The borrower may cancel it.",
                    "",
                ),
                ("", "No question.", ""),
                ("How are members contacted?", "By mail.", ""),
            ],
        );
        let combined = combine(vec![first, second], 0.5, None, 0);
        let summary = &combined.summary;
        assert_eq!((summary.rows, summary.kept), (6, 3));
        let mine = &summary.sources[1];
        assert_eq!(mine.kept, 1);
        for reason in ["exact_duplicate", "near_duplicate", "empty"] {
            assert_eq!(mine.removed.get(reason), Some(&1), "{reason}: {mine:?}");
        }
        assert_eq!(combined.train.len(), 3);
        assert_eq!(combined.train[2].source, "mine");
    }

    #[test]
    fn the_split_is_stratified_by_section_and_seeded() {
        let pairs: Vec<(String, String, String)> = (0..40)
            .map(|i| {
                (
                    format!("Question number {i} about rule {}?", i * 7),
                    format!("Answer {i}."),
                    format!("s{}", i % 4),
                )
            })
            .collect();
        let borrowed: Vec<(&str, &str, &str)> = pairs
            .iter()
            .map(|(q, a, s)| (q.as_str(), a.as_str(), s.as_str()))
            .collect();
        let split_with = |seed| combine(vec![rows("mine", &borrowed)], 1.0, Some(0.25), seed);
        let combined = split_with(1);
        assert_eq!((combined.train.len(), combined.eval.len()), (30, 10));
        assert_eq!(combined.summary.strata, 4);
        let mut per_section: BTreeMap<&str, usize> = BTreeMap::new();
        for row in &combined.eval {
            *per_section.entry(row.record.citation.as_str()).or_default() += 1;
        }
        assert!(
            per_section.values().all(|&n| (2..=3).contains(&n)),
            "{per_section:?}"
        );
        let ids = |rows: &[SourcedRecord]| -> Vec<String> {
            rows.iter().map(|r| r.record.record_id.clone()).collect()
        };
        assert_eq!(ids(&split_with(1).eval), ids(&combined.eval));
        assert_ne!(ids(&split_with(2).eval), ids(&combined.eval));
    }
}
