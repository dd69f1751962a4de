//! The console's pages and forms. Each handler finds the session's actor, asks the admin API
//! (in process) for what it shows or changes, and renders a template; a refusal of the admin
//! API (403 for another tenant, 404, 400 ...) is shown as a page with the same status.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Path, Query};
use axum::http::header::{LOCATION, RETRY_AFTER, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Json, Redirect, Response};
use axum::{Extension, Form};
use control_plane::{Actor, Role};
use policies::ApiKey;
use serde_json::{json, Value};

use super::admin_api::Refusal;
use super::chart::{self, Day};
use super::session::{self, Session, SESSION_COOKIE, SIGN_IN_COOKIE};
use super::view::page;
use super::Console;
use crate::metrics::tenant_activity;
use crate::paths::encode;

type Shared = Extension<Arc<Console>>;
type Fields = HashMap<String, String>;

/// The client's address (for the sign-in limit and the audit log), if the server knows it.
pub struct Client(Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(address)| address.ip()),
        ))
    }
}

/// A request of a live session whose key is still an admin key.
struct SignedIn {
    actor: Actor,
    session: Arc<Session>,
}

impl SignedIn {
    /// Page `name` with `context` plus who is signed in and the session's CSRF token.
    fn page(&self, status: StatusCode, name: &str, mut context: Value) -> Response {
        context["me"] = json!({
            "key_id": self.actor.key_id,
            "role": role_name(self.actor.role),
            "tenant": self.actor.tenant.as_ref().map(|t| t.as_str().to_string()),
            "reads_all": self.actor.may_read_all(),
            "operator": self.actor.role == Role::Operator,
        });
        context["csrf"] = json!(self.session.csrf);
        page(status, name, context)
    }

    /// The admin API's refusal as a page.
    fn refused(&self, refusal: Refusal) -> Response {
        self.page(
            refusal.status,
            "problem.html",
            json!({"title": refusal.status.canonical_reason().unwrap_or("Refused"),
                   "message": refusal.message}),
        )
    }

    /// The refusal page, unless the form carries this session's CSRF token.
    fn csrf_refusal(&self, form: &Fields) -> Option<Response> {
        match form.get("csrf") {
            Some(token) if session::same_token(token, &self.session.csrf) => None,
            _ => Some(self.page(
                StatusCode::FORBIDDEN,
                "problem.html",
                json!({"title": "Forbidden", "message": CSRF_REFUSAL}),
            )),
        }
    }
}

const CSRF_REFUSAL: &str =
    "This form's CSRF token is missing or wrong: reload the page and submit it again.";

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Operator => "operator",
        Role::TenantAdmin => "tenant_admin",
        Role::Auditor => "auditor",
        Role::Inference => "inference",
    }
}

/// The session's actor, asked of the current directory; `None` (and the key's sessions ended)
/// if the session is unknown, ended, or its key is no longer an admin key.
fn signed_in(console: &Console, headers: &HeaderMap, client: &Client) -> Option<SignedIn> {
    let session = console.sessions.find(headers)?;
    let address = client.0.map(|a| a.to_string());
    match console
        .state
        .directory()
        .admin_by_digest(&session.key, address)
    {
        Some(actor) => Some(SignedIn { actor, session }),
        None => {
            console.sessions.end_all_of(&session.key);
            None
        }
    }
}

/// A page's session, or a redirect to the sign-in form.
fn require(console: &Console, headers: &HeaderMap, client: &Client) -> Result<SignedIn, Redirect> {
    signed_in(console, headers, client).ok_or_else(|| Redirect::to("/console/sign-in"))
}

/// A form's session with its CSRF token checked; else the redirect to the sign-in form, or the
/// refusal page.
fn form_session(
    console: &Console,
    headers: &HeaderMap,
    client: &Client,
    form: &Fields,
) -> Result<SignedIn, Box<Response>> {
    let me = require(console, headers, client).map_err(|r| Box::new(r.into_response()))?;
    match me.csrf_refusal(form) {
        Some(refusal) => Err(Box::new(refusal)),
        None => Ok(me),
    }
}

fn see_other(location: &str) -> Response {
    (StatusCode::SEE_OTHER, [(LOCATION, location.to_string())]).into_response()
}

/// `GET /console`: the overview, or the sign-in form.
pub async fn home(Extension(console): Shared, headers: HeaderMap, client: Client) -> Response {
    match signed_in(&console, &headers, &client) {
        Some(_) => see_other("/console/overview"),
        None => see_other("/console/sign-in"),
    }
}

/// `GET /console/sign-in`: the form, with a fresh double-submit CSRF token.
pub async fn sign_in_form(Extension(console): Shared) -> Response {
    sign_in_page(&console, StatusCode::OK, None)
}

fn sign_in_page(console: &Console, status: StatusCode, error: Option<&str>) -> Response {
    let token = session::random_token();
    let mut response = page(
        status,
        "sign_in.html",
        json!({"csrf": token, "error": error}),
    );
    let cookie = session::set_cookie(SIGN_IN_COOKIE, Some(&token), console.state.limits.tls);
    if let Ok(value) = cookie.parse() {
        response.headers_mut().append(SET_COOKIE, value);
    }
    response
}

/// `POST /console/sign-in`: `key` (posted, never in a URL) and `csrf`.
pub async fn sign_in(
    Extension(console): Shared,
    headers: HeaderMap,
    client: Client,
    Form(form): Form<Fields>,
) -> Response {
    if let Some(address) = client.0 {
        if let Err(wait) = console.sessions.may_try(address) {
            let mut response = sign_in_page(
                &console,
                StatusCode::TOO_MANY_REQUESTS,
                Some("Too many sign-in attempts from this address: wait a minute."),
            );
            if let Ok(value) = wait.to_string().parse() {
                response.headers_mut().insert(RETRY_AFTER, value);
            }
            return response;
        }
    }
    let posted = form.get("csrf").map(String::as_str).unwrap_or_default();
    let expected = session::cookie(&headers, SIGN_IN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !session::same_token(posted, expected) {
        return sign_in_page(&console, StatusCode::FORBIDDEN, Some(CSRF_REFUSAL));
    }
    let key = ApiKey::from_plaintext(form.get("key").map(|k| k.trim()).unwrap_or_default());
    let directory = console.state.directory();
    if directory.admin(&key, None).is_none() {
        let message = match directory.resolve(&key) {
            Some(_) => "This is an inference key: the console takes an operator, tenant-admin or auditor key.",
            None => "This key is not a valid admin key.",
        };
        return sign_in_page(&console, StatusCode::UNAUTHORIZED, Some(message));
    }
    let (token, _) = console.sessions.start(key.digest());
    let secure = console.state.limits.tls;
    let mut response = see_other("/console/overview");
    for cookie in [
        session::set_cookie(SESSION_COOKIE, Some(&token), secure),
        session::set_cookie(SIGN_IN_COOKIE, None, secure),
    ] {
        if let Ok(value) = cookie.parse() {
            response.headers_mut().append(SET_COOKIE, value);
        }
    }
    response
}

/// `POST /console/sign-out`.
pub async fn sign_out(
    Extension(console): Shared,
    headers: HeaderMap,
    client: Client,
    Form(form): Form<Fields>,
) -> Response {
    if let Err(response) = form_session(&console, &headers, &client, &form) {
        return *response;
    }
    console.sessions.end(&headers);
    let mut response = see_other("/console/sign-in");
    let cookie = session::set_cookie(SESSION_COOKIE, None, console.state.limits.tls);
    if let Ok(value) = cookie.parse() {
        response.headers_mut().append(SET_COOKIE, value);
    }
    response
}

/// What the overview shows: pools (operators and auditors) and every visible tenant's live
/// activity.
async fn overview_figures(console: &Console, me: &SignedIn) -> Value {
    let pools = match me.actor.may_read_all() {
        true => console
            .admin
            .get(&me.actor, "/admin/pools")
            .await
            .map(|v| v["data"].clone())
            .unwrap_or(Value::Null),
        false => Value::Null,
    };
    let tenants: Vec<_> = tenant_activity(&console.state.models)
        .into_iter()
        .filter(|row| policies::TenantId::new(&row.tenant).is_ok_and(|t| me.actor.may_read(&t)))
        .collect();
    json!({"at_ms": control_plane::now_ms(), "pools": pools, "tenants": tenants})
}

/// `GET /console/overview`.
pub async fn overview(Extension(console): Shared, headers: HeaderMap, client: Client) -> Response {
    let me = match require(&console, &headers, &client) {
        Ok(me) => me,
        Err(redirect) => return redirect.into_response(),
    };
    let figures = overview_figures(&console, &me).await;
    me.page(
        StatusCode::OK,
        "overview.html",
        json!({"nav": "overview", "figures": figures}),
    )
}

/// `GET /console/api/overview`: the overview's figures, polled by its script.
pub async fn overview_data(
    Extension(console): Shared,
    headers: HeaderMap,
    client: Client,
) -> Response {
    match signed_in(&console, &headers, &client) {
        Some(me) => Json(overview_figures(&console, &me).await).into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": {"message": "Sign in again.", "type": "authentication_error"}})),
        )
            .into_response(),
    }
}

/// `GET /console/tenants`: the tenants the key may read (a tenant-admin goes to its own).
pub async fn tenants(Extension(console): Shared, headers: HeaderMap, client: Client) -> Response {
    let me = match require(&console, &headers, &client) {
        Ok(me) => me,
        Err(redirect) => return redirect.into_response(),
    };
    if let Some(own) = &me.actor.tenant {
        return see_other(&format!("/console/tenants/{}", encode(own.as_str())));
    }
    match console.admin.get(&me.actor, "/admin/tenants").await {
        Ok(list) => me.page(
            StatusCode::OK,
            "tenants.html",
            json!({"nav": "tenants", "tenants": list["data"], "source": list["source"]}),
        ),
        Err(refusal) => me.refused(refusal),
    }
}

/// `GET /console/tenants/{tenant}`: limits, projects, keys, grants, usage per day, last requests.
pub async fn tenant(
    Extension(console): Shared,
    headers: HeaderMap,
    client: Client,
    Path(id): Path<String>,
) -> Response {
    let me = match require(&console, &headers, &client) {
        Ok(me) => me,
        Err(redirect) => return redirect.into_response(),
    };
    let t = encode(&id);
    let tenant = match console
        .admin
        .get(&me.actor, format!("/admin/tenants/{t}"))
        .await
    {
        Ok(tenant) => tenant,
        Err(refusal) => return me.refused(refusal),
    };
    let now_s = control_plane::now_ms() / 1000;
    let admin = &console.admin;
    let actor = &me.actor;
    let (projects, keys, allowances, usage, records) = futures::join!(
        admin.get(actor, format!("/admin/tenants/{t}/projects")),
        admin.get(actor, format!("/admin/tenants/{t}/keys")),
        admin.get(actor, format!("/admin/allowances?tenant={t}")),
        admin.get(
            actor,
            format!(
                "/admin/usage?tenant={t}&group_by=day&from={}",
                now_s - 30 * 86_400
            )
        ),
        admin.get(
            actor,
            format!("/admin/usage/records?tenant={t}&from={}", now_s - 86_400)
        ),
    );
    let list = |answer: Result<Value, Refusal>| match answer {
        Ok(v) => json!({"data": v["data"], "currency": v["currency"]}),
        Err(r) => json!({"error": r.message}),
    };
    let rows = usage
        .as_ref()
        .ok()
        .and_then(|u| u["data"].as_array().cloned())
        .unwrap_or_default();
    let currency = usage
        .as_ref()
        .ok()
        .and_then(|u| u["currency"].as_str().map(str::to_string));
    let (chart, cost_chart) = match rows.is_empty() {
        true => (String::new(), String::new()),
        false => {
            let days = chart_days(&rows, now_s.div_euclid(86_400), 14);
            let cost = match &currency {
                Some(currency) => chart::cost_per_day(&days, &format!("{currency}, minor units")),
                None => String::new(),
            };
            (chart::tokens_per_day(&days), cost)
        }
    };
    let last_requests: Vec<Value> = records
        .as_ref()
        .ok()
        .and_then(|r| r["data"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .rev()
        .take(20)
        .collect();
    me.page(
        StatusCode::OK,
        "tenant.html",
        json!({
            "nav": "tenants",
            "tenant": tenant,
            "projects": list(projects),
            "keys": list(keys),
            "allowances": list(allowances),
            "usage": list(usage),
            "chart": chart,
            "cost_chart": cost_chart,
            "records": last_requests,
            "records_error": records.err().map(|r| r.message),
        }),
    )
}

/// The `count` UTC days up to `today` (days since the epoch), oldest first, with the usage
/// rows' tokens (a day without requests is a day of none: the chart keeps its time axis).
fn chart_days(rows: &[Value], today: i64, count: i64) -> Vec<Day> {
    (today - count + 1..=today)
        .map(|day| {
            let (year, month, date) = control_plane::civil_from_days(day);
            let day = format!("{year:04}-{month:02}-{date:02}");
            let row = rows.iter().find(|r| r["day"] == day.as_str());
            let tokens = |field: &str| row.and_then(|r| r[field].as_u64()).unwrap_or(0);
            Day {
                prompt_tokens: tokens("prompt_tokens"),
                completion_tokens: tokens("completion_tokens"),
                // Millionths of a minor unit, exact in the ledger: the chart's minor units.
                cost: row.and_then(|r| r["cost_micros"].as_f64()).unwrap_or(0.0) / 1e6,
                day,
            }
        })
        .collect()
}

/// Whole days from a form field, as seconds; `None` when left empty.
fn days_field(form: &Fields, name: &str) -> Result<Option<u64>, String> {
    match form.get(name).map(|v| v.trim()).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(text) => text
            .parse::<u64>()
            .map(|days| Some(days.saturating_mul(86_400)))
            .map_err(|_| format!("`{name}` must be a whole number of days, not `{text}`.")),
    }
}

/// A non-empty text field.
fn text_field(form: &Fields, name: &str) -> Option<String> {
    form.get(name)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn bad_form(me: &SignedIn, message: String) -> Response {
    me.refused(Refusal {
        status: StatusCode::BAD_REQUEST,
        message,
    })
}

/// `POST /console/tenants/{tenant}/keys`: issues a key and shows it, once.
pub async fn issue_key(
    Extension(console): Shared,
    headers: HeaderMap,
    client: Client,
    Path(id): Path<String>,
    Form(form): Form<Fields>,
) -> Response {
    let me = match form_session(&console, &headers, &client, &form) {
        Ok(me) => me,
        Err(response) => return *response,
    };
    let mut body = json!({});
    for field in ["name", "project", "role"] {
        if let Some(value) = text_field(&form, field) {
            body[field] = json!(value);
        }
    }
    match days_field(&form, "expires_in_days") {
        Ok(Some(seconds)) => body["expires_in_secs"] = json!(seconds),
        Ok(None) => {}
        Err(message) => return bad_form(&me, message),
    }
    let path = format!("/admin/tenants/{}/keys", encode(&id));
    match console
        .admin
        .call(&me.actor, Method::POST, &path, Some(body))
        .await
    {
        Ok(issued) => me.page(
            StatusCode::OK,
            "key_shown.html",
            json!({"nav": "tenants", "key": issued, "tenant": id, "what": "issued"}),
        ),
        Err(refusal) => me.refused(refusal),
    }
}

/// `POST /console/keys/{key}/rotate`: a new key of the same scope, shown once; the old one
/// works for `overlap_hours` more.
pub async fn rotate_key(
    Extension(console): Shared,
    headers: HeaderMap,
    client: Client,
    Path(key): Path<String>,
    Form(form): Form<Fields>,
) -> Response {
    let me = match form_session(&console, &headers, &client, &form) {
        Ok(me) => me,
        Err(response) => return *response,
    };
    let overlap_hours = match text_field(&form, "overlap_hours").map(|v| v.parse::<u64>()) {
        None => 0,
        Some(Ok(hours)) => hours,
        Some(Err(_)) => {
            return bad_form(&me, "`overlap_hours` must be a whole number.".into());
        }
    };
    let path = format!("/admin/keys/{}/rotate", encode(&key));
    let body = json!({"overlap_secs": overlap_hours.saturating_mul(3600)});
    match console
        .admin
        .call(&me.actor, Method::POST, &path, Some(body))
        .await
    {
        Ok(issued) => {
            let tenant = issued["tenant"].clone();
            me.page(
                StatusCode::OK,
                "key_shown.html",
                json!({"nav": "tenants", "key": issued, "tenant": tenant, "what": "rotated"}),
            )
        }
        Err(refusal) => me.refused(refusal),
    }
}

/// `POST /console/keys/{key}/revoke`: revokes it, back to its tenant's page.
pub async fn revoke_key(
    Extension(console): Shared,
    headers: HeaderMap,
    client: Client,
    Path(key): Path<String>,
    Form(form): Form<Fields>,
) -> Response {
    let me = match form_session(&console, &headers, &client, &form) {
        Ok(me) => me,
        Err(response) => return *response,
    };
    let path = format!("/admin/keys/{}", encode(&key));
    match console
        .admin
        .call(&me.actor, Method::DELETE, &path, None)
        .await
    {
        Ok(revoked) => match revoked["tenant"].as_str() {
            Some(tenant) => see_other(&format!("/console/tenants/{}", encode(tenant))),
            None => see_other("/console/tenants"),
        },
        Err(refusal) => me.refused(refusal),
    }
}

/// `GET /console/grants`: grants and budgets with what is left, and prices.
pub async fn grants(Extension(console): Shared, headers: HeaderMap, client: Client) -> Response {
    let me = match require(&console, &headers, &client) {
        Ok(me) => me,
        Err(redirect) => return redirect.into_response(),
    };
    let scope = match &me.actor.tenant {
        Some(t) => format!("?tenant={}", encode(t.as_str())),
        None => String::new(),
    };
    let (allowances, prices) = futures::join!(
        console
            .admin
            .get(&me.actor, format!("/admin/allowances{scope}")),
        console.admin.get(&me.actor, "/admin/prices"),
    );
    let list = |answer: Result<Value, Refusal>| match answer {
        Ok(v) => json!({"data": v["data"], "currency": v["currency"]}),
        Err(r) => json!({"error": r.message}),
    };
    me.page(
        StatusCode::OK,
        "grants.html",
        json!({"nav": "grants", "allowances": list(allowances), "prices": list(prices)}),
    )
}

/// `POST /console/grants`: a grant of tokens or money to a tenant or project.
pub async fn create_grant(
    Extension(console): Shared,
    headers: HeaderMap,
    client: Client,
    Form(form): Form<Fields>,
) -> Response {
    let me = match form_session(&console, &headers, &client, &form) {
        Ok(me) => me,
        Err(response) => return *response,
    };
    let amount = match text_field(&form, "amount").map(|a| a.parse::<i64>()) {
        Some(Ok(amount)) => amount,
        _ => return bad_form(&me, "`amount` must be a whole number.".into()),
    };
    let expires_in = match days_field(&form, "expires_in_days") {
        Ok(Some(seconds)) => seconds as i64,
        Ok(None) => return bad_form(&me, "`expires_in_days` is needed.".into()),
        Err(message) => return bad_form(&me, message),
    };
    let mut body = json!({
        "unit": text_field(&form, "unit").unwrap_or_else(|| "tokens".into()),
        "amount": amount,
        "expires_at_ms": control_plane::now_ms().saturating_add(expires_in.saturating_mul(1000)),
    });
    for field in ["tenant", "project", "name"] {
        if let Some(value) = text_field(&form, field) {
            body[field] = json!(value);
        }
    }
    post_then_grants_page(&console, &me, "/admin/grants", body).await
}

/// Posts `body` to the admin API's `path`; back to the grants page, or the refusal shown.
async fn post_then_grants_page(
    console: &Console,
    me: &SignedIn,
    path: &str,
    body: Value,
) -> Response {
    match console
        .admin
        .call(&me.actor, Method::POST, path, Some(body))
        .await
    {
        Ok(_) => see_other("/console/grants"),
        Err(refusal) => me.refused(refusal),
    }
}

/// `POST /console/prices`: a model's price from now on.
pub async fn set_price(
    Extension(console): Shared,
    headers: HeaderMap,
    client: Client,
    Form(form): Form<Fields>,
) -> Response {
    let me = match form_session(&console, &headers, &client, &form) {
        Ok(me) => me,
        Err(response) => return *response,
    };
    let mut body = json!({"model": text_field(&form, "model").unwrap_or_default()});
    for (field, required) in [
        ("input_per_mtok", true),
        ("output_per_mtok", true),
        ("cached_input_per_mtok", false),
        ("batch_discount_percent", false),
    ] {
        match text_field(&form, field).map(|v| v.parse::<u64>()) {
            Some(Ok(value)) => body[field] = json!(value),
            None if !required => {}
            _ => return bad_form(&me, format!("`{field}` must be a whole number.")),
        }
    }
    post_then_grants_page(&console, &me, "/admin/prices", body).await
}

/// `GET /console/audit?tenant=&action=&actor=`: the newest entries first, filtered.
pub async fn audit(
    Extension(console): Shared,
    headers: HeaderMap,
    client: Client,
    Query(filters): Query<Fields>,
) -> Response {
    let me = match require(&console, &headers, &client) {
        Ok(me) => me,
        Err(redirect) => return redirect.into_response(),
    };
    let mut path = "/admin/audit?limit=10000".to_string();
    if let Some(tenant) = text_field(&filters, "tenant") {
        path.push_str(&format!("&tenant={}", encode(&tenant)));
    }
    let entries = match console.admin.get(&me.actor, &path).await {
        Ok(list) => list["data"].as_array().cloned().unwrap_or_default(),
        Err(refusal) => return me.refused(refusal),
    };
    let action = text_field(&filters, "action");
    let actor = text_field(&filters, "actor");
    let shown: Vec<Value> = entries
        .into_iter()
        .rev()
        .filter(|e| {
            action
                .as_deref()
                .is_none_or(|a| e["action"].as_str().is_some_and(|x| x.contains(a)))
                && actor
                    .as_deref()
                    .is_none_or(|a| e["actor_key"].as_str() == Some(a))
        })
        .take(200)
        .map(|mut e| {
            for side in ["before", "after"] {
                if !e[side].is_null() {
                    e[side] = json!(e[side].to_string());
                }
            }
            e
        })
        .collect();
    me.page(
        StatusCode::OK,
        "audit.html",
        json!({"nav": "audit", "entries": shown, "filters": filters}),
    )
}

/// `GET /console/usage.csv?tenant=&days=`: the ledger's records, as the admin API exports them.
pub async fn usage_csv(
    Extension(console): Shared,
    headers: HeaderMap,
    client: Client,
    Query(filters): Query<Fields>,
) -> Response {
    let me = match require(&console, &headers, &client) {
        Ok(me) => me,
        Err(redirect) => return redirect.into_response(),
    };
    let days = text_field(&filters, "days")
        .and_then(|d| d.parse::<i64>().ok())
        .unwrap_or(30)
        .clamp(1, 3660);
    let from = control_plane::now_ms() / 1000 - days * 86_400;
    let mut path = format!("/admin/usage/records?format=csv&from={from}");
    let tenant = text_field(&filters, "tenant")
        .or_else(|| me.actor.tenant.as_ref().map(|t| t.as_str().to_string()));
    if let Some(tenant) = tenant {
        path.push_str(&format!("&tenant={}", encode(&tenant)));
    }
    let response = console
        .admin
        .respond(&me.actor, Method::GET, &path, None)
        .await;
    if response.status().is_success() {
        return response;
    }
    let status = response.status();
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let message = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| "The export was refused.".into());
    me.refused(Refusal { status, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_covers_every_day_of_its_window() {
        let rows = [json!({"day": "2026-12-05", "prompt_tokens": 10, "completion_tokens": 3})];
        // 20794 is 2026-12-07.
        let days = chart_days(&rows, 20_794, 4);
        let names: Vec<&str> = days.iter().map(|d| d.day.as_str()).collect();
        assert_eq!(
            names,
            ["2026-12-04", "2026-12-05", "2026-12-06", "2026-12-07"]
        );
        assert_eq!((days[1].prompt_tokens, days[1].completion_tokens), (10, 3));
        assert_eq!(
            days[0].prompt_tokens + days[2].prompt_tokens + days[3].prompt_tokens,
            0
        );
    }
}
