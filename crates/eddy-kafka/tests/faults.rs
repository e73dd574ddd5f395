//! Fault injection with rdkafka's in-process `MockCluster`: failing requests, a broker
//! going down and coming back, and a leader change — nothing is lost, and per key the
//! order holds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use eddy_core::{Publisher, Subscriber};
use eddy_kafka::{Kafka, KafkaConfig};
use eddy_testkit::conformance::receive_distinct_in_key_order;
use eddy_testkit::events::Numbered;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

const TOPIC: &str = "orders";

fn kafka(cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>) -> Kafka {
    Kafka::connect(KafkaConfig {
        bootstrap_servers: cluster.bootstrap_servers(),
        ..KafkaConfig::default()
    })
    .unwrap()
}

async fn consume_all(kafka: &Kafka, count: usize) {
    let subscription = kafka.subscribe(TOPIC, "checker").await.unwrap();
    receive_distinct_in_key_order(subscription.as_ref(), count).await;
    subscription.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_produce_requests_are_retried_and_nothing_is_lost() {
    let cluster = MockCluster::new(3).unwrap();
    cluster.create_topic(TOPIC, 4, 3).unwrap();
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        ],
    );
    let kafka = kafka(&cluster);
    kafka
        .publish(TOPIC, &Numbered::interleaved(10, 10))
        .await
        .unwrap();
    consume_all(&kafka, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_going_down_and_up_loses_nothing() {
    let cluster = MockCluster::new(3).unwrap();
    cluster.create_topic(TOPIC, 4, 3).unwrap();
    let kafka = kafka(&cluster);
    kafka
        .publish(TOPIC, &Numbered::interleaved(5, 5))
        .await
        .unwrap();
    cluster.broker_down(1).unwrap();
    let publishing = {
        let kafka = kafka.clone();
        tokio::spawn(async move {
            kafka
                .publish(
                    TOPIC,
                    &(5..10)
                        .flat_map(|seq| {
                            (0..5).map(move |k| Numbered::envelope(format!("key-{k}"), seq))
                        })
                        .collect::<Vec<_>>(),
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.broker_up(1).unwrap();
    publishing.await.unwrap().unwrap();
    consume_all(&kafka, 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_change_loses_nothing() {
    let cluster = MockCluster::new(3).unwrap();
    cluster.create_topic(TOPIC, 4, 3).unwrap();
    let kafka = kafka(&cluster);
    kafka
        .publish(TOPIC, &Numbered::interleaved(8, 5))
        .await
        .unwrap();
    for partition in 0..4 {
        cluster.partition_leader(TOPIC, partition, Some(3)).unwrap();
    }
    kafka
        .publish(
            TOPIC,
            &(5..10)
                .flat_map(|seq| (0..8).map(move |k| Numbered::envelope(format!("key-{k}"), seq)))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    consume_all(&kafka, 80).await;
}
