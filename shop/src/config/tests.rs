use figment::providers::{Format, Serialized, Toml};
use figment::Figment;

use super::*;

/// The error a TOML text gives over the defaults.
fn rejected(toml: &str) -> String {
    let figment = Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(toml));
    match Config::extract(figment) {
        Ok(config) => panic!("{toml:?} was accepted: {config:?}"),
        Err(error) => error.to_string(),
    }
}

fn accepted(toml: &str) -> Config {
    let figment = Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(toml));
    Config::extract(figment).unwrap()
}

#[test]
fn the_defaults_are_valid() {
    Config::default().validate().unwrap();
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut config = Config::default();
    config.provider.decline_rate = 2.0;
    config.consumer.concurrency = 0;
    let message = config.validate().unwrap_err().to_string();
    assert!(message.contains("provider.decline_rate"), "{message}");
    assert!(message.contains("consumer.concurrency"), "{message}");
}

#[test]
fn services_default_to_sqlite_files_in_the_data_dir() {
    let config = Config {
        data_dir: "/tmp/x".into(),
        ..Config::default()
    };
    assert_eq!(
        config.database_url(Database::Of(ServiceName::Orders)),
        "sqlite:///tmp/x/orders.db"
    );
    assert_eq!(config.database_url(Database::Log), "sqlite:///tmp/x/log.db");
}

#[test]
fn a_misspelt_broker_kind_names_the_key_the_value_and_the_choices() {
    let message = rejected("[broker]\nkind = \"kafak\"");
    assert!(message.contains("broker.kind"), "{message}");
    assert!(message.contains("kafak"), "{message}");
    for allowed in ["embedded", "nats", "kafka"] {
        assert!(message.contains(allowed), "{message}");
    }
}

#[test]
fn an_unknown_service_is_refused_with_the_service_names() {
    let message = rejected("services = [\"catalog\", \"ordres\"]");
    assert!(message.contains("services"), "{message}");
    assert!(message.contains("ordres"), "{message}");
    assert!(message.contains("notifications"), "{message}");
}

#[test]
fn an_unknown_database_is_refused() {
    let message = rejected("[databases]\nshipping = \"postgres://x\"");
    assert!(message.contains("shipping"), "{message}");
    assert!(message.contains("catalog"), "{message}");
}

#[test]
fn an_unknown_sqlite_synchronous_mode_is_refused_with_the_modes() {
    let message = rejected("[databases]\nsqlite_synchronous = \"off\"");
    assert!(
        message.contains("databases.sqlite_synchronous"),
        "{message}"
    );
    assert!(message.contains("off"), "{message}");
    assert!(
        message.contains("full") && message.contains("normal"),
        "{message}"
    );
}

#[test]
fn an_unknown_key_is_refused_by_name() {
    let message = rejected("[server]\nlisten_port = 80");
    assert!(message.contains("listen_port"), "{message}");
}

#[test]
fn a_rate_above_one_is_refused() {
    let message = rejected("[provider]\nerror_rate = 1.5");
    assert!(message.contains("provider.error_rate"), "{message}");
}

#[test]
fn no_services_is_refused() {
    let message = rejected("services = []");
    assert!(message.contains("services"), "{message}");
}

#[test]
fn zero_partitions_are_refused() {
    let message = rejected("[broker]\nkafka_partitions = 0");
    assert!(message.contains("broker.kafka_partitions"), "{message}");
}

#[test]
fn every_positive_setting_refuses_zero() {
    let defaults = Config::default();
    for (name, _) in defaults.positive_settings() {
        let (section, key) = name.split_once('.').unwrap();
        let message = rejected(&format!("[{section}]\n{key} = 0"));
        assert!(message.contains(name), "{name}: {message}");
    }
}

#[test]
fn an_external_provider_needs_its_url() {
    let message = rejected("[provider]\nembedded = false");
    assert!(message.contains("payments.provider_url"), "{message}");
}

#[test]
fn closed_sets_are_read_in_lower_case() {
    let config = accepted(
        "services = [\"orders\"]\n[broker]\nkind = \"nats\"\n[databases]\nsqlite_synchronous = \"normal\"",
    );
    assert_eq!(config.services, [ServiceName::Orders]);
    assert_eq!(config.broker.kind, BrokerKind::Nats);
    assert_eq!(config.databases.sqlite_synchronous, SqliteSync::Normal);
    assert_eq!(config.databases_used(), [Database::Of(ServiceName::Orders)]);
}

/// The shipped example must parse and equal the defaults it documents.
#[test]
fn the_example_file_documents_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("shop.example.toml");
    let from_file: Config = Figment::from(Serialized::defaults(Config::default()))
        .merge(Toml::file(&path))
        .extract()
        .unwrap();
    assert_eq!(
        serde_json::to_value(&from_file).unwrap(),
        serde_json::to_value(Config::default()).unwrap()
    );
}

/// Every default must be in the example file too (not only equal when absent).
#[test]
fn the_example_file_names_every_setting() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("shop.example.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let file: toml::Table = text.parse().unwrap();
    let defaults = serde_json::to_value(Config::default()).unwrap();
    for (key, value) in defaults.as_object().unwrap() {
        match value.as_object() {
            Some(section) => {
                let in_file = file.get(key).and_then(|v| v.as_table());
                for field in section.keys() {
                    assert!(
                        in_file.is_some_and(|t| t.contains_key(field)),
                        "shop.example.toml lacks {key}.{field}"
                    );
                }
            }
            None => assert!(file.contains_key(key), "shop.example.toml lacks {key}"),
        }
    }
}

/// The test suite's own settings (`EDDYTEST_*`) are not the application's: a shell
/// that exported them for `cargo test` still starts the shop.
#[test]
fn test_settings_live_outside_the_application_namespace() {
    std::env::set_var(
        "EDDYTEST_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432",
    );
    std::env::set_var("EDDYTEST_TANSU", "/usr/local/bin/tansu");
    let loaded = Config::load(None);
    assert!(loaded.is_ok(), "{:?}", loaded.err());
}

#[test]
fn every_type_error_is_reported_under_the_key_as_written() {
    let message = rejected(
        "[provider]\nlatency_ms = \"slow\"\n[server]\nidle_timeout_ms = -1\nbody_limit_bytes = \"big\"\n[nonsense]\nx = 1\n",
    );
    for key in [
        "provider.latency_ms",
        "server.idle_timeout_ms",
        "server.body_limit_bytes",
        "nonsense.x: unknown setting",
    ] {
        assert!(message.contains(key), "{key} missing from: {message}");
    }
    assert!(
        !message.contains("default."),
        "figment's profile leaked: {message}"
    );
    assert!(!message.contains("idle_timeout_ms.server"), "{message}");
}

#[test]
fn the_admin_api_is_off_by_default() {
    assert!(Config::default().admin.token.is_empty());
}

#[test]
fn a_short_admin_token_is_refused_without_being_said() {
    let message = rejected("[admin]\ntoken = \"too-short-to-be-safe\"");
    assert!(message.contains("admin.token"), "{message}");
    assert!(message.contains("32 bytes"), "{message}");
    assert!(!message.contains("too-short-to-be-safe"), "{message}");
}

#[test]
fn an_admin_token_an_authorization_header_cannot_carry_is_refused() {
    let message = rejected("[admin]\ntoken = \"a token with spaces that is long enough to pass\"");
    assert!(message.contains("admin.token"), "{message}");
    assert!(message.contains("printable ASCII"), "{message}");
}

#[test]
fn a_long_admin_token_is_accepted_and_never_printed() {
    let token = "0123456789abcdef0123456789abcdef";
    let config = accepted(&format!("[admin]\ntoken = \"{token}\""));
    assert_eq!(config.admin.token.expose(), token);
    let printed = format!("{config:?}");
    assert!(!printed.contains(token), "{printed}");
}
