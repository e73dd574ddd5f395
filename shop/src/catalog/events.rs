//! What the catalog publishes (`ProductUpserted` on `catalog`) and consumes
//! (`StockChanged` from `inventory`).

use eddy_cache::{Cache, Source};
use eddy_core::{async_trait, Envelope, HandlerError};
use eddy_sql::{Tx, TxHandler};

use super::domain::Product;
use super::http::ProductView;
use super::store;
use crate::contracts::{ProductUpserted, StockChanged, INVENTORY_TOPIC};
use crate::service::{ServiceContext, Subscription};

/// An operator's stock figure and the difference it made to the catalog's figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockSet {
    pub figure: i64,
    pub delta: i64,
}

/// The announcement of a product as it now is; the stock only when the operator set it.
pub fn upserted(product: &Product, stock_set: Option<StockSet>) -> ProductUpserted {
    ProductUpserted {
        product_id: product.id.as_str().to_owned(),
        sku: product.sku.clone(),
        name: product.name.clone(),
        price_cents: product.price_cents,
        currency: product.currency.clone(),
        stock: stock_set.map(|s| s.figure),
        stock_delta: stock_set.map(|s| s.delta),
    }
}

/// Keeps the catalog's stock figure in step with inventory, ignoring stale news; the
/// product's cached view is dropped once the change commits.
#[derive(Debug, Clone)]
pub struct OnStockChanged {
    pub products: Option<Cache<ProductView>>,
}

#[async_trait]
impl TxHandler<StockChanged> for OnStockChanged {
    async fn handle(
        &self,
        event: StockChanged,
        _: &Envelope,
        tx: &mut Tx,
    ) -> Result<(), HandlerError> {
        store::apply_stock(tx, &event.product_id, event.available, event.version).await?;
        crate::platform::cache::invalidate_on_commit(
            &self.products,
            tx,
            &event.product_id,
            Source::Event,
        );
        Ok(())
    }
}

pub fn subscriptions(
    ctx: &ServiceContext<'_>,
    products: Option<Cache<ProductView>>,
) -> anyhow::Result<Vec<Subscription>> {
    Ok(vec![Subscription {
        topic: INVENTORY_TOPIC,
        router: eddy_runtime::Router::new()
            .route::<StockChanged, _>(ctx.idempotent(OnStockChanged { products })?),
    }])
}
