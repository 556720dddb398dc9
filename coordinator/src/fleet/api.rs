//! The coordinator's HTTP API, with SeekrFlow's resource names and shapes (`/v1/flow/files`,
//! `/v1/flow/alignment`), plus `/metrics`, `/healthz`, `/readyz` and its own OpenAPI description
//! at `/openapi.json`.
//!
//! Every route is registered through [`utoipa_axum`], so the router and the OpenAPI document come
//! from the same list. `/v1/...` requests pass through [`require_key`] (API keys, tenants); the
//! others are public. Request bodies are limited: uploads to the coordinator's upload limit (plus
//! room for the multipart envelope), every other body to [`ApiConfig::max_json_bytes`].

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use bytes::{Bytes, BytesMut};
use proto::{GeneratorKind, GeneratorSpec, Grounding, JobSpec};
use serde::Deserialize;
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi as _};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::keys::{AuthError, Caller, KeyRing};
use super::records::{FileRecord, PURPOSE_FINE_TUNE};
use super::service::{
    CombineRequest, Coordinator, GenerateRequest, ServiceError, check_upload_name, too_large,
    validate_upload,
};
use super::wire::{
    AlignmentList, AlignmentOutput, AlignmentResponse, CombineBody, CombineResponse, ErrorBody,
    ErrorDetail, EstimateBody, FileDeleted, FileList, FileResponse,
    GenerateRequest as GenerateBody, ValidateMetadataRequest, ValidateMetadataResponse,
};
use crate::estimate::{PricedEstimate, Pricing, price};

/// Room for the multipart envelope and the small fields beside the file.
const MULTIPART_OVERHEAD_BYTES: usize = 1024 * 1024;
/// Default limit of request bodies other than uploads.
pub const DEFAULT_MAX_JSON_BYTES: usize = 1024 * 1024;
/// Files listed per page at most.
const MAX_LIST_LIMIT: usize = 1000;

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

/// How the API serves.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub defaults: JobDefaults,
    /// Largest request body other than an upload.
    pub max_json_bytes: usize,
}

#[derive(Clone)]
pub(super) struct AppState {
    pub(super) coordinator: Arc<Coordinator>,
    defaults: Arc<JobDefaults>,
    /// Largest request body other than an upload (also the largest section text).
    pub(super) max_json_bytes: usize,
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Principia",
        description = "Principle alignment data generation. Files and alignment jobs are wire-compatible with SeekrFlow's API (seekrai SDK 0.35). Send an API key in `Authorization` (`Bearer KEY` or the bare key)."
    ),
    modifiers(&ApiKeyScheme),
    security(("api_key" = []))
)]
struct ApiDoc;

/// The `api_key` security scheme: the `Authorization` header.
struct ApiKeyScheme;

impl Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "An API key from `principia keys create`, as `Bearer KEY` or bare",
            ))),
        );
    }
}

/// The API router and its OpenAPI document (also served at `/openapi.json`).
pub fn router_and_openapi(
    coordinator: Arc<Coordinator>,
    keys: Arc<KeyRing>,
    config: ApiConfig,
) -> (Router, OpenApi) {
    let upload_limit = coordinator
        .max_upload_bytes()
        .saturating_add(MULTIPART_OVERHEAD_BYTES);
    let state = AppState {
        coordinator,
        defaults: Arc::new(config.defaults),
        max_json_bytes: config.max_json_bytes,
    };
    let (upload_schemas, upload_paths, upload_route) = routes!(upload_file);
    let authenticated = OpenApiRouter::new()
        .routes((
            upload_schemas,
            upload_paths,
            upload_route.layer(DefaultBodyLimit::max(upload_limit)),
        ))
        .routes(routes!(list_files))
        .routes(routes!(validate_metadata))
        .routes(routes!(retrieve_file, delete_file))
        .routes(routes!(file_content))
        .routes(routes!(generate))
        .routes(routes!(list_jobs))
        .routes(routes!(retrieve_job, delete_job))
        .routes(routes!(job_outputs))
        .routes(routes!(cancel_job))
        .routes(routes!(job_report))
        .routes(routes!(combine))
        .routes(routes!(estimate))
        .merge(super::review_api::routes())
        .route_layer(middleware::from_fn_with_state(keys, require_key));
    let public = OpenApiRouter::new()
        .routes(routes!(metrics))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(openapi_json));
    let (router, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(authenticated)
        .merge(public)
        .layer(DefaultBodyLimit::max(config.max_json_bytes))
        .with_state(state)
        .split_for_parts();
    let router = router
        .merge(super::review_api::pages())
        .fallback(no_route)
        .layer(Extension(Arc::new(openapi.clone())));
    (router, openapi)
}

/// The API router.
pub fn router(coordinator: Arc<Coordinator>, keys: Arc<KeyRing>, config: ApiConfig) -> Router {
    router_and_openapi(coordinator, keys, config).0
}

/// Let a request through with its caller, or answer 401.
async fn require_key(
    State(keys): State<Arc<KeyRing>>,
    mut request: Request,
    next: Next,
) -> Response {
    let verdict = match request.headers().get(header::AUTHORIZATION) {
        None => keys.authenticate(None).await,
        Some(value) => match value.to_str() {
            Ok(value) => keys.authenticate(Some(value)).await,
            Err(_) => Err(AuthError::Invalid),
        },
    };
    match verdict {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(error) => {
            let mut response =
                ApiError(StatusCode::UNAUTHORIZED, error.to_string()).into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            response
        }
    }
}

/// API errors as SeekrFlow-style JSON bodies.
pub struct ApiError(pub(super) StatusCode, pub(super) String);

impl ApiError {
    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        ApiError(StatusCode::BAD_REQUEST, message.into())
    }
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::NotFound(what) => {
                ApiError(StatusCode::NOT_FOUND, format!("{what} not found"))
            }
            ServiceError::Invalid(message) => ApiError::bad_request(message),
            ServiceError::Conflict(message) => ApiError(StatusCode::CONFLICT, message),
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

impl From<axum::extract::multipart::MultipartError> for ApiError {
    fn from(error: axum::extract::multipart::MultipartError) -> Self {
        let status = error.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError(status, "the upload exceeds the request size limit".into())
        } else {
            ApiError(
                status,
                format!("malformed multipart body: {}", error.body_text()),
            )
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                message: self.1.clone(),
                status: self.0.as_u16(),
            },
            detail: self.1,
        };
        (self.0, Json(body)).into_response()
    }
}

pub(super) type ApiResult<T> = Result<T, ApiError>;

pub(super) fn tenant(caller: &Caller) -> Option<&str> {
    caller.tenant.as_deref()
}

async fn no_route() -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "no such route; see /openapi.json".into(),
    )
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct UploadQuery {
    /// `alignment` or `fine-tune` (default); a multipart field `purpose` may give it instead.
    purpose: Option<String>,
}

/// The multipart form of an upload (as SeekrFlow's SDK sends it).
#[derive(utoipa::ToSchema)]
#[expect(
    dead_code,
    reason = "only its OpenAPI schema is used: the upload is read as a stream"
)]
struct UploadForm {
    /// The file's content; its part's file name is the file's name unless `filename` is given.
    #[schema(format = Binary, value_type = String)]
    files: Vec<u8>,
    filename: Option<String>,
    purpose: Option<String>,
}

/// Upload a file. Its purpose and type are checked before its content is read, its size while it
/// is read; nothing is stored unless all pass.
#[utoipa::path(
    put,
    path = "/v1/flow/files",
    tag = "files",
    params(UploadQuery),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "the stored file", body = FileResponse),
        (status = 400, description = "wrong purpose, file type or name, or an empty file", body = ErrorBody),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 413, description = "the file exceeds the upload limit", body = ErrorBody),
    )
)]
async fn upload_file(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<UploadQuery>,
    mut multipart: Multipart,
) -> ApiResult<Json<FileResponse>> {
    let max_bytes = state.coordinator.max_upload_bytes();
    let mut purpose = query.purpose;
    let mut named: Option<String> = None;
    let mut upload: Option<(Option<String>, Bytes)> = None;
    while let Some(mut field) = multipart.next_field().await? {
        match field.name() {
            Some("files" | "file") => {
                if upload.is_some() {
                    return Err(ApiError::bad_request("one file per upload"));
                }
                let part_name = field.file_name().map(str::to_string);
                // Fail fast, before reading the content, when the name is already known bad.
                if let (Some(purpose), Some(name)) =
                    (&purpose, named.as_ref().or(part_name.as_ref()))
                {
                    let errors = check_upload_name(purpose, name);
                    if !errors.is_empty() {
                        return Err(ApiError::bad_request(errors.join("; ")));
                    }
                }
                let mut content = BytesMut::new();
                while let Some(chunk) = field.chunk().await? {
                    let size = content.len() + chunk.len();
                    if size > max_bytes {
                        return Err(ApiError(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!("{} (or more)", too_large(size as u64, max_bytes)),
                        ));
                    }
                    content.extend_from_slice(&chunk);
                }
                upload = Some((part_name, content.freeze()));
            }
            Some("filename") => named = Some(field.text().await?),
            Some("purpose") => purpose = Some(field.text().await?),
            _ => {}
        }
    }
    let (part_name, content) =
        upload.ok_or_else(|| ApiError::bad_request("no `files` part in the upload"))?;
    let filename = named
        .or(part_name)
        .ok_or_else(|| ApiError::bad_request("no file name in the upload"))?;
    let purpose = purpose.unwrap_or_else(|| PURPOSE_FINE_TUNE.to_string());
    let record = state
        .coordinator
        .upload_file(&filename, &purpose, content, tenant(&caller))
        .await?;
    Ok(Json(FileResponse::from(&record)))
}

/// Check an alignment file's purpose, suffix and size before uploading it (SeekrFlow's SDK calls
/// this before every `alignment` upload).
#[utoipa::path(
    post,
    path = "/v1/flow/files/validate_metadata",
    tag = "files",
    request_body = ValidateMetadataRequest,
    responses(
        (status = 200, description = "the verdict", body = ValidateMetadataResponse),
        (status = 401, description = "no valid API key", body = ErrorBody),
    )
)]
async fn validate_metadata(
    State(state): State<AppState>,
    Json(request): Json<ValidateMetadataRequest>,
) -> Json<ValidateMetadataResponse> {
    let name = format!("upload.{}", request.suffix.trim_start_matches('.'));
    let errors = validate_upload(
        &request.purpose,
        &name,
        request.size,
        state.coordinator.max_upload_bytes(),
    );
    Json(ValidateMetadataResponse {
        is_valid: errors.is_empty(),
        errors: (!errors.is_empty()).then(|| errors.join("; ")),
    })
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only files of this purpose.
    purpose: Option<String>,
    /// Files per page (100; at most 1000).
    limit: Option<usize>,
    /// Files to skip.
    offset: Option<usize>,
    /// `created_at` (default), `filename`, `type` or `size`.
    sort_by: Option<String>,
    /// `desc` (default) or `asc`.
    sort_order: Option<String>,
}

/// List the caller's files.
#[utoipa::path(
    get,
    path = "/v1/flow/files",
    tag = "files",
    params(ListQuery),
    responses(
        (status = 200, description = "a page of the caller's files", body = FileList),
        (status = 400, description = "invalid request", body = ErrorBody),
        (status = 401, description = "no valid API key", body = ErrorBody),
    )
)]
async fn list_files(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<FileList>> {
    let descending = match query.sort_order.as_deref().unwrap_or("desc") {
        "desc" => true,
        "asc" => false,
        other => {
            return Err(ApiError::bad_request(format!(
                "sort_order {other:?} is not one of asc, desc"
            )));
        }
    };
    let mut files = state
        .coordinator
        .files(query.purpose.as_deref(), tenant(&caller))
        .await?;
    let key: fn(&FileRecord, &FileRecord) -> std::cmp::Ordering =
        match query.sort_by.as_deref().unwrap_or("created_at") {
            "filename" => |a, b| a.filename.cmp(&b.filename),
            "type" => |a, b| a.file_type.cmp(&b.file_type),
            "size" => |a, b| a.bytes.cmp(&b.bytes),
            "created_at" => |a, b| a.created_at_ms.cmp(&b.created_at_ms),
            other => {
                return Err(ApiError::bad_request(format!(
                    "sort_by {other:?} is not one of created_at, filename, type, size"
                )));
            }
        };
    // Ties keep a stable order by id, so pages do not overlap.
    files.sort_by(|a, b| key(a, b).then_with(|| a.id.cmp(&b.id)));
    if descending {
        files.reverse();
    }
    let data = files
        .iter()
        .skip(query.offset.unwrap_or(0))
        .take(query.limit.unwrap_or(100).min(MAX_LIST_LIMIT))
        .map(FileResponse::from)
        .collect();
    Ok(Json(FileList {
        object: "list".into(),
        data,
    }))
}

/// A file's metadata.
#[utoipa::path(
    get,
    path = "/v1/flow/files/{id}",
    tag = "files",
    params(("id" = String, Path, description = "file id (`file-...`)")),
    responses(
        (status = 200, description = "the file's metadata", body = FileResponse),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 404, description = "no such file for this tenant", body = ErrorBody),
    )
)]
async fn retrieve_file(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<FileResponse>> {
    let record = state.coordinator.file(&id, tenant(&caller)).await?;
    Ok(Json(FileResponse::from(&record)))
}

/// A file's content.
#[utoipa::path(
    get,
    path = "/v1/flow/files/{id}/content",
    tag = "files",
    params(("id" = String, Path, description = "file id (`file-...`)")),
    responses(
        (status = 200, description = "the file's content", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 404, description = "not found for this tenant", body = ErrorBody),
    )
)]
async fn file_content(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (record, content) = state.coordinator.file_content(&id, tenant(&caller)).await?;
    let disposition = format!(
        "attachment; filename=\"{}\"",
        record.filename.replace(['"', '\\'], "")
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

/// Delete a file.
#[utoipa::path(
    delete,
    path = "/v1/flow/files/{id}",
    tag = "files",
    params(("id" = String, Path, description = "file id (`file-...`)")),
    responses(
        (status = 200, description = "the file is deleted", body = FileDeleted),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 404, description = "not found for this tenant", body = ErrorBody),
    )
)]
async fn delete_file(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<FileDeleted>> {
    state.coordinator.delete_file(&id, tenant(&caller)).await?;
    Ok(Json(FileDeleted {
        id,
        object: "file".into(),
        deleted: true,
    }))
}

/// Start an alignment job on uploaded `alignment` files.
#[utoipa::path(
    post,
    path = "/v1/flow/alignment/generate",
    tag = "alignment",
    request_body = GenerateBody,
    responses(
        (status = 200, description = "the new job", body = AlignmentResponse),
        (status = 400, description = "invalid request", body = ErrorBody),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 404, description = "a file is not found for this tenant", body = ErrorBody),
    )
)]
async fn generate(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<GenerateBody>,
) -> ApiResult<Json<AlignmentResponse>> {
    let files = body.files.clone();
    let spec = job_spec(body, &state.defaults, true)?;
    let job = state
        .coordinator
        .create_job(GenerateRequest { spec, files }, tenant(&caller))
        .await?;
    Ok(Json(AlignmentResponse::from(&job)))
}

/// The job a generate request asks for, with the coordinator's defaults. The `openai` generator
/// needs a model to run (`require_model`), not to be estimated.
fn job_spec(
    body: GenerateBody,
    defaults: &JobDefaults,
    require_model: bool,
) -> Result<JobSpec, ApiError> {
    if let Some(kind) = body.job_type.as_deref()
        && kind != "principle"
    {
        return Err(ApiError::bad_request(format!(
            "alignment type {kind:?} is not supported; use \"principle\""
        )));
    }
    let requested = match body.generator.as_deref() {
        None => None,
        Some("extractive") => Some(GeneratorKind::Extractive),
        Some("openai") => Some(GeneratorKind::Openai),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "generator {other:?} is not one of extractive, openai"
            )));
        }
    };
    let model = body.model.or_else(|| defaults.model.clone());
    let kind = requested.unwrap_or(if model.is_some() {
        GeneratorKind::Openai
    } else {
        GeneratorKind::Extractive
    });
    if require_model && kind == GeneratorKind::Openai && model.is_none() {
        return Err(ApiError::bad_request(
            "the openai generator needs a model (request field `model`, or the coordinator's PRINCIPIA_LLM_MODEL)",
        ));
    }
    let openai = kind == GeneratorKind::Openai;
    let grounding = match body.grounding.as_deref() {
        None | Some("sentences") => Grounding::Sentences,
        Some("quotes") => Grounding::Quotes,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "grounding {other:?} is not one of sentences, quotes"
            )));
        }
    };
    let min_items = body.min_items.unwrap_or(defaults.min_items_per_section);
    let max_items = body.max_items.unwrap_or(defaults.max_items_per_section);
    if min_items > max_items {
        return Err(ApiError::bad_request("min_items exceeds max_items"));
    }
    Ok(JobSpec {
        instructions: body.instructions.trim().to_string(),
        system_prompt: body
            .system_prompt
            .map(|prompt| prompt.trim().to_string())
            .filter(|prompt| !prompt.is_empty()),
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
            grounding,
        },
        shard_token_budget: body.shard_tokens.unwrap_or(defaults.shard_token_budget),
        min_items_per_section: min_items,
        max_items_per_section: max_items,
        token_budget: body.token_budget,
        near_duplicate_threshold: defaults.near_duplicate_threshold,
    })
}

/// What a generate request would spend: shards, LLM calls, tokens, cost and time, from the
/// planner and the generator's real prompts, without calling any model or starting a job.
#[utoipa::path(
    post,
    path = "/v1/flow/alignment/estimate",
    tag = "alignment",
    request_body = EstimateBody,
    responses(
        (status = 200, description = "the estimate", body = PricedEstimate),
        (status = 400, description = "invalid request or unreadable documents", body = ErrorBody),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 404, description = "a file is not found for this tenant", body = ErrorBody),
    )
)]
async fn estimate(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<EstimateBody>,
) -> ApiResult<Json<PricedEstimate>> {
    let pricing = Pricing {
        price_in: body.price_in,
        price_out: body.price_out,
        latency_secs: body.latency_secs.unwrap_or(10.0),
        concurrency: body.llm_concurrency.unwrap_or(8),
    };
    for (name, value) in [
        ("price_in", pricing.price_in),
        ("price_out", pricing.price_out),
        ("latency_secs", Some(pricing.latency_secs)),
    ] {
        if let Some(value) = value
            && !(value.is_finite() && value >= 0.0)
        {
            return Err(ApiError::bad_request(format!(
                "{name} must be a number of at least 0"
            )));
        }
    }
    let files = body.job.files.clone();
    let spec = job_spec(body.job, &state.defaults, false)?;
    let usage = state
        .coordinator
        .estimate(&spec, &files, tenant(&caller))
        .await?;
    Ok(Json(price(usage, pricing)))
}

/// Combine `fine-tune` files (generated datasets and the caller's own data) into a new one:
/// normalised to the dataset schema with a `source` column, exact and near duplicates removed,
/// optionally with a stratified evaluation split (a second new file).
#[utoipa::path(
    post,
    path = "/v1/flow/combine",
    tag = "files",
    request_body = CombineBody,
    responses(
        (status = 200, description = "the new files and the counts", body = CombineResponse),
        (status = 400, description = "invalid request or unreadable data (the file and line are named)", body = ErrorBody),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 404, description = "a file is not found for this tenant", body = ErrorBody),
    )
)]
async fn combine(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<CombineBody>,
) -> ApiResult<Json<CombineResponse>> {
    let outcome = state
        .coordinator
        .combine_files(
            CombineRequest {
                files: body.files,
                sources: body.sources,
                name: body.name.unwrap_or_else(|| "combined".into()),
                settings: crate::combine::CombineSettings {
                    eval_fraction: body.eval_fraction,
                    seed: body.seed.unwrap_or(0),
                    near_duplicate_threshold: body
                        .near_duplicate_threshold
                        .unwrap_or(state.defaults.near_duplicate_threshold),
                },
            },
            tenant(&caller),
        )
        .await?;
    Ok(Json(CombineResponse {
        file: FileResponse::from(&outcome.file),
        eval_file: outcome.eval_file.as_ref().map(FileResponse::from),
        summary: outcome.summary,
    }))
}

/// The caller's jobs, newest first.
#[utoipa::path(
    get,
    path = "/v1/flow/alignment",
    tag = "alignment",
    responses(
        (status = 200, description = "the caller's jobs", body = AlignmentList),
        (status = 401, description = "no valid API key", body = ErrorBody),
    )
)]
async fn list_jobs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Json<AlignmentList> {
    let data = state
        .coordinator
        .jobs(tenant(&caller))
        .iter()
        .map(AlignmentResponse::from)
        .collect();
    Json(AlignmentList {
        object: "list".into(),
        data,
    })
}

/// A job's status, progress and outputs.
#[utoipa::path(
    get,
    path = "/v1/flow/alignment/{id}",
    tag = "alignment",
    params(("id" = String, Path, description = "job id (`al-...`)")),
    responses(
        (status = 200, description = "the job", body = AlignmentResponse),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 404, description = "not found for this tenant", body = ErrorBody),
    )
)]
async fn retrieve_job(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<AlignmentResponse>> {
    let job = state.coordinator.job(&id, tenant(&caller))?;
    Ok(Json(AlignmentResponse::from(&job)))
}

/// A job's output files: the dataset (Parquet, purpose `fine-tune`) once it completed.
#[utoipa::path(
    get,
    path = "/v1/flow/alignment/{id}/outputs",
    tag = "alignment",
    params(("id" = String, Path, description = "job id (`al-...`)")),
    responses(
        (status = 200, description = "the outputs (none until the job completed)", body = Vec<AlignmentOutput>),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 404, description = "not found for this tenant", body = ErrorBody),
    )
)]
async fn job_outputs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<AlignmentOutput>>> {
    let job = state.coordinator.job(&id, tenant(&caller))?;
    Ok(Json(AlignmentResponse::from(&job).output_files))
}

/// Cancel a job: publishing stops, workers drop its queued shards, finished shards are kept.
#[utoipa::path(
    post,
    path = "/v1/flow/alignment/{id}/cancel",
    tag = "alignment",
    params(("id" = String, Path, description = "job id (`al-...`)")),
    responses(
        (status = 200, description = "the job: cancelled, unless it had finished", body = AlignmentResponse),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 404, description = "not found for this tenant", body = ErrorBody),
    )
)]
async fn cancel_job(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<AlignmentResponse>> {
    let job = state.coordinator.cancel_job(&id, tenant(&caller)).await?;
    Ok(Json(AlignmentResponse::from(&job)))
}

/// Delete a job with its parts, report and dataset (cancelling it first).
#[utoipa::path(
    delete,
    path = "/v1/flow/alignment/{id}",
    tag = "alignment",
    params(("id" = String, Path, description = "job id (`al-...`)")),
    responses(
        (status = 204, description = "deleted"),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 404, description = "not found for this tenant", body = ErrorBody),
    )
)]
async fn delete_job(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.coordinator.delete_job(&id, tenant(&caller)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A finished job's report: coverage, rejections, tokens (Principia).
#[utoipa::path(
    get,
    path = "/v1/flow/alignment/{id}/report",
    tag = "alignment",
    params(("id" = String, Path, description = "job id (`al-...`)")),
    responses(
        (status = 200, description = "the report", body = serde_json::Value),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 404, description = "no such job, or not finished", body = ErrorBody),
    )
)]
async fn job_report(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let report = state.coordinator.report(&id, tenant(&caller)).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], report).into_response())
}

/// Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    security(()),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String))
)]
async fn metrics() -> Response {
    let body = worker::metrics::render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// Liveness.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    security(()),
    responses((status = 200, description = "alive", content_type = "text/plain", body = String))
)]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "the object store and Redis answer", content_type = "text/plain", body = String),
        (status = 503, description = "a service the coordinator needs does not answer", content_type = "text/plain", body = String),
    )
)]
async fn readyz(State(state): State<AppState>) -> Response {
    match state
        .coordinator
        .check_ready(std::time::Duration::from_secs(2))
        .await
    {
        Ok(()) => "ok".into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
    }
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    security(()),
    responses((status = 200, description = "this document", body = serde_json::Value))
)]
async fn openapi_json(Extension(openapi): Extension<Arc<OpenApi>>) -> Json<OpenApi> {
    Json(openapi.as_ref().clone())
}
