//! Authorisation with an OCI registry, as Spack and Docker do it: requests go anonymous
//! first; a `401` carries a `WWW-Authenticate` challenge: `Bearer` (a token from the
//! challenge's realm, asked with the mirror's credentials as basic auth when it has any)
//! or `Basic` (the credentials themselves). The header is then sent with every request to
//! the registry's host, and never after a redirect to another host (reqwest drops it).
//! The credentials are never logged.

use std::sync::RwLock;
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{self, HeaderMap, HeaderValue};
use url::Url;

use crate::transport::TransportError;

/// The most a token response may weigh.
const TOKEN_LIMIT: usize = 1 << 20;

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The scheme, lower-cased (`bearer`, `basic`).
    pub scheme: String,
    /// Its parameters (names lower-cased).
    pub params: Vec<(String, String)>,
}

impl Challenge {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parse the challenges of a `WWW-Authenticate` value (RFC 7235: a scheme, then
/// `name=value` parameters, quoted or not, separated by commas; several challenges may
/// follow each other). token68 forms are skipped.
pub fn parse_challenges(value: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let mut rest = value.trim();
    while !rest.is_empty() {
        rest = rest.trim_start_matches([',', ' ', '\t']);
        if rest.is_empty() {
            break;
        }
        // A token: a scheme, or a parameter name when `=` follows.
        let end = rest
            .find(|c: char| c == '=' || c == ',' || c.is_whitespace())
            .unwrap_or(rest.len());
        let token = &rest[..end];
        let after = rest[end..].trim_start_matches([' ', '\t']);
        if let Some(v) = after.strip_prefix('=') {
            // A parameter of the current challenge.
            let v = v.trim_start_matches([' ', '\t']);
            let (value, next) = if let Some(q) = v.strip_prefix('"') {
                let mut val = String::new();
                let mut chars = q.char_indices();
                let mut close = q.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, n)) = chars.next() {
                                val.push(n);
                            }
                        }
                        '"' => {
                            close = i + 1;
                            break;
                        }
                        c => val.push(c),
                    }
                }
                (val, &q[close.min(q.len())..])
            } else {
                let e = v.find(',').unwrap_or(v.len());
                (v[..e].trim().to_string(), &v[e..])
            };
            if let Some(c) = out.last_mut() {
                c.params.push((token.to_ascii_lowercase(), value));
            }
            rest = next;
        } else {
            if token.is_empty() {
                break;
            }
            out.push(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: Vec::new(),
            });
            rest = after;
        }
    }
    out
}

/// The authorisation state of one registry.
pub struct RegistryAuth {
    /// User and password (`access_pair`).
    creds: Option<(String, String)>,
    /// The registry's scheme (a token realm may not be weaker than it).
    scheme: String,
    /// The repository, for a default scope.
    repository: String,
    current: RwLock<Option<HeaderValue>>,
}

impl RegistryAuth {
    pub fn new(creds: Option<(String, String)>, scheme: &str, repository: &str) -> Self {
        RegistryAuth {
            creds,
            scheme: scheme.to_string(),
            repository: repository.to_string(),
            current: RwLock::new(None),
        }
    }

    /// The `Authorization` value to send now, if any.
    pub fn current(&self) -> Option<HeaderValue> {
        self.current.read().unwrap().clone()
    }

    fn basic(&self) -> Option<HeaderValue> {
        let (user, password) = self.creds.as_ref()?;
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut v = HeaderValue::from_str(&format!("Basic {b64}")).ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    /// The error of a request still unauthorised after its challenge was answered.
    pub fn refused(&self, mirror: &str, path: &str) -> TransportError {
        TransportError::Refused {
            mirror: mirror.to_string(),
            path: path.to_string(),
            message: if self.creds.is_some() {
                "unauthorized (HTTP 401): the registry refused the credentials of access_pair"
                    .into()
            } else {
                "unauthorized (HTTP 401): the registry requires credentials (set access_pair for this mirror)".into()
            },
        }
    }

    /// Answer the challenge of a 401 response: afterwards [`RegistryAuth::current`] holds
    /// the header to retry with.
    pub async fn answer(
        &self,
        client: &reqwest::Client,
        headers: &HeaderMap,
        mirror: &str,
        path: &str,
        wait: Duration,
    ) -> Result<(), TransportError> {
        let refused = |message: String| TransportError::Refused {
            mirror: mirror.to_string(),
            path: path.to_string(),
            message,
        };
        let challenges: Vec<Challenge> = headers
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(parse_challenges)
            .collect();
        let bearer = challenges.iter().find(|c| c.scheme == "bearer");
        if let Some(b) = bearer.filter(|b| b.param("realm").is_some()) {
            let token = self.token(client, b, mirror, path, wait).await?;
            let mut v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                refused("the token service answered a token that is no header value".into())
            })?;
            v.set_sensitive(true);
            *self.current.write().unwrap() = Some(v);
            return Ok(());
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            return match self.basic() {
                Some(v) => {
                    *self.current.write().unwrap() = Some(v);
                    Ok(())
                }
                None => Err(self.refused(mirror, path)),
            };
        }
        Err(refused(format!(
            "unauthorized (HTTP 401) with no usable challenge ({})",
            headers
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.chars().take(120).collect::<String>())
                .unwrap_or_else(|| "no WWW-Authenticate header".into())
        )))
    }

    /// A token from a Bearer challenge's realm.
    async fn token(
        &self,
        client: &reqwest::Client,
        c: &Challenge,
        mirror: &str,
        path: &str,
        wait: Duration,
    ) -> Result<String, TransportError> {
        let refused = |message: String| TransportError::Refused {
            mirror: mirror.to_string(),
            path: path.to_string(),
            message,
        };
        let realm = c.param("realm").unwrap_or_default();
        let mut url = Url::parse(realm)
            .map_err(|e| refused(format!("the token realm {realm:?} is no URL: {e}")))?;
        match url.scheme() {
            "https" => {}
            // A plain-HTTP registry (oci+http://) may have a plain-HTTP token service;
            // an https registry's credentials never travel in clear.
            "http" if self.scheme == "http" => {}
            other => {
                return Err(refused(format!(
                    "the token realm {realm} uses {other}://, weaker than the registry's {}://: refused",
                    self.scheme
                )))
            }
        }
        let default_scope = format!("repository:{}:pull", self.repository);
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = c.param("service") {
                q.append_pair("service", s);
            }
            q.append_pair("scope", c.param("scope").unwrap_or(&default_scope));
            q.append_pair("client_id", "spackfs");
        }
        let mut req = client.get(url.clone());
        if let Some(b) = self.basic() {
            req = req.header(header::AUTHORIZATION, b);
        }
        let host = url.host_str().unwrap_or_default().to_string();
        let resp = match tokio::time::timeout(wait, req.send()).await {
            Err(_) => {
                return Err(TransportError::Timeout {
                    mirror: mirror.to_string(),
                    path: path.to_string(),
                    message: format!(
                        "the token service {host} did not answer within {:.1}s",
                        wait.as_secs_f64()
                    ),
                })
            }
            Ok(Err(e)) => {
                return Err(TransportError::Connect {
                    mirror: mirror.to_string(),
                    path: path.to_string(),
                    message: format!("token service {host}: {}", e.without_url()),
                })
            }
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        if !status.is_success() {
            return Err(refused(format!(
                "the token service {host} refused (HTTP {}){}",
                status.as_u16(),
                if self.creds.is_some() {
                    ": wrong credentials in access_pair?"
                } else {
                    ": the registry may require credentials (access_pair)"
                }
            )));
        }
        let body = tokio::time::timeout(wait, resp.bytes())
            .await
            .map_err(|_| refused(format!("the token service {host} stalled")))?
            .map_err(|e| refused(format!("token service {host}: {}", e.without_url())))?;
        if body.len() > TOKEN_LIMIT {
            return Err(refused(format!(
                "the token service {host} answered more than {TOKEN_LIMIT} bytes"
            )));
        }
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: Token = serde_json::from_slice(&body).map_err(|e| {
            refused(format!(
                "the token service {host} answered no token JSON: {e}"
            ))
        })?;
        t.token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| refused(format!("the token service {host} answered no token")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_basic_challenges_parse() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.example/token"));
        assert_eq!(c[0].param("service"), Some("registry.example"));
        assert_eq!(c[0].param("scope"), Some("repository:a/b:pull"));
        let c = parse_challenges(
            r#"Basic realm="Registry Realm", Bearer realm="https://x/t", scope="a,b""#,
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some("Registry Realm"));
        assert_eq!(c[1].param("scope"), Some("a,b"));
        let c = parse_challenges(r#"Basic realm="a \"quoted\" realm""#);
        assert_eq!(c[0].param("realm"), Some(r#"a "quoted" realm"#));
    }

    #[test]
    fn hostile_challenges_do_not_panic() {
        for v in [
            "",
            "=",
            "\"",
            "Bearer realm=\"",
            "Bearer ,,,=,",
            "a=b",
            "Bearer realm=\"\\",
        ] {
            let _ = parse_challenges(v);
        }
    }
}
