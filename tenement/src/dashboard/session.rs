//! Signed-in browsers: a random session id in an `HttpOnly`, `SameSite=Strict` cookie, each
//! session with its own CSRF token; and the one-time sign-in links `tenement dashboard`
//! prints. Kept in memory: a restart of the daemon signs everyone out, which is the safe
//! direction.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use rand::RngCore;

use crate::api::auth::Caller;

/// How long a sign-in lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// How long a one-time sign-in link may wait to be opened.
pub const LINK_LIFETIME: Duration = Duration::from_secs(300);
/// Sessions (and links) kept at most: beyond that the oldest are dropped first.
const KEPT: usize = 10_000;

pub const SESSION_COOKIE: &str = "tenement_session";
/// Set by the sign-in page and repeated in its form, so another site cannot sign a browser
/// in with the attacker's token (login CSRF).
pub const SIGN_IN_COOKIE: &str = "tenement_sign_in";

#[derive(Clone, Debug)]
pub struct Session {
    pub caller: Caller,
    /// Every state-changing form carries it; compared in constant time.
    pub csrf: String,
    expires: Instant,
}

struct Link {
    caller: Caller,
    expires: Instant,
}

#[derive(Default)]
pub struct Sessions {
    sessions: Mutex<HashMap<String, Session>>,
    links: Mutex<HashMap<String, Link>>,
}

/// 32 random bytes, hex: unguessable, and safe in a cookie or a URL as it is.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Compares in time that depends only on the length, not on where the first difference is.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |difference, (x, y)| difference | (x ^ y))
            == 0
}

impl Sessions {
    /// Signs `caller` in; returns the session id for the cookie.
    pub fn create(&self, caller: Caller) -> (String, Session) {
        let id = random_secret();
        let session = Session {
            caller,
            csrf: random_secret(),
            expires: Instant::now() + SESSION_LIFETIME,
        };
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        prune(&mut sessions, |session| session.expires);
        sessions.insert(id.clone(), session.clone());
        (id, session)
    }

    pub fn get(&self, id: &str) -> Option<Session> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match sessions.get(id) {
            Some(session) if session.expires > Instant::now() => Some(session.clone()),
            Some(_) => {
                sessions.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn end(&self, id: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// A one-time code that signs its opener in as `caller`.
    pub fn create_link(&self, caller: Caller) -> String {
        let code = random_secret();
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        prune(&mut links, |link| link.expires);
        links.insert(
            code.clone(),
            Link {
                caller,
                expires: Instant::now() + LINK_LIFETIME,
            },
        );
        code
    }

    /// The caller a link was made for; the link is spent either way.
    pub fn redeem_link(&self, code: &str) -> Option<Caller> {
        let link = self
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(code)?;
        (link.expires > Instant::now()).then_some(link.caller)
    }
}

/// Drops expired entries, and the soonest to expire when still too many.
fn prune<T>(map: &mut HashMap<String, T>, expires: impl Fn(&T) -> Instant) {
    if map.len() < KEPT {
        return;
    }
    let now = Instant::now();
    map.retain(|_, value| expires(value) > now);
    while map.len() >= KEPT {
        let Some(oldest) = map
            .iter()
            .min_by_key(|(_, value)| expires(value))
            .map(|(key, _)| key.clone())
        else {
            break;
        };
        map.remove(&oldest);
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then_some(value)
    })
}

/// A `Set-Cookie` value for the dashboard's path: never readable by scripts, never sent with
/// requests from other sites, only over HTTPS when the dashboard is reached over HTTPS.
pub fn set_cookie(name: &str, value: &str, max_age: Duration, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/dashboard; Max-Age={}; HttpOnly; SameSite=Strict{}",
        max_age.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_single_use() {
        let sessions = Sessions::default();
        let code = sessions.create_link(Caller::Operator { uid: 0 });
        assert_eq!(
            sessions.redeem_link(&code),
            Some(Caller::Operator { uid: 0 })
        );
        assert_eq!(sessions.redeem_link(&code), None);
    }

    #[test]
    fn sessions_end() {
        let sessions = Sessions::default();
        let (id, session) = sessions.create(Caller::Admin { token: 1 });
        assert_eq!(sessions.get(&id).unwrap().csrf, session.csrf);
        sessions.end(&id);
        assert!(sessions.get(&id).is_none());
    }

    #[test]
    fn cookies() {
        let header = "a=1; tenement_session=abc; b=2";
        assert_eq!(cookie(header, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(header, "c"), None);
        let set = set_cookie(SESSION_COOKIE, "x", SESSION_LIFETIME, true);
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
        assert!(set.ends_with("; Secure"));
        assert!(!set_cookie(SESSION_COOKIE, "x", SESSION_LIFETIME, false).contains("Secure"));
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd"));
    }
}
