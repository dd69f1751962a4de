//! Rendering: the console's templates, compiled into the binary, through minijinja (HTML
//! auto-escaped: tenant names, key names and audit entries are other people's text).

use std::sync::OnceLock;

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use minijinja::Environment;
use serde::Serialize;

/// Every template, by name.
const TEMPLATES: [(&str, &str); 9] = [
    ("base.html", include_str!("templates/base.html")),
    ("sign_in.html", include_str!("templates/sign_in.html")),
    ("overview.html", include_str!("templates/overview.html")),
    ("tenants.html", include_str!("templates/tenants.html")),
    ("tenant.html", include_str!("templates/tenant.html")),
    ("key_shown.html", include_str!("templates/key_shown.html")),
    ("grants.html", include_str!("templates/grants.html")),
    ("audit.html", include_str!("templates/audit.html")),
    ("problem.html", include_str!("templates/problem.html")),
];

fn environment() -> &'static Environment<'static> {
    static ENVIRONMENT: OnceLock<Environment<'static>> = OnceLock::new();
    ENVIRONMENT.get_or_init(|| {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .unwrap_or_else(|e| panic!("console template {name}: {e}"));
        }
        env.add_filter("when", when);
        // Ids in links: a path segment or query value, percent-encoded.
        env.add_filter("urlencode", |value: String| crate::paths::encode(&value));
        env
    })
}

/// Page `name` with `context`, as `status`.
pub fn page(status: StatusCode, name: &str, context: impl Serialize) -> Response {
    let rendered = environment()
        .get_template(name)
        .and_then(|t| t.render(context));
    match rendered {
        Ok(html) => (status, Html(html)).into_response(),
        Err(error) => {
            tracing::error!(template = name, %error, "a console page failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "The console failed to render this page.",
            )
                .into_response()
        }
    }
}

/// A Unix time in milliseconds as `YYYY-MM-DD HH:MM UTC`; `never` for none.
fn when(ms: Option<i64>) -> String {
    let Some(ms) = ms else {
        return "never".into();
    };
    let seconds = ms.div_euclid(1000);
    let (days, rest) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = control_plane::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_compiles() {
        for (name, _) in TEMPLATES {
            environment().get_template(name).unwrap();
        }
    }

    #[test]
    fn times_read_as_utc_dates() {
        assert_eq!(when(Some(0)), "1970-01-01 00:00 UTC");
        assert_eq!(when(Some(1_796_665_086_614)), "2026-12-07 17:38 UTC");
        assert_eq!(when(Some(951_825_600_000)), "2000-02-29 12:00 UTC");
        assert_eq!(when(None), "never");
    }

    #[test]
    fn text_is_escaped() {
        let response = page(
            StatusCode::OK,
            "problem.html",
            serde_json::json!({"title": "x", "message": "<script>alert(1)</script>"}),
        );
        let body =
            futures::executor::block_on(http_body_util::BodyExt::collect(response.into_body()))
                .unwrap()
                .to_bytes();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(body.contains("&lt;script&gt;"), "{body}");
        assert!(!body.contains("<script>alert"), "{body}");
    }
}
