//! One generation request as engines receive it, and the prefix-cache scope it belongs to.

use policies::{ProjectShare, Share, TenantId};

use crate::prompt::Prompt;
use crate::sampling::SamplingParams;

/// One generation request, already validated at the edge.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// What to continue: chat messages, text or token ids.
    pub prompt: Prompt,
    /// How to sample and when to stop.
    pub params: SamplingParams,
    /// Who asks (for fair share and accounting); a label, not a credential.
    pub tenant: TenantId,
    /// The tenant's scheduling terms: weight, priority class, caps, queue bound.
    pub share: Share,
    /// The request's project inside the tenant's share (`None`: the tenant's requests are one).
    pub project_share: Option<ProjectShare>,
    /// W3C `traceparent` of the caller's span: remote engines forward it, so the upstream's
    /// spans join the gateway's trace.
    pub traceparent: Option<String>,
    /// Who may reuse this request's cached prompt blocks, and whose it may reuse: `None`, its
    /// tenant alone; otherwise every request with the same scope (a sharing group, or a
    /// `cache_salt`). Requests of different scopes never share a block.
    pub cache_scope: Option<String>,
    /// The LoRA adapter to apply over the model, if the request names one.
    pub adapter: Option<AdapterRef>,
}

/// A LoRA adapter a request names: its id (unique in the fleet) and the file that holds it
/// (llama.cpp's GGUF adapter format), which an engine loads on first use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterRef {
    /// The adapter's id.
    pub id: String,
    /// Its GGUF file.
    pub path: std::path::PathBuf,
}

/// The prefix-cache scope of a request of `tenant` that names `cache_scope`, as its kind and
/// its name: the tenant's own scope when it names none, else the shared one it names (a
/// sharing group, narrowed by a salt). Kinds are spelled apart, so no shared name can pose as a
/// tenant. Whatever keys by scope (the local engine's block keys, routing's placement) takes it
/// from here, so that they agree on which requests share.
pub fn prefix_cache_scope<'a>(tenant: &'a TenantId, cache_scope: Option<&'a str>) -> [&'a str; 2] {
    match cache_scope {
        Some(scope) => ["shared", scope],
        None => ["tenant", tenant.as_str()],
    }
}

impl GenerationRequest {
    /// Its prefix-cache scope ([`prefix_cache_scope`]).
    pub fn prefix_cache_scope(&self) -> [&str; 2] {
        prefix_cache_scope(&self.tenant, self.cache_scope.as_deref())
    }

    /// A request of `tenant` with the default terms (weight 1, interactive).
    pub fn new(prompt: Prompt, params: SamplingParams, tenant: TenantId) -> Self {
        Self {
            prompt,
            params,
            tenant,
            share: Share::default(),
            project_share: None,
            traceparent: None,
            cache_scope: None,
            adapter: None,
        }
    }
}
