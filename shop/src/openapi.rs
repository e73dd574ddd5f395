//! The OpenAPI document of the public API, generated from the code: every route is
//! registered together with its `#[utoipa::path]` annotation (utoipa-axum's
//! `routes!`), so a route cannot exist undocumented or be documented without existing,
//! and the request and response types are the handlers' own (`ToSchema`). Served at
//! `/openapi.json` by the platform and the gateway; a test probes every documented
//! operation against the running router.

use utoipa::OpenApi;

use crate::{catalog, orders, payments, platform, problem};

/// What the routes do not say themselves: the title, the tags, the problem schema.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Eddy shop",
        version = "1",
        description = "The Eddy reference order platform. Errors are application/problem+json (RFC 9457). Orders settle asynchronously: POST returns PENDING; poll GET until CONFIRMED or CANCELLED."
    ),
    components(schemas(problem::Problem)),
    modifiers(&BearerScheme),
    tags(
        (name = "catalog", description = "Products, prices and stock"),
        (name = "orders", description = "Placing and reading orders"),
        (name = "payments", description = "Charges of orders"),
        (name = "operations", description = "Health, metrics and this document"),
    )
)]
struct ApiDoc;

/// The `bearer` security scheme the protected operations name (JWT; see docs/http-edge.md).
#[derive(Debug)]
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "Required when [auth] is enabled; `shop token` makes one for development.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The whole public API: every service's routes and the operational ones, whichever
/// services this process runs.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
    document.merge(catalog::http::router().split_for_parts().1);
    document.merge(orders::http::router().split_for_parts().1);
    document.merge(payments::http::router().split_for_parts().1);
    document.merge(platform::health::router().split_for_parts().1);
    document
}

/// The document as JSON text.
pub fn document_json() -> Result<String, serde_json::Error> {
    document().to_json()
}
