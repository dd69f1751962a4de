//! `gateway admin ...`: the admin API from the command line, so an operator needs no curl.
//! Every subcommand is one HTTP call; the answer is printed as indented JSON (CSV where asked),
//! and an error answer exits non-zero with the API's message.

use clap::{Args, Subcommand};
use gateway::paths::encode;
use reqwest::blocking::Client;
use reqwest::Method;
use serde_json::{json, Map, Value};

/// Where the gateway is and which admin key to use.
#[derive(Args)]
pub struct AdminArgs {
    /// The gateway's base URL.
    #[arg(long, env = "GATEWAY_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An admin key (operator, tenant-admin or auditor).
    #[arg(long, env = "GATEWAY_ADMIN_KEY", hide_env_values = true)]
    key: String,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Tenants (institutions).
    #[command(subcommand)]
    Tenants(TenantCommand),
    /// Projects inside a tenant.
    #[command(subcommand)]
    Projects(ProjectCommand),
    /// API keys.
    #[command(subcommand)]
    Keys(KeyCommand),
    /// Prices per model.
    #[command(subcommand)]
    Prices(PriceCommand),
    /// Grants: allocations of tokens or money with a start and an expiry.
    #[command(subcommand)]
    Grants(GrantCommand),
    /// Budgets in money per day or month.
    #[command(subcommand)]
    Budgets(BudgetCommand),
    /// LoRA adapters: tenants' uploads and operators' shared ones.
    #[command(subcommand)]
    Adapters(AdapterCommand),
    /// What each grant and budget has used.
    Allowances {
        #[arg(long)]
        tenant: Option<String>,
        /// `json` or `csv`.
        #[arg(long)]
        format: Option<String>,
    },
    /// Usage from the ledger.
    Usage {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        project: Option<String>,
        /// `day`, `model` or `project`.
        #[arg(long)]
        group_by: Option<String>,
        /// `YYYY-MM-DD`, RFC 3339 or Unix seconds (inclusive).
        #[arg(long)]
        from: Option<String>,
        /// Likewise (exclusive).
        #[arg(long)]
        to: Option<String>,
        /// `json` or `csv`.
        #[arg(long)]
        format: Option<String>,
    },
    /// The audit log.
    Audit {
        #[arg(long)]
        tenant: Option<String>,
        /// Entries after this sequence number.
        #[arg(long)]
        after: Option<i64>,
        #[arg(long)]
        limit: Option<u32>,
        /// `json` or `csv`.
        #[arg(long)]
        format: Option<String>,
    },
}

/// Limits, as flags.
#[derive(Args, Default)]
struct LimitArgs {
    /// Requests per minute.
    #[arg(long)]
    rpm: Option<u32>,
    /// Tokens (prompt + max_tokens) per minute.
    #[arg(long)]
    tpm: Option<u32>,
    /// Requests in flight at once.
    #[arg(long)]
    concurrency: Option<u32>,
    /// Tokens per UTC day.
    #[arg(long)]
    daily_tokens: Option<u64>,
}

impl LimitArgs {
    fn json(&self) -> Option<Value> {
        let mut limits = Map::new();
        let mut put = |name: &str, value: Option<u64>| {
            if let Some(v) = value {
                limits.insert(name.into(), json!(v));
            }
        };
        put("requests_per_minute", self.rpm.map(u64::from));
        put("tokens_per_minute", self.tpm.map(u64::from));
        put("max_concurrent", self.concurrency.map(u64::from));
        put("daily_tokens", self.daily_tokens);
        (!limits.is_empty()).then_some(Value::Object(limits))
    }
}

/// What tenants and projects both have: a name, models, a weight, limits.
#[derive(Args)]
struct Fields {
    #[arg(long)]
    name: Option<String>,
    /// Models it may use, comma-separated (default: all the wider scope allows).
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
    /// Its fair-share weight: a tenant's against the other tenants, a project's inside its
    /// tenant.
    #[arg(long)]
    weight: Option<f64>,
    #[command(flatten)]
    limits: LimitArgs,
}

impl Fields {
    /// The fields given, as a body (absent flags leave their fields out).
    fn body(&self, mut body: Map<String, Value>) -> Map<String, Value> {
        for (name, value) in [
            ("name", text(&self.name)),
            ("models", models(&self.models)),
            ("weight", self.weight.map(|w| json!(w))),
            ("limits", self.limits.json()),
        ] {
            body = with(body, name, value);
        }
        body
    }
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Every tenant you may read.
    List,
    /// One tenant.
    Show { tenant: String },
    /// A new tenant (operators).
    Create {
        tenant: String,
        /// `interactive` or `batch`.
        #[arg(long)]
        priority: Option<String>,
        #[command(flatten)]
        fields: Fields,
    },
    /// Change a tenant's name, models, weight, priority or limits (operators).
    Update {
        tenant: String,
        #[arg(long)]
        priority: Option<String>,
        #[command(flatten)]
        fields: Fields,
    },
    /// Delete (disable) a tenant; its usage and audit stay (operators).
    Delete { tenant: String },
}

#[derive(Subcommand)]
enum ProjectCommand {
    /// A tenant's projects.
    List { tenant: String },
    /// A new project in a tenant.
    Create {
        tenant: String,
        project: String,
        #[command(flatten)]
        fields: Fields,
    },
    /// Change a project's name, models, weight or limits.
    Update {
        tenant: String,
        project: String,
        #[command(flatten)]
        fields: Fields,
    },
    /// Delete (disable) a project; its keys stop.
    Delete { tenant: String, project: String },
}

#[derive(Subcommand)]
enum GrantCommand {
    /// Every grant you may read.
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// A new grant (operators).
    Create {
        tenant: String,
        /// `tokens` or `money` (minor units).
        #[arg(long)]
        unit: String,
        #[arg(long)]
        amount: i64,
        /// Valid until this Unix time in ms.
        #[arg(long)]
        expires_at_ms: i64,
        /// Valid from this Unix time in ms (default: now).
        #[arg(long)]
        starts_at_ms: Option<i64>,
        #[arg(long)]
        project: Option<String>,
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
enum BudgetCommand {
    /// Every budget you may read.
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// A new budget (operators): minor units of money per `day` or `month`.
    Create {
        tenant: String,
        #[arg(long)]
        period: String,
        #[arg(long)]
        amount: i64,
        #[arg(long)]
        project: Option<String>,
        #[arg(long)]
        id: Option<String>,
    },
}

#[derive(Subcommand)]
enum PriceCommand {
    /// Every price version (of one model, with `--model`).
    List {
        #[arg(long)]
        model: Option<String>,
    },
    /// A new price of a model, in minor units of the centre's currency per million tokens.
    Set {
        model: String,
        /// Per million prompt tokens computed.
        #[arg(long)]
        input: u64,
        /// Per million prompt tokens found in the prefix cache (default: as `--input`).
        #[arg(long)]
        cached_input: Option<u64>,
        /// Per million generated tokens.
        #[arg(long)]
        output: u64,
        /// Percent off for the `batch` class.
        #[arg(long)]
        batch_discount: Option<u8>,
        /// In force from this Unix time in ms (default: now).
        #[arg(long)]
        effective_from_ms: Option<i64>,
    },
}

#[derive(Subcommand)]
enum AdapterCommand {
    /// Every adapter you may read.
    List,
    /// One adapter.
    Show { adapter: String },
    /// Upload a GGUF adapter file (a tenant-admin's is its tenant's; an operator's is shared
    /// unless `--tenant`).
    Upload {
        adapter: String,
        /// The model it adapts.
        #[arg(long)]
        model: String,
        /// The GGUF file.
        #[arg(long)]
        file: std::path::PathBuf,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Register a file by path, inside the gateway's `[adapter_registry] directory`
    /// (operators).
    Register {
        adapter: String,
        #[arg(long)]
        model: String,
        /// The file, as the gateway sees it.
        #[arg(long)]
        path: String,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Delete an adapter: no request names it from now on; engines unload it.
    Delete { adapter: String },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// A tenant's keys, or (without a tenant) the operator and auditor keys.
    List { tenant: Option<String> },
    /// Issue a key; its plaintext is printed once.
    Issue {
        /// The tenant (absent: an operator or auditor key).
        tenant: Option<String>,
        /// `inference` (default with a tenant), `tenant_admin`, `operator`, `auditor`.
        #[arg(long)]
        role: Option<String>,
        #[arg(long)]
        project: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
        /// Seconds until it stops working.
        #[arg(long)]
        expires_in: Option<u64>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Replace a key; the old one keeps working for `--overlap` seconds.
    Rotate {
        key: String,
        #[arg(long, default_value_t = 0)]
        overlap: u64,
    },
    /// Revoke a key on every replica.
    Revoke { key: String },
    /// One key.
    Show { key: String },
}

fn with(mut object: Map<String, Value>, name: &str, value: Option<Value>) -> Map<String, Value> {
    if let Some(v) = value {
        object.insert(name.into(), v);
    }
    object
}

fn text(value: &Option<String>) -> Option<Value> {
    value.as_ref().map(|v| json!(v))
}

fn models(value: &Option<Vec<String>>) -> Option<Value> {
    value.as_ref().map(|v| json!(v))
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let set: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    match set.is_empty() {
        true => String::new(),
        false => format!("?{}", set.join("&")),
    }
}

/// Runs one admin subcommand.
pub fn run(args: AdminArgs) -> anyhow::Result<()> {
    let (method, path, body) = request(&args.command);
    let url = format!("{}{path}", args.url.trim_end_matches('/'));
    let client = Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()?;
    let mut call = client.request(method, &url).bearer_auth(&args.key);
    match (body, upload_file(&args.command)) {
        // An upload: the body's fields and the file as a multipart form.
        (Some(Value::Object(fields)), Some(file)) => {
            let mut form = reqwest::blocking::multipart::Form::new();
            for (name, value) in fields {
                form = form.text(name, value.as_str().unwrap_or_default().to_string());
            }
            form = form
                .file("file", file)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            call = call.multipart(form);
        }
        (Some(body), _) => call = call.json(&body),
        (None, _) => {}
    }
    let response = call.send()?;
    let status = response.status();
    let is_csv = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/csv"));
    let text = response.text()?;
    if is_csv {
        print!("{text}");
    } else {
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    if !status.is_success() {
        anyhow::bail!("the gateway answered {status}");
    }
    Ok(())
}

/// The file a subcommand uploads, if it uploads one (its other fields are [`request`]'s body).
fn upload_file(command: &AdminCommand) -> Option<&std::path::Path> {
    match command {
        AdminCommand::Adapters(AdapterCommand::Upload { file, .. }) => Some(file),
        _ => None,
    }
}

/// The HTTP call of a subcommand.
fn request(command: &AdminCommand) -> (Method, String, Option<Value>) {
    use AdminCommand as A;
    match command {
        A::Adapters(AdapterCommand::List) => (Method::GET, "/admin/adapters".into(), None),
        A::Adapters(AdapterCommand::Show { adapter }) => (
            Method::GET,
            format!("/admin/adapters/{}", encode(adapter)),
            None,
        ),
        A::Adapters(AdapterCommand::Delete { adapter }) => (
            Method::DELETE,
            format!("/admin/adapters/{}", encode(adapter)),
            None,
        ),
        A::Adapters(AdapterCommand::Upload {
            adapter,
            model,
            tenant,
            ..
        }) => {
            let body = with(Map::new(), "id", Some(json!(adapter)));
            let body = with(body, "model", Some(json!(model)));
            let body = with(body, "tenant", text(tenant));
            (
                Method::POST,
                "/admin/adapters".into(),
                Some(Value::Object(body)),
            )
        }
        A::Adapters(AdapterCommand::Register {
            adapter,
            model,
            path,
            tenant,
        }) => {
            let body = with(Map::new(), "id", Some(json!(adapter)));
            let body = with(body, "model", Some(json!(model)));
            let body = with(body, "path", Some(json!(path)));
            let body = with(body, "tenant", text(tenant));
            (
                Method::POST,
                "/admin/adapters".into(),
                Some(Value::Object(body)),
            )
        }
        A::Tenants(TenantCommand::List) => (Method::GET, "/admin/tenants".into(), None),
        A::Tenants(TenantCommand::Show { tenant }) => (
            Method::GET,
            format!("/admin/tenants/{}", encode(tenant)),
            None,
        ),
        A::Tenants(TenantCommand::Create {
            tenant,
            priority,
            fields,
        }) => {
            let body = with(Map::new(), "id", Some(json!(tenant)));
            let body = fields.body(with(body, "priority", text(priority)));
            (
                Method::POST,
                "/admin/tenants".into(),
                Some(Value::Object(body)),
            )
        }
        A::Tenants(TenantCommand::Update {
            tenant,
            priority,
            fields,
        }) => {
            let body = fields.body(with(Map::new(), "priority", text(priority)));
            (
                Method::PATCH,
                format!("/admin/tenants/{}", encode(tenant)),
                Some(Value::Object(body)),
            )
        }
        A::Tenants(TenantCommand::Delete { tenant }) => (
            Method::DELETE,
            format!("/admin/tenants/{}", encode(tenant)),
            None,
        ),
        A::Projects(ProjectCommand::List { tenant }) => (
            Method::GET,
            format!("/admin/tenants/{}/projects", encode(tenant)),
            None,
        ),
        A::Projects(ProjectCommand::Create {
            tenant,
            project,
            fields,
        }) => {
            let body = fields.body(with(Map::new(), "id", Some(json!(project))));
            (
                Method::POST,
                format!("/admin/tenants/{}/projects", encode(tenant)),
                Some(Value::Object(body)),
            )
        }
        A::Projects(ProjectCommand::Update {
            tenant,
            project,
            fields,
        }) => (
            Method::PATCH,
            format!(
                "/admin/tenants/{}/projects/{}",
                encode(tenant),
                encode(project)
            ),
            Some(Value::Object(fields.body(Map::new()))),
        ),
        A::Projects(ProjectCommand::Delete { tenant, project }) => (
            Method::DELETE,
            format!(
                "/admin/tenants/{}/projects/{}",
                encode(tenant),
                encode(project)
            ),
            None,
        ),
        A::Keys(KeyCommand::List { tenant }) => match tenant {
            Some(t) => (
                Method::GET,
                format!("/admin/tenants/{}/keys", encode(t)),
                None,
            ),
            None => (Method::GET, "/admin/keys".into(), None),
        },
        A::Keys(KeyCommand::Issue {
            tenant,
            role,
            project,
            name,
            models: m,
            expires_in,
            limits,
        }) => {
            let body = with(Map::new(), "role", text(role));
            let body = with(body, "project", text(project));
            let body = with(body, "name", text(name));
            let body = with(body, "models", models(m));
            let body = with(body, "expires_in_secs", expires_in.map(|s| json!(s)));
            let body = with(body, "limits", limits.json());
            let path = match tenant {
                Some(t) => format!("/admin/tenants/{}/keys", encode(t)),
                None => "/admin/keys".into(),
            };
            (Method::POST, path, Some(Value::Object(body)))
        }
        A::Keys(KeyCommand::Rotate { key, overlap }) => (
            Method::POST,
            format!("/admin/keys/{}/rotate", encode(key)),
            Some(json!({"overlap_secs": overlap})),
        ),
        A::Keys(KeyCommand::Revoke { key }) => {
            (Method::DELETE, format!("/admin/keys/{}", encode(key)), None)
        }
        A::Keys(KeyCommand::Show { key }) => {
            (Method::GET, format!("/admin/keys/{}", encode(key)), None)
        }
        A::Grants(GrantCommand::List { tenant }) => (
            Method::GET,
            format!("/admin/grants{}", query(&[("tenant", tenant.clone())])),
            None,
        ),
        A::Grants(GrantCommand::Create {
            tenant,
            unit,
            amount,
            expires_at_ms,
            starts_at_ms,
            project,
            id,
            name,
        }) => {
            let mut body = Map::new();
            body.insert("tenant".into(), json!(tenant));
            body.insert("unit".into(), json!(unit));
            body.insert("amount".into(), json!(amount));
            body.insert("expires_at_ms".into(), json!(expires_at_ms));
            let body = with(body, "starts_at_ms", starts_at_ms.map(|t| json!(t)));
            let body = with(body, "project", text(project));
            let body = with(body, "id", text(id));
            let body = with(body, "name", text(name));
            (
                Method::POST,
                "/admin/grants".into(),
                Some(Value::Object(body)),
            )
        }
        A::Budgets(BudgetCommand::List { tenant }) => (
            Method::GET,
            format!("/admin/budgets{}", query(&[("tenant", tenant.clone())])),
            None,
        ),
        A::Budgets(BudgetCommand::Create {
            tenant,
            period,
            amount,
            project,
            id,
        }) => {
            let mut body = Map::new();
            body.insert("tenant".into(), json!(tenant));
            body.insert("period".into(), json!(period));
            body.insert("amount".into(), json!(amount));
            let body = with(body, "project", text(project));
            let body = with(body, "id", text(id));
            (
                Method::POST,
                "/admin/budgets".into(),
                Some(Value::Object(body)),
            )
        }
        A::Allowances { tenant, format } => (
            Method::GET,
            format!(
                "/admin/allowances{}",
                query(&[("tenant", tenant.clone()), ("format", format.clone())])
            ),
            None,
        ),
        A::Prices(PriceCommand::List { model }) => (
            Method::GET,
            format!("/admin/prices{}", query(&[("model", model.clone())])),
            None,
        ),
        A::Prices(PriceCommand::Set {
            model,
            input,
            cached_input,
            output,
            batch_discount,
            effective_from_ms,
        }) => {
            let mut body = Map::new();
            body.insert("model".into(), json!(model));
            body.insert("input_per_mtok".into(), json!(input));
            body.insert("output_per_mtok".into(), json!(output));
            let body = with(
                body,
                "cached_input_per_mtok",
                cached_input.map(|c| json!(c)),
            );
            let body = with(
                body,
                "batch_discount_percent",
                batch_discount.map(|d| json!(d)),
            );
            let body = with(
                body,
                "effective_from_ms",
                effective_from_ms.map(|t| json!(t)),
            );
            (
                Method::POST,
                "/admin/prices".into(),
                Some(Value::Object(body)),
            )
        }
        A::Usage {
            tenant,
            project,
            group_by,
            from,
            to,
            format,
        } => (
            Method::GET,
            format!(
                "/admin/usage{}",
                query(&[
                    ("tenant", tenant.clone()),
                    ("project", project.clone()),
                    ("group_by", group_by.clone()),
                    ("from", from.clone()),
                    ("to", to.clone()),
                    ("format", format.clone()),
                ])
            ),
            None,
        ),
        A::Audit {
            tenant,
            after,
            limit,
            format,
        } => (
            Method::GET,
            format!(
                "/admin/audit{}",
                query(&[
                    ("tenant", tenant.clone()),
                    ("after", after.map(|a| a.to_string())),
                    ("limit", limit.map(|l| l.to_string())),
                    ("format", format.clone()),
                ])
            ),
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        admin: AdminArgs,
    }

    fn call(args: &[&str]) -> (Method, String, Option<Value>) {
        let cli =
            Cli::try_parse_from(["gateway", "--key", "k"].iter().chain(args).copied()).unwrap();
        request(&cli.admin.command)
    }

    #[test]
    fn subcommands_become_the_api_calls() {
        let (method, path, body) = call(&[
            "keys",
            "issue",
            "acme",
            "--project",
            "radiology",
            "--rpm",
            "10",
            "--expires-in",
            "60",
        ]);
        assert_eq!(
            (method, path.as_str()),
            (Method::POST, "/admin/tenants/acme/keys")
        );
        assert_eq!(
            body.unwrap(),
            json!({"project": "radiology", "expires_in_secs": 60, "limits": {"requests_per_minute": 10}})
        );
        let (method, path, _) = call(&["keys", "revoke", "key_01"]);
        assert_eq!(
            (method, path.as_str()),
            (Method::DELETE, "/admin/keys/key_01")
        );
        let (_, path, _) = call(&["usage", "--tenant", "acme", "--group-by", "project"]);
        assert_eq!(path, "/admin/usage?tenant=acme&group_by=project");
        let (method, path, body) = call(&[
            "tenants",
            "create",
            "acme",
            "--name",
            "ACME & Co",
            "--concurrency",
            "4",
        ]);
        assert_eq!((method, path.as_str()), (Method::POST, "/admin/tenants"));
        assert_eq!(
            body.unwrap(),
            json!({"id": "acme", "name": "ACME & Co", "limits": {"max_concurrent": 4}})
        );
        assert_eq!(encode("a b&c"), "a%20b%26c");
        let (_, path, body) = call(&[
            "grants",
            "create",
            "lab",
            "--unit",
            "tokens",
            "--amount",
            "50000000",
            "--expires-at-ms",
            "1800000000000",
        ]);
        assert_eq!(path, "/admin/grants");
        assert_eq!(
            body.unwrap(),
            json!({"tenant": "lab", "unit": "tokens", "amount": 50_000_000, "expires_at_ms": 1_800_000_000_000_i64})
        );
        let (method, path, body) = call(&[
            "prices",
            "set",
            "m",
            "--input",
            "1500",
            "--output",
            "6000",
            "--batch-discount",
            "50",
        ]);
        assert_eq!((method, path.as_str()), (Method::POST, "/admin/prices"));
        assert_eq!(
            body.unwrap(),
            json!({"model": "m", "input_per_mtok": 1500, "output_per_mtok": 6000, "batch_discount_percent": 50})
        );
        // An upload's fields become the form beside its file; by path, a JSON body.
        let args = [
            "adapters",
            "upload",
            "radiology",
            "--model",
            "m",
            "--file",
            "r.gguf",
        ];
        let (method, path, body) = call(&args);
        assert_eq!((method, path.as_str()), (Method::POST, "/admin/adapters"));
        assert_eq!(body.unwrap(), json!({"id": "radiology", "model": "m"}));
        let cli =
            Cli::try_parse_from(["gateway", "--key", "k"].iter().chain(&args).copied()).unwrap();
        assert_eq!(
            upload_file(&cli.admin.command),
            Some(std::path::Path::new("r.gguf"))
        );
        let (_, _, body) = call(&[
            "adapters",
            "register",
            "shared",
            "--model",
            "m",
            "--path",
            "/srv/a.gguf",
        ]);
        assert_eq!(
            body.unwrap(),
            json!({"id": "shared", "model": "m", "path": "/srv/a.gguf"})
        );
        let (method, path, _) = call(&["adapters", "delete", "radiology"]);
        assert_eq!(
            (method, path.as_str()),
            (Method::DELETE, "/admin/adapters/radiology")
        );
    }
}
