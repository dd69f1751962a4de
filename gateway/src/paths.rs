//! The paths the gateway serves, as route templates: the router is built from them, and logs
//! and trace spans name a request by its template, never by the raw path. A raw path can hold
//! a secret (a key pasted where a model id goes, `GET /v1/models/sk-...`): a template cannot.

/// `GET /v1/models`.
pub const MODELS: &str = "/v1/models";
/// `GET /v1/models/{model}`.
pub const MODEL: &str = "/v1/models/{model}";
/// `POST /v1/chat/completions`.
pub const CHAT_COMPLETIONS: &str = "/v1/chat/completions";
/// `POST /v1/completions`.
pub const COMPLETIONS: &str = "/v1/completions";
/// `POST /v1/embeddings`.
pub const EMBEDDINGS: &str = "/v1/embeddings";
/// `POST /v1/responses`: OpenAI's Responses API.
pub const RESPONSES: &str = "/v1/responses";
/// `GET`/`DELETE /v1/responses/{id}`: a stored response.
pub const RESPONSE: &str = "/v1/responses/{id}";
/// `GET /v1/responses/{id}/input_items`.
pub const RESPONSE_INPUT_ITEMS: &str = "/v1/responses/{id}/input_items";
/// `GET`/`POST /v1/files`: a tenant's files (upload: multipart, `purpose=batch`).
pub const FILES: &str = "/v1/files";
/// `GET`/`DELETE /v1/files/{id}`.
pub const FILE: &str = "/v1/files/{id}";
/// `GET /v1/files/{id}/content`.
pub const FILE_CONTENT: &str = "/v1/files/{id}/content";
/// `GET`/`POST /v1/batches`.
pub const BATCHES: &str = "/v1/batches";
/// `GET /v1/batches/{id}`.
pub const BATCH: &str = "/v1/batches/{id}";
/// `POST /v1/batches/{id}/cancel`.
pub const BATCH_CANCEL: &str = "/v1/batches/{id}/cancel";
/// `POST /v1/messages`: Anthropic's Messages API.
pub const MESSAGES: &str = "/v1/messages";
/// `POST /v1/messages/count_tokens`.
pub const MESSAGES_COUNT_TOKENS: &str = "/v1/messages/count_tokens";
/// `GET /load`: an engine-worker's load, for the gateways that route to it.
pub const LOAD: &str = "/load";
/// `GET /admin/tenants`.
pub const ADMIN_TENANTS: &str = "/admin/tenants";
/// `GET /admin/usage`.
pub const ADMIN_USAGE: &str = "/admin/usage";
/// `GET /admin/usage/records`.
pub const ADMIN_USAGE_RECORDS: &str = "/admin/usage/records";
/// `GET /admin/pools`.
pub const ADMIN_POOLS: &str = "/admin/pools";
/// One tenant: read, change, delete (control plane).
pub const ADMIN_TENANT: &str = "/admin/tenants/{tenant}";
/// A tenant's projects: list, create.
pub const ADMIN_PROJECTS: &str = "/admin/tenants/{tenant}/projects";
/// One project: read, change, delete.
pub const ADMIN_PROJECT: &str = "/admin/tenants/{tenant}/projects/{project}";
/// A tenant's keys: list, issue.
pub const ADMIN_TENANT_KEYS: &str = "/admin/tenants/{tenant}/keys";
/// Operator and auditor keys: list, issue.
pub const ADMIN_KEYS: &str = "/admin/keys";
/// One key: read, revoke (`DELETE`).
pub const ADMIN_KEY: &str = "/admin/keys/{key}";
/// Rotate a key: a new one of the same scope, the old valid for an overlap.
pub const ADMIN_KEY_ROTATE: &str = "/admin/keys/{key}/rotate";
/// The audit log of every control-plane write.
pub const ADMIN_AUDIT: &str = "/admin/audit";
/// Each model's price versions.
pub const ADMIN_PRICES: &str = "/admin/prices";
/// Grants: allocations with a start and an expiry.
pub const ADMIN_GRANTS: &str = "/admin/grants";
/// Budgets in money per day or month.
pub const ADMIN_BUDGETS: &str = "/admin/budgets";
/// What each grant and budget has used.
pub const ADMIN_ALLOWANCES: &str = "/admin/allowances";
/// The LoRA adapter registry.
pub const ADMIN_ADAPTERS: &str = "/admin/adapters";
/// One registered adapter.
pub const ADMIN_ADAPTER: &str = "/admin/adapters/{adapter}";
/// `GET /health`.
pub const HEALTH: &str = "/health";
/// `GET /ready`.
pub const READY: &str = "/ready";
/// `GET /metrics`.
pub const METRICS: &str = "/metrics";
/// `GET /version`.
pub const VERSION: &str = "/version";
/// `GET /openapi.json`.
pub const OPENAPI: &str = "/openapi.json";

/// Percent-encodes a path segment or query value (ids and dates need little, but a name may
/// hold anything).
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every route's template.
pub const ALL: &[&str] = &[
    MODELS,
    MODEL,
    CHAT_COMPLETIONS,
    COMPLETIONS,
    EMBEDDINGS,
    RESPONSES,
    RESPONSE,
    RESPONSE_INPUT_ITEMS,
    FILES,
    FILE,
    FILE_CONTENT,
    BATCHES,
    BATCH,
    BATCH_CANCEL,
    MESSAGES,
    MESSAGES_COUNT_TOKENS,
    LOAD,
    ADMIN_TENANTS,
    ADMIN_USAGE,
    ADMIN_USAGE_RECORDS,
    ADMIN_POOLS,
    ADMIN_TENANT,
    ADMIN_PROJECTS,
    ADMIN_PROJECT,
    ADMIN_TENANT_KEYS,
    ADMIN_KEYS,
    ADMIN_KEY,
    ADMIN_KEY_ROTATE,
    ADMIN_AUDIT,
    ADMIN_PRICES,
    ADMIN_GRANTS,
    ADMIN_BUDGETS,
    ADMIN_ALLOWANCES,
    ADMIN_ADAPTERS,
    ADMIN_ADAPTER,
    HEALTH,
    READY,
    METRICS,
    VERSION,
    OPENAPI,
];

/// The web console's pages (HTML for people: not in the OpenAPI document).
pub mod console {
    /// The console's home: the overview, or the sign-in form.
    pub const HOME: &str = "/console";
    /// The sign-in form.
    pub const SIGN_IN: &str = "/console/sign-in";
    /// Sign-out.
    pub const SIGN_OUT: &str = "/console/sign-out";
    /// Pools, replicas and tenants, live.
    pub const OVERVIEW: &str = "/console/overview";
    /// The overview's figures as JSON, polled by its script.
    pub const OVERVIEW_DATA: &str = "/console/api/overview";
    /// Every tenant the key may read.
    pub const TENANTS: &str = "/console/tenants";
    /// One tenant.
    pub const TENANT: &str = "/console/tenants/{tenant}";
    /// Issue a key of a tenant.
    pub const TENANT_KEYS: &str = "/console/tenants/{tenant}/keys";
    /// Rotate a key.
    pub const KEY_ROTATE: &str = "/console/keys/{key}/rotate";
    /// Revoke a key.
    pub const KEY_REVOKE: &str = "/console/keys/{key}/revoke";
    /// Grants and budgets (and a new grant).
    pub const GRANTS: &str = "/console/grants";
    /// A new price.
    pub const PRICES: &str = "/console/prices";
    /// The audit log, filtered.
    pub const AUDIT: &str = "/console/audit";
    /// The ledger's records as CSV.
    pub const USAGE_CSV: &str = "/console/usage.csv";
    /// The stylesheet.
    pub const STYLESHEET: &str = "/console/assets/console.css";
    /// The script.
    pub const SCRIPT: &str = "/console/assets/console.js";

    /// Every console route's template.
    pub const ALL: &[&str] = &[
        HOME,
        SIGN_IN,
        SIGN_OUT,
        OVERVIEW,
        OVERVIEW_DATA,
        TENANTS,
        TENANT,
        TENANT_KEYS,
        KEY_ROTATE,
        KEY_REVOKE,
        GRANTS,
        PRICES,
        AUDIT,
        USAGE_CSV,
        STYLESHEET,
        SCRIPT,
    ];
}

/// What logs call a path that matches no route (its text is the client's, and may hold
/// anything).
pub const UNMATCHED: &str = "(no route)";

/// The template `path` matches (a `{name}` segment matches any one segment), or [`UNMATCHED`].
pub fn template(path: &str) -> &'static str {
    let segments = || path.trim_end_matches('/').split('/');
    ALL.iter()
        .chain(console::ALL)
        .copied()
        .find(|template| {
            let wanted = template.split('/');
            wanted.clone().count() == segments().count()
                && wanted.zip(segments()).all(|(w, s)| {
                    (w.starts_with('{') && w.ends_with('}') && !s.is_empty()) || w == s
                })
        })
        .unwrap_or(UNMATCHED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_named_by_its_template_never_by_what_the_client_wrote() {
        assert_eq!(template("/v1/models"), MODELS);
        assert_eq!(template("/v1/models/sk-live-0123456789abcdef"), MODEL);
        assert_eq!(template("/v1/chat/completions"), CHAT_COMPLETIONS);
        assert_eq!(template("/admin/usage/records"), ADMIN_USAGE_RECORDS);
        assert_eq!(template("/v1/sk-live-0123456789abcdef"), UNMATCHED);
        assert_eq!(template("/v1/models/a/b"), UNMATCHED);
        assert_eq!(template("/v1/models/"), MODELS);
        assert_eq!(template("/admin/tenants/acme/projects/x"), ADMIN_PROJECT);
        assert_eq!(template("/admin/keys/key_0123/rotate"), ADMIN_KEY_ROTATE);
    }
}
