//! A small typed client for the REST API, used by the admin commands (and by tests and the
//! simulator through `ApiClient`). Errors carry the server's stable code and message.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use serde::de::DeserializeOwned;

// Flags shared by every command that talks to a server. A plain comment: clap would show a doc
// comment as the description of every subcommand that lacks its own.
#[derive(Args, Clone)]
pub struct ClientArgs {
    /// Base URL of the Corral HTTP API.
    #[arg(long, env = "CORRAL_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Admin API key.
    #[arg(long, env = "CORRAL_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// CA certificate to trust for an https:// server (default: the system has none; pass Corral's ca.pem).
    #[arg(long, env = "CORRAL_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{status}: {code}: {message}")]
pub struct ServerError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl ApiClient {
    pub fn from_args(a: &ClientArgs) -> anyhow::Result<Self> {
        let ca = match &a.ca_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?,
            ),
            None => None,
        };
        Self::new(&a.server, a.api_key.clone(), ca.as_deref())
    }

    pub fn new(server: &str, key: Option<String>, ca_pem: Option<&str>) -> anyhow::Result<Self> {
        crate::pki::install_crypto_provider();
        let mut b = reqwest::Client::builder().timeout(Duration::from_secs(60));
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())?;
            b = b.tls_certs_only(certs);
        }
        Ok(Self {
            http: b.build()?,
            base: server.trim_end_matches('/').to_string(),
            key,
        })
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base));
        match &self.key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    async fn send<T: DeserializeOwned>(&self, r: reqwest::RequestBuilder) -> anyhow::Result<T> {
        let resp = r
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if !status.is_success() {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            return Err(ServerError {
                status: status.as_u16(),
                code: v["error"]["code"]
                    .as_str()
                    .unwrap_or("http_error")
                    .to_string(),
                message: v["error"]["message"].as_str().unwrap_or("").to_string(),
            }
            .into());
        }
        let body = if bytes.is_empty() {
            &b"null"[..]
        } else {
            &bytes[..]
        };
        serde_json::from_slice(body).context("unexpected response from the server")
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<T> {
        self.send(self.req(reqwest::Method::GET, path).query(query))
            .await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send(self.req(reqwest::Method::POST, path).json(body))
            .await
    }

    pub async fn patch<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send(self.req(reqwest::Method::PATCH, path).json(body))
            .await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send(self.req(reqwest::Method::PUT, path).json(body))
            .await
    }

    /// Streams a GET response body into `out` (exports of any size): no overall timeout.
    pub async fn download(
        &self,
        path: &str,
        query: &[(&str, String)],
        out: &mut (dyn std::io::Write + Send),
    ) -> anyhow::Result<u64> {
        let mut resp = self
            .req(reqwest::Method::GET, path)
            .query(query)
            .timeout(Duration::from_secs(24 * 3600))
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let v: serde_json::Value = resp.json().await.unwrap_or_default();
            return Err(ServerError {
                status,
                code: v["error"]["code"].as_str().unwrap_or("http_error").into(),
                message: v["error"]["message"].as_str().unwrap_or("").into(),
            }
            .into());
        }
        let mut n = 0u64;
        while let Some(chunk) = resp.chunk().await? {
            out.write_all(&chunk)?;
            n += chunk.len() as u64;
        }
        out.flush()?;
        Ok(n)
    }

    /// Uploads a file as the raw body of a POST, streamed from disk (packages of any size): no
    /// overall timeout.
    pub async fn upload<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        file: &std::path::Path,
    ) -> anyhow::Result<T> {
        let f = tokio::fs::File::open(file)
            .await
            .with_context(|| format!("cannot open {}", file.display()))?;
        let len = f.metadata().await?.len();
        let stream = futures_util::stream::unfold(f, |mut f| async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 256 << 10];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), f))
                }
                Err(e) => Some((Err(e), f)),
            }
        });
        self.send(
            self.req(reqwest::Method::POST, path)
                .query(query)
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .header(reqwest::header::CONTENT_LENGTH, len)
                .timeout(Duration::from_secs(24 * 3600))
                .body(reqwest::Body::wrap_stream(stream)),
        )
        .await
    }

    /// A DELETE whose answer has a body.
    pub async fn delete_json<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.req(reqwest::Method::DELETE, path)).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.send::<serde_json::Value>(self.req(reqwest::Method::DELETE, path))
            .await
            .map(drop)
    }
}
