//! `http://` and `https://` transport: a mirror served by a web server, usually through a
//! site's caching proxy.
//!
//! One [`reqwest::Client`] per mirror (connections are pooled). TLS is rustls with the
//! *ring* provider and the platform verifier (the system roots, which honour
//! `SSL_CERT_FILE`/`SSL_CERT_DIR`), plus the PEM certificates of `ca_file`. Proxies come from
//! the environment (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY`, either case), read
//! when the store is opened; loopback addresses are proxied like any other unless `NO_PROXY`
//! names them.
//!
//! Timing, so that a dead or slow mirror is given up promptly and the caller can fail over:
//! connecting is bounded by `connect_timeout`; the wait for the response headers by
//! `connect_timeout + low_speed_time` (reqwest's idle read timeout, `low_speed_time`, runs
//! from the start of the request too, so in practice the tighter of the two wins); every
//! body is under the low-speed rule ([`super::watchdog::low_speed`]) and the idle read
//! timeout. There is no bound on the total time of a transfer: a multi-GB blob may take as
//! long as it needs while it keeps moving.
//!
//! Transient failures before the body starts (connect errors, 5xx, 429, 408, a connection
//! that broke before the headers) are retried `retries` times with jittered exponential
//! back-off; a timeout is not (it already waited its full time: the caller fails over). A body that breaks (not one that is too slow) is resumed with a
//! `Range` request guarded by `If-Range`, when the first response allowed it; the stream
//! goes on seamlessly.

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode};
use tokio::time::Instant;
use url::Url;

use super::{
    watchdog, BlobStore, ByteStream, Conditional, ErrorClass, RemoteOptions, TransportError,
};

const USER_AGENT: &str = concat!("spackfs/", env!("CARGO_PKG_VERSION"));

/// How long to wait for response headers (after the connect) when the low-speed window is
/// zero.
const HEADER_WAIT_WITHOUT_WINDOW: Duration = Duration::from_secs(60);

/// Prefix of a validator that is a `Last-Modified` date rather than an ETag.
const LAST_MODIFIED_PREFIX: &str = "lm:";

/// A response body as reqwest streams it.
type BodyStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// A mirror served over HTTP(S).
pub struct HttpStore {
    inner: Arc<Inner>,
}

/// The state a store shares with the body streams it hands out (which resume by
/// themselves).
struct Inner {
    client: reqwest::Client,
    /// The mirror root, without credentials, with a trailing slash.
    base: Url,
    /// What [`BlobStore::url`] returns.
    display: String,
    /// Basic-auth credentials from the URL (percent-decoded); never logged.
    auth: Option<(String, Option<String>)>,
    /// An OCI registry's authorisation (answers its 401 challenges).
    registry: Option<super::oci::auth::RegistryAuth>,
    opts: RemoteOptions,
    /// Bound on the wait for response headers.
    header_wait: Duration,
}

impl HttpStore {
    /// Open the mirror at `url` (`http://` or `https://`, optionally with `user:password@`,
    /// which is sent as basic auth). Proxies are taken from the environment now.
    pub fn new(url: &str, opts: &RemoteOptions) -> Result<Self, TransportError> {
        Self::build(url, opts, true)
    }

    /// The HTTP side of an OCI registry: `base` is `SCHEME://HOST/v2/NAME/`, `display`
    /// the mirror's name in messages, `auth` answers the registry's 401 challenges.
    pub(crate) fn for_registry(
        base: &str,
        display: &str,
        opts: &RemoteOptions,
        auth: super::oci::auth::RegistryAuth,
    ) -> Result<Self, TransportError> {
        let mut store = Self::build(base, opts, true)?;
        let inner = Arc::get_mut(&mut store.inner).expect("a new store is not shared");
        inner.display = display.to_string();
        inner.registry = Some(auth);
        Ok(store)
    }

    /// GET `path` with extra request headers; the response headers and the body.
    pub(crate) async fn get_with(
        &self,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<(HeaderMap, ByteStream), TransportError> {
        let url = self.inner.object_url(path)?;
        self.get_url(path, url, headers).await
    }

    /// GET an absolute URL of this store's origin (a `Link` to the next page), named
    /// `what` in messages. Another origin is refused: credentials never go there.
    pub(crate) async fn get_url(
        &self,
        what: &str,
        url: Url,
        headers: &HeaderMap,
    ) -> Result<(HeaderMap, ByteStream), TransportError> {
        if url.origin() != self.inner.base.origin() {
            return Err(TransportError::Refused {
                mirror: self.inner.display.clone(),
                path: what.to_string(),
                message: format!("a link to another host ({url}) is not followed"),
            });
        }
        let resp = self
            .inner
            .send_retried(Method::GET, what, &url, headers)
            .await?;
        if !resp.status().is_success() {
            return Err(self.inner.status_error(what, resp.status()));
        }
        let head = resp.headers().clone();
        Ok((head, self.inner.body_stream(what, url, resp)))
    }

    /// A conditional GET of `path` with extra request headers; the response headers too.
    pub(crate) async fn get_if_changed_with(
        &self,
        path: &str,
        validator: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<(Conditional, HeaderMap), TransportError> {
        self.inner.get_if_changed(path, validator, headers).await
    }

    /// The mirror root URL (with a trailing slash).
    pub(crate) fn base(&self) -> &Url {
        &self.inner.base
    }

    fn build(url: &str, opts: &RemoteOptions, env_proxy: bool) -> Result<Self, TransportError> {
        let mut base = Url::parse(url).map_err(|e| TransportError::Config {
            mirror: redact(url),
            message: format!("invalid URL: {e}"),
        })?;
        let shown = super::strip_credentials(url);
        if !matches!(base.scheme(), "http" | "https") {
            return Err(TransportError::UnsupportedUrl(shown));
        }
        if base.host_str().is_none_or(str::is_empty) {
            return Err(TransportError::Config {
                mirror: shown,
                message: "the URL names no host".into(),
            });
        }
        let auth = if base.username().is_empty() && base.password().is_none() {
            None
        } else {
            Some((
                percent_decode(base.username()),
                base.password().map(percent_decode),
            ))
        };
        // An http(s) URL always has a host, so these cannot fail.
        let _ = base.set_username("");
        let _ = base.set_password(None);
        base.set_fragment(None);
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }

        install_crypto_provider();
        let certs = match &opts.ca_file {
            Some(file) => load_ca_file(file, &shown)?,
            None => Vec::new(),
        };
        let client = match build_client(opts, env_proxy, certs.clone(), false) {
            Ok(c) => c,
            // The platform verifier refuses to start on a node without any CA certificate,
            // and reqwest sets TLS up even for plain-HTTP clients: a plain-HTTP mirror (the
            // usual set-up behind a caching proxy) must work there anyway. Only `ca_file`
            // is trusted then (for a redirect to https).
            Err(first) if base.scheme() == "http" => {
                match build_client(opts, env_proxy, certs, true) {
                    Ok(c) => {
                        tracing::debug!(
                            "mirror {}: system CA roots unusable ({}); trusting only ca_file",
                            shown,
                            error_chain(&first)
                        );
                        c
                    }
                    Err(_) => return Err(client_config_error(&shown, &first)),
                }
            }
            Err(e) => return Err(client_config_error(&shown, &e)),
        };
        let window = if opts.low_speed_time.is_zero() {
            HEADER_WAIT_WITHOUT_WINDOW
        } else {
            opts.low_speed_time
        };
        Ok(HttpStore {
            inner: Arc::new(Inner {
                client,
                base,
                display: shown,
                auth,
                registry: None,
                opts: opts.clone(),
                header_wait: opts.connect_timeout + window,
            }),
        })
    }
}

/// Install ring as the process-wide rustls provider (once; keep whichever provider was
/// installed first).
pub(crate) fn install_crypto_provider() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        // Err means a provider is installed already: that one is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The PEM certificates of a site CA file.
fn load_ca_file(
    file: &std::path::Path,
    mirror: &str,
) -> Result<Vec<reqwest::Certificate>, TransportError> {
    let config = |message: String| TransportError::Config {
        mirror: mirror.to_string(),
        message,
    };
    let pem = std::fs::read(file)
        .map_err(|e| config(format!("cannot read CA file {}: {e}", file.display())))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
        config(format!(
            "CA file {}: not PEM certificates: {}",
            file.display(),
            error_chain(&e)
        ))
    })?;
    if certs.is_empty() {
        return Err(config(format!(
            "CA file {} holds no PEM certificate",
            file.display()
        )));
    }
    Ok(certs)
}

fn build_client(
    opts: &RemoteOptions,
    env_proxy: bool,
    certs: Vec<reqwest::Certificate>,
    certs_only: bool,
) -> reqwest::Result<reqwest::Client> {
    // The default redirect policy (up to 10, dropping credentials on a change of host).
    // No total timeout(): it would cut large blobs.
    let mut b = reqwest::Client::builder().user_agent(USER_AGENT);
    if !opts.connect_timeout.is_zero() {
        b = b.connect_timeout(opts.connect_timeout);
    }
    if !opts.low_speed_time.is_zero() {
        b = b.read_timeout(opts.low_speed_time);
    }
    if !env_proxy {
        b = b.no_proxy();
    }
    if certs_only {
        b = b.tls_certs_only(certs);
    } else if !certs.is_empty() {
        b = b.tls_certs_merge(certs);
    }
    b.build()
}

fn client_config_error(mirror: &str, e: &reqwest::Error) -> TransportError {
    TransportError::Config {
        mirror: mirror.to_string(),
        message: format!("cannot set up the HTTP client: {}", error_chain(e)),
    }
}

impl Inner {
    fn not_found(&self, path: &str) -> TransportError {
        TransportError::NotFound {
            mirror: self.display.clone(),
            path: path.to_string(),
        }
    }

    /// The URL of a mirror-relative path, each component percent-encoded. Paths that could
    /// leave the mirror root (or name it) do not exist.
    fn object_url(&self, path: &str) -> Result<Url, TransportError> {
        if path.is_empty()
            || path
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(self.not_found(path));
        }
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| self.not_found(path))?
            .pop_if_empty()
            .extend(path.split('/'));
        Ok(url)
    }

    fn status_error(&self, path: &str, status: StatusCode) -> TransportError {
        match status {
            StatusCode::NOT_FOUND | StatusCode::GONE => self.not_found(path),
            _ => TransportError::Status {
                mirror: self.display.clone(),
                path: path.to_string(),
                status: status.as_u16(),
            },
        }
    }

    /// The back-off between retries (and resumes): `retry_delay`, doubling up to 8× that,
    /// with jitter; `retries` delays in all.
    fn backoff(&self) -> ExponentialBackoff {
        ExponentialBuilder::new()
            .with_min_delay(self.opts.retry_delay)
            .with_max_delay(self.max_delay())
            .with_jitter()
            .with_max_times(self.opts.retries)
            .build()
    }

    fn max_delay(&self) -> Duration {
        self.opts.retry_delay.saturating_mul(8)
    }

    /// One request; the response whatever its status.
    async fn send_once(
        &self,
        method: &Method,
        path: &str,
        url: &Url,
        headers: HeaderMap,
    ) -> Result<Response, TransportError> {
        let mut req = self
            .client
            .request(method.clone(), url.clone())
            .headers(headers);
        if let Some((user, password)) = &self.auth {
            req = req.basic_auth(user, password.as_deref());
        }
        if let Some(value) = self.registry.as_ref().and_then(|r| r.current()) {
            // Per request: reqwest drops it when a redirect leaves this host.
            req = req.header(header::AUTHORIZATION, value);
        }
        let start = Instant::now();
        let result = tokio::time::timeout(self.header_wait, req.send()).await;
        let elapsed = start.elapsed().as_secs_f64();
        match result {
            Ok(Ok(resp)) => {
                tracing::debug!(
                    "mirror {}: {method} {url} -> {} in {elapsed:.3}s",
                    self.display,
                    resp.status().as_u16()
                );
                Ok(resp)
            }
            Ok(Err(e)) => {
                let err = self.request_error(path, e);
                tracing::debug!(
                    "mirror {}: {method} {url} failed in {elapsed:.3}s: {}",
                    self.display,
                    reason(&err)
                );
                Err(err)
            }
            Err(_) => {
                let err = TransportError::Timeout {
                    mirror: self.display.clone(),
                    path: path.to_string(),
                    message: format!(
                        "no response headers within {:.1}s",
                        self.header_wait.as_secs_f64()
                    ),
                };
                tracing::debug!(
                    "mirror {}: {method} {url} failed in {elapsed:.3}s: {}",
                    self.display,
                    reason(&err)
                );
                Err(err)
            }
        }
    }

    /// A request, retrying transient failures. Returns a 2xx or 304 response; any other
    /// status is an error (404 and 410 are `NotFound`).
    async fn send_retried(
        &self,
        method: Method,
        path: &str,
        url: &Url,
        headers: &HeaderMap,
    ) -> Result<Response, TransportError> {
        let mut backoff = self.backoff();
        let mut attempt = 0;
        let mut challenged = false;
        loop {
            let (err, retry_after) = match self.send_once(&method, path, url, headers.clone()).await
            {
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() || status == StatusCode::NOT_MODIFIED {
                        return Ok(resp);
                    }
                    if status == StatusCode::UNAUTHORIZED {
                        if let Some(registry) = &self.registry {
                            if challenged {
                                return Err(registry.refused(&self.display, path));
                            }
                            challenged = true;
                            registry
                                .answer(
                                    &self.client,
                                    resp.headers(),
                                    &self.display,
                                    path,
                                    self.header_wait,
                                )
                                .await?;
                            continue;
                        }
                    }
                    let err = self.status_error(path, status);
                    if err.class() != ErrorClass::Transient {
                        return Err(err);
                    }
                    let retry_after = match status {
                        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                            retry_after(resp.headers())
                        }
                        _ => None,
                    };
                    (err, retry_after)
                }
                // A timeout already waited long: give the mirror up (the caller fails
                // over) rather than wait as long again.
                Err(e @ TransportError::Timeout { .. }) => return Err(e),
                Err(e) if e.class() == ErrorClass::Transient => (e, None),
                Err(e) => return Err(e),
            };
            let Some(delay) = backoff.next() else {
                return Err(err);
            };
            attempt += 1;
            let delay = retry_after.unwrap_or(delay).min(self.max_delay());
            tracing::warn!(
                "mirror {}: {method} {path} failed ({}); retrying in {:.2}s (attempt {attempt} of {})",
                self.display,
                reason(&err),
                delay.as_secs_f64(),
                self.opts.retries
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// Classify an error of reqwest before or while waiting for the headers.
    fn request_error(&self, path: &str, e: reqwest::Error) -> TransportError {
        let e = e.without_url();
        let mirror = self.display.clone();
        let path = path.to_string();
        let message = error_chain(&e);
        if let Some(tls) = find_tls_error(&e) {
            // Retrying will not fix a certificate; the endpoint is unusable.
            let what = if is_certificate_error(tls) {
                "TLS certificate problem"
            } else {
                "TLS handshake failed"
            };
            return TransportError::Refused {
                mirror,
                path,
                message: format!(
                    "{what}: {tls} (trusted: the system roots, SSL_CERT_FILE/SSL_CERT_DIR, \
                     and the configured CA file)"
                ),
            };
        }
        if e.is_timeout() {
            let message = if e.is_connect() {
                format!(
                    "no connection within {:.1}s ({message})",
                    self.opts.connect_timeout.as_secs_f64()
                )
            } else {
                format!(
                    "no response headers within {:.1}s ({message})",
                    self.opts.low_speed_time.as_secs_f64()
                )
            };
            TransportError::Timeout {
                mirror,
                path,
                message,
            }
        } else if e.is_connect() {
            TransportError::Connect {
                mirror,
                path,
                message,
            }
        } else if e.is_redirect() || e.is_builder() {
            TransportError::Refused {
                mirror,
                path,
                message,
            }
        } else {
            TransportError::Broken {
                mirror,
                path,
                message,
            }
        }
    }

    /// Classify an error of a response body.
    fn body_error(&self, path: &str, e: reqwest::Error) -> TransportError {
        let e = e.without_url();
        let mirror = self.display.clone();
        let path = path.to_string();
        if e.is_timeout() {
            TransportError::Timeout {
                mirror,
                path,
                message: format!(
                    "no data for {:.1}s ({})",
                    self.opts.low_speed_time.as_secs_f64(),
                    error_chain(&e)
                ),
            }
        } else {
            TransportError::Broken {
                mirror,
                path,
                message: error_chain(&e),
            }
        }
    }

    /// The body of a 2xx response, under the low-speed rule, resuming where it can.
    fn body_stream(self: &Arc<Self>, path: &str, url: Url, resp: Response) -> ByteStream {
        let headers = resp.headers();
        let accepts_ranges = headers
            .get_all(header::ACCEPT_RANGES)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case("bytes"));
        // If-Range needs a strong validator: a strong ETag, else Last-Modified.
        let if_range = headers
            .get(header::ETAG)
            .filter(|v| !v.as_bytes().starts_with(b"W/"))
            .or_else(|| headers.get(header::LAST_MODIFIED))
            .cloned();
        let resumable = accepts_ranges && resp.status() == StatusCode::OK;
        let total = content_length(headers);
        let body = Body {
            store: Arc::clone(self),
            path: path.to_string(),
            url,
            current: Box::pin(resp.bytes_stream()),
            received: 0,
            total,
            if_range: if resumable { if_range } else { None },
            backoff: self.backoff(),
            resumes: 0,
            done: false,
        };
        let stream = futures::stream::unfold(body, Body::next_item).boxed();
        watchdog::guard(stream, &self.opts, &self.display, path)
    }

    async fn get(self: &Arc<Self>, path: &str) -> Result<ByteStream, TransportError> {
        let url = self.object_url(path)?;
        let resp = self
            .send_retried(Method::GET, path, &url, &HeaderMap::new())
            .await?;
        if !resp.status().is_success() {
            return Err(self.status_error(path, resp.status()));
        }
        Ok(self.body_stream(path, url, resp))
    }

    async fn get_if_changed(
        self: &Arc<Self>,
        path: &str,
        validator: Option<&str>,
        extra: &HeaderMap,
    ) -> Result<(Conditional, HeaderMap), TransportError> {
        let url = self.object_url(path)?;
        let mut headers = extra.clone();
        // A validator that is no valid header value cannot have come from us: ignore it.
        let condition = validator.and_then(|v| match v.strip_prefix(LAST_MODIFIED_PREFIX) {
            Some(date) => Some((header::IF_MODIFIED_SINCE, HeaderValue::from_str(date).ok()?)),
            None => Some((header::IF_NONE_MATCH, HeaderValue::from_str(v).ok()?)),
        });
        let conditional = condition.is_some();
        if let Some((name, value)) = condition {
            headers.insert(name, value);
        }
        let resp = self.send_retried(Method::GET, path, &url, &headers).await?;
        let status = resp.status();
        if status == StatusCode::NOT_MODIFIED && conditional {
            return Ok((Conditional::Unchanged, resp.headers().clone()));
        }
        if !status.is_success() {
            return Err(self.status_error(path, status));
        }
        let new_validator = response_validator(resp.headers());
        // A server that ignores conditions but still reports the same validator.
        let head = resp.headers().clone();
        if conditional && new_validator.is_some() && new_validator.as_deref() == validator {
            return Ok((Conditional::Unchanged, head));
        }
        Ok((
            Conditional::Changed {
                stream: self.body_stream(path, url, resp),
                validator: new_validator,
            },
            head,
        ))
    }

    async fn head(&self, path: &str) -> Result<Option<u64>, TransportError> {
        let url = self.object_url(path)?;
        let resp = match self
            .send_retried(Method::HEAD, path, &url, &HeaderMap::new())
            .await
        {
            Err(e) if e.is_not_found() => return Ok(None),
            other => other?,
        };
        if !resp.status().is_success() {
            return Err(self.status_error(path, resp.status()));
        }
        if let Some(len) = content_length(resp.headers()) {
            return Ok(Some(len));
        }
        // No Content-Length on the HEAD (some dynamic servers and proxies): ask for the
        // first byte, whose Content-Range carries the total.
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_static("bytes=0-0"));
        let resp = match self.send_retried(Method::GET, path, &url, &headers).await {
            Err(e) if e.is_not_found() => return Ok(None),
            other => other?,
        };
        let size = match resp.status() {
            StatusCode::PARTIAL_CONTENT => content_range(resp.headers()).and_then(|r| r.total),
            s if s.is_success() => content_length(resp.headers()),
            s => return Err(self.status_error(path, s)),
        };
        size.map(Some).ok_or_else(|| TransportError::Refused {
            mirror: self.display.clone(),
            path: path.to_string(),
            message: "the server reports no size (no Content-Length, no Content-Range)".into(),
        })
    }

    async fn probe(&self) -> Result<(), TransportError> {
        let unreachable = |reason: String| TransportError::Unreachable {
            mirror: self.display.clone(),
            reason,
        };
        // Any answer below 500 means a server is there (directories often give 403/404).
        match self
            .send_once(&Method::HEAD, "", &self.base, HeaderMap::new())
            .await
        {
            Ok(resp) if resp.status().as_u16() < 500 => Ok(()),
            Ok(resp) => Err(unreachable(format!(
                "HTTP status {}",
                resp.status().as_u16()
            ))),
            Err(e) => Err(unreachable(reason(&e))),
        }
    }
}

/// A response body being read, with what it takes to resume it.
struct Body {
    store: Arc<Inner>,
    path: String,
    url: Url,
    current: BodyStream,
    /// Bytes handed out so far (over all responses).
    received: u64,
    /// The object's size, when the first response said.
    total: Option<u64>,
    /// The validator to resume with; `None` when the first response did not allow it.
    if_range: Option<HeaderValue>,
    backoff: ExponentialBackoff,
    resumes: usize,
    done: bool,
}

impl Body {
    async fn next_item(mut self) -> Option<(std::io::Result<Bytes>, Self)> {
        if self.done {
            return None;
        }
        loop {
            match self.current.next().await {
                Some(Ok(chunk)) => {
                    self.received += chunk.len() as u64;
                    return Some((Ok(chunk), self));
                }
                None => {
                    self.done = true;
                    return None;
                }
                Some(Err(e)) => {
                    let err = self.store.body_error(&self.path, e);
                    let err = match err {
                        TransportError::Broken { .. } if self.if_range.is_some() => {
                            match self.resume(err).await {
                                Ok(body) => {
                                    self.current = body;
                                    continue;
                                }
                                Err(e) => e,
                            }
                        }
                        other => other,
                    };
                    self.done = true;
                    return Some((Err(err.into_io()), self));
                }
            }
        }
    }

    /// Ask for the rest of the object after a break; the new body continues exactly at
    /// `received`. Fails with `Broken` when it cannot.
    async fn resume(&mut self, cause: TransportError) -> Result<BodyStream, TransportError> {
        let store = Arc::clone(&self.store);
        let cause = match cause {
            TransportError::Broken { message, .. } => message,
            other => reason(&other),
        };
        let broken = |message: String| TransportError::Broken {
            mirror: store.display.clone(),
            path: self.path.clone(),
            message,
        };
        let Some(validator) = self.if_range.clone() else {
            return Err(broken(cause));
        };
        let mut last = None;
        loop {
            let Some(delay) = self.backoff.next() else {
                let message = match last {
                    Some(last) => format!(
                        "{cause} after {} bytes; resuming failed {} times (last: {last})",
                        self.received, self.resumes
                    ),
                    None => format!("{cause} after {} bytes", self.received),
                };
                return Err(broken(message));
            };
            self.resumes += 1;
            let delay = delay.min(store.max_delay());
            tracing::warn!(
                "mirror {}: GET {} broke after {} bytes ({cause}); resuming in {:.2}s (attempt {} of {})",
                store.display,
                self.path,
                self.received,
                delay.as_secs_f64(),
                self.resumes,
                store.opts.retries
            );
            tokio::time::sleep(delay).await;
            let mut headers = HeaderMap::new();
            let range = format!("bytes={}-", self.received);
            headers.insert(
                header::RANGE,
                HeaderValue::from_str(&range).expect("a byte range is a valid header value"),
            );
            headers.insert(header::IF_RANGE, validator.clone());
            let resp = match store
                .send_once(&Method::GET, &self.path, &self.url, headers)
                .await
            {
                Ok(resp) => resp,
                Err(e) if e.class() == ErrorClass::Transient => {
                    last = Some(reason(&e));
                    continue;
                }
                Err(e) => {
                    return Err(broken(format!(
                        "{cause} after {} bytes; resuming failed: {}",
                        self.received,
                        reason(&e)
                    )))
                }
            };
            let status = resp.status();
            if status == StatusCode::PARTIAL_CONTENT {
                let range = content_range(resp.headers());
                let fits = range.as_ref().is_some_and(|r| {
                    r.start == self.received
                        && (self.total.is_none() || r.total.is_none() || r.total == self.total)
                });
                if fits {
                    return Ok(Box::pin(resp.bytes_stream()));
                }
                let got = resp
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_string();
                return Err(broken(format!(
                    "{cause} after {} bytes; the resumed response has Content-Range {got:?}",
                    self.received
                )));
            }
            if status.is_success() {
                return Err(broken(format!(
                    "{cause} after {} bytes, and the object changed on the mirror \
                     (the resume request got HTTP {}, not 206)",
                    self.received,
                    status.as_u16()
                )));
            }
            let e = store.status_error(&self.path, status);
            if e.class() == ErrorClass::Transient {
                last = Some(reason(&e));
                continue;
            }
            return Err(broken(format!(
                "{cause} after {} bytes; resuming failed: {}",
                self.received,
                reason(&e)
            )));
        }
    }
}

#[async_trait]
impl BlobStore for HttpStore {
    fn url(&self) -> &str {
        &self.inner.display
    }

    async fn get(&self, path: &str) -> Result<ByteStream, TransportError> {
        self.inner.get(path).await
    }

    /// `validator` is an ETag as received (sent as `If-None-Match`) or `lm:` and a
    /// `Last-Modified` date (sent as `If-Modified-Since`), as returned here before.
    async fn get_if_changed(
        &self,
        path: &str,
        validator: Option<&str>,
    ) -> Result<Conditional, TransportError> {
        Ok(self
            .inner
            .get_if_changed(path, validator, &HeaderMap::new())
            .await?
            .0)
    }

    /// `Content-Length` of a HEAD; when the server sends none, the total of the
    /// `Content-Range` of a GET of the first byte. A server that tells neither is
    /// `Refused`.
    async fn head(&self, path: &str) -> Result<Option<u64>, TransportError> {
        self.inner.head(path).await
    }

    /// One HEAD of the mirror root, not retried.
    async fn probe(&self) -> Result<(), TransportError> {
        self.inner.probe().await
    }

    async fn list(&self, _prefix: &str) -> Result<Option<Vec<String>>, TransportError> {
        Ok(None)
    }
}

/// The validator of a response, for [`BlobStore::get_if_changed`].
fn response_validator(headers: &HeaderMap) -> Option<String> {
    if let Some(etag) = headers.get(header::ETAG).and_then(|v| v.to_str().ok()) {
        return Some(etag.to_string());
    }
    headers
        .get(header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .map(|lm| format!("{LAST_MODIFIED_PREFIX}{lm}"))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `Content-Range: bytes START-END/TOTAL` (TOTAL may be `*`).
struct ContentRange {
    start: u64,
    total: Option<u64>,
}

fn content_range(headers: &HeaderMap) -> Option<ContentRange> {
    let v = headers.get(header::CONTENT_RANGE)?.to_str().ok()?.trim();
    let rest = v.strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.trim().split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some(ContentRange { start, total })
}

/// `Retry-After` in seconds (the HTTP-date form is ignored).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
}

/// An error's own words, without the mirror and path (which a log line names already).
fn reason(e: &TransportError) -> String {
    match e {
        TransportError::Status { status, .. } => format!("HTTP status {status}"),
        TransportError::Connect { message, .. } => format!("cannot connect: {message}"),
        TransportError::Timeout { message, .. } => format!("timed out: {message}"),
        TransportError::Broken { message, .. } => format!("transfer broken: {message}"),
        TransportError::Refused { message, .. } => message.clone(),
        TransportError::NotFound { .. } => "not found".into(),
        other => other.to_string(),
    }
}

/// An error and its causes, `a: b: c`, skipping a cause its parent already quoted.
fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let msg = err.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = err.source();
    }
    out
}

/// The rustls error somewhere in a chain of causes (an `io::Error` hides its inner error
/// from `source()`, so look inside those too).
fn find_tls_error<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(tls) = find_tls_error(inner) {
                return Some(tls);
            }
        }
        cur = err.source();
    }
    None
}

fn is_certificate_error(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::InvalidCertRevocationList(_)
            | rustls::Error::UnsupportedNameType
    )
}

/// Percent-decode a URL's user or password (lossy on invalid UTF-8).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A URL that did not parse, with anything that may be credentials hidden.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            match rest[..end].rfind('@') {
                Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    //! Against a scriptable HTTP/1.1 server on 127.0.0.1 (one request per connection), a
    //! TLS one (rustls, a test CA valid until 2126) and, for proxies, a child process with
    //! the environment set.

    use std::sync::Mutex;
    use std::time::Duration;

    use sha2::{Digest, Sha256};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;
    use tokio::time::Instant;

    use super::*;

    /// A request as the server saw it.
    #[derive(Clone, Debug)]
    struct Req {
        method: String,
        target: String,
        headers: Vec<(String, String)>,
    }

    impl Req {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// What the server answers.
    #[derive(Clone, Default)]
    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        /// Send the body in chunks of this size, pausing after each.
        pace: Option<(usize, Duration)>,
        /// Close the connection after this many body bytes (Content-Length stays whole).
        cut_after: Option<usize>,
        /// Send no Content-Length.
        no_length: bool,
        /// Never answer.
        stall: bool,
    }

    impl Reply {
        fn status(status: u16) -> Reply {
            Reply {
                status,
                ..Reply::default()
            }
        }
        fn ok(body: &[u8]) -> Reply {
            Reply {
                status: 200,
                body: body.to_vec(),
                ..Reply::default()
            }
        }
        fn header(mut self, name: &str, value: &str) -> Reply {
            self.headers.push((name.into(), value.into()));
            self
        }
        fn tap(mut self, f: impl FnOnce(&mut Reply)) -> Reply {
            f(&mut self);
            self
        }
    }

    type Script = Arc<dyn Fn(usize, &Req) -> Reply + Send + Sync>;

    /// The test server; stopped (with its connections) when dropped.
    struct Server {
        port: u16,
        seen: Arc<Mutex<Vec<Req>>>,
        task: JoinHandle<()>,
    }

    impl Server {
        async fn start(script: impl Fn(usize, &Req) -> Reply + Send + Sync + 'static) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let seen = Arc::new(Mutex::new(Vec::new()));
            let script: Script = Arc::new(script);
            let seen2 = Arc::clone(&seen);
            let task = tokio::spawn(async move {
                let mut conns = tokio::task::JoinSet::new();
                while let Ok((sock, _)) = listener.accept().await {
                    conns.spawn(serve(sock, Arc::clone(&seen2), Arc::clone(&script)));
                    while conns.try_join_next().is_some() {}
                }
            });
            Server { port, seen, task }
        }

        fn url(&self) -> String {
            format!("http://127.0.0.1:{}/mirror", self.port)
        }

        fn requests(&self) -> Vec<Req> {
            self.seen.lock().unwrap().clone()
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// The request head in `buf`, once complete.
    fn parse_head(buf: &[u8]) -> Option<Req> {
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
        let text = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut lines = text.split("\r\n");
        let mut first = lines.next()?.split(' ');
        let method = first.next()?.to_string();
        let target = first.next()?.to_string();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Some(Req {
            method,
            target,
            headers,
        })
    }

    async fn serve(mut sock: TcpStream, seen: Arc<Mutex<Vec<Req>>>, script: Script) {
        let mut buf = Vec::new();
        let mut tmp = [0u8; 4096];
        let req = loop {
            if let Some(req) = parse_head(&buf) {
                break req;
            }
            if buf.len() > 65536 {
                return;
            }
            match sock.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        let index = {
            let mut seen = seen.lock().unwrap();
            seen.push(req.clone());
            seen.len() - 1
        };
        let reply = script(index, &req);
        if reply.stall {
            tokio::time::sleep(Duration::from_secs(60)).await;
            return;
        }
        let mut head = format!("HTTP/1.1 {} Test\r\nConnection: close\r\n", reply.status);
        for (k, v) in &reply.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        let bodiless = reply.status == 304 || reply.status == 204;
        if !reply.no_length && !bodiless {
            head.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
        }
        head.push_str("\r\n");
        if sock.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        if req.method != "HEAD" && !bodiless {
            let body = &reply.body[..reply.cut_after.unwrap_or(usize::MAX).min(reply.body.len())];
            match reply.pace {
                Some((size, every)) => {
                    for chunk in body.chunks(size) {
                        if sock.write_all(chunk).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(every).await;
                    }
                }
                None => {
                    if sock.write_all(body).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sock.shutdown().await;
    }

    /// A port nobody listens on (bound, then released).
    fn dead_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    fn opts() -> RemoteOptions {
        RemoteOptions {
            connect_timeout: Duration::from_secs(2),
            low_speed_limit: 1024,
            low_speed_time: Duration::from_secs(3),
            retries: 2,
            retry_delay: Duration::from_millis(20),
            ca_file: None,
        }
    }

    /// A store that ignores proxies in the environment (tests talk to 127.0.0.1).
    fn store(url: &str, opts: &RemoteOptions) -> HttpStore {
        HttpStore::build(url, opts, false).unwrap()
    }

    /// Pseudo-random content.
    fn content(n: usize) -> Vec<u8> {
        let mut x: u32 = 0x1234_5678;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    async fn read_all(s: &HttpStore, path: &str) -> Result<Vec<u8>, TransportError> {
        tokio::time::timeout(Duration::from_secs(20), s.get_bytes(path, u64::MAX))
            .await
            .expect("bounded")
    }

    /// Answer a GET with `data`, honouring `Range: bytes=N-` (206) when asked.
    fn ranged(data: &[u8], req: &Req, etag: &str) -> Reply {
        let range = req
            .header("range")
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|r| r.parse::<usize>().ok());
        match range {
            Some(start) if req.header("if-range") == Some(etag) => {
                let mut r = Reply::ok(&data[start..]);
                r.status = 206;
                r.header(
                    "Content-Range",
                    &format!("bytes {start}-{}/{}", data.len() - 1, data.len()),
                )
                .header("ETag", etag)
                .header("Accept-Ranges", "bytes")
            }
            _ => Reply::ok(data)
                .header("ETag", etag)
                .header("Accept-Ranges", "bytes"),
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn get_streams_the_exact_bytes() {
        let data = content(300_000);
        let d = data.clone();
        let srv = Server::start(move |_, _| Reply::ok(&d)).await;
        let s = store(&srv.url(), &opts());
        assert_eq!(read_all(&s, "build_cache/a.spec.json").await.unwrap(), data);
        let reqs = srv.requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].method, "GET");
        assert_eq!(reqs[0].target, "/mirror/build_cache/a.spec.json");
        assert_eq!(reqs[0].header("user-agent"), Some(USER_AGENT));
        assert_eq!(s.url(), srv.url());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn not_found_is_not_retried() {
        let srv = Server::start(|i, _| Reply::status(if i == 0 { 404 } else { 410 })).await;
        let s = store(&srv.url(), &opts());
        for _ in 0..2 {
            let e = read_all(&s, "x.json").await.unwrap_err();
            assert!(e.is_not_found(), "{e}");
        }
        assert_eq!(srv.requests().len(), 2);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_transient_500_is_retried() {
        let srv = Server::start(|i, _| {
            if i == 0 {
                Reply::status(500)
            } else {
                Reply::ok(b"fine")
            }
        })
        .await;
        let s = store(&srv.url(), &opts());
        assert_eq!(read_all(&s, "x.json").await.unwrap(), b"fine");
        assert_eq!(srv.requests().len(), 2);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_lasting_500_fails_after_the_retries() {
        let srv = Server::start(|_, _| Reply::status(500)).await;
        let o = opts();
        let s = store(&srv.url(), &o);
        let e = read_all(&s, "x.json").await.unwrap_err();
        assert!(
            matches!(e, TransportError::Status { status: 500, .. }),
            "{e}"
        );
        assert_eq!(e.class(), ErrorClass::Transient);
        assert_eq!(srv.requests().len(), 1 + o.retries);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_403_is_fatal_and_not_retried() {
        let srv = Server::start(|_, _| Reply::status(403)).await;
        let s = store(&srv.url(), &opts());
        let e = read_all(&s, "x.json").await.unwrap_err();
        assert!(
            matches!(e, TransportError::Status { status: 403, .. }),
            "{e}"
        );
        assert_eq!(e.class(), ErrorClass::Fatal);
        assert_eq!(srv.requests().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn retry_after_is_honoured_but_capped() {
        let srv = Server::start(|i, _| {
            if i == 0 {
                Reply::status(503).header("Retry-After", "3600")
            } else {
                Reply::ok(b"later")
            }
        })
        .await;
        let s = store(&srv.url(), &opts());
        let t = Instant::now();
        assert_eq!(read_all(&s, "x.json").await.unwrap(), b"later");
        // Capped at 8 × 20 ms.
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(srv.requests().len(), 2);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn conditional_get_with_etag() {
        let srv = Server::start(|_, req| {
            if req.header("if-none-match") == Some("\"v1\"") {
                Reply::status(304).header("ETag", "\"v1\"")
            } else {
                Reply::ok(b"index").header("ETag", "\"v1\"")
            }
        })
        .await;
        let s = store(&srv.url(), &opts());
        let validator = match s.get_if_changed("index.json", None).await.unwrap() {
            Conditional::Changed { stream, validator } => {
                let body = super::super::collect(stream, 100, s.url(), "index.json")
                    .await
                    .unwrap();
                assert_eq!(body, b"index");
                validator
            }
            Conditional::Unchanged => panic!("unchanged without a validator"),
        };
        assert_eq!(validator.as_deref(), Some("\"v1\""));
        let again = s
            .get_if_changed("index.json", validator.as_deref())
            .await
            .unwrap();
        assert!(matches!(again, Conditional::Unchanged));
        let reqs = srv.requests();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].header("if-none-match"), None);
        assert_eq!(reqs[1].header("if-none-match"), Some("\"v1\""));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn conditional_get_with_last_modified() {
        const LM: &str = "Wed, 21 Oct 2026 07:28:00 GMT";
        let srv = Server::start(|_, req| {
            if req.header("if-modified-since") == Some(LM) {
                Reply::status(304)
            } else {
                Reply::ok(b"index").header("Last-Modified", LM)
            }
        })
        .await;
        let s = store(&srv.url(), &opts());
        let Conditional::Changed { validator, .. } =
            s.get_if_changed("index.json", None).await.unwrap()
        else {
            panic!("unchanged without a validator")
        };
        assert_eq!(validator, Some(format!("lm:{LM}")));
        let again = s
            .get_if_changed("index.json", validator.as_deref())
            .await
            .unwrap();
        assert!(matches!(again, Conditional::Unchanged));
        assert_eq!(srv.requests()[1].header("if-none-match"), None);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_trickling_body_times_out_after_one_window() {
        let data = content(20_000);
        let srv = Server::start(move |_, _| {
            let mut r = Reply::ok(&data);
            // 100 B every 105 ms: below 1000 B/s, at most 10 chunks in any second.
            r.pace = Some((100, Duration::from_millis(105)));
            r
        })
        .await;
        let o = RemoteOptions {
            low_speed_time: Duration::from_secs(1),
            retries: 0,
            ..opts()
        };
        let s = store(&srv.url(), &o);
        let t = Instant::now();
        let e = read_all(&s, "blob.tar.gz").await.unwrap_err();
        let elapsed = t.elapsed();
        assert!(matches!(e, TransportError::Timeout { .. }), "{e}");
        assert!(e.to_string().contains("slower than 1024 B/s"), "{e}");
        assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(2500), "{elapsed:?}");
        assert_eq!(srv.requests().len(), 1, "a slow body is not resumed");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn headers_that_never_come_time_out() {
        let srv = Server::start(|_, _| Reply {
            stall: true,
            ..Reply::default()
        })
        .await;
        let o = RemoteOptions {
            connect_timeout: Duration::from_secs(1),
            low_speed_time: Duration::from_secs(1),
            retries: 0,
            ..opts()
        };
        let s = store(&srv.url(), &o);
        let t = Instant::now();
        let e = read_all(&s, "x.json").await.unwrap_err();
        let elapsed = t.elapsed();
        assert!(matches!(e, TransportError::Timeout { .. }), "{e}");
        assert!(elapsed < Duration::from_millis(2500), "{elapsed:?}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_broken_body_is_resumed_exactly() {
        const CUT: usize = 70_000;
        let data = content(200_000);
        let d = data.clone();
        let srv = Server::start(move |i, req| {
            let mut r = ranged(&d, req, "\"abc\"");
            if i == 0 {
                r.cut_after = Some(CUT);
            }
            r
        })
        .await;
        let s = store(&srv.url(), &opts());
        let got = read_all(&s, "blob.tar.gz").await.unwrap();
        assert_eq!(got.len(), data.len());
        assert_eq!(Sha256::digest(&got), Sha256::digest(&data));
        let reqs = srv.requests();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].header("range"), None);
        assert_eq!(
            reqs[1].header("range"),
            Some(format!("bytes={CUT}-").as_str())
        );
        assert_eq!(reqs[1].header("if-range"), Some("\"abc\""));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_resume_that_fails_transiently_is_retried() {
        const CUT: usize = 10_000;
        let data = content(50_000);
        let d = data.clone();
        let srv = Server::start(move |i, req| match i {
            0 => {
                let mut r = ranged(&d, req, "\"abc\"");
                r.cut_after = Some(CUT);
                r
            }
            1 => Reply::status(503),
            _ => ranged(&d, req, "\"abc\""),
        })
        .await;
        let s = store(&srv.url(), &opts());
        let got = read_all(&s, "blob.tar.gz").await.unwrap();
        assert_eq!(Sha256::digest(&got), Sha256::digest(&data));
        assert_eq!(srv.requests().len(), 3);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_changed_object_is_not_spliced() {
        let data = content(50_000);
        let d = data.clone();
        // The resume gets a 200 (If-Range did not match): the bytes would not fit.
        let srv = Server::start(move |i, _| {
            let mut r = Reply::ok(&d)
                .header("ETag", if i == 0 { "\"one\"" } else { "\"two\"" })
                .header("Accept-Ranges", "bytes");
            if i == 0 {
                r.cut_after = Some(1000);
            }
            r
        })
        .await;
        let s = store(&srv.url(), &opts());
        let e = read_all(&s, "blob.tar.gz").await.unwrap_err();
        assert!(matches!(e, TransportError::Broken { .. }), "{e}");
        assert!(e.to_string().contains("changed"), "{e}");
        assert_eq!(srv.requests().len(), 2);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_broken_body_without_ranges_fails() {
        let data = content(100_000);
        let srv = Server::start(move |_, _| {
            let mut r = Reply::ok(&data).header("ETag", "\"abc\"");
            r.cut_after = Some(30_000);
            r
        })
        .await;
        let s = store(&srv.url(), &opts());
        let mut stream = s.get("blob.tar.gz").await.unwrap();
        let mut n = 0;
        let err = loop {
            match tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .unwrap()
            {
                Some(Ok(b)) => n += b.len(),
                Some(Err(e)) => break e,
                None => panic!("a cut body must fail"),
            }
        };
        assert_eq!(n, 30_000);
        let e = TransportError::from_io(&err).expect("carries a TransportError");
        assert!(matches!(e, TransportError::Broken { .. }), "{e}");
        assert_eq!(e.class(), ErrorClass::Transient);
        assert_eq!(srv.requests().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn connection_refused_fails_fast() {
        let o = RemoteOptions {
            retries: 0,
            ..opts()
        };
        let s = store(&format!("http://127.0.0.1:{}/mirror", dead_port()), &o);
        let t = Instant::now();
        let e = read_all(&s, "x.json").await.unwrap_err();
        assert!(matches!(e, TransportError::Connect { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        let e = s.probe().await.unwrap_err();
        assert!(matches!(e, TransportError::Unreachable { .. }), "{e}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn paths_that_leave_the_root_are_not_found() {
        let srv = Server::start(|_, _| Reply::ok(b"secret")).await;
        let s = store(&srv.url(), &opts());
        for path in [
            "../etc/passwd",
            "a/../../b",
            "/abs",
            "",
            "a//b",
            "./a",
            "a/.",
            "a/",
        ] {
            let e = read_all(&s, path).await.unwrap_err();
            assert!(e.is_not_found(), "{path}: {e}");
            assert!(s.head(path).await.unwrap_err().is_not_found(), "{path}");
        }
        assert!(srv.requests().is_empty());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn path_components_are_percent_encoded() {
        let srv = Server::start(|_, _| Reply::ok(b"ok")).await;
        // A base with a trailing slash, and one without, give the same URLs.
        for base in [srv.url(), format!("{}/", srv.url())] {
            let s = store(&base, &opts());
            assert_eq!(s.url(), srv.url());
            read_all(&s, "dir/with space/file#1?.json").await.unwrap();
        }
        for r in srv.requests() {
            assert_eq!(r.target, "/mirror/dir/with%20space/file%231%3F.json");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn credentials_become_basic_auth_and_are_never_shown() {
        let srv = Server::start(|_, _| Reply::ok(b"ok")).await;
        let url = format!("http://user:p%40ss@127.0.0.1:{}/mirror/", srv.port);
        let s = store(&url, &opts());
        assert_eq!(s.url(), srv.url());
        read_all(&s, "x.json").await.unwrap();
        let expected = format!("Basic {}", data_encoding::BASE64.encode(b"user:p@ss"));
        let reqs = srv.requests();
        assert_eq!(reqs[0].header("authorization"), Some(expected.as_str()));
        assert_eq!(reqs[0].target, "/mirror/x.json");
        let e = match HttpStore::build("http://user:secret@[bad/x", &opts(), false) {
            Err(e) => e,
            Ok(_) => panic!("a bad URL must fail"),
        };
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn head_reports_the_size() {
        let srv = Server::start(|_, req| match req.target.as_str() {
            "/mirror/there" => Reply::ok(&[0u8; 1234]),
            "/mirror/chunked" if req.method == "HEAD" => Reply {
                status: 200,
                no_length: true,
                ..Reply::default()
            },
            "/mirror/chunked" => {
                assert_eq!(req.header("range"), Some("bytes=0-0"));
                Reply::ok(b"x")
                    .header("Content-Range", "bytes 0-0/98765")
                    .tap(|r| r.status = 206)
            }
            _ => Reply::status(404),
        })
        .await;
        let s = store(&srv.url(), &opts());
        assert_eq!(s.head("there").await.unwrap(), Some(1234));
        assert_eq!(s.head("missing").await.unwrap(), None);
        assert_eq!(s.head("chunked").await.unwrap(), Some(98765));
        let methods: Vec<_> = srv.requests().into_iter().map(|r| r.method).collect();
        assert_eq!(methods, ["HEAD", "HEAD", "HEAD", "GET"]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn probe_counts_any_answer_below_500() {
        let srv = Server::start(|i, _| Reply::status([404, 403, 503][i.min(2)])).await;
        let s = store(&srv.url(), &opts());
        s.probe().await.unwrap();
        s.probe().await.unwrap();
        let e = s.probe().await.unwrap_err();
        assert!(
            matches!(&e, TransportError::Unreachable { reason, .. } if reason.contains("503")),
            "{e}"
        );
        let reqs = srv.requests();
        assert_eq!(reqs.len(), 3, "a probe is not retried");
        assert!(reqs
            .iter()
            .all(|r| r.method == "HEAD" && r.target == "/mirror/"));
        let s = store(&srv.url(), &opts());
        assert_eq!(s.list("").await.unwrap(), None);
    }

    #[test]
    fn content_range_parsing() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_static("bytes 10-19/20"),
        );
        let r = content_range(&h).unwrap();
        assert_eq!((r.start, r.total), (10, Some(20)));
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_static("bytes 5-9/*"),
        );
        let r = content_range(&h).unwrap();
        assert_eq!((r.start, r.total), (5, None));
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_static("bytes */20"),
        );
        assert!(content_range(&h).is_none());
        assert_eq!(percent_decode("a%40b%zz%4"), "a@b%zz%4");
        assert_eq!(redact("http://u:p@h[/x"), "http://***@h[/x");
    }

    // ----- TLS -----

    /// A test CA and a certificate for 127.0.0.1 and localhost that it signed (ECDSA
    /// P-256, valid 2026-12-02 to 2126-11-08).
    const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBnDCCAUGgAwIBAgIUHcsqr8LAz+eadWGXOOg5sQHEmCQwCgYIKoZIzj0EAwIw
GjEYMBYGA1UEAwwPc3BhY2tmcyB0ZXN0IENBMCAXDTI2MTIwMjAyMDUyNVoYDzIx
MjYxMTA4MDIwNTI1WjAaMRgwFgYDVQQDDA9zcGFja2ZzIHRlc3QgQ0EwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAAQLOshArdm755WzdV2OHQ3eVWHjC75Hx9PFOCZr
7MLBs1R2ic/6ehzUXsN2HGdG/iBCFbbsEiW204Z+zTTbvCONo2MwYTAdBgNVHQ4E
FgQUW8oYoAGO/DRP7Uz/xwj7mK0HJM0wHwYDVR0jBBgwFoAUW8oYoAGO/DRP7Uz/
xwj7mK0HJM0wDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMCAQYwCgYIKoZI
zj0EAwIDSQAwRgIhAOazYK7eENYnItI16tQP+9UHxRr9Iiby8DFj/OuZt9ABAiEA
0diBz7h96Whzo/9LCQoZfZlio0mUcZJXQi8Ti+1cHcQ=
-----END CERTIFICATE-----
";
    const LEAF_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBxTCCAWugAwIBAgIUPASphQh9opq5xKiHnmkR7E0nkQ4wCgYIKoZIzj0EAwIw
GjEYMBYGA1UEAwwPc3BhY2tmcyB0ZXN0IENBMCAXDTI2MTIwMjAyMDUyNVoYDzIx
MjYxMTA4MDIwNTI1WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIB
BggqhkjOPQMBBwNCAAQBqJWahhguRaMDI01vTHt62Du9HWV8I9KAUb0v4ybbFjeU
nwA836E4kJjWDsHhscG20IstDrU5ytuh5jW2HL2Eo4GSMIGPMAwGA1UdEwEB/wQC
MAAwDgYDVR0PAQH/BAQDAgeAMBMGA1UdJQQMMAoGCCsGAQUFBwMBMBoGA1UdEQQT
MBGHBH8AAAGCCWxvY2FsaG9zdDAdBgNVHQ4EFgQUukWQamM6wxMKLriN6djZtldb
o4cwHwYDVR0jBBgwFoAUW8oYoAGO/DRP7Uz/xwj7mK0HJM0wCgYIKoZIzj0EAwID
SAAwRQIgHYNWFDVO7ZyI1GTZTNkpkfH78m8+BU4IDf5fR6u7f7oCIQD3R2vrweYT
9QS9Lnsv1lddVh8y4Un7IVUoI0X7d6caRg==
-----END CERTIFICATE-----
";
    const LEAF_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQggmsomz6+O2fix5fO
LQFG5Sk/BN77qRGqPrm69lZBX2KhRANCAAQBqJWahhguRaMDI01vTHt62Du9HWV8
I9KAUb0v4ybbFjeUnwA836E4kJjWDsHhscG20IstDrU5ytuh5jW2HL2E
-----END PRIVATE KEY-----
";

    /// An HTTPS server answering every request with `body`, on threads of its own
    /// (blocking rustls; each connection gives up after 5 s of silence).
    async fn tls_server(body: &'static [u8]) -> (u16, JoinHandle<()>) {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_slice_iter(LEAF_PEM.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(LEAF_KEY.as_bytes()).unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let Ok(sock) = sock.into_std() else { continue };
                let config = Arc::clone(&config);
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let _ = sock.set_nonblocking(false);
                    let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
                    let Ok(conn) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    let mut tls = rustls::StreamOwned::new(conn, sock);
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 4096];
                    while parse_head(&buf).is_none() && buf.len() < 65536 {
                        match tls.read(&mut tmp) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    }
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    let _ = tls.write_all(head.as_bytes());
                    let _ = tls.write_all(body);
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                });
            }
        });
        (port, task)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn tls_with_an_unknown_ca_is_a_certificate_error() {
        let (port, task) = tls_server(b"secure").await;
        let s = store(&format!("https://127.0.0.1:{port}/mirror"), &opts());
        let e = read_all(&s, "x.json").await.unwrap_err();
        task.abort();
        assert!(matches!(e, TransportError::Refused { .. }), "{e}");
        assert!(e.to_string().contains("TLS certificate problem"), "{e}");
        assert!(e.is_endpoint_failure());
        assert_eq!(e.class(), ErrorClass::Fatal);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn tls_with_the_ca_file_works() {
        let (port, task) = tls_server(b"secure").await;
        let mut ca = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut ca, CA_PEM.as_bytes()).unwrap();
        let o = RemoteOptions {
            ca_file: Some(ca.path().to_path_buf()),
            ..opts()
        };
        let s = store(&format!("https://127.0.0.1:{port}/mirror"), &o);
        let got = read_all(&s, "x.json").await;
        task.abort();
        assert_eq!(got.unwrap(), b"secure");
    }

    #[test]
    fn a_bad_ca_file_is_a_config_error() {
        let empty = tempfile::NamedTempFile::new().unwrap();
        let missing = empty.path().with_extension("missing");
        for file in [empty.path().to_path_buf(), missing] {
            let o = RemoteOptions {
                ca_file: Some(file.clone()),
                ..opts()
            };
            match HttpStore::new("https://mirror.example/cache", &o) {
                Err(e @ TransportError::Config { .. }) => {
                    assert!(e.to_string().contains(&file.display().to_string()), "{e}")
                }
                Err(e) => panic!("{e}"),
                Ok(_) => panic!("{} accepted", file.display()),
            }
        }
    }

    // ----- proxies from the environment -----

    /// Run [`env_proxy_child`] in a child process with `HTTP_PROXY` (and `NO_PROXY`) set.
    async fn run_child(mirror: &str, proxy: &str, no_proxy: Option<&str>) {
        let mut cmd = tokio::process::Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "transport::http::tests::env_proxy_child",
            "--ignored",
            "--test-threads=1",
        ]);
        for var in [
            "HTTP_PROXY",
            "http_proxy",
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
            "NO_PROXY",
            "no_proxy",
            "REQUEST_METHOD",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("SPACKFS_TEST_MIRROR", mirror)
            .env("HTTP_PROXY", proxy)
            .env(
                "SPACKFS_TEST_EXPECT",
                if no_proxy.is_some() {
                    "direct"
                } else {
                    "proxy"
                },
            )
            .kill_on_drop(true);
        if let Some(np) = no_proxy {
            cmd.env("no_proxy", np);
        }
        let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
            .await
            .expect("bounded")
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn env_proxies_apply_to_loopback_unless_no_proxy() {
        let proxy = Server::start(|_, _| Reply::ok(b"via proxy")).await;
        let mirror = format!("http://127.0.0.1:{}/mirror", dead_port());
        let proxy_url = format!("http://127.0.0.1:{}", proxy.port);
        run_child(&mirror, &proxy_url, None).await;
        let reqs = proxy.requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].target, format!("{mirror}/a/b.json"));
        run_child(&mirror, &proxy_url, Some("localhost,127.0.0.1")).await;
        assert_eq!(proxy.requests().len(), 1, "NO_PROXY bypasses the proxy");
    }

    /// The child half of [`env_proxies_apply_to_loopback_unless_no_proxy`].
    #[tokio::test(flavor = "multi_thread")]
    #[ignore = "run in a child process by env_proxies_apply_to_loopback_unless_no_proxy"]
    async fn env_proxy_child() {
        let (Ok(mirror), Ok(expect)) = (
            std::env::var("SPACKFS_TEST_MIRROR"),
            std::env::var("SPACKFS_TEST_EXPECT"),
        ) else {
            return;
        };
        let o = RemoteOptions {
            retries: 0,
            ..opts()
        };
        let s = HttpStore::new(&mirror, &o).unwrap();
        let got = read_all(&s, "a/b.json").await;
        match expect.as_str() {
            "proxy" => assert_eq!(got.unwrap(), b"via proxy"),
            _ => assert!(
                matches!(got, Err(TransportError::Connect { .. })),
                "{got:?}"
            ),
        }
    }
}
