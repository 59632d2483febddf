//! An OpenPGP signing key the writer generates, and clearsigning with it (as `gpg --clearsign`).

use std::io::Write;
use std::time::{Duration, SystemTime};

use openpgp::cert::prelude::*;
use openpgp::policy::StandardPolicy;
use openpgp::serialize::stream::{Message, Signer};
use openpgp::serialize::SerializeInto;
use openpgp::types::HashAlgorithm;
use sequoia_openpgp as openpgp;

use super::WriteError;

/// A certificate with its secret signing key.
#[derive(Clone)]
pub struct SigningKey {
    cert: Cert,
}

fn err(e: impl std::fmt::Display) -> WriteError {
    WriteError::Signing(e.to_string())
}

impl SigningKey {
    /// Generate a signing key, valid from `created` (default now) for `validity` (default
    /// no expiry).
    pub fn generate(
        uid: &str,
        created: Option<SystemTime>,
        validity: Option<Duration>,
    ) -> Result<Self, WriteError> {
        let mut b = CertBuilder::new()
            .add_userid(uid)
            .set_cipher_suite(CipherSuite::Cv25519)
            .add_signing_subkey()
            .set_validity_period(validity);
        if let Some(t) = created {
            b = b.set_creation_time(t);
        }
        let (cert, _) = b.generate().map_err(err)?;
        Ok(SigningKey { cert })
    }

    /// Upper-case hex fingerprint of the certificate.
    pub fn fingerprint(&self) -> String {
        self.cert.fingerprint().to_hex()
    }

    /// The public certificate, ASCII-armoured.
    pub fn public_armored(&self) -> Result<Vec<u8>, WriteError> {
        self.cert.armored().to_vec().map_err(err)
    }

    /// Clearsign `text` (signature time `at`, default now).
    pub fn clearsign(&self, text: &[u8], at: Option<SystemTime>) -> Result<Vec<u8>, WriteError> {
        let policy = StandardPolicy::new();
        let when = at.unwrap_or_else(SystemTime::now);
        let key = self
            .cert
            .keys()
            .secret()
            .with_policy(&policy, when)
            .for_signing()
            .next()
            .ok_or_else(|| err("no signing-capable key valid at that time"))?
            .key()
            .clone()
            .into_keypair()
            .map_err(err)?;
        let mut out = Vec::new();
        {
            let message = Message::new(&mut out);
            let mut signer = Signer::new(message, key)
                .map_err(err)?
                .hash_algo(HashAlgorithm::SHA512)
                .map_err(err)?
                .creation_time(when)
                .cleartext()
                .build()
                .map_err(err)?;
            signer.write_all(text).map_err(err)?;
            signer.finalize().map_err(err)?;
        }
        Ok(out)
    }
}
