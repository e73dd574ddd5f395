//! The schema gate for the contracts: every event type's JSON Schema is committed under
//! `shop/schemas/<event_type>/v<N>.json`, and `shop schemas check` (also run by
//! `shop/tests/schemas.rs`) refuses a change that old events would not survive (rules
//! in `docs/events.md`). `shop/schemas/samples/` keeps a stored payload of every type
//! and version, each decoded into today's type by that test.

use std::fmt;
use std::path::{Path, PathBuf};

use eddy_core::{Envelope, Error, Event, JsonCodec};
use eddy_schema::{check_snapshots, write_snapshots, EventSchema};

use super::{
    OrderCancelled, OrderConfirmed, OrderPlaced, PaymentCaptured, PaymentDeclined, PaymentRefunded,
    ProductUpserted, StockChanged, StockRejected, StockReserved,
};

/// Where the snapshots are committed (the source tree this binary was built from).
pub const SCHEMAS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas");
/// Where the stored samples are: `<event_type>/v<N>.json` with
/// `{"schema_version": N, "payload": {..}}`.
pub const SAMPLES_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/samples");
/// The command that writes the snapshots again, for messages.
pub const WRITE_COMMAND: &str = "cargo run -p shop -- schemas write";

/// Every event type once: the snapshots and the samples follow this list, so a type
/// left out of it would escape the gate.
macro_rules! contracts {
    ($($event:ty),* $(,)?) => {
        /// The current schema of every event type the services exchange.
        pub fn event_schemas() -> Vec<EventSchema> {
            vec![$(EventSchema::of::<$event>()),*]
        }

        /// `envelope` decoded (older versions upcast) as the contract type it names;
        /// `None` for a type that is not a contract.
        pub fn decode_contract(envelope: &Envelope) -> Option<Result<Box<dyn fmt::Debug>, Error>> {
            $(
                if envelope.event_type == <$event as Event>::TYPE {
                    return Some(
                        JsonCodec::decode::<$event>(envelope)
                            .map(|event| Box::new(event) as Box<dyn fmt::Debug>),
                    );
                }
            )*
            None
        }
    };
}

contracts!(
    ProductUpserted,
    OrderPlaced,
    OrderConfirmed,
    OrderCancelled,
    StockReserved,
    StockRejected,
    StockChanged,
    PaymentCaptured,
    PaymentDeclined,
    PaymentRefunded,
);

/// `shop schemas …`
#[derive(Debug, clap::Subcommand)]
pub enum SchemasCommand {
    /// Compare the events' schemas with the committed snapshots; exit code 1 naming
    /// every breach, gap or out-of-date snapshot.
    Check(DirArgs),
    /// Write the snapshots that are missing or out of date (refused, writing nothing,
    /// while a change breaks the rules).
    Write(DirArgs),
}

#[derive(Debug, clap::Args)]
pub struct DirArgs {
    /// The snapshot directory.
    #[arg(long, default_value = SCHEMAS_DIR)]
    pub dir: PathBuf,
}

/// Runs `command`, printing what it did; an error names what is wrong.
pub fn run(command: SchemasCommand) -> anyhow::Result<()> {
    match command {
        SchemasCommand::Check(args) => {
            check(&args.dir)?;
            println!(
                "{} event types match their snapshots in {}",
                event_schemas().len(),
                args.dir.display()
            );
            Ok(())
        }
        SchemasCommand::Write(args) => {
            let written = write_snapshots(&args.dir, &event_schemas())?;
            for path in &written {
                println!("wrote {}", path.display());
            }
            if written.is_empty() {
                println!("the snapshots in {} are up to date", args.dir.display());
            }
            Ok(())
        }
    }
}

/// The contracts checked against the snapshots in `dir`: `Err` lists every finding and
/// what to do about it.
pub fn check(dir: &Path) -> anyhow::Result<()> {
    // The default is the source tree this binary was built from, which a binary
    // copied elsewhere may not have: say so rather than call every snapshot missing.
    if !dir.is_dir() {
        anyhow::bail!(
            "no snapshot directory at {} (give the shop's schemas directory with --dir)",
            dir.display()
        );
    }
    let report = check_snapshots(dir, &event_schemas())?;
    if report.is_clean() {
        return Ok(());
    }
    let advice = if report.is_breaking() {
        "a change that breaks the rules of docs/events.md needs a new SCHEMA_VERSION with an upcaster; an older snapshot that is missing must be restored"
    } else {
        "after a compatible change or a new version, write the snapshots"
    };
    anyhow::bail!("the event schemas differ from their snapshots:\n{report}{advice} (`{WRITE_COMMAND}` writes what it can)")
}
