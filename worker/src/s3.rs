//! [`ObjectStore`] on S3 or an S3-compatible store (MinIO, moto) with aws-sdk-s3.
//!
//! Credentials come from the standard AWS chain (environment, profile, web identity, ...); the
//! region from [`S3Config::region`], else the standard chain, else `us-east-1`. A custom endpoint
//! (with path-style addressing for MinIO and moto) turns request checksums down to "when
//! required", since many S3-compatible stores reject the SDK's default checksum trailers.
//! Create-only puts send `If-None-Match: *`: 412 means the key exists, 409 (a concurrent
//! conditional write) is retried.

use std::time::Duration;

use async_trait::async_trait;
use aws_config::meta::region::RegionProviderChain;
use aws_config::{BehaviorVersion, ConfigLoader, Region};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::operation::head_object::HeadObjectError;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use crate::store::{ObjectStore, PutOutcome, StoreError, validate_key};

/// The region used when neither the configuration nor the environment names one.
pub const DEFAULT_REGION: &str = "us-east-1";
/// Attempts of a create-only put answered with 409 ConditionalRequestConflict.
const CONFLICT_ATTEMPTS: u32 = 4;

#[derive(Debug, Clone, Default)]
pub struct S3Config {
    pub bucket: String,
    /// A custom endpoint URL (MinIO, moto); `None` for AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Prepended to every key, e.g. `principia/` (a trailing `/` is added if missing).
    pub prefix: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible stores need.
    pub force_path_style: bool,
}

/// A bucket, optionally under a key prefix.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
}

impl S3Store {
    /// A store using the standard AWS configuration chain.
    pub async fn new(config: S3Config) -> Result<Self, StoreError> {
        Self::with_loader(config, aws_config::defaults(BehaviorVersion::latest())).await
    }

    /// Like [`new`](Self::new), starting from `loader` (e.g. one with explicit credentials);
    /// the region, endpoint and addressing style of `config` are applied on top.
    pub async fn with_loader(config: S3Config, loader: ConfigLoader) -> Result<Self, StoreError> {
        let prefix = match config.prefix.as_deref() {
            None | Some("") => String::new(),
            Some(prefix) => {
                let trimmed = prefix.trim_end_matches('/');
                validate_key(trimmed)?;
                format!("{trimmed}/")
            }
        };
        let region = RegionProviderChain::first_try(config.region.clone().map(Region::new))
            .or_default_provider()
            .or_else(Region::new(DEFAULT_REGION));
        let mut loader = loader.region(region);
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let sdk_config = loader.load().await;
        let mut s3_config = aws_sdk_s3::config::Builder::from(&sdk_config)
            .force_path_style(config.force_path_style);
        if config.endpoint.is_some() {
            s3_config = s3_config
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        }
        Ok(S3Store {
            client: Client::from_conf(s3_config.build()),
            bucket: config.bucket,
            prefix,
        })
    }

    fn full_key(&self, key: &str) -> Result<String, StoreError> {
        validate_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }
}

fn status<E>(error: &SdkError<E>) -> Option<u16> {
    error
        .raw_response()
        .map(|response| response.status().as_u16())
}

fn remote<E>(operation: &str, key: &str, error: E) -> StoreError
where
    E: std::error::Error,
{
    StoreError::Remote {
        key: key.to_string(),
        message: format!("{operation}: {}", DisplayErrorContext(error)),
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<PutOutcome, StoreError> {
        let full_key = self.full_key(key)?;
        let mut attempt = 1;
        loop {
            let result = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&full_key)
                .if_none_match("*")
                .body(ByteStream::from(body.clone()))
                .send()
                .await;
            let error = match result {
                Ok(_) => return Ok(PutOutcome::Created),
                Err(error) => error,
            };
            if status(&error) == Some(412) || error.code() == Some("PreconditionFailed") {
                return Ok(PutOutcome::AlreadyExists);
            }
            let conflict =
                status(&error) == Some(409) || error.code() == Some("ConditionalRequestConflict");
            if !conflict || attempt >= CONFLICT_ATTEMPTS {
                return Err(remote("PutObject (If-None-Match)", key, error));
            }
            tracing::debug!(key, attempt, "conditional put conflicted; retrying");
            tokio::time::sleep(Duration::from_millis(100) * attempt).await;
            attempt += 1;
        }
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let full_key = self.full_key(key)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&full_key)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| remote("PutObject", key, e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let full_key = self.full_key(key)?;
        let result = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full_key)
            .send()
            .await;
        match result {
            Ok(output) => {
                let data = output
                    .body
                    .collect()
                    .await
                    .map_err(|e| remote("GetObject (reading the body)", key, e))?;
                Ok(Some(data.into_bytes()))
            }
            Err(e)
                if matches!(e.as_service_error(), Some(GetObjectError::NoSuchKey(_)))
                    || status(&e) == Some(404) =>
            {
                Ok(None)
            }
            Err(e) => Err(remote("GetObject", key, e)),
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        let full_key = self.full_key(key)?;
        let result = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&full_key)
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e)
                if matches!(e.as_service_error(), Some(HeadObjectError::NotFound(_)))
                    || status(&e) == Some(404) =>
            {
                Ok(false)
            }
            Err(e) => Err(remote("HeadObject", key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let full_prefix = format!("{}{prefix}", self.prefix);
        let mut keys = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full_prefix)
                .set_continuation_token(continuation.take())
                .send()
                .await
                .map_err(|e| remote("ListObjectsV2", prefix, e))?;
            for object in page.contents() {
                let Some(key) = object.key().and_then(|k| k.strip_prefix(&self.prefix)) else {
                    continue;
                };
                // Objects this store could not have written (and could not read back) are skipped.
                if validate_key(key).is_ok() {
                    keys.push(key.to_string());
                }
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            match page.next_continuation_token() {
                Some(token) => continuation = Some(token.to_string()),
                None => {
                    return Err(StoreError::Remote {
                        key: prefix.to_string(),
                        message: "ListObjectsV2: truncated page without a continuation token"
                            .into(),
                    });
                }
            }
        }
        keys.sort();
        Ok(keys)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let full_key = self.full_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full_key)
            .send()
            .await
            .map_err(|e| remote("DeleteObject", key, e))?;
        Ok(())
    }
}
