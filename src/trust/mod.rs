//! Trust: which OpenPGP keys may sign a mirror's manifests, and the check of a clearsigned
//! manifest against them (sequoia, StandardPolicy).
//!
//! Unlike Spack, a signature counts only when made by a *configured* key that is valid now
//! (not expired, not revoked). The caller binds what was signed to what was asked.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use openpgp::cert::prelude::*;
use openpgp::parse::stream::{
    MessageLayer, MessageStructure, VerificationError, VerificationHelper, VerifierBuilder,
};
use openpgp::parse::Parse;
use openpgp::policy::StandardPolicy;
use openpgp::types::RevocationStatus;
use openpgp::{Fingerprint, KeyHandle};
use sequoia_openpgp as openpgp;

/// Why a manifest is not trusted. Names the object and, where known, the key.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read key file {path}: {message}")]
    KeyFile { path: PathBuf, message: String },
    #[error("{what} is signed by key {fingerprint}, which is not among the trusted keys (give it with --key or --keyring)")]
    UntrustedKey { what: String, fingerprint: String },
    #[error("{what} is signed by key {fingerprint}, which is not valid now: {reason}")]
    InvalidKey {
        what: String,
        fingerprint: String,
        reason: String,
    },
    #[error("{what}: bad signature: {reason}")]
    BadSignature { what: String, reason: String },
    #[error(
        "{what} is not signed, but this mirror requires signatures (use --unsigned to opt out)"
    )]
    NotSigned { what: String },
}

/// The set of trusted certificates.
#[derive(Clone, Default)]
pub struct Keyring {
    certs: Vec<Cert>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.certs.iter().map(|c| c.fingerprint().to_hex()))
            .finish()
    }
}

impl Keyring {
    /// Load every certificate of a file (armored or binary, one or many).
    pub fn add_file(&mut self, path: &Path) -> Result<usize, TrustError> {
        let data = std::fs::read(path).map_err(|e| TrustError::KeyFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        self.add_bytes(&data, path)
    }

    /// Load every certificate of in-memory key data (e.g. a base64 key from a config file);
    /// `origin` names it in errors.
    pub fn add_bytes(&mut self, data: &[u8], origin: &Path) -> Result<usize, TrustError> {
        let err = |message: String| TrustError::KeyFile {
            path: origin.to_path_buf(),
            message,
        };
        let parser = CertParser::from_bytes(data).map_err(|e| err(e.to_string()))?;
        let mut n = 0;
        for cert in parser {
            self.certs.push(cert.map_err(|e| err(e.to_string()))?);
            n += 1;
        }
        if n == 0 {
            return Err(err("no OpenPGP certificate in it".into()));
        }
        Ok(n)
    }

    /// Load every regular file of a directory as key files (`*.asc`, `*.pub`, `*.gpg`, `*.key`…).
    pub fn add_dir(&mut self, dir: &Path) -> Result<usize, TrustError> {
        let entries = std::fs::read_dir(dir).map_err(|e| TrustError::KeyFile {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        paths.sort();
        let mut n = 0;
        for p in paths {
            n += self.add_file(&p)?;
        }
        if n == 0 {
            return Err(TrustError::KeyFile {
                path: dir.to_path_buf(),
                message: "keyring directory holds no key".into(),
            });
        }
        Ok(n)
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    /// Verify a clearsigned document; return the signed text and the signer's fingerprint
    /// (of the certificate, primary key).
    pub fn verify_clearsigned(&self, doc: &[u8], what: &str) -> Result<Verified, TrustError> {
        if !crate::buildcache::manifest::is_clearsigned(doc) {
            return Err(TrustError::NotSigned {
                what: what.to_string(),
            });
        }
        let policy = StandardPolicy::new();
        let helper = Helper {
            certs: &self.certs,
            what,
            policy: &policy,
            outcome: None,
        };
        let bad = |reason: String| TrustError::BadSignature {
            what: what.to_string(),
            reason,
        };
        let mut verifier = match VerifierBuilder::from_bytes(doc)
            .and_then(|b| b.with_policy(&policy, None, helper))
        {
            Ok(v) => v,
            Err(e) => return Err(downcast(e).unwrap_or_else(|e| bad(e.to_string()))),
        };
        let mut text = Vec::new();
        if let Err(e) = std::io::Read::read_to_end(&mut verifier, &mut text) {
            return Err(match e.into_inner() {
                Some(inner) => match inner.downcast::<TrustErrorBox>() {
                    Ok(b) => b.0,
                    Err(inner) => bad(inner.to_string()),
                },
                None => bad("cannot read signed text".into()),
            });
        }
        let helper = verifier.into_helper();
        let fingerprint = helper
            .outcome
            .ok_or_else(|| bad("no signature was checked".into()))?;
        Ok(Verified {
            text,
            signer: fingerprint.to_hex(),
        })
    }
}

/// The result of a good signature check.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The signed text (the manifest JSON).
    pub text: Vec<u8>,
    /// Fingerprint of the signing certificate, 40 upper-case hex digits.
    pub signer: String,
}

/// Carries our error through sequoia's `anyhow` and `io::Error` layers.
#[derive(Debug)]
struct TrustErrorBox(TrustError);
impl std::fmt::Display for TrustErrorBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
impl std::error::Error for TrustErrorBox {}

fn downcast(e: anyhow::Error) -> Result<TrustError, anyhow::Error> {
    match e.downcast::<TrustErrorBox>() {
        Ok(b) => Ok(b.0),
        Err(e) => match e.downcast::<std::io::Error>() {
            Ok(io) => match io.into_inner().map(|i| i.downcast::<TrustErrorBox>()) {
                Some(Ok(b)) => Ok(b.0),
                Some(Err(i)) => Err(anyhow::anyhow!(i.to_string())),
                None => Err(anyhow::anyhow!("I/O error")),
            },
            Err(e) => Err(e),
        },
    }
}

struct Helper<'a> {
    certs: &'a [Cert],
    what: &'a str,
    policy: &'a StandardPolicy<'a>,
    outcome: Option<Fingerprint>,
}

impl Helper<'_> {
    /// The signer's certificate must be valid *now*: alive, not revoked, key alive.
    fn valid_now(&self, cert: &Cert, key_fpr: &Fingerprint) -> Result<(), String> {
        let now = SystemTime::now();
        let vc = cert
            .with_policy(self.policy, now)
            .map_err(|e| e.to_string())?;
        vc.alive()
            .map_err(|e| format!("certificate expired: {e}"))?;
        if let RevocationStatus::Revoked(_) = vc.revocation_status() {
            return Err("certificate revoked".into());
        }
        let ka = vc
            .keys()
            .key_handle(key_fpr.clone())
            .next()
            .ok_or_else(|| "signing key not valid under the policy now".to_string())?;
        ka.alive()
            .map_err(|e| format!("signing key expired: {e}"))?;
        if let RevocationStatus::Revoked(_) = ka.revocation_status() {
            return Err("signing key revoked".into());
        }
        Ok(())
    }

    fn fail(&self, e: TrustError) -> anyhow::Error {
        anyhow::Error::new(TrustErrorBox(e))
    }
}

fn issuer(sig: &openpgp::packet::Signature) -> String {
    sig.get_issuers()
        .first()
        .map(|h| match h {
            KeyHandle::Fingerprint(f) => f.to_hex(),
            KeyHandle::KeyID(k) => k.to_hex(),
        })
        .unwrap_or_else(|| "(unknown issuer)".into())
}

impl VerificationHelper for Helper<'_> {
    fn get_certs(&mut self, ids: &[KeyHandle]) -> openpgp::Result<Vec<Cert>> {
        Ok(self
            .certs
            .iter()
            .filter(|c| {
                c.keys()
                    .any(|k| ids.iter().any(|id| id.aliases(k.key().key_handle())))
            })
            .cloned()
            .collect())
    }

    fn check(&mut self, structure: MessageStructure) -> openpgp::Result<()> {
        let what = self.what.to_string();
        let mut first_error = None;
        for layer in structure {
            let MessageLayer::SignatureGroup { results } = layer else {
                continue;
            };
            for r in results {
                match r {
                    Ok(good) => {
                        let cert = good.ka.cert();
                        let key_fpr = good.ka.key().fingerprint();
                        match self.valid_now(cert, &key_fpr) {
                            Ok(()) => {
                                self.outcome = Some(cert.fingerprint());
                                return Ok(());
                            }
                            Err(reason) => {
                                first_error.get_or_insert(TrustError::InvalidKey {
                                    what: what.clone(),
                                    fingerprint: cert.fingerprint().to_hex(),
                                    reason,
                                });
                            }
                        }
                    }
                    Err(VerificationError::MissingKey { sig }) => {
                        first_error.get_or_insert(TrustError::UntrustedKey {
                            what: what.clone(),
                            fingerprint: issuer(sig),
                        });
                    }
                    Err(VerificationError::BadKey { ka, error, .. }) => {
                        first_error.get_or_insert(TrustError::InvalidKey {
                            what: what.clone(),
                            fingerprint: ka.cert().fingerprint().to_hex(),
                            reason: error.to_string(),
                        });
                    }
                    Err(VerificationError::UnboundKey { cert, error, .. }) => {
                        first_error.get_or_insert(TrustError::InvalidKey {
                            what: what.clone(),
                            fingerprint: cert.fingerprint().to_hex(),
                            reason: error.to_string(),
                        });
                    }
                    Err(VerificationError::BadSignature { error, .. }) => {
                        first_error.get_or_insert(TrustError::BadSignature {
                            what: what.clone(),
                            reason: error.to_string(),
                        });
                    }
                    Err(e) => {
                        first_error.get_or_insert(TrustError::BadSignature {
                            what: what.clone(),
                            reason: e.to_string(),
                        });
                    }
                }
            }
        }
        Err(self.fail(first_error.unwrap_or(TrustError::NotSigned { what })))
    }
}
