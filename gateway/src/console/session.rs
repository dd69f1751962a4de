//! Console sessions: an opaque random token in a cookie, kept in this replica's memory with the
//! admin key's digest (never the key) and the session's CSRF token.
//!
//! Sessions are per replica: behind a load balancer, the console needs session affinity (or a
//! sign-in per replica). A session ends at sign-out, after `[console] session_idle_minutes`
//! unused, after `session_max_hours`, or as soon as its key stops being an admin key.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::header::COOKIE;
use axum::http::HeaderMap;
use dashmap::DashMap;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use policies::{ApiKey, KeyDigest};

use crate::config::ConsoleConfig;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "console_session";
/// The sign-in form's CSRF cookie (double-submit: there is no session yet to hold a token).
pub const SIGN_IN_COOKIE: &str = "console_sign_in";

/// One signed-in session.
#[derive(Debug)]
pub struct Session {
    /// The admin key's digest: its role and tenant are looked up afresh at every request.
    pub key: KeyDigest,
    /// The token every form of this session carries.
    pub csrf: String,
    signed_in: Instant,
    last_seen: Mutex<Instant>,
}

/// This replica's sessions, keyed by their token's digest (a lookup never compares the token
/// itself byte by byte).
pub struct Sessions {
    live: DashMap<KeyDigest, Arc<Session>>,
    idle: Duration,
    longest: Duration,
    sign_ins: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

impl Sessions {
    /// No sessions yet, with `[console]`'s lifetimes and sign-in limit.
    pub fn new(config: &ConsoleConfig) -> Self {
        Self::with_lifetimes(
            Duration::from_secs(config.session_idle_minutes.max(1) * 60),
            Duration::from_secs(config.session_max_hours.max(1) * 3600),
            config.sign_in_attempts_per_minute,
        )
    }

    fn with_lifetimes(idle: Duration, longest: Duration, sign_ins_per_minute: u32) -> Self {
        Self {
            live: DashMap::new(),
            idle,
            longest,
            sign_ins: NonZeroU32::new(sign_ins_per_minute)
                .map(|n| RateLimiter::keyed(Quota::per_minute(n))),
        }
    }

    /// Whether `address` may try to sign in now; `Err(seconds to wait)` if not.
    pub fn may_try(&self, address: IpAddr) -> Result<(), u64> {
        let Some(limiter) = &self.sign_ins else {
            return Ok(());
        };
        limiter.check_key(&address).map_err(|not_until| {
            let now = governor::clock::Clock::now(&governor::clock::DefaultClock::default());
            not_until.wait_time_from(now).as_secs().max(1)
        })
    }

    /// A new session for the admin key `key`: `(its cookie token, the session)`.
    pub fn start(&self, key: KeyDigest) -> (String, Arc<Session>) {
        self.forget_ended();
        let token = random_token();
        let now = Instant::now();
        let session = Arc::new(Session {
            key,
            csrf: random_token(),
            signed_in: now,
            last_seen: Mutex::new(now),
        });
        self.live.insert(digest(&token), session.clone());
        (token, session)
    }

    /// The live session whose token the request's cookie carries, marked as used now.
    pub fn find(&self, headers: &HeaderMap) -> Option<Arc<Session>> {
        let token = cookie(headers, SESSION_COOKIE)?;
        let id = digest(token);
        let session = self.live.get(&id)?.clone();
        let now = Instant::now();
        let mut last_seen = session.last_seen.lock().expect("session lock");
        if now.duration_since(*last_seen) > self.idle
            || now.duration_since(session.signed_in) > self.longest
        {
            drop(last_seen);
            self.live.remove(&id);
            return None;
        }
        *last_seen = now;
        drop(last_seen);
        Some(session)
    }

    /// Ends the session of the request's cookie, if any.
    pub fn end(&self, headers: &HeaderMap) {
        if let Some(token) = cookie(headers, SESSION_COOKIE) {
            self.live.remove(&digest(token));
        }
    }

    /// Ends every session of the admin key `key` (it is no longer one).
    pub fn end_all_of(&self, key: &KeyDigest) {
        self.live.retain(|_, session| !session.key.same_as(key));
    }

    /// Sessions alive now.
    pub fn count(&self) -> usize {
        self.live.len()
    }

    fn forget_ended(&self) {
        let now = Instant::now();
        self.live.retain(|_, s| {
            let last_seen = *s.last_seen.lock().expect("session lock");
            now.duration_since(last_seen) <= self.idle
                && now.duration_since(s.signed_in) <= self.longest
        });
    }
}

/// Whether `presented` is `expected`, compared in constant time.
pub fn same_token(presented: &str, expected: &str) -> bool {
    digest(presented).same_as(&digest(expected))
}

/// 32 random bytes from the operating system, as hex.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    hex::encode(bytes)
}

/// A cookie's value, if the request carries it.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, scoped to the console, `Secure` under TLS;
/// `None` ends the cookie.
pub fn set_cookie(name: &str, value: Option<&str>, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match value {
        Some(value) => format!("{name}={value}; Path=/console; HttpOnly; SameSite=Strict{secure}"),
        None => format!("{name}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

fn digest(token: &str) -> KeyDigest {
    ApiKey::from_plaintext(token).digest()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_cookie(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn a_session_is_found_by_its_cookie_only() {
        let sessions = Sessions::new(&ConsoleConfig::default());
        let key = ApiKey::from_plaintext("sk-admin").digest();
        let (token, session) = sessions.start(key);
        let found = sessions
            .find(&with_cookie(&format!("a=b; {SESSION_COOKIE}={token}")))
            .unwrap();
        assert!(Arc::ptr_eq(&found, &session));
        assert!(sessions
            .find(&with_cookie(&format!("{SESSION_COOKIE}=x{token}")))
            .is_none());
        assert!(sessions.find(&HeaderMap::new()).is_none());
        sessions.end(&with_cookie(&format!("{SESSION_COOKIE}={token}")));
        assert!(sessions
            .find(&with_cookie(&format!("{SESSION_COOKIE}={token}")))
            .is_none());
    }

    #[test]
    fn an_idle_session_ends() {
        let sessions =
            Sessions::with_lifetimes(Duration::from_millis(50), Duration::from_secs(60), 0);
        let (token, _) = sessions.start(ApiKey::from_plaintext("sk-a").digest());
        let cookie = with_cookie(&format!("{SESSION_COOKIE}={token}"));
        assert!(
            sessions.find(&cookie).is_some(),
            "used within its idle time"
        );
        std::thread::sleep(Duration::from_millis(120));
        assert!(sessions
            .find(&with_cookie(&format!("{SESSION_COOKIE}={token}")))
            .is_none());
        assert_eq!(sessions.count(), 0);
    }

    #[test]
    fn a_session_ends_at_its_longest_even_if_used() {
        let sessions =
            Sessions::with_lifetimes(Duration::from_secs(60), Duration::from_millis(50), 0);
        let (token, _) = sessions.start(ApiKey::from_plaintext("sk-a").digest());
        let cookie = with_cookie(&format!("{SESSION_COOKIE}={token}"));
        assert!(sessions.find(&cookie).is_some());
        std::thread::sleep(Duration::from_millis(120));
        assert!(sessions.find(&cookie).is_none());
    }

    #[test]
    fn ending_a_keys_sessions_leaves_the_others() {
        let sessions = Sessions::new(&ConsoleConfig::default());
        let a = ApiKey::from_plaintext("sk-a").digest();
        let b = ApiKey::from_plaintext("sk-b").digest();
        sessions.start(a);
        sessions.start(a);
        let (token_b, _) = sessions.start(b);
        sessions.end_all_of(&a);
        assert_eq!(sessions.count(), 1);
        assert!(sessions
            .find(&with_cookie(&format!("{SESSION_COOKIE}={token_b}")))
            .is_some());
    }

    #[test]
    fn sign_ins_are_limited_per_address() {
        let config = ConsoleConfig {
            sign_in_attempts_per_minute: 3,
            ..ConsoleConfig::default()
        };
        let sessions = Sessions::new(&config);
        let here: IpAddr = "10.0.0.1".parse().unwrap();
        let there: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(sessions.may_try(here).is_ok());
        }
        assert!(sessions.may_try(here).unwrap_err() >= 1);
        assert!(sessions.may_try(there).is_ok());
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_under_tls() {
        let set = set_cookie(SESSION_COOKIE, Some("t"), true);
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.ends_with("Secure")
        );
        assert!(!set_cookie(SESSION_COOKIE, Some("t"), false).contains("Secure"));
        assert!(set_cookie(SESSION_COOKIE, None, false).contains("Max-Age=0"));
    }
}
