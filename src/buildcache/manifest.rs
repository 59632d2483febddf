//! v3 manifests (`*.manifest.json`): `{"version":3,"data":[blob records]}`, possibly wrapped
//! in an OpenPGP clearsigned document (the signature itself is checked by `trust`).

use serde::Deserialize;

use super::checksum::Sha256;
use super::FormatError;

pub const MEDIA_TARBALL: &str = "application/vnd.spack.install.v2.tar+gzip";
pub const MEDIA_SPEC: &str = "application/vnd.spack.spec.v5+json";
pub const MEDIA_INDEX: &str = "application/vnd.spack.db.v8+json";
pub const MEDIA_KEY: &str = "application/pgp-keys";
pub const MEDIA_KEY_INDEX: &str = "application/vnd.spack.keyindex.v1+json";

pub const CLEARSIGN_BEGIN: &str = "-----BEGIN PGP SIGNED MESSAGE-----";
const SIGNATURE_BEGIN: &str = "-----BEGIN PGP SIGNATURE-----";

/// One blob a manifest points to.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BlobRecord {
    pub content_length: u64,
    pub media_type: String,
    pub compression: String,
    pub checksum_algorithm: String,
    pub checksum: Sha256,
}

impl BlobRecord {
    /// Mirror-relative path of the blob: `blobs/<alg>/<hex[0:2]>/<hex>`.
    pub fn path(&self) -> String {
        let hex = self.checksum.hex();
        format!("blobs/{}/{}/{hex}", self.checksum_algorithm, &hex[..2])
    }
}

/// A parsed v3 manifest.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct Manifest {
    pub version: i64,
    pub data: Vec<BlobRecord>,
}

impl Manifest {
    /// Parse manifest JSON (already taken out of any clearsigned wrapper).
    pub fn parse(json: &[u8], what: &str) -> Result<Self, FormatError> {
        let m: Manifest = serde_json::from_slice(json).map_err(|source| FormatError::Json {
            what: what.to_string(),
            source,
        })?;
        if m.version != 3 {
            return Err(FormatError::invalid(
                what,
                format!("manifest version {} is not 3", m.version),
            ));
        }
        for r in &m.data {
            if r.checksum_algorithm != "sha256" {
                return Err(FormatError::invalid(
                    what,
                    format!(
                        "blob record with unsupported checksum {}:{}",
                        r.checksum_algorithm, r.checksum
                    ),
                ));
            }
        }
        Ok(m)
    }

    /// The first record of the given media type, as Spack picks it.
    pub fn find(&self, media_type: &str, what: &str) -> Result<&BlobRecord, FormatError> {
        self.data
            .iter()
            .find(|r| r.media_type == media_type)
            .ok_or_else(|| FormatError::invalid(what, format!("no blob of type {media_type}")))
    }
}

/// True when the text is an OpenPGP clearsigned document (Spack's test: its start).
pub fn is_clearsigned(bytes: &[u8]) -> bool {
    bytes.starts_with(CLEARSIGN_BEGIN.as_bytes())
}

/// Take the signed text out of a clearsigned document *without* checking the signature, the
/// way Spack does for mirrors marked unsigned. Returns `None` when the armour is malformed.
pub fn clearsigned_text_unverified(bytes: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let rest = text.strip_prefix(CLEARSIGN_BEGIN)?;
    // Armour headers ("Hash: SHA512") end at the first empty line, whatever the line ends.
    let body_start = match (rest.find("\n\n"), rest.find("\r\n\r\n")) {
        (Some(lf), Some(crlf)) => lf.min(crlf),
        (lf, crlf) => lf.or(crlf)?,
    };
    let body = rest[body_start..].trim_start_matches(['\r', '\n']);
    let end = body.find(SIGNATURE_BEGIN)?;
    let body = &body[..end];
    let mut out = String::with_capacity(body.len());
    for line in body.lines() {
        out.push_str(line.strip_prefix("- ").unwrap_or(line));
        out.push('\n');
    }
    Some(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unverified_text_is_dash_unescaped() {
        let doc = b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n{\n- -x\n}\n-----BEGIN PGP SIGNATURE-----\nabc\n-----END PGP SIGNATURE-----\n";
        assert_eq!(clearsigned_text_unverified(doc).unwrap(), b"{\n-x\n}\n");
        assert!(is_clearsigned(doc));
        assert!(clearsigned_text_unverified(b"{}").is_none());
    }

    /// Found by tests/properties.rs (clearsign_wrapper): in a CR-LF document, a later
    /// LF-only empty line was taken for the end of the armour headers.
    #[test]
    fn crlf_headers_end_at_the_first_empty_line() {
        let doc = b"-----BEGIN PGP SIGNED MESSAGE-----\r\nHash: SHA512\r\n\r\n{\r\n-----BEGIN PGP SIGNATURE-----\r\n\n\r\n-----END PGP SIGNATURE-----\r\n";
        assert_eq!(clearsigned_text_unverified(doc).unwrap(), b"{\n");
    }

    #[test]
    fn rejects_wrong_version_and_bad_checksums() {
        assert!(Manifest::parse(br#"{"version":2,"data":[]}"#, "m").is_err());
        let bad = br#"{"version":3,"data":[{"contentLength":1,"mediaType":"x","compression":"none","checksumAlgorithm":"sha256","checksum":"../../etc"}]}"#;
        assert!(Manifest::parse(bad, "m").is_err());
    }
}
