//! One simulated run: a seed decides the sizes, the schedule (publishes, duplicates,
//! members joining, crashing and restarting, fault rates, retention) and every
//! handler's failures; the consumer runtime under test is the real one. After the
//! schedule, faults stop and the group must drain; then the invariants are checked.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use eddy_core::{
    Envelope, Event, EventId, Handler, HandlerError, JsonCodec, ManualClock, OffsetDateTime,
    Publisher,
};
use eddy_runtime::{Consumer, ConsumerConfig, RetryPolicy, Router};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::broker::{Faults, JoinedMember, SimBroker};

const TOPIC: &str = "orders";
const GROUP: &str = "workers";
/// Events whose `seq` leaves this remainder are poison: every attempt fails permanently.
const POISON_EVERY: u64 = 23;
/// How long the group may take to drain once faults stop (simulated time).
const DRAIN_MAX: Duration = Duration::from_secs(600);

/// The simulation's event: a numbered step of one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub key: String,
    pub seq: u64,
}

impl Event for Step {
    const TYPE: &'static str = "sim.Step";
    fn key(&self) -> String {
        self.key.clone()
    }
}

fn is_poison(seq: u64) -> bool {
    seq % POISON_EVERY == POISON_EVERY - 1
}

/// The effects handlers had, kept as an idempotent store keeps them: an event id
/// applied once, the first application's order recorded per key.
#[derive(Debug, Default)]
struct Effects {
    applied: HashSet<EventId>,
    order: BTreeMap<String, Vec<u64>>,
    /// Keys with a handler call running, per member: the runtime never runs two calls
    /// of one key at once in one consumer.
    running: BTreeSet<(u64, String)>,
    violations: Vec<String>,
    trace: Vec<String>,
}

#[derive(Clone)]
struct Shared {
    effects: Arc<Mutex<Effects>>,
    rng: Arc<Mutex<StdRng>>,
    /// Simulated time starts at the real time the runtime was built: the trace says
    /// how long after this, so that a replay writes the same trace.
    start: tokio::time::Instant,
}

impl Shared {
    fn effects(&self) -> MutexGuard<'_, Effects> {
        self.effects.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn draw(&self) -> f64 {
        self.rng
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .gen_range(0.0..1.0)
    }
    fn note(&self, what: String) {
        let at = self.start.elapsed();
        self.effects().trace.push(format!("{at:?} {what}"));
    }
}

/// The handler of one member: fails as the seed says, then applies the effect.
struct StepHandler {
    member: u64,
    shared: Shared,
    failing: Arc<Mutex<FailureRates>>,
}

/// How often a handler call fails, by kind; none by default (and once faults stop).
#[derive(Debug, Clone, Copy, Default)]
struct FailureRates {
    transient: f64,
    unavailable: f64,
    panic: f64,
}

#[async_trait]
impl Handler<Step> for StepHandler {
    async fn handle(&self, event: Step, envelope: &Envelope) -> Result<(), HandlerError> {
        let slot = (self.member, event.key.clone());
        if !self.shared.effects().running.insert(slot.clone()) {
            self.shared.effects().violations.push(format!(
                "member {} ran two calls of key {} at once",
                self.member, event.key
            ));
        }
        // Left on every exit: a return, a panic, or the task aborted mid-call.
        let _running = CallGuard {
            shared: &self.shared,
            slot,
        };
        self.attempt(&event, envelope).await
    }
}

/// Marks a key's call as running until dropped.
struct CallGuard<'a> {
    shared: &'a Shared,
    slot: (u64, String),
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.shared.effects().running.remove(&self.slot);
    }
}

impl StepHandler {
    async fn attempt(&self, event: &Step, envelope: &Envelope) -> Result<(), HandlerError> {
        let work = Duration::from_millis((self.shared.draw() * 20.0) as u64);
        tokio::time::sleep(work).await;
        if is_poison(event.seq) {
            return Err(HandlerError::permanent("simulated poison"));
        }
        self.shared.note(format!(
            "member {} tries {}#{}",
            self.member, event.key, event.seq
        ));
        let rates = *self.failing.lock().unwrap_or_else(|p| p.into_inner());
        let draw = self.shared.draw();
        if draw < rates.panic {
            // The runtime turns a panic into a permanent failure; under the seed's rate
            // that dead-letters the event, which the checker allows.
            std::panic::panic_any(SIMULATED_PANIC);
        }
        if draw < rates.panic + rates.unavailable {
            return Err(HandlerError::unavailable("simulated: dependency down"));
        }
        if draw < rates.panic + rates.unavailable + rates.transient {
            return Err(HandlerError::transient("simulated: timeout"));
        }
        let at = self.shared.start.elapsed();
        let mut effects = self.shared.effects();
        effects.trace.push(format!(
            "{at:?} member {} handled {}#{}",
            self.member, event.key, event.seq
        ));
        if effects.applied.insert(envelope.id) {
            effects
                .order
                .entry(event.key.clone())
                .or_default()
                .push(event.seq);
        }
        Ok(())
    }
}

/// A running member: its consumer task and how to stop it.
struct Running {
    id: u64,
    stop: CancellationToken,
    task: JoinHandle<Result<(), eddy_core::Error>>,
}

/// What a run found wrong; the seed replays it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub seed: u64,
    pub violations: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {} failed (replay: cargo run -p eddy-sim --release -- --seed {}):",
            self.seed, self.seed
        )?;
        for violation in &self.violations {
            writeln!(f, "  - {violation}")?;
        }
        Ok(())
    }
}

/// What a run did, for the report and the determinism check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub seed: u64,
    pub published: usize,
    pub applied: usize,
    pub dead_lettered: usize,
    pub crashes: usize,
    pub restarts: usize,
    /// A fingerprint of everything that happened, in order.
    pub trace_hash: u64,
}

/// The message of the handlers' simulated panics: the panic hook stays quiet for it.
const SIMULATED_PANIC: &str = "simulated handler panic";

/// Keeps the simulated panics out of the output (thousands of backtraces would bury a
/// real failure); any other panic is reported as before.
fn quiet_simulated_panics() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let simulated = info
                .payload()
                .downcast_ref::<&str>()
                .is_some_and(|m| *m == SIMULATED_PANIC);
            if !simulated {
                previous(info);
            }
        }));
    });
}

/// Runs the simulation of `seed` on a fresh single-threaded runtime with paused time.
pub fn simulate(seed: u64) -> Result<Report, Failure> {
    quiet_simulated_panics();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| Failure {
            seed,
            violations: vec![format!("cannot build a runtime: {e}")],
        })?;
    runtime.block_on(World::new(seed).run())
}

struct World {
    seed: u64,
    rng: StdRng,
    broker: SimBroker,
    shared: Shared,
    failing: Arc<Mutex<FailureRates>>,
    config: ConsumerConfig,
    clock: ManualClock,
    running: Vec<Running>,
    ended_early: Vec<String>,
    published: BTreeMap<EventId, Step>,
    next_seq: BTreeMap<String, u64>,
    keys: usize,
    crashes: usize,
    restarts: usize,
}

impl World {
    fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let partitions = rng.gen_range(1..=4);
        let keys = rng.gen_range(1..=8);
        let broker = SimBroker::new(TOPIC, partitions, StdRng::seed_from_u64(rng.gen()));
        let shared = Shared {
            effects: Arc::default(),
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(rng.gen()))),
            start: tokio::time::Instant::now(),
        };
        let config = ConsumerConfig {
            concurrency: rng.gen_range(1..=8),
            in_flight_max: rng.gen_range(1..=64),
            fetch_len_max: rng.gen_range(1..=32),
            commit_interval: Duration::from_millis(rng.gen_range(10..=200)),
            drain_timeout: Duration::from_millis(rng.gen_range(100..=3_000)),
            retry: RetryPolicy {
                attempts_max: 12,
                backoff_initial: Duration::from_millis(10),
                backoff_max: Duration::from_millis(rng.gen_range(20..=500)),
            },
            jitter_seed: Some(rng.gen()),
            unavailable_pause: Duration::from_millis(50),
            unavailable_wait_max: Duration::from_secs(5),
            ..ConsumerConfig::default()
        };
        Self {
            seed,
            rng,
            broker,
            shared,
            failing: Arc::default(),
            config,
            clock: ManualClock::new(OffsetDateTime::UNIX_EPOCH),
            running: Vec::new(),
            ended_early: Vec::new(),
            published: BTreeMap::new(),
            next_seq: BTreeMap::new(),
            keys,
            crashes: 0,
            restarts: 0,
        }
    }

    fn note(&self, what: String) {
        self.shared.note(what);
    }

    fn start_member(&mut self) {
        let member = self.broker.join();
        let id = member.id;
        let handler = StepHandler {
            member: id,
            shared: self.shared.clone(),
            failing: self.failing.clone(),
        };
        let mut config = self.config.clone();
        config.jitter_seed = config.jitter_seed.map(|s| s ^ id);
        let consumer = Consumer::new(
            TOPIC,
            GROUP,
            Arc::new(JoinedMember(Mutex::new(Some(member)))),
            Arc::new(self.broker.clone()),
            Router::new().route::<Step, _>(handler),
        )
        .with_config(config)
        .with_clock(Arc::new(self.clock.clone()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(consumer.run(stop.clone()));
        self.note(format!("member {id} started"));
        self.running.push(Running { id, stop, task });
    }

    /// Reaps members whose consumer ended by itself: a consumer must never end
    /// before it is told to.
    fn reap(&mut self) {
        let mut still = Vec::new();
        for member in std::mem::take(&mut self.running) {
            if member.task.is_finished() {
                self.ended_early.push(format!(
                    "member {}'s consumer ended without being stopped",
                    member.id
                ));
                self.broker.leave(member.id);
            } else {
                still.push(member);
            }
        }
        self.running = still;
    }

    async fn publish(&mut self) {
        let len = self.rng.gen_range(1..=10);
        let mut batch = Vec::new();
        for _ in 0..len {
            let key = format!("k{}", self.rng.gen_range(0..self.keys));
            let seq = self.next_seq.entry(key.clone()).or_insert(0);
            let step = Step { key, seq: *seq };
            *seq += 1;
            let envelope = match JsonCodec::encode(&step, &self.clock) {
                Ok(envelope) => envelope,
                Err(error) => panic!("a step always encodes: {error}"),
            };
            self.published.insert(envelope.id, step);
            batch.push(envelope);
        }
        // The outbox relays at least once: sometimes a batch goes out twice.
        let twice = self.rng.gen_bool(0.1);
        for _ in 0..if twice { 2 } else { 1 } {
            if let Err(error) = self.broker.publish(TOPIC, &batch).await {
                panic!("the simulated broker accepts every publish: {error}");
            }
        }
        self.note(format!("published {len} (twice: {twice})"));
    }

    async fn crash_one(&mut self) {
        if self.running.is_empty() {
            return;
        }
        let index = self.rng.gen_range(0..self.running.len());
        let member = self.running.remove(index);
        member.task.abort();
        let _ = member.task.await;
        self.broker.leave(member.id);
        self.crashes += 1;
        self.note(format!("member {} crashed", member.id));
    }

    async fn restart_one(&mut self) {
        if self.running.is_empty() {
            return;
        }
        let index = self.rng.gen_range(0..self.running.len());
        let member = self.running.remove(index);
        member.stop.cancel();
        match member.task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => self
                .ended_early
                .push(format!("member {} failed to stop: {error}", member.id)),
            Err(error) => self
                .ended_early
                .push(format!("member {} panicked: {error}", member.id)),
        }
        self.broker.leave(member.id);
        self.restarts += 1;
        self.note(format!("member {} restarted", member.id));
        self.start_member();
    }

    fn change_faults(&mut self) {
        let faults = Faults {
            fetch_error: self.rng.gen_range(0.0..0.3),
            commit_error: self.rng.gen_range(0.0..0.3),
        };
        let rates = FailureRates {
            transient: self.rng.gen_range(0.0..0.2),
            unavailable: self.rng.gen_range(0.0..0.05),
            panic: self.rng.gen_range(0.0..0.005),
        };
        self.broker.set_faults(faults);
        *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = rates;
        self.note(format!("faults {faults:?} {rates:?}"));
    }

    async fn run(mut self) -> Result<Report, Failure> {
        // Inside the runtime: its paused clock starts here.
        self.shared.start = tokio::time::Instant::now();
        self.start_member();
        let steps = self.rng.gen_range(20..=60);
        for _ in 0..steps {
            let wait = Duration::from_millis(self.rng.gen_range(1..=400));
            tokio::time::sleep(wait).await;
            self.clock.advance(wait);
            self.reap();
            match self.rng.gen_range(0..100) {
                0..=39 => self.publish().await,
                40..=51 if self.running.len() < 3 => self.start_member(),
                52..=61 => self.crash_one().await,
                62..=71 => self.restart_one().await,
                72..=81 => self.change_faults(),
                82..=86 => self.broker.purge_committed(),
                _ => {}
            }
            if self.running.is_empty() {
                self.start_member();
            }
        }
        self.quiesce().await;
        self.check()
    }

    /// Faults stop and the group drains, or the run fails.
    async fn quiesce(&mut self) {
        self.broker.set_faults(Faults::default());
        *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = FailureRates::default();
        self.note("quiesce".to_owned());
        let until = tokio::time::Instant::now() + DRAIN_MAX;
        loop {
            self.reap();
            if self.running.is_empty() {
                self.start_member();
            }
            let drained = self.broker.positions().iter().all(|(end, c)| end == c);
            if drained || tokio::time::Instant::now() >= until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for member in std::mem::take(&mut self.running) {
            member.stop.cancel();
            if let Ok(Err(error)) = member.task.await {
                self.ended_early
                    .push(format!("member {} failed to stop: {error}", member.id));
            }
            self.broker.leave(member.id);
        }
    }

    fn check(self) -> Result<Report, Failure> {
        let mut violations = self.ended_early.clone();
        for (p, (end, committed)) in self.broker.positions().iter().enumerate() {
            if end != committed {
                violations.push(format!(
                    "partition {p} unserved: committed {committed} of {end} after faults stopped"
                ));
            }
        }
        let dead: HashSet<EventId> = self
            .broker
            .dead_letters()
            .iter()
            .map(|e| {
                e.headers
                    .get(eddy_runtime::dead_letter::ORIGINAL_ID)
                    .and_then(|id| id.parse().ok())
                    .unwrap_or(e.id)
            })
            .collect();
        let effects = self.shared.effects();
        violations.extend(effects.violations.iter().cloned());
        for (id, step) in &self.published {
            let applied = effects.applied.contains(id);
            let parked = dead.contains(id);
            if is_poison(step.seq) && applied {
                violations.push(format!("poison {}#{} had an effect", step.key, step.seq));
            }
            if !applied && !parked {
                violations.push(format!(
                    "{}#{} lost: neither applied nor dead-lettered",
                    step.key, step.seq
                ));
            }
        }
        // An event dead-lettered once and applied later through a duplicate copy (the
        // relay sent its batch twice) is out of order by nature, as a redriven one is:
        // the order is checked over the events never dead-lettered.
        let parked: HashSet<(&str, u64)> = self
            .published
            .iter()
            .filter(|(id, _)| dead.contains(id))
            .map(|(_, step)| (step.key.as_str(), step.seq))
            .collect();
        for (key, seqs) in &effects.order {
            let seqs: Vec<u64> = seqs
                .iter()
                .copied()
                .filter(|seq| !parked.contains(&(key.as_str(), *seq)))
                .collect();
            if let Some(pair) = seqs.windows(2).find(|w| w[0] >= w[1]) {
                violations.push(format!(
                    "key {key} applied out of order: {} after {}",
                    pair[1], pair[0]
                ));
            }
        }
        let trace_hash = fingerprint(&effects.trace, &effects.order);
        let report = Report {
            seed: self.seed,
            published: self.published.len(),
            applied: effects.applied.len(),
            dead_lettered: dead.len(),
            crashes: self.crashes,
            restarts: self.restarts,
            trace_hash,
        };
        if std::env::var_os("EDDY_SIM_TRACE").is_some() {
            for line in &effects.trace {
                eprintln!("{line}");
            }
        }
        if violations.is_empty() {
            Ok(report)
        } else {
            Err(Failure {
                seed: self.seed,
                violations,
            })
        }
    }
}

/// FNV-1a over the trace and the effects' order.
fn fingerprint(trace: &[String], order: &BTreeMap<String, Vec<u64>>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for line in trace {
        eat(line.as_bytes());
    }
    for (key, seqs) in order {
        eat(key.as_bytes());
        for seq in seqs {
            eat(&seq.to_le_bytes());
        }
    }
    hash
}
