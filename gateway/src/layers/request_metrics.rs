//! The request counter (`gateway_requests_total`): every authenticated API request, by tenant,
//! the model it served and the HTTP status it got. Requests refused by authentication are not
//! counted (their tenant is unknown, and label values must not come from clients).

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::extensions::{Caller, ServedModel};
use crate::state::AppState;

/// Counts the request once its response head is known.
pub async fn count_request(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let tenant = request
        .extensions()
        .get::<Caller>()
        .map(|caller| caller.tenant.id.clone());
    let response = next.run(request).await;
    if let Some(tenant) = tenant {
        let model = response
            .extensions()
            .get::<ServedModel>()
            .map_or("", |m| m.0.as_str());
        state
            .requests
            .count_request(&tenant, model, response.status().as_u16());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing;
    use axum::http::StatusCode;
    use axum::middleware::from_fn_with_state;
    use axum::response::IntoResponse;
    use tower::{Layer, ServiceExt};

    async fn served(_: Request) -> Result<Response, std::convert::Infallible> {
        let mut response = StatusCode::ACCEPTED.into_response();
        response
            .extensions_mut()
            .insert(ServedModel("m1".to_string()));
        Ok(response)
    }

    #[tokio::test]
    async fn counts_by_tenant_model_and_status() {
        let state = testing::state(|_| {});
        let service =
            from_fn_with_state(state.clone(), count_request).layer(tower::service_fn(served));
        for _ in 0..2 {
            let mut request = testing::request(None);
            request.extensions_mut().insert(testing::caller(&state));
            service.clone().oneshot(request).await.unwrap();
        }
        // Without a caller (not authenticated): not counted.
        service.oneshot(testing::request(None)).await.unwrap();
        let text = crate::metrics::render(&state.metrics);
        let line = format!(
            "gateway_requests_total{{tenant=\"{}\",model=\"m1\",status=\"202\"}} 2",
            testing::TENANT
        );
        assert!(text.contains(&line), "{text}");
        assert_eq!(text.matches("gateway_requests_total{").count(), 1, "{text}");
    }
}
