//! The HTTP client behind `principia submit`, `status`, `download` and `jobs`: it speaks the same
//! API as SeekrFlow's SDK.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

pub struct Client {
    base: String,
    http: reqwest::Client,
    api_key: Option<String>,
}

impl Client {
    pub fn new(base_url: &str, api_key: Option<String>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Client {
            base: base_url.trim_end_matches('/').to_string(),
            http,
            api_key,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.api_key {
            Some(key) => request.header(reqwest::header::AUTHORIZATION, format!("Bearer {key}")),
            None => request,
        }
    }

    async fn send(
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> anyhow::Result<reqwest::Response> {
        let response = request
            .send()
            .await
            .with_context(|| format!("{what}: the coordinator did not answer"))?;
        let status = response.status();
        if !status.is_success() {
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let message = body["error"]["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| body.to_string());
            bail!("{what}: {status}: {message}");
        }
        Ok(response)
    }

    /// Upload a document for alignment; returns its file id.
    pub async fn upload(&self, path: &Path) -> anyhow::Result<String> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{}: not a file name", path.display()))?
            .to_string();
        let content = tokio::fs::read(path)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        let form = reqwest::multipart::Form::new()
            .part(
                "files",
                reqwest::multipart::Part::bytes(content).file_name(name.clone()),
            )
            .text("filename", name);
        let request = self
            .request(reqwest::Method::PUT, "/v1/flow/files")
            .query(&[("purpose", "alignment")])
            .multipart(form);
        let file: Value = Self::send(request, &format!("uploading {}", path.display()))
            .await?
            .json()
            .await?;
        file["id"]
            .as_str()
            .map(str::to_string)
            .context("the upload answer has no file id")
    }

    pub async fn generate(&self, body: Value) -> anyhow::Result<Value> {
        let request = self
            .request(reqwest::Method::POST, "/v1/flow/alignment/generate")
            .json(&body);
        Ok(Self::send(request, "starting the job")
            .await?
            .json()
            .await?)
    }

    pub async fn job(&self, id: &str) -> anyhow::Result<Value> {
        let request = self.request(reqwest::Method::GET, &format!("/v1/flow/alignment/{id}"));
        Ok(Self::send(request, &format!("reading job {id}"))
            .await?
            .json()
            .await?)
    }

    pub async fn cancel(&self, id: &str) -> anyhow::Result<Value> {
        let request = self.request(
            reqwest::Method::POST,
            &format!("/v1/flow/alignment/{id}/cancel"),
        );
        Ok(Self::send(request, &format!("cancelling job {id}"))
            .await?
            .json()
            .await?)
    }

    pub async fn jobs(&self) -> anyhow::Result<Vec<Value>> {
        let request = self.request(reqwest::Method::GET, "/v1/flow/alignment");
        let list: Value = Self::send(request, "listing jobs").await?.json().await?;
        Ok(list["data"].as_array().cloned().unwrap_or_default())
    }

    /// Download the job's dataset to `output`; returns the number of bytes.
    pub async fn download(&self, id: &str, output: &Path) -> anyhow::Result<u64> {
        let job = self.job(id).await?;
        let Some(file_id) = job["output_files"]
            .as_array()
            .and_then(|files| files.iter().find(|f| f["purpose"] == json!("fine-tune")))
            .and_then(|f| f["id"].as_str())
        else {
            bail!("job {id} has no dataset yet (status {})", job["status"]);
        };
        let request = self.request(
            reqwest::Method::GET,
            &format!("/v1/flow/files/{file_id}/content"),
        );
        let bytes = Self::send(request, "downloading the dataset")
            .await?
            .bytes()
            .await?;
        tokio::fs::write(output, &bytes)
            .await
            .with_context(|| format!("writing {}", output.display()))?;
        Ok(bytes.len() as u64)
    }
}
