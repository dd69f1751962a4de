//! The request counter (`gateway_requests_total`): every authenticated API request, by tenant,
//! the model it served and the HTTP status it got. Requests refused by authentication are not
//! counted (their tenant is unknown, and label values must not come from clients).

use std::sync::Arc;

use axum::extract::Request;
use axum::response::Response;
use policies::TenantSpec;

use super::around::{Around, AroundLayer};
use crate::extensions::{Caller, ServedModel};
use crate::metrics::RequestMetrics;
use crate::state::AppState;

/// Counts each request once its response head is known.
pub fn layer(state: &AppState) -> AroundLayer<CountRequests> {
    AroundLayer::new(CountRequests {
        metrics: state.requests.clone(),
    })
}

/// The request counter's layer.
#[derive(Clone)]
pub struct CountRequests {
    metrics: Arc<RequestMetrics>,
}

impl Around for CountRequests {
    type Carry = Option<(Arc<RequestMetrics>, Arc<TenantSpec>)>;

    fn before(&self, request: &mut Request) -> Result<Self::Carry, Response> {
        let caller = request.extensions().get::<Caller>();
        Ok(caller.map(|caller| (self.metrics.clone(), caller.tenant.clone())))
    }

    fn after(carry: Self::Carry, response: &mut Response) {
        let Some((metrics, tenant)) = carry else {
            return;
        };
        let model = response
            .extensions()
            .get::<ServedModel>()
            .map_or("", |m| m.0.as_str());
        metrics.count_request(&tenant.id, model, response.status().as_u16());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing;
    use axum::http::StatusCode;
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
        let service = layer(&state).layer(tower::service_fn(served));
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
