//! The catalog: products with prices and stock. Publishes `ProductUpserted`; keeps its
//! view of stock up to date from inventory's `StockChanged`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use eddy_core::{async_trait, Envelope, HandlerError};
use eddy_sql::{Migration, Tx, TxHandler};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::contracts::{ProductUpserted, StockChanged, CATALOG_TOPIC};
use crate::problem::{ApiError, ApiJson};
use crate::service::{rfc3339, ServiceDb};

pub const MIGRATIONS: &[Migration] = &[Migration {
    name: "catalog_0001_products",
    sqlite: PRODUCTS,
    postgres: PRODUCTS,
}];

const PRODUCTS: &str = "CREATE TABLE IF NOT EXISTS products (id TEXT PRIMARY KEY, sku TEXT NOT NULL UNIQUE, name TEXT NOT NULL, price_cents BIGINT NOT NULL, currency TEXT NOT NULL, stock BIGINT NOT NULL, stock_version BIGINT NOT NULL, created_at_us BIGINT NOT NULL, updated_at_us BIGINT NOT NULL)";

/// Limits of product fields.
pub const SKU_LEN_MAX: usize = 64;
pub const NAME_LEN_MAX: usize = 200;
pub const PRICE_CENTS_MAX: i64 = 10_000_000_000;
pub const STOCK_MAX: i64 = 1_000_000_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    pub currency: String,
    pub stock: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductChange {
    pub price_cents: Option<i64>,
    pub stock: Option<i64>,
    pub name: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ProductView {
    pub id: String,
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    pub currency: String,
    pub stock: i64,
    pub created_at: String,
    pub updated_at: String,
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.chars().count() > NAME_LEN_MAX {
        return Err(ApiError::Unprocessable(
            "invalid-name",
            format!("name must be 1 to {NAME_LEN_MAX} characters"),
        ));
    }
    Ok(())
}

fn check_price(price_cents: i64) -> Result<(), ApiError> {
    if !(0..=PRICE_CENTS_MAX).contains(&price_cents) {
        return Err(ApiError::Unprocessable(
            "invalid-price",
            format!("price_cents must be between 0 and {PRICE_CENTS_MAX}"),
        ));
    }
    Ok(())
}

fn check_stock(stock: i64) -> Result<(), ApiError> {
    if !(0..=STOCK_MAX).contains(&stock) {
        return Err(ApiError::Unprocessable(
            "invalid-stock",
            format!("stock must be between 0 and {STOCK_MAX}"),
        ));
    }
    Ok(())
}

impl NewProduct {
    fn validate(&self) -> Result<(), ApiError> {
        if self.sku.trim().is_empty() || self.sku.len() > SKU_LEN_MAX {
            return Err(ApiError::Unprocessable(
                "invalid-sku",
                format!("sku must be 1 to {SKU_LEN_MAX} bytes"),
            ));
        }
        check_name(&self.name)?;
        check_price(self.price_cents)?;
        check_stock(self.stock)?;
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(ApiError::Unprocessable(
                "invalid-currency",
                "currency is an ISO 4217 code such as EUR".to_owned(),
            ));
        }
        Ok(())
    }
}

pub fn routes(service: ServiceDb) -> Router {
    Router::new()
        .route("/v1/products", post(create))
        .route("/v1/products/{id}", get(read).put(update))
        .with_state(service)
}

async fn load(
    tx_or_pool: &mut sqlx::AnyConnection,
    id: &str,
) -> Result<Option<ProductView>, ApiError> {
    let row = sqlx::query("SELECT id, sku, name, price_cents, currency, stock, created_at_us, updated_at_us FROM products WHERE id = $1")
        .bind(id)
        .fetch_optional(tx_or_pool)
        .await?;
    row.map(|row| {
        Ok(ProductView {
            id: row.try_get("id")?,
            sku: row.try_get("sku")?,
            name: row.try_get("name")?,
            price_cents: row.try_get("price_cents")?,
            currency: row.try_get("currency")?,
            stock: row.try_get("stock")?,
            created_at: rfc3339(row.try_get("created_at_us")?),
            updated_at: rfc3339(row.try_get("updated_at_us")?),
        })
    })
    .transpose()
    .map_err(|e: sqlx::Error| ApiError::from(e))
}

async fn create(
    State(service): State<ServiceDb>,
    ApiJson(new): ApiJson<NewProduct>,
) -> Result<(StatusCode, Json<ProductView>), ApiError> {
    new.validate()?;
    let id = uuid::Uuid::now_v7().to_string();
    let now = service.now_us();
    let mut tx = service.db.begin().await?;
    let inserted = sqlx::query("INSERT INTO products (id, sku, name, price_cents, currency, stock, stock_version, created_at_us, updated_at_us) VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $7) ON CONFLICT (sku) DO NOTHING")
        .bind(&id)
        .bind(&new.sku)
        .bind(&new.name)
        .bind(new.price_cents)
        .bind(&new.currency)
        .bind(new.stock)
        .bind(now)
        .execute(tx.conn())
        .await?
        .rows_affected();
    if inserted == 0 {
        return Err(ApiError::Conflict(
            "duplicate-sku",
            format!("a product with sku {:?} exists", new.sku),
        ));
    }
    let event = ProductUpserted {
        product_id: id.clone(),
        sku: new.sku,
        name: new.name,
        price_cents: new.price_cents,
        currency: new.currency,
        stock: Some(new.stock),
    };
    service.emit(&mut tx, CATALOG_TOPIC, &event, None).await?;
    let view = load(tx.conn(), &id)
        .await?
        .ok_or(ApiError::NotFound("product"))?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn read(
    State(service): State<ServiceDb>,
    Path(id): Path<String>,
) -> Result<Json<ProductView>, ApiError> {
    let mut conn = service.db.pool().acquire().await?;
    load(&mut conn, &id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("product"))
}

async fn update(
    State(service): State<ServiceDb>,
    Path(id): Path<String>,
    ApiJson(change): ApiJson<ProductChange>,
) -> Result<Json<ProductView>, ApiError> {
    if change.price_cents.is_none() && change.stock.is_none() && change.name.is_none() {
        return Err(ApiError::Unprocessable(
            "empty-change",
            "give at least one of price_cents, stock, name".to_owned(),
        ));
    }
    if let Some(price) = change.price_cents {
        check_price(price)?;
    }
    if let Some(stock) = change.stock {
        check_stock(stock)?;
    }
    if let Some(name) = &change.name {
        check_name(name)?;
    }
    let mut tx = service.db.begin().await?;
    let updated = sqlx::query("UPDATE products SET price_cents = COALESCE($1, price_cents), stock = COALESCE($2, stock), name = COALESCE($3, name), updated_at_us = $4 WHERE id = $5")
        .bind(change.price_cents)
        .bind(change.stock)
        .bind(change.name.as_deref())
        .bind(service.now_us())
        .bind(&id)
        .execute(tx.conn())
        .await?
        .rows_affected();
    if updated == 0 {
        return Err(ApiError::NotFound("product"));
    }
    let view = load(tx.conn(), &id)
        .await?
        .ok_or(ApiError::NotFound("product"))?;
    let event = ProductUpserted {
        product_id: view.id.clone(),
        sku: view.sku.clone(),
        name: view.name.clone(),
        price_cents: view.price_cents,
        currency: view.currency.clone(),
        stock: change.stock,
    };
    service.emit(&mut tx, CATALOG_TOPIC, &event, None).await?;
    tx.commit().await?;
    Ok(Json(view))
}

/// Keeps the catalog's stock figure in step with inventory, ignoring stale news.
#[derive(Debug, Clone)]
pub struct OnStockChanged;

#[async_trait]
impl TxHandler<StockChanged> for OnStockChanged {
    async fn handle(
        &self,
        event: StockChanged,
        _: &Envelope,
        tx: &mut Tx,
    ) -> Result<(), HandlerError> {
        sqlx::query("UPDATE products SET stock = $1, stock_version = $2 WHERE id = $3 AND stock_version < $2")
            .bind(event.available)
            .bind(event.version)
            .bind(&event.product_id)
            .execute(tx.conn())
            .await
            .map_err(|e| eddy_sql::classify("cannot update stock", e))?;
        Ok(())
    }
}
