//! The catalog's tables and its SQL.

use eddy_core::Error;
use eddy_sql::{classify, Migration, Tx};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::domain::{NewProduct, Product, ProductChange};
use crate::contracts::values::{ProductId, Timestamp};

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "catalog_0001_products",
        sqlite: PRODUCTS,
        postgres: PRODUCTS,
    },
    Migration {
        name: "catalog_0002_stock_delta",
        sqlite: STOCK_DELTA,
        postgres: STOCK_DELTA,
    },
];

/// The change the last stock update made to the figure, computed by the update
/// itself (its right-hand sides see the row as it was), so it is exact under
/// concurrent updates.
const STOCK_DELTA: &str =
    "ALTER TABLE products ADD COLUMN last_stock_delta BIGINT NOT NULL DEFAULT 0";

const PRODUCTS: &str = "CREATE TABLE IF NOT EXISTS products (id TEXT PRIMARY KEY, sku TEXT NOT NULL UNIQUE, name TEXT NOT NULL, price_cents BIGINT NOT NULL, currency TEXT NOT NULL, stock BIGINT NOT NULL, stock_version BIGINT NOT NULL, created_at_us BIGINT NOT NULL, updated_at_us BIGINT NOT NULL)";

fn product(row: &AnyRow) -> Result<Product, sqlx::Error> {
    let id: String = row.try_get("id")?;
    Ok(Product {
        id: ProductId::parse(&id).map_err(|e| sqlx::Error::Decode(e.into()))?,
        sku: row.try_get("sku")?,
        name: row.try_get("name")?,
        price_cents: row.try_get("price_cents")?,
        currency: row.try_get("currency")?,
        stock: row.try_get("stock")?,
        created_at: Timestamp::from_micros(row.try_get("created_at_us")?),
        updated_at: Timestamp::from_micros(row.try_get("updated_at_us")?),
    })
}

/// The product with id `id`, if there is one.
pub async fn load(conn: &mut AnyConnection, id: &str) -> Result<Option<Product>, Error> {
    sqlx::query("SELECT id, sku, name, price_cents, currency, stock, created_at_us, updated_at_us FROM products WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
        .and_then(|row| row.as_ref().map(product).transpose())
        .map_err(|e| classify("cannot read the product", e))
}

/// Up to `limit` products after the id `after` ("" for the first page) in id order —
/// creation order, ids being UUIDv7 — only those with `sku` unless it is "" — and
/// whether more follow.
pub async fn page(
    conn: &mut AnyConnection,
    after: &str,
    sku: &str,
    limit: i64,
) -> Result<(Vec<Product>, bool), Error> {
    let rows = sqlx::query("SELECT id, sku, name, price_cents, currency, stock, created_at_us, updated_at_us FROM products WHERE id > $1 AND ($2 = '' OR sku = $2) ORDER BY id LIMIT $3")
        .bind(after)
        .bind(sku)
        .bind(limit + 1)
        .fetch_all(conn)
        .await
        .map_err(|e| classify("cannot list products", e))?;
    let mut products = rows
        .iter()
        .map(product)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| classify("cannot read a product", e))?;
    let more = products.len() as i64 > limit;
    products.truncate(usize::try_from(limit).unwrap_or(0));
    Ok((products, more))
}

/// Inserts `new` as `id`; false (and nothing written) when its SKU is taken.
pub async fn insert(
    tx: &mut Tx,
    id: &ProductId,
    new: &NewProduct,
    now: Timestamp,
) -> Result<bool, Error> {
    let inserted = sqlx::query("INSERT INTO products (id, sku, name, price_cents, currency, stock, stock_version, created_at_us, updated_at_us) VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $7) ON CONFLICT (sku) DO NOTHING")
        .bind(id.as_str())
        .bind(new.sku.as_str())
        .bind(new.name.as_str())
        .bind(new.price.cents())
        .bind(new.price.currency().as_str())
        .bind(new.stock.units())
        .bind(now.micros())
        .execute(tx.conn())
        .await
        .map_err(|e| classify("cannot insert the product", e))?;
    Ok(inserted.rows_affected() == 1)
}

/// Applies `change` to product `id`; `None` when there is no such product, else the
/// difference the change made to the stock figure (0 when it left stock alone).
pub async fn update(
    tx: &mut Tx,
    id: &str,
    change: &ProductChange,
    now: Timestamp,
) -> Result<Option<i64>, Error> {
    let delta: Option<i64> = sqlx::query_scalar("UPDATE products SET price_cents = COALESCE($1, price_cents), last_stock_delta = COALESCE($2, stock) - stock, stock = COALESCE($2, stock), name = COALESCE($3, name), updated_at_us = $4 WHERE id = $5 RETURNING last_stock_delta")
        .bind(change.price.map(|p| p.cents()))
        .bind(change.stock.map(|s| s.units()))
        .bind(change.name.as_ref().map(|n| n.as_str()))
        .bind(now.micros())
        .bind(id)
        .fetch_optional(tx.conn())
        .await
        .map_err(|e| classify("cannot update the product", e))?;
    Ok(delta)
}

/// Sets the stock figure inventory announced, unless a newer one is already there.
pub async fn apply_stock(
    tx: &mut Tx,
    product_id: &str,
    available: i64,
    version: i64,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE products SET stock = $1, stock_version = $2 WHERE id = $3 AND stock_version < $2",
    )
    .bind(available)
    .bind(version)
    .bind(product_id)
    .execute(tx.conn())
    .await
    .map_err(|e| classify("cannot update stock", e))?;
    Ok(())
}
