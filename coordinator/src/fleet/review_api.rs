//! The review routes: JSON under `/v1/flow/alignment/{id}/review/...` (behind API keys, in the
//! OpenAPI document), and the review page at `/review` and `/review/{id}`: plain server-rendered
//! HTML with a little JavaScript (`/review/assets/review.js`) that calls the JSON routes. The page
//! itself holds no data, so it needs no key; it asks for one and keeps it in `sessionStorage`.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::api::{ApiError, ApiResult, AppState, tenant};
use super::keys::Caller;
use super::records::ReviewStatus;
use super::review::{
    ExportFormat, RegenerateResponse, ReviewItem, ReviewSection, ReviewTree, ReviewUpdate,
    SectionEdit, SectionEdited,
};
use super::wire::ErrorBody;

/// The JSON routes (registered behind the API key check).
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(review_tree))
        .routes(routes!(review_section, edit_section))
        .routes(routes!(review_item, put_review, patch_review))
        .routes(routes!(regenerate))
        .routes(routes!(export_reviewed))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct TreeQuery {
    /// Whose children to list (a node id); absent: the root.
    parent: Option<String>,
    /// Nodes per page (50; at most 500).
    limit: Option<usize>,
    /// Nodes to skip.
    offset: Option<usize>,
}

/// The principle tree with coverage at a glance: per node, items accepted by generation, approved,
/// rejected and reviewed, for the node and its subtree, and its sections without items. One level
/// per request (the children of `parent`), a page at a time.
#[utoipa::path(
    get,
    path = "/v1/flow/alignment/{id}/review/tree",
    tag = "review",
    params(("id" = String, Path, description = "job id (`al-...`)"), TreeQuery),
    responses(
        (status = 200, description = "a page of nodes with their counts", body = ReviewTree),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 404, description = "no such job for this tenant, or no such node", body = ErrorBody),
        (status = 409, description = "the job has no dataset yet", body = ErrorBody),
    )
)]
async fn review_tree(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<TreeQuery>,
) -> ApiResult<Json<ReviewTree>> {
    let tree = state
        .coordinator
        .review_tree(
            &id,
            tenant(&caller),
            query.parent.as_deref(),
            query.limit,
            query.offset,
        )
        .await?;
    Ok(Json(tree))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct SectionQuery {
    /// Only items with this review status (`pending`, `approved`, `rejected`).
    status: Option<ReviewStatus>,
    /// Items per page (50; at most 500).
    limit: Option<usize>,
    /// Items to skip.
    offset: Option<usize>,
}

/// A section: its text (newest tree version) and a page of its items with their evidence (byte
/// offsets as stored, and code point offsets into the current text) and review state.
#[utoipa::path(
    get,
    path = "/v1/flow/alignment/{id}/review/sections/{node_id}",
    tag = "review",
    params(
        ("id" = String, Path, description = "job id (`al-...`)"),
        ("node_id" = String, Path, description = "node id in the newest tree version"),
        SectionQuery
    ),
    responses(
        (status = 200, description = "the section and a page of its items", body = ReviewSection),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 404, description = "no such job for this tenant, or no such section", body = ErrorBody),
        (status = 409, description = "the job has no dataset yet", body = ErrorBody),
    )
)]
async fn review_section(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, node_id)): Path<(String, String)>,
    Query(query): Query<SectionQuery>,
) -> ApiResult<Json<ReviewSection>> {
    let section = state
        .coordinator
        .review_section(
            &id,
            tenant(&caller),
            &node_id,
            query.status,
            query.limit,
            query.offset,
        )
        .await?;
    Ok(Json(section))
}

/// Replace a section's text: the job records a new tree version, and the section a new id (ids
/// follow the text). `regenerate` then generates only the shards whose text changed.
#[utoipa::path(
    put,
    path = "/v1/flow/alignment/{id}/review/sections/{node_id}",
    tag = "review",
    params(
        ("id" = String, Path, description = "job id (`al-...`)"),
        ("node_id" = String, Path, description = "node id in the newest tree version"),
    ),
    request_body = SectionEdit,
    responses(
        (status = 200, description = "the new tree version and the section's new id", body = SectionEdited),
        (status = 400, description = "the text is too long", body = ErrorBody),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 404, description = "no such job for this tenant, or no such section", body = ErrorBody),
    )
)]
async fn edit_section(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, node_id)): Path<(String, String)>,
    Json(edit): Json<SectionEdit>,
) -> ApiResult<Json<SectionEdited>> {
    let edited = state
        .coordinator
        .edit_section(
            &id,
            tenant(&caller),
            &node_id,
            edit.text,
            state.max_json_bytes,
        )
        .await?;
    Ok(Json(edited))
}

/// One item with its evidence and review state.
#[utoipa::path(
    get,
    path = "/v1/flow/alignment/{id}/review/items/{record_id}",
    tag = "review",
    params(
        ("id" = String, Path, description = "job id (`al-...`)"),
        ("record_id" = String, Path, description = "the item's `record_id`"),
    ),
    responses(
        (status = 200, description = "the item", body = ReviewItem),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 404, description = "no such job for this tenant, or no such item", body = ErrorBody),
        (status = 409, description = "the job has no dataset yet", body = ErrorBody),
    )
)]
async fn review_item(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, record_id)): Path<(String, String)>,
) -> ApiResult<Json<ReviewItem>> {
    let item = state
        .coordinator
        .review_item(&id, tenant(&caller), &record_id)
        .await?;
    Ok(Json(item))
}

/// Set an item's review: `status` (required; `rejected` needs a `reason`), and the edited
/// `question` and `answer` (absent: as generated). An edited item is human-edited: regeneration
/// never replaces it. Idempotent.
#[utoipa::path(
    put,
    path = "/v1/flow/alignment/{id}/review/items/{record_id}",
    tag = "review",
    params(
        ("id" = String, Path, description = "job id (`al-...`)"),
        ("record_id" = String, Path, description = "the item's `record_id`"),
    ),
    request_body = ReviewUpdate,
    responses(
        (status = 200, description = "the item as reviewed", body = ReviewItem),
        (status = 400, description = "no status, a rejection without a reason, or empty text", body = ErrorBody),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 404, description = "no such job for this tenant, or no such item", body = ErrorBody),
        (status = 409, description = "the job has no dataset yet", body = ErrorBody),
    )
)]
async fn put_review(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, record_id)): Path<(String, String)>,
    Json(update): Json<ReviewUpdate>,
) -> ApiResult<Json<ReviewItem>> {
    let item = state
        .coordinator
        .update_review(&id, tenant(&caller), &record_id, update, true)
        .await?;
    Ok(Json(item))
}

/// Change some of an item's review: only the fields given (`status`, `reason`, `question`,
/// `answer`). Idempotent.
#[utoipa::path(
    patch,
    path = "/v1/flow/alignment/{id}/review/items/{record_id}",
    tag = "review",
    params(
        ("id" = String, Path, description = "job id (`al-...`)"),
        ("record_id" = String, Path, description = "the item's `record_id`"),
    ),
    request_body = ReviewUpdate,
    responses(
        (status = 200, description = "the item as reviewed", body = ReviewItem),
        (status = 400, description = "a rejection without a reason, or empty text", body = ErrorBody),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 404, description = "no such job for this tenant, or no such item", body = ErrorBody),
        (status = 409, description = "the job has no dataset yet", body = ErrorBody),
    )
)]
async fn patch_review(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, record_id)): Path<(String, String)>,
    Json(update): Json<ReviewUpdate>,
) -> ApiResult<Json<ReviewItem>> {
    let item = state
        .coordinator
        .update_review(&id, tenant(&caller), &record_id, update, false)
        .await?;
    Ok(Json(item))
}

/// Generate the newest tree version: shard ids derive from section text, so only the shards whose
/// text changed are generated again; every other shard, and every review decision, is kept
/// (human-edited items are never replaced). The job runs again and completes with a new dataset.
#[utoipa::path(
    post,
    path = "/v1/flow/alignment/{id}/review/regenerate",
    tag = "review",
    params(("id" = String, Path, description = "job id (`al-...`)")),
    responses(
        (status = 200, description = "what is generated again", body = RegenerateResponse),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 404, description = "no such job for this tenant", body = ErrorBody),
        (status = 409, description = "the job is still running, or nothing was edited", body = ErrorBody),
    )
)]
async fn regenerate(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<RegenerateResponse>> {
    let response = state.coordinator.regenerate(&id, tenant(&caller)).await?;
    Ok(Json(response))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ExportQuery {
    /// `parquet` (default: the dataset's columns plus `review_status`, `review_reason`,
    /// `human_edited`, `reviewed_at`) or `jsonl` (`{"messages": [...]}` per line, for fine-tuning).
    format: Option<String>,
}

/// The reviewed dataset: edits applied, rejected items left out, pending and approved kept.
#[utoipa::path(
    get,
    path = "/v1/flow/alignment/{id}/review/export",
    tag = "review",
    params(("id" = String, Path, description = "job id (`al-...`)"), ExportQuery),
    responses(
        (status = 200, description = "the reviewed dataset", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "unknown format", body = ErrorBody),
        (status = 401, description = "no valid API key", body = ErrorBody),
        (status = 404, description = "no such job for this tenant", body = ErrorBody),
        (status = 409, description = "the job has no dataset yet", body = ErrorBody),
    )
)]
async fn export_reviewed(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<ExportQuery>,
) -> ApiResult<Response> {
    let (format, suffix, content_type) = match query.format.as_deref().unwrap_or("parquet") {
        "parquet" => (
            ExportFormat::Parquet,
            "parquet",
            "application/vnd.apache.parquet",
        ),
        "jsonl" => (ExportFormat::Jsonl, "jsonl", "application/jsonl"),
        other => {
            return Err(ApiError::bad_request(format!(
                "format {other:?} is not one of parquet, jsonl"
            )));
        }
    };
    let bytes = state
        .coordinator
        .export_reviewed(&id, tenant(&caller), format)
        .await?;
    let disposition = format!("attachment; filename=\"{id}-reviewed.{suffix}\"");
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        bytes,
    )
        .into_response())
}

// ----- the page -----

const PAGE_CSS: &str = include_str!("review_page/review.css");
const PAGE_JS: &str = include_str!("review_page/review.js");
const JOB_PAGE: &str = include_str!("review_page/job.html");
const LIST_PAGE: &str = include_str!("review_page/list.html");

/// The review page's routes (no key needed: the pages carry no data).
pub(super) fn pages() -> Router {
    Router::new()
        .route("/review", get(list_page))
        .route("/review/{id}", get(job_page))
        .route("/review/assets/review.js", get(script))
        .route("/review/assets/review.css", get(style))
}

/// A page with the headers every review page gets: scripts and styles only from this origin.
fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn list_page() -> Response {
    html(StatusCode::OK, LIST_PAGE.to_string())
}

async fn job_page(Path(id): Path<String>) -> Response {
    let well_formed = id
        .strip_prefix("al-")
        .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric()));
    if !well_formed {
        let body = LIST_PAGE.replace(
            "<!--notice-->",
            &format!(
                "<p class=\"notice\" role=\"alert\">No job {}: job ids look like <code>al-…</code>.</p>",
                html_escape::encode_text(&id)
            ),
        );
        return html(StatusCode::NOT_FOUND, body);
    }
    let body = JOB_PAGE
        .replace(
            "{{job_id_attr}}",
            &html_escape::encode_double_quoted_attribute(&id),
        )
        .replace("{{job_id}}", &html_escape::encode_text(&id));
    html(StatusCode::OK, body)
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE_JS,
    )
        .into_response()
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE_CSS,
    )
        .into_response()
}
