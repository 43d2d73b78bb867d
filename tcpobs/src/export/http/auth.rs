//! Basic auth against a web config's `basic_auth_users` (bcrypt hashes), as the
//! exporter-toolkit does it. bcrypt is slow by design (about 50 ms at cost 10), so:
//! - results are cached, keyed by a SHA-256 of user, hash and password (no password is kept),
//!   at most [`CACHE_ENTRIES`] of them: a scrape every 15 s costs one bcrypt, not one per scrape;
//! - a check runs on the blocking pool, one at a time: a flood of wrong passwords costs at most
//!   one core and never stalls the ring buffer reader on the runtime's thread;
//! - an unknown user is checked against a decoy hash, so that timing does not tell which
//!   users exist.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use base64::Engine as _;
use ring::digest::{SHA256, digest};
use tokio::sync::Semaphore;

use crate::sync::lock;

/// Most cached results; past it, one is dropped for each new one.
pub(crate) const CACHE_ENTRIES: usize = 100;

/// The hash of a random password nobody knows, at the usual cost (10).
const DECOY: &str = "$2b$10$tPa/IluRUyET5iSLf.KI8OdPKtOzfWoNn7kwZpooDZI85bxogFuE6";

/// Credentials from an `Authorization: Basic ...` header.
pub(crate) fn credentials(authorization: &str) -> Option<(String, String)> {
    let (scheme, encoded) = authorization.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[derive(Debug)]
pub(crate) struct Authenticator {
    cache: Mutex<HashMap<[u8; 32], bool>>,
    bcrypt: Semaphore,
}

impl Default for Authenticator {
    fn default() -> Self {
        Self {
            cache: Mutex::default(),
            bcrypt: Semaphore::new(1),
        }
    }
}

fn key(user: &str, hash: &str, password: &str) -> [u8; 32] {
    let mut text = Vec::with_capacity(user.len() + hash.len() + password.len() + 2);
    for part in [user, hash, password] {
        text.extend_from_slice(part.as_bytes());
        text.push(0);
    }
    let mut key = [0; 32];
    key.copy_from_slice(digest(&SHA256, &text).as_ref());
    key
}

impl Authenticator {
    /// The user, if `authorization` holds the credentials of one of `users`.
    pub(crate) async fn check(
        &self,
        users: &BTreeMap<String, String>,
        authorization: Option<&str>,
    ) -> Option<String> {
        let (user, password) = credentials(authorization?)?;
        let known = users.get(&user);
        let hash = known.map_or(DECOY, String::as_str).to_owned();
        let key = key(&user, &hash, &password);
        let cached = lock(&self.cache).get(&key).copied();
        let valid = match cached {
            Some(valid) => valid,
            None => {
                let _one_at_a_time = self.bcrypt.acquire().await.ok()?;
                let valid = tokio::task::spawn_blocking(move || {
                    bcrypt::verify(password, &hash).unwrap_or(false)
                })
                .await
                .unwrap_or(false);
                let mut cache = lock(&self.cache);
                if cache.len() >= CACHE_ENTRIES
                    && let Some(old) = cache.keys().next().copied()
                {
                    cache.remove(&old);
                }
                cache.insert(key, valid);
                valid
            }
        };
        (valid && known.is_some()).then_some(user)
    }

    /// How many results are cached (tests).
    #[cfg(test)]
    fn cached(&self) -> usize {
        lock(&self.cache).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    }

    #[test]
    fn credentials_from_the_header() {
        assert_eq!(
            credentials(&basic("prometheus", "a:b")),
            Some(("prometheus".into(), "a:b".into()))
        );
        assert_eq!(
            credentials("basic cHJvbTpzZWNyZXQ="),
            Some(("prom".into(), "secret".into()))
        );
        for bad in ["Bearer abc", "Basic !!!", "Basic", "Basic bm9jb2xvbg=="] {
            assert_eq!(credentials(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn valid_users_pass_and_results_are_cached() {
        let users = BTreeMap::from([("prometheus".to_owned(), bcrypt::hash("secret", 4).unwrap())]);
        let auth = Authenticator::default();
        let good = basic("prometheus", "secret");
        assert_eq!(
            auth.check(&users, Some(&good)).await.as_deref(),
            Some("prometheus")
        );
        assert_eq!(auth.cached(), 1);
        // The second check is the cached one: same answer, no new entry.
        assert_eq!(
            auth.check(&users, Some(&good)).await.as_deref(),
            Some("prometheus")
        );
        assert_eq!(auth.cached(), 1);
        for bad in [
            basic("prometheus", "Secret"),
            basic("nobody", "secret"),
            basic("", ""),
        ] {
            assert_eq!(auth.check(&users, Some(&bad)).await, None, "{bad}");
        }
        assert_eq!(auth.check(&users, None).await, None);
        // A changed hash (a SIGHUP with new users) is a new key: the old result is not used.
        let changed =
            BTreeMap::from([("prometheus".to_owned(), bcrypt::hash("other", 4).unwrap())]);
        assert_eq!(auth.check(&changed, Some(&good)).await, None);
    }

    #[tokio::test]
    async fn the_cache_is_bounded() {
        let users = BTreeMap::from([("u".to_owned(), bcrypt::hash("p", 4).unwrap())]);
        let auth = Authenticator::default();
        for n in 0..CACHE_ENTRIES + 10 {
            assert_eq!(
                auth.check(&users, Some(&basic("u", &n.to_string()))).await,
                None
            );
        }
        assert_eq!(auth.cached(), CACHE_ENTRIES);
    }
}
