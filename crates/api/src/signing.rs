//! The token-signing key set a server uses: the newest key signs, every key in the set verifies tokens by
//! `kid`, and all are published in the JWKS. A rotation made elsewhere (the CLI, another replica) replaces the
//! whole set at once while the server runs, so a request sees one consistent set.

use std::sync::{Arc, RwLock};

use clustercred_authority::TokenSigner;

/// One version of the key set.
pub struct KeySet {
    /// Newest first; never empty.
    keys: Vec<Arc<TokenSigner>>,
    jwks: serde_json::Value,
}

impl KeySet {
    /// `current` signs; `older` (newest first) only verify.
    pub fn new(current: Arc<TokenSigner>, older: Vec<Arc<TokenSigner>>) -> KeySet {
        let mut keys = Vec::with_capacity(older.len() + 1);
        keys.push(current);
        for key in older {
            if !keys.iter().any(|k| k.kid() == key.kid()) {
                keys.push(key);
            }
        }
        let jwks = clustercred_authority::jwks_document(
            &keys.iter().map(|k| k.as_ref()).collect::<Vec<_>>(),
        );
        KeySet { keys, jwks }
    }

    /// The key new tokens are signed with.
    pub fn signer(&self) -> &Arc<TokenSigner> {
        // `new` puts one in first, and nothing removes it.
        &self.keys[0]
    }

    /// The key of the set with this id.
    pub fn find(&self, kid: &str) -> Option<&Arc<TokenSigner>> {
        self.keys.iter().find(|k| k.kid() == kid)
    }

    /// Every key, the signing one first.
    pub fn keys(&self) -> &[Arc<TokenSigner>] {
        &self.keys
    }

    /// The JWKS document that publishes every key of the set.
    pub fn jwks(&self) -> &serde_json::Value {
        &self.jwks
    }

    /// The key ids, the signing one first.
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.kid()).collect()
    }
}

/// The current key set, swapped whole when a rotation is seen.
pub struct SigningKeys(RwLock<Arc<KeySet>>);

impl SigningKeys {
    pub fn new(set: KeySet) -> SigningKeys {
        SigningKeys(RwLock::new(Arc::new(set)))
    }

    pub fn current(&self) -> Arc<KeySet> {
        // A writer cannot panic holding the lock (it only swaps an Arc), but a poisoned lock still holds a
        // whole set.
        match self.0.read() {
            Ok(set) => set.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn replace(&self, set: KeySet) {
        let set = Arc::new(set);
        match self.0.write() {
            Ok(mut current) => *current = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Arc<TokenSigner> {
        Arc::new(TokenSigner::generate().unwrap().0)
    }

    #[test]
    fn the_newest_signs_all_verify_and_are_published_once() {
        let (a, b) = (key(), key());
        let keys = SigningKeys::new(KeySet::new(a.clone(), vec![]));
        let before = keys.current();
        keys.replace(KeySet::new(b.clone(), vec![a.clone(), b.clone()]));
        let after = keys.current();
        assert_eq!(before.kids(), [a.kid()], "a reader keeps the set it took");
        assert_eq!(after.kids(), [b.kid(), a.kid()]);
        assert_eq!(after.signer().kid(), b.kid());
        assert!(after.find(a.kid()).is_some() && after.find("other").is_none());
        let published: Vec<&str> = after.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(published, [b.kid(), a.kid()]);
    }
}
