//! `oci://HOST/NAME` and `oci+http://HOST/NAME` mirrors: an OCI distribution registry.
//!
//! Built on the HTTP transport (its client, timeouts, low-speed rule, retries, resumable
//! bodies, proxies and CA file), with the registry's authorisation ([`auth`]). Paths of
//! this transport are the registry's, relative to `/v2/NAME/`: `manifests/REF` (read
//! whole, with the manifest media types accepted, and checked against their digest: the
//! reference's when it is one, else the `Docker-Content-Digest` the registry sends),
//! `blobs/sha256:HEX` (streamed; the caller checks the digest as it reads), and the listing
//! `tags` (every tag, following `Link` pagination). Spack's layout on top of this lives in
//! `mirror/oci.rs`.

pub mod auth;

use async_trait::async_trait;
use futures::StreamExt;
use reqwest::header::{self, HeaderMap, HeaderValue};
use url::Url;

use super::http::HttpStore;
use super::{collect, Access, BlobStore, ByteStream, Conditional, RemoteOptions, TransportError};
use crate::buildcache::checksum::Sha256;

/// The most a manifest may weigh (they are a few kB; an index of a large multi-platform
/// image some hundred).
pub const MANIFEST_LIMIT: u64 = 4 << 20;

/// The most a page of the tag list may weigh, and how many pages are read.
const TAGS_PAGE_LIMIT: u64 = 16 << 20;
const TAGS_MAX_PAGES: usize = 10_000;

/// The manifest media types a reader accepts (OCI and Docker schema 2, images and
/// indexes).
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

/// Where a registry mirror is: scheme, host (with port) and repository name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    /// `https` (`oci://`) or `http` (`oci+http://`).
    pub scheme: &'static str,
    pub host: String,
    pub repository: String,
}

/// Parse an `oci://` or `oci+http://` URL by Docker's rules (format doc §6.1): the first
/// component is the registry host when it has a `.` or `:`, is `localhost` or has an
/// upper-case letter; else the registry is Docker Hub and a one-component name is under
/// `library/`. The name is lower-cased. A tag or digest in the URL is refused (a build
/// cache is a repository).
pub fn parse_registry(url: &str) -> Result<Registry, String> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("oci+http://") {
        ("http", r)
    } else if let Some(r) = url.strip_prefix("oci://") {
        ("https", r)
    } else {
        return Err("not an oci:// or oci+http:// URL".into());
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('@') {
        return Err("a digest (@…) in a mirror URL: name the repository only".into());
    }
    let (first, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let is_host = first.contains('.')
        || first.contains(':')
        || first == "localhost"
        || first.chars().any(|c| c.is_ascii_uppercase());
    let (host, name) = if is_host && !tail.is_empty() {
        (first.to_string(), tail.to_string())
    } else if is_host {
        return Err(format!("no repository name after the registry {first}"));
    } else if tail.is_empty() {
        ("index.docker.io".to_string(), format!("library/{first}"))
    } else {
        ("index.docker.io".to_string(), rest.to_string())
    };
    if host.is_empty() || host.contains(['/', '?', '#', ' ']) {
        return Err(format!("bad registry host {host:?}"));
    }
    let name = name.to_ascii_lowercase();
    let last = name.rsplit('/').next().unwrap_or_default();
    if last.contains(':') {
        return Err("a tag (:…) in a mirror URL: name the repository only".into());
    }
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
            && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
    };
    if !name.split('/').all(component_ok) {
        return Err(format!("bad repository name {name:?}"));
    }
    Ok(Registry {
        scheme,
        host,
        repository: name,
    })
}

/// An OCI registry repository as a mirror.
pub struct OciStore {
    http: HttpStore,
    display: String,
}

impl OciStore {
    /// Open `oci://…` or `oci+http://…`; `access.access_key` is the registry user and
    /// password.
    pub fn new(url: &str, opts: &RemoteOptions, access: &Access) -> Result<Self, TransportError> {
        let display = super::strip_credentials(url);
        let reg = parse_registry(url).map_err(|message| TransportError::Config {
            mirror: display.clone(),
            message,
        })?;
        let base = format!("{}://{}/v2/{}/", reg.scheme, reg.host, reg.repository);
        let auth = auth::RegistryAuth::new(access.access_key.clone(), reg.scheme, &reg.repository);
        let http = HttpStore::for_registry(&base, &display, opts, auth)?;
        Ok(OciStore { http, display })
    }

    fn accept() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
        h
    }

    /// Read a manifest whole and check it against its digest.
    async fn manifest_body(
        &self,
        path: &str,
        stream: ByteStream,
        headers: &HeaderMap,
    ) -> Result<Vec<u8>, TransportError> {
        let body = collect(stream, MANIFEST_LIMIT, &self.display, path).await?;
        let reference = path.strip_prefix("manifests/").unwrap_or(path);
        let expected = match reference.strip_prefix("sha256:") {
            Some(hex) => Some(hex.to_string()),
            None => headers
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().strip_prefix("sha256:"))
                .map(str::to_string),
        };
        if let Some(hex) = expected {
            let want = Sha256::parse(&hex).ok_or_else(|| TransportError::Refused {
                mirror: self.display.clone(),
                path: path.to_string(),
                message: format!(
                    "bad manifest digest sha256:{}",
                    hex.chars().take(80).collect::<String>()
                ),
            })?;
            let got = Sha256::of(&body);
            if got != want {
                return Err(TransportError::Refused {
                    mirror: self.display.clone(),
                    path: path.to_string(),
                    message: format!(
                        "the manifest does not match its digest (sha256:{want}, got sha256:{got})"
                    ),
                });
            }
        }
        Ok(body)
    }

    /// Every tag of the repository.
    async fn tags(&self) -> Result<Vec<String>, TransportError> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let mut out = Vec::new();
        let mut next: Option<Url> = None;
        for _ in 0..TAGS_MAX_PAGES {
            let (headers, stream) = match next.take() {
                None => self.http.get_with("tags/list", &HeaderMap::new()).await?,
                Some(url) => {
                    self.http
                        .get_url("tags/list", url, &HeaderMap::new())
                        .await?
                }
            };
            let body = collect(stream, TAGS_PAGE_LIMIT, &self.display, "tags/list").await?;
            let page: Page =
                serde_json::from_slice(&body).map_err(|e| TransportError::Refused {
                    mirror: self.display.clone(),
                    path: "tags/list".into(),
                    message: format!("not a tag list: {e}"),
                })?;
            out.extend(page.tags.unwrap_or_default());
            match next_link(&headers, self.http.base()) {
                Some(url) => next = Some(url),
                None => return Ok(out),
            }
        }
        Err(TransportError::Refused {
            mirror: self.display.clone(),
            path: "tags/list".into(),
            message: format!("more than {TAGS_MAX_PAGES} pages of tags"),
        })
    }
}

/// The `rel="next"` target of a `Link` header, resolved against the registry.
fn next_link(headers: &HeaderMap, base: &Url) -> Option<Url> {
    for value in headers.get_all(header::LINK) {
        let Ok(v) = value.to_str() else { continue };
        for link in v.split(',') {
            let link = link.trim();
            let Some(end) = link.find('>') else { continue };
            let target = link.strip_prefix('<').map(|t| &t[..end - 1]);
            let params = &link[end + 1..];
            let is_next = params.split(';').any(|p| {
                let p = p.trim().replace(' ', "");
                p.eq_ignore_ascii_case("rel=\"next\"") || p.eq_ignore_ascii_case("rel=next")
            });
            if let (true, Some(t)) = (is_next, target) {
                return base.join(t).ok();
            }
        }
    }
    None
}

fn one_chunk(body: Vec<u8>) -> ByteStream {
    futures::stream::once(async move { Ok(bytes::Bytes::from(body)) }).boxed()
}

#[async_trait]
impl BlobStore for OciStore {
    fn url(&self) -> &str {
        &self.display
    }

    async fn get(&self, path: &str) -> Result<ByteStream, TransportError> {
        if path.starts_with("manifests/") {
            let (headers, stream) = self.http.get_with(path, &Self::accept()).await?;
            let body = self.manifest_body(path, stream, &headers).await?;
            return Ok(one_chunk(body));
        }
        self.http.get(path).await
    }

    async fn get_if_changed(
        &self,
        path: &str,
        validator: Option<&str>,
    ) -> Result<Conditional, TransportError> {
        if !path.starts_with("manifests/") {
            return self.http.get_if_changed(path, validator).await;
        }
        match self
            .http
            .get_if_changed_with(path, validator, &Self::accept())
            .await?
        {
            (Conditional::Unchanged, _) => Ok(Conditional::Unchanged),
            (Conditional::Changed { stream, validator }, headers) => {
                let body = self.manifest_body(path, stream, &headers).await?;
                Ok(Conditional::Changed {
                    stream: one_chunk(body),
                    validator,
                })
            }
        }
    }

    async fn get_digest(&self, algorithm: &str, hex: &str) -> Result<ByteStream, TransportError> {
        if algorithm != "sha256" || Sha256::parse(hex).is_none() {
            return Err(TransportError::Refused {
                mirror: self.display.clone(),
                path: format!("{algorithm}:{hex}"),
                message: "only sha256 digests are read".into(),
            });
        }
        self.http.get(&format!("blobs/sha256:{hex}")).await
    }

    async fn head(&self, path: &str) -> Result<Option<u64>, TransportError> {
        self.http.head(path).await
    }

    async fn probe(&self) -> Result<(), TransportError> {
        self.http.probe().await
    }

    /// `tags`: every tag of the repository; nothing else can be listed.
    async fn list(&self, prefix: &str) -> Result<Option<Vec<String>>, TransportError> {
        if prefix.trim_matches('/') == "tags" {
            return Ok(Some(self.tags().await?));
        }
        Ok(None)
    }

    fn is_registry(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_references_follow_dockers_rules() {
        let r = parse_registry("oci://ghcr.io/org/BuildCache").unwrap();
        assert_eq!(
            (r.scheme, r.host.as_str(), r.repository.as_str()),
            ("https", "ghcr.io", "org/buildcache")
        );
        let r = parse_registry("oci+http://127.0.0.1:5000/fixtures/buildcache/").unwrap();
        assert_eq!(
            (r.scheme, r.host.as_str(), r.repository.as_str()),
            ("http", "127.0.0.1:5000", "fixtures/buildcache")
        );
        let r = parse_registry("oci://user/cache").unwrap();
        assert_eq!(
            (r.host.as_str(), r.repository.as_str()),
            ("index.docker.io", "user/cache")
        );
        let r = parse_registry("oci://cache").unwrap();
        assert_eq!(r.repository, "library/cache");
        let r = parse_registry("oci://localhost/x").unwrap();
        assert_eq!(r.host, "localhost");
        for bad in [
            "oci://ghcr.io",
            "oci://ghcr.io/org/cache:tag",
            "oci://ghcr.io/org/cache@sha256:00",
            "oci://ghcr.io/org/../x",
            "oci://ghcr.io/org//x",
            "http://ghcr.io/x",
        ] {
            assert!(parse_registry(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn next_links_resolve_against_the_registry() {
        let base = Url::parse("http://127.0.0.1:5000/v2/a/b/").unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            header::LINK,
            HeaderValue::from_static("</v2/a/b/tags/list?last=x&n=2>; rel=\"next\""),
        );
        assert_eq!(
            next_link(&h, &base).unwrap().as_str(),
            "http://127.0.0.1:5000/v2/a/b/tags/list?last=x&n=2"
        );
        h.insert(
            header::LINK,
            HeaderValue::from_static("<https://other/x>; rel=\"prev\""),
        );
        assert!(next_link(&h, &base).is_none());
    }
}
