//! `s3://bucket/prefix` mirrors, through object_store's S3 client: an endpoint URL for
//! S3-compatible servers (path-style addressing), credentials from the mirror's
//! connection fields, a profile of the usual AWS files, the environment, or none
//! (anonymous requests: never a probe of the instance-metadata address unless the
//! environment asks for container or web-identity credentials). No total request timeout
//! (it would cut large blobs): a connect timeout, an idle-read timeout and the low-speed
//! rule of the other transports; retries few and short, so that failover is prompt.

use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as StorePath;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, ObjectStore, ObjectStoreExt, RetryConfig,
};

use super::{watchdog, Access, BlobStore, ByteStream, Conditional, RemoteOptions, TransportError};

/// One S3 bucket (and key prefix) as a mirror.
pub struct S3Store {
    store: AmazonS3,
    bucket: String,
    /// Key prefix of the mirror root, without slashes at either end (may be empty).
    prefix: String,
    display: String,
    opts: RemoteOptions,
}

/// An error of the S3 configuration, naming the mirror.
fn config_error(mirror: &str, message: impl Into<String>) -> TransportError {
    TransportError::Config {
        mirror: mirror.to_string(),
        message: message.into(),
    }
}

impl S3Store {
    /// Open `s3://bucket/prefix`.
    pub fn new(url: &str, opts: &RemoteOptions, s3: &Access) -> Result<Self, TransportError> {
        let display = super::strip_credentials(url);
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| TransportError::UnsupportedUrl(display.clone()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(config_error(&display, "the URL names no bucket"));
        }
        let prefix = prefix.trim_matches('/').to_string();
        if prefix
            .split('/')
            .any(|c| c == "." || c == ".." || (c.is_empty() && !prefix.is_empty()))
        {
            return Err(config_error(
                &display,
                "the key prefix has an empty, . or .. component",
            ));
        }
        super::http::install_crypto_provider();
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_virtual_hosted_style_request(false);
        let endpoint = s3
            .endpoint_url
            .clone()
            .or_else(|| std::env::var("S3_ENDPOINT_URL").ok())
            .filter(|e| !e.is_empty());
        if let Some(e) = &endpoint {
            let e = if e.contains("://") {
                e.clone()
            } else {
                format!("https://{e}")
            };
            b = b.with_endpoint(e.trim_end_matches('/'));
        }
        let plain_http = endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        let profile = s3
            .profile
            .clone()
            .or_else(|| std::env::var("AWS_PROFILE").ok())
            .filter(|p| !p.is_empty());
        let region = std::env::var("AWS_REGION")
            .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
            .ok()
            .filter(|r| !r.is_empty());
        let mut region = region;
        match credentials(s3, profile.as_deref(), &display)? {
            Credentials::Static {
                key,
                secret,
                token,
                region: r,
            } => {
                b = b.with_access_key_id(key).with_secret_access_key(secret);
                if let Some(t) = token {
                    b = b.with_token(t);
                }
                region = region.or(r);
            }
            Credentials::Environment => {
                // Container and web-identity credentials, as the environment names them.
                let env = AmazonS3Builder::from_env();
                for key in [
                    object_store::aws::AmazonS3ConfigKey::ContainerCredentialsRelativeUri,
                    object_store::aws::AmazonS3ConfigKey::ContainerCredentialsFullUri,
                    object_store::aws::AmazonS3ConfigKey::ContainerAuthorizationTokenFile,
                    object_store::aws::AmazonS3ConfigKey::WebIdentityTokenFile,
                    object_store::aws::AmazonS3ConfigKey::RoleArn,
                    object_store::aws::AmazonS3ConfigKey::RoleSessionName,
                    object_store::aws::AmazonS3ConfigKey::StsEndpoint,
                ] {
                    if let Some(v) = env.get_config_value(&key) {
                        b = b.with_config(key, v);
                    }
                }
            }
            Credentials::Anonymous => {
                let shown = &display;
                tracing::debug!("mirror {shown}: no credentials: anonymous requests");
                b = b.with_skip_signature(true);
            }
        }
        b = b.with_region(region.unwrap_or_else(|| "us-east-1".into()));
        // (allow_http lives in the client options: set here, not on the builder.)
        let mut client = ClientOptions::new()
            .with_timeout_disabled()
            .with_allow_http(plain_http);
        if !opts.connect_timeout.is_zero() {
            client = client.with_connect_timeout(opts.connect_timeout);
        }
        if !opts.low_speed_time.is_zero() {
            client = client.with_read_timeout(opts.low_speed_time);
        }
        if let Some(file) = &opts.ca_file {
            let pem = std::fs::read(file).map_err(|e| {
                config_error(
                    &display,
                    format!("cannot read CA file {}: {e}", file.display()),
                )
            })?;
            for cert in object_store::Certificate::from_pem_bundle(&pem)
                .map_err(|e| config_error(&display, format!("CA file {}: {e}", file.display())))?
            {
                client = client.with_root_certificate(cert);
            }
        }
        b = b.with_client_options(client).with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: opts.retry_delay,
                max_backoff: opts.retry_delay.saturating_mul(8),
                base: 2.0,
            },
            max_retries: opts.retries,
            // Give up (and fail over) within seconds, whatever the retry count.
            retry_timeout: opts.connect_timeout.max(Duration::from_secs(1)) * 2,
        });
        let store = b
            .build()
            .map_err(|e| config_error(&display, format!("cannot set up S3: {e}")))?;
        Ok(S3Store {
            store,
            bucket: bucket.to_string(),
            prefix,
            display,
            opts: opts.clone(),
        })
    }

    /// The key of a mirror-relative path; a path that could leave the root does not exist.
    fn key(&self, path: &str) -> Result<StorePath, TransportError> {
        if path.is_empty()
            || path
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(self.not_found(path));
        }
        let full = if self.prefix.is_empty() {
            path.to_string()
        } else {
            format!("{}/{path}", self.prefix)
        };
        StorePath::parse(&full).map_err(|_| self.not_found(path))
    }

    fn not_found(&self, path: &str) -> TransportError {
        TransportError::NotFound {
            mirror: self.display.clone(),
            path: path.to_string(),
        }
    }

    /// A typed error for an object_store error on `path`.
    fn error(&self, path: &str, e: object_store::Error) -> TransportError {
        let mirror = self.display.clone();
        let path = path.to_string();
        match e {
            object_store::Error::NotFound { .. } => TransportError::NotFound { mirror, path },
            object_store::Error::PermissionDenied { source, .. }
            | object_store::Error::Unauthenticated { source, .. } => TransportError::Refused {
                mirror,
                path,
                message: format!(
                    "bucket {} refused the request (wrong or missing credentials?): {}",
                    self.bucket,
                    chain(source.as_ref())
                ),
            },
            other => {
                let message = chain(&other);
                if let Some(kind) = http_error_kind(&other) {
                    use object_store::client::HttpErrorKind as K;
                    return match kind {
                        K::Connect => TransportError::Connect {
                            mirror,
                            path,
                            message,
                        },
                        K::Timeout => TransportError::Timeout {
                            mirror,
                            path,
                            message,
                        },
                        _ => TransportError::Broken {
                            mirror,
                            path,
                            message,
                        },
                    };
                }
                match status_in(&message) {
                    Some(status) => TransportError::Status {
                        mirror,
                        path,
                        status,
                    },
                    None => TransportError::Broken {
                        mirror,
                        path,
                        message,
                    },
                }
            }
        }
    }

    /// The body of a GET, under the low-speed rule.
    fn body(&self, path: &str, result: object_store::GetResult) -> ByteStream {
        let mirror = self.display.clone();
        let p = path.to_string();
        let bucket = self.bucket.clone();
        let stream = result
            .into_stream()
            .map_err(move |e| {
                let message = chain(&e);
                TransportError::Broken {
                    mirror: mirror.clone(),
                    path: p.clone(),
                    message: format!("bucket {bucket}: {message}"),
                }
                .into_io()
            })
            .boxed();
        watchdog::guard(stream, &self.opts, &self.display, path)
    }
}

/// The display of an error and its sources.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// The kind of the HTTP error under an object_store error, if any.
fn http_error_kind(
    e: &(dyn std::error::Error + 'static),
) -> Option<object_store::client::HttpErrorKind> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<object_store::client::HttpError>() {
            return Some(h.kind());
        }
        cur = err.source();
    }
    None
}

/// The HTTP status object_store reports in its message ("non-2xx status code: 503 …").
fn status_in(message: &str) -> Option<u16> {
    let at = message.find("status code: ")? + "status code: ".len();
    message.get(at..at + 3)?.parse().ok()
}

/// Credentials resolved for an S3 mirror.
enum Credentials {
    Static {
        key: String,
        secret: String,
        token: Option<String>,
        region: Option<String>,
    },
    /// Container or web-identity credentials named by the environment.
    Environment,
    Anonymous,
}

/// Spack's order: the mirror's `access_pair` (with its session token), its `profile`;
/// then the usual chain: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`(/`AWS_SESSION_TOKEN`),
/// `AWS_PROFILE` or the `default` profile of the AWS files, container or web-identity
/// credentials; else anonymous.
fn credentials(
    s3: &Access,
    profile: Option<&str>,
    mirror: &str,
) -> Result<Credentials, TransportError> {
    if let Some((key, secret)) = &s3.access_key {
        return Ok(Credentials::Static {
            key: key.clone(),
            secret: secret.clone(),
            token: s3.session_token.clone(),
            region: None,
        });
    }
    if let Some(name) = s3.profile.as_deref() {
        return from_profile(name, mirror)?.ok_or_else(|| {
            config_error(
                mirror,
                format!("AWS profile {name:?} not found (or without keys) in the AWS credentials and config files"),
            )
        });
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let (Some(key), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        return Ok(Credentials::Static {
            key,
            secret,
            token: env("AWS_SESSION_TOKEN").or_else(|| s3.session_token.clone()),
            region: None,
        });
    }
    if let Some(found) = from_profile(profile.unwrap_or("default"), mirror)? {
        return Ok(found);
    }
    if profile.is_some() {
        return Err(config_error(
            mirror,
            format!(
                "AWS profile {:?} (AWS_PROFILE) not found",
                profile.unwrap_or_default()
            ),
        ));
    }
    if env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
        || env("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some()
        || env("AWS_WEB_IDENTITY_TOKEN_FILE").is_some()
    {
        return Ok(Credentials::Environment);
    }
    Ok(Credentials::Anonymous)
}

/// The keys of profile `name` in the AWS credentials file (`AWS_SHARED_CREDENTIALS_FILE`,
/// `~/.aws/credentials`) or config file (`AWS_CONFIG_FILE`, `~/.aws/config`, where a
/// profile's section is `[profile NAME]`), with its region.
fn from_profile(name: &str, mirror: &str) -> Result<Option<Credentials>, TransportError> {
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let file = |var: &str, default: &str| {
        std::env::var_os(var)
            .map(std::path::PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws").join(default)))
    };
    let load = |path: &Option<std::path::PathBuf>| -> Result<Option<ini::Ini>, TransportError> {
        match path {
            Some(p) if p.exists() => ini::Ini::load_from_file(p).map(Some).map_err(|e| {
                config_error(mirror, format!("cannot read AWS file {}: {e}", p.display()))
            }),
            _ => Ok(None),
        }
    };
    let creds = load(&file("AWS_SHARED_CREDENTIALS_FILE", "credentials"))?;
    let config = load(&file("AWS_CONFIG_FILE", "config"))?;
    let config_section = if name == "default" {
        "default".to_string()
    } else {
        format!("profile {name}")
    };
    let get = |key: &str| -> Option<String> {
        creds
            .as_ref()
            .and_then(|c| c.section(Some(name)))
            .and_then(|s| s.get(key))
            .or_else(|| {
                config
                    .as_ref()
                    .and_then(|c| c.section(Some(config_section.as_str())))
                    .and_then(|s| s.get(key))
            })
            .map(str::to_string)
            .filter(|v| !v.is_empty())
    };
    let (Some(key), Some(secret)) = (get("aws_access_key_id"), get("aws_secret_access_key")) else {
        return Ok(None);
    };
    Ok(Some(Credentials::Static {
        key,
        secret,
        token: get("aws_session_token"),
        region: get("region"),
    }))
}

#[async_trait]
impl BlobStore for S3Store {
    fn url(&self) -> &str {
        &self.display
    }

    async fn get(&self, path: &str) -> Result<ByteStream, TransportError> {
        let key = self.key(path)?;
        let r = self
            .store
            .get_opts(&key, GetOptions::default())
            .await
            .map_err(|e| self.error(path, e))?;
        Ok(self.body(path, r))
    }

    async fn get_if_changed(
        &self,
        path: &str,
        validator: Option<&str>,
    ) -> Result<Conditional, TransportError> {
        let key = self.key(path)?;
        let opts = GetOptions {
            if_none_match: validator.map(str::to_string),
            ..GetOptions::default()
        };
        match self.store.get_opts(&key, opts).await {
            Err(object_store::Error::NotModified { .. }) => Ok(Conditional::Unchanged),
            Err(e) => Err(self.error(path, e)),
            Ok(r) => {
                let new = r.meta.e_tag.clone();
                if validator.is_some() && new.as_deref() == validator {
                    return Ok(Conditional::Unchanged);
                }
                Ok(Conditional::Changed {
                    stream: self.body(path, r),
                    validator: new,
                })
            }
        }
    }

    async fn head(&self, path: &str) -> Result<Option<u64>, TransportError> {
        let key = self.key(path)?;
        match self.store.head(&key).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(path, e)),
        }
    }

    async fn probe(&self) -> Result<(), TransportError> {
        // Any answer from the bucket (even "no such key") shows it is there.
        match self.head("v3/layout.json").await {
            Ok(_) => Ok(()),
            Err(e) if e.is_endpoint_failure() => Err(TransportError::Unreachable {
                mirror: self.display.clone(),
                reason: e.to_string(),
            }),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Option<Vec<String>>, TransportError> {
        let dir = prefix.trim_matches('/');
        let key = if dir.is_empty() {
            (!self.prefix.is_empty()).then(|| StorePath::from(self.prefix.as_str()))
        } else {
            Some(self.key(dir)?)
        };
        let root = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut out = Vec::new();
        let mut listing = self.store.list(key.as_ref());
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| self.error(prefix, e))?;
            let loc = meta.location.as_ref();
            if let Some(rel) = loc.strip_prefix(root.as_str()) {
                out.push(rel.to_string());
            }
        }
        out.sort();
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_store_statuses_are_read_from_their_message() {
        assert_eq!(
            status_in("Server returned non-2xx status code: 503 Service Unavailable: "),
            Some(503)
        );
        assert_eq!(status_in("connection refused"), None);
    }

    #[test]
    fn bad_urls_name_the_mirror() {
        let o = RemoteOptions::default();
        let s = Access::default();
        for url in ["s3://", "s3:///x", "s3://b/a/../c"] {
            let e = S3Store::new(url, &o, &s).err().expect(url).to_string();
            assert!(e.contains(url.trim_end_matches('/')), "{url}: {e}");
        }
    }

    #[test]
    fn keys_never_leave_the_prefix() {
        let s = S3Store::new(
            "s3://bucket/cache",
            &RemoteOptions::default(),
            &Access {
                access_key: Some(("id".into(), "secret".into())),
                ..Access::default()
            },
        )
        .unwrap();
        assert_eq!(
            s.key("v3/layout.json").unwrap().as_ref(),
            "cache/v3/layout.json"
        );
        for bad in ["", "../x", "a//b", "./a", "a/.."] {
            assert!(s.key(bad).unwrap_err().is_not_found(), "{bad}");
        }
    }
}
