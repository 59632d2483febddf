//! A sha256 checksum as the formats carry it (64 hex digits), parsed once where it is read:
//! compared as bytes everywhere (so case never matters), written in lower case; and the
//! digest of a file of the cache ([`FileDigest`]).

use std::fmt;

use sha2::Digest;

/// A sha256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256([u8; 32]);

impl Sha256 {
    /// Parse 64 hex digits (either case); anything else is `None`.
    pub fn parse(hex: &str) -> Option<Self> {
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex, &mut out).ok()?;
        Some(Sha256(out))
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Sha256(sha2::Sha256::digest(data).into())
    }

    /// The digest a hasher ended with.
    pub fn from_hasher(h: sha2::Sha256) -> Self {
        Sha256(h.finalize().into())
    }

    /// Lower-case hex.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({})", self.hex())
    }
}

impl serde::Serialize for Sha256 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> serde::Deserialize<'de> for Sha256 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
        Sha256::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "checksum {:?} is not a sha256 (64 hex digits)",
                // The first 80 characters (a byte index could fall inside one).
                s.char_indices().nth(80).map_or(&s[..], |(i, _)| &s[..i])
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by tests/properties.rs (manifest_json): the message about a checksum that is no
    /// sha256 cut it at byte 80, inside a character.
    #[test]
    fn a_long_non_ascii_checksum_is_an_error_not_a_panic() {
        let json = format!("\"{}®\"", "a".repeat(79));
        let e = serde_json::from_str::<Sha256>(&json)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a sha256"), "{e}");
    }

    #[test]
    fn parses_either_case_and_compares_as_bytes() {
        let lower = "16a5f9f53551fd98d35caffb0ba0d30f7490929b0df02ae2d3ee8224c04a589d";
        let a = Sha256::parse(lower).unwrap();
        let b = Sha256::parse(&lower.to_uppercase()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), lower);
        assert!(Sha256::parse(&lower[1..]).is_none());
        assert!(Sha256::parse(&format!("{}g", &lower[1..])).is_none());
        assert!(Sha256::parse("../../etc").is_none());
        assert_eq!(
            Sha256::of(b"").hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let j: Sha256 = serde_json::from_str(&format!("\"{}\"", lower.to_uppercase())).unwrap();
        assert_eq!(serde_json::to_string(&j).unwrap(), format!("\"{lower}\""));
        assert!(serde_json::from_str::<Sha256>("\"abc\"").is_err());
    }
}

/// The digest of a file's content in the cache: XXH3-128. It tells a file damaged or
/// changed since it was published (`spackfs cache verify`); it vouches for nothing a mirror
/// sent, which the tarball's sha256 and the signature did. A non-cryptographic hash is
/// enough for that (whoever can rewrite a cached file can rewrite its record too) and
/// costs a fraction of a cryptographic one on the first touch's critical path.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct FileDigest(u128);

impl FileDigest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        FileDigest(xxhash_rust::xxh3::xxh3_128(data))
    }

    /// Lower-case hex (32 digits).
    pub fn hex(&self) -> String {
        format!("{:032x}", self.0)
    }
}

/// A [`FileDigest`] taken as the bytes go by.
#[derive(Clone, Default)]
pub struct FileHasher(xxhash_rust::xxh3::Xxh3);

impl FileHasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(&self) -> FileDigest {
        FileDigest(self.0.digest128())
    }
}
