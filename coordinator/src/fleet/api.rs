//! The coordinator's HTTP API, with SeekrFlow's resource names and shapes (`/v1/flow/files`,
//! `/v1/flow/alignment`), plus `/metrics`, `/healthz` and `/readyz`.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use bytes::Bytes;
use proto::{GeneratorKind, GeneratorSpec, JobSpec};
use serde::Deserialize;
use serde_json::{Value, json};

use super::records::{JobRecord, PURPOSE_FINE_TUNE};
use super::service::{
    Coordinator, GenerateRequest, MAX_UPLOAD_BYTES, ServiceError, validate_upload,
};

/// Defaults the coordinator applies to jobs that do not say otherwise.
#[derive(Debug, Clone)]
pub struct JobDefaults {
    /// Generator model; when set, jobs default to the `openai` generator.
    pub model: Option<String>,
    pub judge_model: Option<String>,
    pub shard_token_budget: usize,
    pub min_items_per_section: u32,
    pub max_items_per_section: u32,
    pub near_duplicate_threshold: f64,
}

#[derive(Clone)]
struct AppState {
    coordinator: Arc<Coordinator>,
    defaults: Arc<JobDefaults>,
}

pub fn router(coordinator: Arc<Coordinator>, defaults: JobDefaults) -> Router {
    let state = AppState {
        coordinator,
        defaults: Arc::new(defaults),
    };
    Router::new()
        .route("/v1/flow/files", put(upload_file).get(list_files))
        .route("/v1/flow/files/validate_metadata", post(validate_metadata))
        .route(
            "/v1/flow/files/{id}",
            get(retrieve_file).delete(delete_file),
        )
        .route("/v1/flow/files/{id}/content", get(file_content))
        .route("/v1/flow/alignment/generate", post(generate))
        .route("/v1/flow/alignment", get(list_jobs))
        .route(
            "/v1/flow/alignment/{id}",
            get(retrieve_job).delete(delete_job),
        )
        .route("/v1/flow/alignment/{id}/outputs", get(job_outputs))
        .route("/v1/flow/alignment/{id}/cancel", post(cancel_job))
        .route("/v1/flow/alignment/{id}/report", get(job_report))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES + 64 * 1024))
        .with_state(state)
}

/// API errors as SeekrFlow-style JSON bodies.
pub struct ApiError(StatusCode, String);

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::NotFound(what) => {
                ApiError(StatusCode::NOT_FOUND, format!("{what} not found"))
            }
            ServiceError::Invalid(message) => ApiError(StatusCode::BAD_REQUEST, message),
            ServiceError::Store(error) => {
                tracing::error!(%error, "storage error");
                ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage is unavailable; try again".into(),
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({ "error": { "message": self.1, "status": self.0.as_u16() }, "detail": self.1 });
        (self.0, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

#[derive(Deserialize)]
struct UploadQuery {
    purpose: Option<String>,
}

async fn upload_file(
    State(state): State<AppState>,
    Query(query): Query<UploadQuery>,
    mut multipart: Multipart,
) -> ApiResult<Json<Value>> {
    let mut filename = None;
    let mut content: Option<Bytes> = None;
    let mut purpose = query.purpose;
    while let Some(field) = multipart.next_field().await.map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("malformed multipart body: {e}"),
        )
    })? {
        match field.name() {
            Some("files") | Some("file") => {
                if filename.is_none() {
                    filename = field.file_name().map(str::to_string);
                }
                content = Some(field.bytes().await.map_err(|e| {
                    ApiError(StatusCode::BAD_REQUEST, format!("reading the upload: {e}"))
                })?);
            }
            Some("filename") => {
                filename = Some(field.text().await.map_err(|e| {
                    ApiError(
                        StatusCode::BAD_REQUEST,
                        format!("reading the file name: {e}"),
                    )
                })?);
            }
            Some("purpose") => {
                purpose = Some(field.text().await.map_err(|e| {
                    ApiError(StatusCode::BAD_REQUEST, format!("reading the purpose: {e}"))
                })?);
            }
            _ => {}
        }
    }
    let content = content.ok_or_else(|| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "no `files` part in the upload".into(),
        )
    })?;
    let filename = filename
        .ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, "no file name in the upload".into()))?;
    let purpose = purpose.unwrap_or_else(|| PURPOSE_FINE_TUNE.to_string());
    let record = state
        .coordinator
        .upload_file(&filename, &purpose, content)
        .await?;
    Ok(Json(record.to_api()))
}

#[derive(Deserialize)]
struct ValidateRequest {
    purpose: String,
    suffix: String,
    size: usize,
}

async fn validate_metadata(Json(request): Json<ValidateRequest>) -> Json<Value> {
    let name = format!("upload.{}", request.suffix.trim_start_matches('.'));
    let errors = validate_upload(&request.purpose, &name, request.size);
    Json(json!({ "is_valid": errors.is_empty(), "errors": errors }))
}

#[derive(Deserialize)]
struct ListQuery {
    purpose: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
    sort_by: Option<String>,
    sort_order: Option<String>,
}

async fn list_files(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let mut files = state.coordinator.files(query.purpose.as_deref()).await?;
    match query.sort_by.as_deref().unwrap_or("created_at") {
        "filename" => files.sort_by(|a, b| a.filename.cmp(&b.filename)),
        "type" => files.sort_by(|a, b| a.file_type.cmp(&b.file_type)),
        "size" => files.sort_by_key(|f| f.bytes),
        "created_at" => files.sort_by_key(|f| f.created_at_ms),
        other => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("sort_by {other:?} is not one of created_at, filename, type, size"),
            ));
        }
    }
    if query.sort_order.as_deref().unwrap_or("desc") == "desc" {
        files.reverse();
    }
    let data: Vec<Value> = files
        .iter()
        .skip(query.offset.unwrap_or(0))
        .take(query.limit.unwrap_or(100).min(1000))
        .map(|f| f.to_api())
        .collect();
    Ok(Json(json!({ "object": "list", "data": data })))
}

async fn retrieve_file(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(state.coordinator.file(&id).await?.to_api()))
}

async fn file_content(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (record, content) = state.coordinator.file_content(&id).await?;
    let disposition = format!(
        "attachment; filename=\"{}\"",
        record.filename.replace('"', "")
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        content,
    )
        .into_response())
}

async fn delete_file(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    state.coordinator.delete_file(&id).await?;
    Ok(Json(json!({ "id": id, "object": "file", "deleted": true })))
}

/// `POST /v1/flow/alignment/generate`: SeekrFlow's fields plus Principia's optional settings.
#[derive(Deserialize)]
struct GenerateBody {
    instructions: String,
    files: Vec<String>,
    #[serde(rename = "type", default)]
    job_type: Option<String>,
    #[serde(default)]
    system_prompt: Option<String>,
    #[serde(default)]
    generator: Option<GeneratorKind>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    judge_model: Option<String>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    shard_tokens: Option<usize>,
    #[serde(default)]
    min_items: Option<u32>,
    #[serde(default)]
    max_items: Option<u32>,
    #[serde(default)]
    token_budget: Option<u64>,
}

async fn generate(
    State(state): State<AppState>,
    Json(body): Json<GenerateBody>,
) -> ApiResult<Json<Value>> {
    if let Some(kind) = body.job_type.as_deref()
        && kind != "principle"
    {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("alignment type {kind:?} is not supported; use \"principle\""),
        ));
    }
    let defaults = &state.defaults;
    let model = body.model.or_else(|| defaults.model.clone());
    let kind = body.generator.unwrap_or(if model.is_some() {
        GeneratorKind::Openai
    } else {
        GeneratorKind::Extractive
    });
    if kind == GeneratorKind::Openai && model.is_none() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "the openai generator needs a model (request field `model`, or the coordinator's PRINCIPIA_LLM_MODEL)".into(),
        ));
    }
    let openai = kind == GeneratorKind::Openai;
    let min_items = body.min_items.unwrap_or(defaults.min_items_per_section);
    let max_items = body.max_items.unwrap_or(defaults.max_items_per_section);
    if min_items > max_items {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "min_items exceeds max_items".into(),
        ));
    }
    let spec = JobSpec {
        instructions: body.instructions.trim().to_string(),
        system_prompt: body.system_prompt,
        generator: GeneratorSpec {
            kind,
            model: if openai { model } else { None },
            judge_model: if openai {
                body.judge_model.or_else(|| defaults.judge_model.clone())
            } else {
                None
            },
            temperature: if openai {
                body.temperature.unwrap_or(0.7)
            } else {
                0.0
            },
        },
        shard_token_budget: body.shard_tokens.unwrap_or(defaults.shard_token_budget),
        min_items_per_section: min_items,
        max_items_per_section: max_items,
        token_budget: body.token_budget,
        near_duplicate_threshold: defaults.near_duplicate_threshold,
    };
    let job = state
        .coordinator
        .create_job(GenerateRequest {
            spec,
            files: body.files,
        })
        .await?;
    Ok(Json(job.to_api()))
}

async fn list_jobs(State(state): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = state
        .coordinator
        .jobs()
        .iter()
        .map(JobRecord::to_api)
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

async fn retrieve_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(state.coordinator.job(&id)?.to_api()))
}

async fn job_outputs(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let job = state.coordinator.job(&id)?;
    Ok(Json(job.to_api()["output_files"].clone()))
}

async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(state.coordinator.cancel_job(&id).await?.to_api()))
}

async fn delete_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.coordinator.delete_job(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn job_report(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let report = state.coordinator.report(&id).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], report).into_response())
}

async fn metrics() -> Response {
    let body = worker::metrics::render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
