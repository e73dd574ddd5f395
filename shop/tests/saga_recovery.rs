//! Every order ends CONFIRMED or CANCELLED with stock and money consistent, even when
//! its saga's events are never handled in time (a dead letter, a service down): orders
//! times it out, inventory gives the stock back, payments refunds or voids — and a
//! charge whose answer was lost is settled by asking the provider.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::spawn_app;
use serde_json::json;
use shop::service::ServiceName;

/// Quick saga timers: a charge is reconciled after 3 s, an order times out after 6 s.
fn quick_saga(config: &mut shop::config::Config) {
    config.payments.charge_budget_ms = 500;
    config.payments.reconcile_after_secs = 3;
    config.orders.pending_timeout_secs = 6;
    config.maintenance.saga_sweep_interval_secs = 1;
}

/// The status of the order's charge row in payments' own database (a voided charge
/// is not shown by the API), if it has one.
async fn charge_status(payments_db: &str, order_id: &str) -> Option<String> {
    let db = eddy_sql::Db::connect(&eddy_sql::DbConfig::new(payments_db))
        .await
        .unwrap();
    let status = sqlx::query_scalar("SELECT status FROM charges WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(db.pool())
        .await
        .unwrap();
    db.close().await;
    status
}

async fn inventory_available(app_dir_db: &str, product: &str) -> i64 {
    let db = eddy_sql::Db::connect(&eddy_sql::DbConfig::new(app_dir_db))
        .await
        .unwrap();
    // Not yet tracked (inventory is still catching up on the catalog): none.
    let available: Option<i64> =
        sqlx::query_scalar("SELECT available FROM stock WHERE product_id = $1")
            .bind(product)
            .fetch_optional(db.pool())
            .await
            .unwrap();
    db.close().await;
    available.unwrap_or(0)
}

/// Inventory and payments are down for longer than an order may stay pending: the order
/// times out. When they come back they find OrderPlaced (and then OrderCancelled):
/// the stock they reserve is given back, and no money is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_nobody_handled_in_time_is_cancelled_and_keeps_no_stock_or_money() {
    let app = spawn_app(|config| {
        quick_saga(config);
        config.services = vec![ServiceName::Catalog, ServiceName::Orders];
    })
    .await;
    let product = app.product(400, 5).await;
    let order = app
        .order(
            "dora",
            json!([{"product_id": product, "quantity": 2}]),
            None,
        )
        .await;
    let order_id = order["id"].as_str().unwrap().to_owned();
    let settled = tokio::time::timeout(Duration::from_secs(30), app.settled(&order_id))
        .await
        .expect("the order timed out");
    assert_eq!(settled["status"], "CANCELLED");
    assert_eq!(settled["cancel_reason"], "timed_out");

    // The rest of the platform comes back and works through what it missed.
    let app = app
        .restart(|config| {
            quick_saga(config);
            config.services = vec![
                ServiceName::Inventory,
                ServiceName::Payments,
                ServiceName::Notifications,
            ];
        })
        .await;
    let inventory_db = format!("sqlite://{}/inventory.db", app.data_dir().display());
    let payments_db = format!("sqlite://{}/payments.db", app.data_dir().display());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let settled_charge = charge_status(&payments_db, &order_id).await;
        let stock = inventory_available(&inventory_db, &product).await;
        // Voided (cancelled before it was charged) or refunded (charged first).
        let no_money = matches!(settled_charge.as_deref(), Some("voided" | "refunded"));
        if no_money && stock == 5 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "charge {settled_charge:?}, stock {stock}: the cancelled order kept something"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

/// The provider takes longer than payments waits for it: every call times out, yet the
/// provider captures the charge. The charge stays pending until the reconciler asks the
/// provider what became of it — captured — and the order is confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_whose_answer_was_lost_is_settled_by_asking_the_provider() {
    let app = spawn_app(|config| {
        quick_saga(config);
        config.orders.pending_timeout_secs = 60;
        config.provider.latency_ms = 1_500;
        config.payments.provider_timeout_ms = 200;
    })
    .await;
    let product = app.product(900, 3).await;
    let order = app
        .order(
            "erin",
            json!([{"product_id": product, "quantity": 1}]),
            None,
        )
        .await;
    let order_id = order["id"].as_str().unwrap().to_owned();
    let settled = tokio::time::timeout(Duration::from_secs(40), app.settled(&order_id))
        .await
        .expect("the order settled");
    assert_eq!(settled["status"], "CONFIRMED");
    let charges = app.charges(&order_id).await;
    assert_eq!(charges.len(), 1);
    assert_eq!(charges[0]["status"], "captured");
    app.wait_stock(&product, 2).await;
    app.stop().await;
}
