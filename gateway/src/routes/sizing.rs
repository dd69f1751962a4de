//! What every route that admission weighs does first (the generation routes and
//! `/v1/embeddings`): read the body once, look up the model it names, let the route prepare
//! and size the request, and hand the prepared request and its [`RequestCost`] on to admission
//! and the handler, or answer with the error that stops it. Either way the response is
//! labelled with the model for the request counter (only a configured model's id: client-chosen
//! strings must not become label values).

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::extensions::{Caller, Handoff, RequestCost, ServedModel};
use crate::models::ModelState;
use crate::openai::json::{model_name, read_body};
use crate::state::AppState;

/// Runs `prepare(caller, body, the named model's state)` between reading the request and the
/// next stage. The prepared value goes on in a [`Handoff`].
pub async fn sized<P, F>(state: &AppState, request: Request, next: Next, prepare: F) -> Response
where
    P: Send + Sync + 'static,
    F: FnOnce(&Caller, &[u8], Option<ModelState>) -> Result<(P, RequestCost), ApiError>,
{
    let (parts, body) = request.into_parts();
    // The body is read here, once; the handler gets what was parsed from it.
    let body = match read_body(body, state.limits.max_body_bytes).await {
        Ok(body) => body,
        Err(error) => return error.into_response(),
    };
    let model = match model_name(&body) {
        Ok(model) => model,
        Err(error) => return error.into_response(),
    };
    let named = model
        .as_deref()
        .and_then(|m| state.models.get(m).map(|model_state| (m, model_state)));
    let Some(caller) = parts.extensions.get::<Caller>() else {
        return ApiError::internal("a sized route runs after authentication").into_response();
    };
    let found = named.as_ref().map(|(_, model_state)| model_state.clone());
    let mut response = match prepare(caller, &body, found) {
        Ok((prepared, cost)) => {
            let mut request = Request::from_parts(parts, Body::empty());
            request.extensions_mut().insert(Handoff::new(prepared));
            request.extensions_mut().insert(cost);
            next.run(request).await
        }
        Err(error) => error.into_response(),
    };
    if let Some((model, _)) = named {
        response
            .extensions_mut()
            .insert(ServedModel(model.to_string()));
    }
    response
}
