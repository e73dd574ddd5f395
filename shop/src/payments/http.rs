//! `/v1/payments`: the charges of an order.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::store;
use crate::auth::Authenticated;
use crate::contracts::values::Timestamp;
use crate::problem::{ApiError, ApiQuery};
use crate::service::ServiceDb;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChargesQuery {
    /// The order whose charges to list.
    pub order_id: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChargeView {
    pub id: String,
    pub order_id: String,
    pub amount_cents: i64,
    pub currency: String,
    /// `pending`, `captured`, `declined` or `failed`.
    pub status: String,
    pub provider_charge_id: Option<String>,
    /// `payment_declined` or `payment_failed`.
    pub reason: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Charges {
    pub items: Vec<ChargeView>,
}

/// The route with its documentation (see [`crate::openapi`]).
pub fn router() -> OpenApiRouter<ServiceDb> {
    OpenApiRouter::new().routes(routes!(list))
}

/// The charges of an order (at most one today).
#[utoipa::path(get, path = "/v1/payments", security((), ("bearer" = [])), tag = "payments", params(ChargesQuery),
    responses(
        (status = 401, description = "No valid bearer token (when auth is on)", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 200, description = "The order's charges", body = Charges),
        (status = 400, description = "No order_id given", body = crate::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn list(
    State(service): State<ServiceDb>,
    Authenticated(caller): Authenticated,
    ApiQuery(query): ApiQuery<ChargesQuery>,
) -> Result<Json<Charges>, ApiError> {
    let items = store::of_order(service.db.pool(), &query.order_id)
        .await?
        .into_iter()
        // A customer sees only their own (none of another's order, nor whether it has any).
        .filter(|c| caller.sees(c.customer_id.as_deref()))
        .map(|c| ChargeView {
            id: c.id,
            order_id: c.order_id,
            amount_cents: c.amount_cents,
            currency: c.currency,
            status: c.status.as_str().to_owned(),
            provider_charge_id: c.provider_charge_id,
            reason: c.reason,
            created_at: c.created_at,
            updated_at: c.updated_at,
        })
        .collect();
    Ok(Json(Charges { items }))
}
