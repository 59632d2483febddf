//! `Verified<T>`: metadata that passed verification (a good signature by a trusted key where
//! the mirror is signed, checksums that match, a manifest bound to the package it was
//! fetched for). Its field is private and only the mirror layer, which does the checking,
//! makes one, so extraction and the catalog cannot be handed unverified metadata.

use std::ops::Deref;

/// A value that passed verification.
#[derive(Clone)]
pub struct Verified<T>(T);

impl<T> Verified<T> {
    /// Vouch for `inner`: for the verifying code of the mirror layer only.
    pub(super) fn new(inner: T) -> Self {
        Verified(inner)
    }

    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for Verified<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Verified<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Verified").field(&self.0).finish()
    }
}
