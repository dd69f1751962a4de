//! API keys. A key is shown to its owner once; the gateway stores only its SHA-256 digest
//! (`sha256:<hex>`). A random 256-bit key makes a plain SHA-256 as strong as a slow password
//! hash, and keeps authentication to one hash per request.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::tenant::{ModelAllowList, TenantId, TenantSpec};

const KEY_PREFIX: &str = "sk-";
const DIGEST_PREFIX: &str = "sha256:";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
/// Why keys could not be read or stored.
pub enum KeyError {
    #[error("stored key must look like `sha256:<64 hex digits>`; got {0}")]
    /// A stored key is not `sha256:<64 hex digits>`. It holds a description of what was found,
    /// never the value itself: a plaintext key put there by mistake is a secret.
    MalformedDigest(String),
    #[error("key {key_id} is listed for both tenant `{first}` and tenant `{second}`")]
    /// Two tenants have the same key.
    DuplicateKey {
        /// The key's id.
        key_id: KeyId,
        /// The first tenant with it.
        first: TenantId,
        /// The second.
        second: TenantId,
    },
}

/// A plaintext API key. Its `Debug` form is redacted so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({})", self.digest().key_id())
    }
}

impl ApiKey {
    /// A new random key: `sk-` and 64 hex digits (256 bits from the OS generator).
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(format!("{KEY_PREFIX}{}", hex::encode(bytes)))
    }

    /// Wraps a key presented by a client or an operator.
    pub fn from_plaintext(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The plaintext, for showing the key once to its owner.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The stored form: SHA-256 of the key.
    pub fn digest(&self) -> KeyDigest {
        KeyDigest(Sha256::digest(self.0.as_bytes()).into())
    }
}

/// What a malformed stored key looks like, without any of its characters beyond a public prefix.
fn describe_malformed(stored: &str) -> String {
    let length = stored.chars().count();
    if stored.starts_with(KEY_PREFIX) {
        format!(
            "a {length}-character value starting `{KEY_PREFIX}`, which looks like a plaintext key: \
             store its hash instead (`gateway keys hash KEY`), and rotate it if this file was shared"
        )
    } else if let Some(hex_part) = stored.strip_prefix(DIGEST_PREFIX) {
        format!(
            "`{DIGEST_PREFIX}` followed by {} characters that are not 64 hex digits",
            hex_part.chars().count()
        )
    } else {
        format!("a {length}-character value without the `{DIGEST_PREFIX}` prefix")
    }
}

/// The stored form of a key: its SHA-256.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    /// Parses `sha256:<hex>`.
    pub fn parse(stored: &str) -> Result<Self, KeyError> {
        let malformed = || KeyError::MalformedDigest(describe_malformed(stored));
        let hex_part = stored.strip_prefix(DIGEST_PREFIX).ok_or_else(malformed)?;
        let bytes = hex::decode(hex_part).map_err(|_| malformed())?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| malformed())?;
        Ok(Self(bytes))
    }

    /// Whether `other` is the same digest, compared in constant time.
    pub fn same_as(&self, other: &KeyDigest) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }

    /// Short, non-secret identifier for logs and metrics: the first 8 hex digits.
    pub fn key_id(&self) -> KeyId {
        KeyId(hex::encode(&self.0[..4]))
    }
}

impl fmt::Display for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{DIGEST_PREFIX}{}", hex::encode(self.0))
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyDigest({})", self.key_id())
    }
}

/// First 8 hex digits of a key's digest: safe to log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyId(String);

impl KeyId {
    /// The id a key record names its key by (the control-plane store's `key_...` ids).
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a key grants: its tenant, and the narrower scopes (its project's, its own) that hold
/// its requests to their limits and models as well.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyGrant {
    /// The tenant the key belongs to (shared: resolving copies nothing).
    pub tenant: Arc<TenantSpec>,
    /// The key's non-secret id.
    pub key_id: KeyId,
    /// The project inside the tenant the key belongs to.
    pub project: Option<Arc<str>>,
    /// Quota scopes admitted with the tenant's, widest first (a project's limits, the key's
    /// own): only scopes that set a limit.
    pub scopes: Vec<TenantSpec>,
    /// Further model allow-lists the key is held to (its project's, its own).
    pub models: Vec<ModelAllowList>,
    /// The key stops working at this time (Unix ms).
    pub expires_at_ms: Option<i64>,
    /// Its project's place inside the tenant's fair share (`None`: the tenant's requests are
    /// served in order, as one).
    pub project_share: Option<crate::ProjectShare>,
}

impl KeyGrant {
    /// A key of `tenant` with no narrower scope, named by its digest's id.
    pub fn tenant_key(digest: &KeyDigest, tenant: Arc<TenantSpec>) -> Self {
        Self {
            tenant,
            key_id: digest.key_id(),
            project: None,
            scopes: Vec::new(),
            models: Vec::new(),
            expires_at_ms: None,
            project_share: None,
        }
    }

    /// Whether the key may use `model`: its tenant and every narrower scope allow it.
    pub fn may_use(&self, model: &str) -> bool {
        self.tenant.models.allows(model) && self.models.iter().all(|m| m.allows(model))
    }
}

/// Who a presented key belongs to, and what it grants.
pub type ResolvedKey = Arc<KeyGrant>;

/// Every valid key digest, mapped to what it grants.
#[derive(Debug, Default, Clone)]
pub struct KeyStore {
    by_digest: HashMap<KeyDigest, Arc<KeyGrant>>,
}

impl KeyStore {
    /// Builds the store of keys that grant their tenant only; a digest listed for two tenants
    /// is a configuration error.
    pub fn new(
        entries: impl IntoIterator<Item = (KeyDigest, TenantSpec)>,
    ) -> Result<Self, KeyError> {
        let mut tenants: HashMap<TenantId, Arc<TenantSpec>> = HashMap::new();
        Self::from_grants(entries.into_iter().map(|(digest, tenant)| {
            let tenant = tenants
                .entry(tenant.id.clone())
                .or_insert_with(|| Arc::new(tenant))
                .clone();
            (digest, KeyGrant::tenant_key(&digest, tenant))
        }))
    }

    /// Builds the store from what each key grants; a digest of two tenants is an error.
    pub fn from_grants(
        entries: impl IntoIterator<Item = (KeyDigest, KeyGrant)>,
    ) -> Result<Self, KeyError> {
        let mut by_digest: HashMap<KeyDigest, Arc<KeyGrant>> = HashMap::new();
        for (digest, grant) in entries {
            if let Some(existing) = by_digest.get(&digest) {
                if existing.tenant.id != grant.tenant.id {
                    return Err(KeyError::DuplicateKey {
                        key_id: digest.key_id(),
                        first: existing.tenant.id.clone(),
                        second: grant.tenant.id.clone(),
                    });
                }
            }
            by_digest.insert(digest, Arc::new(grant));
        }
        Ok(Self { by_digest })
    }

    /// Resolves a presented key that has not expired at `now_ms` (Unix ms). The lookup is by
    /// digest, so timing reveals at most something about the SHA-256 of the guess, never about
    /// a stored key; the final comparison of the 32-byte digests is constant-time all the same.
    pub fn resolve_at(&self, presented: &ApiKey, now_ms: i64) -> Option<ResolvedKey> {
        let digest = presented.digest();
        let (stored, grant) = self.by_digest.get_key_value(&digest)?;
        let live = grant.expires_at_ms.is_none_or(|at| now_ms < at);
        (stored.same_as(&digest) && live).then(|| grant.clone())
    }

    /// [`Self::resolve_at`] now.
    pub fn resolve(&self, presented: &ApiKey) -> Option<ResolvedKey> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.resolve_at(presented, now_ms)
    }

    /// The grant of the key whose id is `key_id`, if it is stored and has not expired at
    /// `now_ms`: for work a key started that runs on after its request (a batch), so that a
    /// revoked or expired key stops it.
    pub fn by_key_id(&self, key_id: &str, now_ms: i64) -> Option<ResolvedKey> {
        self.by_digest
            .values()
            .find(|grant| {
                grant.key_id.as_str() == key_id && grant.expires_at_ms.is_none_or(|at| now_ms < at)
            })
            .cloned()
    }

    /// Keys stored.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// No key stored.
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plaintext key put where a hash belongs must not be echoed by the error (it goes to
    /// the start-up and reload logs).
    #[test]
    fn a_malformed_stored_key_is_never_echoed() {
        let secret = "sk-live-0123456789abcdefSECRET";
        let message = KeyDigest::parse(secret).unwrap_err().to_string();
        assert!(!message.contains("SECRET"), "{message}");
        assert!(!message.contains("0123456789"), "{message}");
        assert!(message.contains("plaintext key"), "{message}");
        for stored in ["sha256:SECRETSECRET", "SECRET-without-prefix"] {
            let message = KeyDigest::parse(stored).unwrap_err().to_string();
            assert!(!message.contains("SECRET"), "{message}");
        }
    }
    use crate::tenant::ModelAllowList;

    fn tenant(id: &str) -> TenantSpec {
        TenantSpec {
            id: TenantId::new(id).unwrap(),
            models: ModelAllowList::all(),
            limits: Default::default(),
            tier: None,
            prefix_cache_group: None,
        }
    }

    #[test]
    fn known_digest_of_a_known_key() {
        // echo -n test | sha256sum
        assert_eq!(
            ApiKey::from_plaintext("test").digest().to_string(),
            "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }

    #[test]
    fn digest_round_trips_and_rejects_garbage() {
        let d = ApiKey::generate().digest();
        assert_eq!(KeyDigest::parse(&d.to_string()).unwrap(), d);
        assert!(KeyDigest::parse("sha256:abc").is_err());
        assert!(KeyDigest::parse("md5:00").is_err());
        assert!(KeyDigest::parse(&format!("sha256:{}", "zz".repeat(32))).is_err());
    }

    #[test]
    fn generated_keys_are_distinct_and_long() {
        let (a, b) = (ApiKey::generate(), ApiKey::generate());
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 3 + 64);
        assert!(!format!("{a:?}").contains(&a.expose()[3..]));
    }

    #[test]
    fn resolves_only_stored_keys() {
        let key = ApiKey::generate();
        let store = KeyStore::new([(key.digest(), tenant("acme"))]).unwrap();
        let resolved = store.resolve(&key).unwrap();
        assert_eq!(resolved.tenant.id.as_str(), "acme");
        assert_eq!(resolved.key_id, key.digest().key_id());
        assert_eq!(resolved.key_id.as_str().len(), 8);
        assert!(store.resolve(&ApiKey::generate()).is_none());
        assert!(store.resolve(&ApiKey::from_plaintext("")).is_none());
    }

    #[test]
    fn an_expired_key_resolves_no_more_and_scopes_narrow_the_models() {
        let key = ApiKey::generate();
        let digest = key.digest();
        let grant = KeyGrant {
            expires_at_ms: Some(1_000),
            models: vec![ModelAllowList::only(["m1"])],
            ..KeyGrant::tenant_key(&digest, Arc::new(tenant("acme")))
        };
        let store = KeyStore::from_grants([(digest, grant)]).unwrap();
        let resolved = store.resolve_at(&key, 999).unwrap();
        assert!(resolved.may_use("m1") && !resolved.may_use("m2"));
        assert!(store.resolve_at(&key, 1_000).is_none());
    }

    #[test]
    fn same_key_for_two_tenants_is_rejected() {
        let key = ApiKey::generate();
        let err = KeyStore::new([(key.digest(), tenant("a")), (key.digest(), tenant("b"))]);
        assert!(matches!(err, Err(KeyError::DuplicateKey { .. })));
    }
}
