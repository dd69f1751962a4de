//! A request on its way through the router: who asks, what prompt (sized), which parameters,
//! and what it reserves; shared by placement (`router`) and the in-flight relay (`relay`).

use engine_api::{GenerationRequest, PreparedPrompt, Prompt, SamplingParams};
use policies::{Share, TenantId};

use crate::pool::PoolKind;

/// A prompt sized for admission, keeping the original for engines that want it.
#[derive(Debug, Clone)]
pub struct RoutablePrompt {
    pub(crate) original: Prompt,
    pub(crate) prepared: PreparedPrompt,
}

impl RoutablePrompt {
    /// Prompt tokens (an estimate when the first pool is remote).
    pub fn tokens(&self) -> usize {
        self.prepared.tokens
    }

    /// Whether [`Self::tokens`] is an estimate (no local engine tokenised the prompt).
    pub fn is_estimate(&self) -> bool {
        self.prepared.estimated
    }

    /// What to submit to `replica`'s kind of engine: remote upstreams get the original text or
    /// conversation (they render and tokenise it themselves); local engines get the token ids
    /// when a local engine prepared them, else the original.
    fn for_kind(&self, kind: PoolKind) -> Prompt {
        match (kind, self.prepared.estimated) {
            (PoolKind::Local, false) => self.prepared.prompt.clone(),
            _ => self.original.clone(),
        }
    }
}

/// Token ids of a prompt's start that decide its [`RouteRequest::prefix_key`].
pub const PREFIX_KEY_TOKENS: usize = 64;

/// Bytes of an untokenised prompt's start that decide its [`RouteRequest::prefix_key`].
pub const PREFIX_KEY_BYTES: usize = 256;

/// Who asks, for fair share, routing and traces.
#[derive(Debug, Clone)]
pub struct Requester {
    /// Who asks: fair share in the engines, and accounting.
    pub tenant: TenantId,
    /// The tenant's scheduling terms (weight, priority class, caps, queue bound).
    pub share: Share,
    /// The caller's project inside the tenant's share.
    pub project_share: Option<policies::ProjectShare>,
    /// The tenant's tier (`[[models]] tiers` picks pools by it).
    pub tier: Option<String>,
    /// The caller's W3C `traceparent`, forwarded upstream.
    pub traceparent: Option<String>,
    /// Whose cached prompt blocks the request may reuse (see
    /// [`engine_api::GenerationRequest::cache_scope`]): `None`, its tenant's alone.
    pub cache_scope: Option<String>,
}

/// One request to route: its prompt and its sampling parameters (`max_tokens` set).
#[derive(Debug, Clone)]
pub struct RouteRequest {
    /// The prompt, rendered and sized.
    pub prompt: RoutablePrompt,
    /// Its sampling parameters.
    pub params: SamplingParams,
    /// The LoRA adapter it names, if any (served by local engines only).
    pub adapter: Option<engine_api::AdapterRef>,
}

impl RouteRequest {
    /// The tokens this request may occupy: its prompt plus `max_tokens`. The one measure that
    /// admission (tokens per minute) and placement (outstanding tokens) both reserve.
    /// Saturating: a huge `max_tokens` cannot wrap into a small reservation.
    pub fn reserved_tokens(&self) -> u64 {
        (self.prompt.tokens() as u64).saturating_add(self.params.max_tokens as u64)
    }

    /// The key of where the prompt starts, within the requester's prefix-cache scope: requests
    /// with the same key would reuse each other's cached blocks, so placement keeps them on one
    /// replica while its load allows ([`crate::pool::Pool::choose`]). Covers the first
    /// [`PREFIX_KEY_TOKENS`] token ids of a tokenised prompt, else the first
    /// [`PREFIX_KEY_BYTES`] bytes of its text: enough for a shared system prompt to count,
    /// short enough that different questions after it still do.
    pub fn prefix_key(&self, requester: &Requester) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        engine_api::prefix_cache_scope(&requester.tenant, requester.cache_scope.as_deref())
            .hash(&mut hasher);
        // Another adapter's blocks are never reused: its keys and values differ.
        self.adapter.as_ref().map(|a| &a.id).hash(&mut hasher);
        let mut text_head = |texts: &mut dyn Iterator<Item = &str>| {
            let mut left = PREFIX_KEY_BYTES;
            for text in texts {
                let take = text.len().min(left);
                text.as_bytes()[..take].hash(&mut hasher);
                left -= take;
                if left == 0 {
                    break;
                }
            }
        };
        match &self.prompt.prepared.prompt {
            Prompt::Tokens(ids) => ids[..ids.len().min(PREFIX_KEY_TOKENS)].hash(&mut hasher),
            Prompt::Text(text) => text_head(&mut std::iter::once(text.as_str())),
            Prompt::Chat(messages) | Prompt::ChatWithTools(messages, _) => text_head(
                &mut messages
                    .iter()
                    .flat_map(|m| [m.role.as_str(), m.content.as_str()]),
            ),
        }
        hasher.finish()
    }

    /// [`Self::reserved_tokens`] of several requests together (saturating).
    pub fn reserved_tokens_of(requests: &[RouteRequest]) -> u64 {
        requests
            .iter()
            .fold(0u64, |sum, r| sum.saturating_add(r.reserved_tokens()))
    }
}

/// What the engine of a `kind` pool is given for `request`.
pub(crate) fn generation_request(
    requester: &Requester,
    request: &RouteRequest,
    kind: PoolKind,
) -> GenerationRequest {
    GenerationRequest {
        prompt: request.prompt.for_kind(kind),
        params: request.params.clone(),
        tenant: requester.tenant.clone(),
        share: requester.share,
        project_share: requester.project_share.clone(),
        traceparent: requester.traceparent.clone(),
        cache_scope: requester.cache_scope.clone(),
        adapter: request.adapter.clone(),
    }
}
