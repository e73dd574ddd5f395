//! `/v1/products`: create, read and change products.

use axum::extract::{FromRef, State};
use axum::http::StatusCode;
use axum::Json;
use eddy_cache::{Cache, Source};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::domain::{self, ProductChange};
use super::events::{self, StockSet};
use super::store;
use crate::auth::Operator;
use crate::contracts::values::{ProductId, Timestamp};
use crate::contracts::CATALOG_TOPIC;
use crate::platform::cache::{invalidate_on_commit, read_through};
use crate::problem::{page_len, ApiError, ApiJson, ApiPath, ApiQuery};
use crate::service::ServiceDb;

/// What the catalog's routes share: the service and its product cache.
#[derive(Debug, Clone)]
pub struct CatalogState {
    pub service: ServiceDb,
    /// `GET /v1/products/{id}` reads through it; every write of a product invalidates
    /// it after its commit. `None` when `cache.enabled` is off.
    pub products: Option<Cache<ProductView>>,
}

impl FromRef<CatalogState> for ServiceDb {
    fn from_ref(state: &CatalogState) -> Self {
        state.service.clone()
    }
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    /// Unique per product; not blank.
    #[schema(min_length = 1, max_length = 64, pattern = "\\S")]
    pub sku: String,
    /// Not blank.
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    pub name: String,
    #[schema(minimum = 1, maximum = 10_000_000_000_i64)]
    pub price_cents: i64,
    /// ISO 4217, e.g. `EUR`.
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: String,
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub stock: i64,
}

/// Give at least one field.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductUpdate {
    /// Leave out to keep; `null` is refused.
    #[serde(default, deserialize_with = "crate::problem::not_null")]
    #[schema(nullable = false, minimum = 1, maximum = 10_000_000_000_i64)]
    pub price_cents: Option<i64>,
    /// The figure the product should show. Sent on to inventory as the difference to
    /// the figure shown now, so units reserved by orders in flight stay reserved.
    #[serde(default, deserialize_with = "crate::problem::not_null")]
    #[schema(nullable = false, minimum = 0, maximum = 1_000_000_000)]
    pub stock: Option<i64>,
    #[serde(default, deserialize_with = "crate::problem::not_null")]
    #[schema(nullable = false, min_length = 1, max_length = 200, pattern = "\\S")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProductView {
    pub id: String,
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    pub currency: String,
    pub stock: i64,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

impl From<domain::Product> for ProductView {
    fn from(p: domain::Product) -> Self {
        Self {
            id: p.id.into_string(),
            sku: p.sku,
            name: p.name,
            price_cents: p.price_cents,
            currency: p.currency,
            stock: p.stock,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProductQuery {
    /// Products per page (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only the product with this SKU (at most one).
    pub sku: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProductPage {
    pub items: Vec<ProductView>,
    /// Absent on the last page.
    pub next_cursor: Option<String>,
}

/// The routes with their documentation (see [`crate::openapi`]).
pub fn router() -> OpenApiRouter<CatalogState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(read, update))
}

/// Create a product; its `ProductUpserted` commits with it.
#[utoipa::path(post, path = "/v1/products", security((), ("bearer" = [])), tag = "catalog", request_body = NewProduct,
    responses(
        (status = 401, description = "No valid bearer token (when auth is on)", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 201, description = "Created", body = ProductView),
        (status = 409, description = "A product with this SKU exists", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is invalid", body = crate::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(CatalogState { service, products }): State<CatalogState>,
    _: Operator,
    ApiJson(new): ApiJson<NewProduct>,
) -> Result<(StatusCode, Json<ProductView>), ApiError> {
    let product = domain::NewProduct::parse(
        &new.sku,
        &new.name,
        new.price_cents,
        &new.currency,
        new.stock,
    )?;
    let id = ProductId::generate();
    let mut tx = service.db.begin().await?;
    if !store::insert(&mut tx, &id, &product, service.now()).await? {
        return Err(ApiError::Conflict(
            "duplicate-sku",
            format!("a product with sku {:?} exists", new.sku),
        ));
    }
    let created = store::load(tx.conn(), id.as_str())
        .await?
        .ok_or(ApiError::NotFound("product"))?;
    let event = events::upserted(
        &created,
        Some(StockSet {
            figure: product.stock.units(),
            delta: product.stock.units(),
        }),
    );
    service.emit(&mut tx, CATALOG_TOPIC, &event, None).await?;
    invalidate_on_commit(&products, &mut tx, id.as_str(), Source::Write);
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(created.into())))
}

/// The products, oldest first, a page at a time; `sku` finds one by its SKU.
#[utoipa::path(get, path = "/v1/products", tag = "catalog", params(ProductQuery),
    responses(
        (status = 200, description = "A page of products", body = ProductPage),
        (status = 400, description = "A bad limit or cursor", body = crate::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn list(
    State(service): State<ServiceDb>,
    ApiQuery(query): ApiQuery<ProductQuery>,
) -> Result<Json<ProductPage>, ApiError> {
    let limit = page_len(query.limit)?;
    let after = match query.cursor.as_deref() {
        None => String::new(),
        Some(cursor) => ProductId::parse(cursor)
            .map_err(|_| {
                ApiError::BadRequest(
                    "invalid-cursor",
                    "cursor is not one this API returned".to_owned(),
                )
            })?
            .into_string(),
    };
    let mut conn = service.db.pool().acquire().await?;
    let (products, more) =
        store::page(&mut conn, &after, query.sku.as_deref().unwrap_or(""), limit).await?;
    let next_cursor = if more {
        products.last().map(|p| p.id.as_str().to_owned())
    } else {
        None
    };
    Ok(Json(ProductPage {
        items: products.into_iter().map(ProductView::from).collect(),
        next_cursor,
    }))
}

/// Read a product.
#[utoipa::path(get, path = "/v1/products/{id}", tag = "catalog",
    params(("id" = String, Path, description = "The product's id")),
    responses(
        (status = 200, description = "The product", body = ProductView),
        (status = 404, description = "No such product", body = crate::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn read(
    State(CatalogState { service, products }): State<CatalogState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ProductView>, ApiError> {
    // Only a well-formed id can name a product: anything else is absent without a
    // database read or a cache entry.
    if ProductId::parse(&id).is_err() {
        return Err(ApiError::NotFound("product"));
    }
    let found = read_through(products.as_ref(), &service.db, &id, |db, id| async move {
        let mut conn = crate::problem::read_conn(&db).await?;
        Ok(store::load(&mut conn, &id).await?.map(ProductView::from))
    })
    .await?;
    found.map(Json).ok_or(ApiError::NotFound("product"))
}

/// Change a product's price, stock or name; its `ProductUpserted` commits with it.
#[utoipa::path(put, path = "/v1/products/{id}", security((), ("bearer" = [])), tag = "catalog", request_body = ProductUpdate,
    params(("id" = String, Path, description = "The product's id")),
    responses(
        (status = 401, description = "No valid bearer token (when auth is on)", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 200, description = "The product as changed", body = ProductView),
        (status = 404, description = "No such product", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Nothing to change, or a field is invalid", body = crate::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn update(
    State(CatalogState { service, products }): State<CatalogState>,
    _: Operator,
    ApiPath(id): ApiPath<String>,
    ApiJson(update): ApiJson<ProductUpdate>,
) -> Result<Json<ProductView>, ApiError> {
    let change = ProductChange::parse(update.price_cents, update.stock, update.name.as_deref())?;
    let mut tx = service.db.begin().await?;
    let Some(stock_delta) = store::update(&mut tx, &id, &change, service.now()).await? else {
        return Err(ApiError::NotFound("product"));
    };
    let product = store::load(tx.conn(), &id)
        .await?
        .ok_or(ApiError::NotFound("product"))?;
    let event = events::upserted(
        &product,
        change.stock.map(|s| StockSet {
            figure: s.units(),
            delta: stock_delta,
        }),
    );
    service.emit(&mut tx, CATALOG_TOPIC, &event, None).await?;
    invalidate_on_commit(&products, &mut tx, &id, Source::Write);
    tx.commit().await?;
    Ok(Json(product.into()))
}
