//! The lag monitor: per-partition offset samples taken on a timer, kept in bounded
//! windows, judged into a status per partition, topic and group, exported as gauges and
//! as a serializable snapshot.
//!
//! The judging part ([`LagMonitor::record`], [`LagMonitor::snapshot`]) is pure: every
//! number comes from the samples and the times they carry, so a test scripts an offset
//! series and checks the exact outcome. [`LagMonitor::run`] adds the timer, the
//! [`PartitionProbe`] and the clock. The rules, the metrics and the JSON shape are
//! described in `docs/lag.md`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use eddy_core::broker::PartitionSample;
use eddy_core::{async_trait, Clock, Error, OffsetDateTime};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// The most samples a window may be configured to keep per partition: a guard against
/// a configuration typo, far above any useful window.
pub const WINDOW_LEN_LIMIT: usize = 10_000;

/// Where per-partition samples come from: each broker adapter can tell. The embedded
/// log implements it here; Kafka and NATS need the same three facts (see
/// `docs/lag.md`).
#[async_trait]
pub trait PartitionProbe: Send + Sync {
    /// Every partition of `topic` as `group` sees it now. An error skips this sample
    /// (the windows keep what they had).
    async fn partition_samples(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<Vec<PartitionSample>, Error>;
}

#[async_trait]
impl PartitionProbe for eddy_log::Log {
    async fn partition_samples(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<Vec<PartitionSample>, Error> {
        let ends = self.end_offsets(topic).await?;
        let committed = self.committed_offsets(group, topic).await?;
        let from: BTreeMap<u32, u64> = ends
            .keys()
            .map(|&p| (p, committed.get(&p).copied().unwrap_or(0)))
            .collect();
        let first = self.first_kept_records(topic, &from).await?;
        Ok(ends
            .into_iter()
            .map(|(partition, end_offset)| {
                let (oldest_unconsumed_offset, oldest_unconsumed_at) = match first.get(&partition) {
                    Some(&(offset, at)) if offset < end_offset => (offset, Some(at)),
                    // Nothing kept from the committed offset on: nothing waits.
                    _ => (end_offset, None),
                };
                PartitionSample {
                    partition,
                    end_offset,
                    committed_offset: committed.get(&partition).copied(),
                    // The log writes a commit only when it moves the offset, so its
                    // commit times could never show a commit that did not: no use here.
                    committed_at: None,
                    oldest_unconsumed_offset,
                    oldest_unconsumed_at,
                }
            })
            .collect())
    }
}

/// What the monitor makes of a partition, a topic or a group. Ordered from best to
/// worst: a topic or group takes the worst status of its partitions, and when several
/// rules hold for one partition the worst wins (STOPPED > STALLED > CRITICAL > GROWING
/// > WARNING > OK).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LagStatus {
    /// Caught up, or a lag below the warning threshold that is not rising.
    Ok,
    /// Lag of at least [`LagConfig::warning_lag_messages`].
    Warning,
    /// Lag rising at every sample of the window while the committed offset advances:
    /// the consumer works but falls behind.
    Growing,
    /// Lag over [`LagConfig::critical_lag_messages`].
    Critical,
    /// Lag over the whole window, the committed offset unmoved, and commits still
    /// arriving (a commit time inside the window).
    Stalled,
    /// Lag over the whole window and no commit at all during it.
    Stopped,
}

impl LagStatus {
    /// Every status, best first.
    pub const ALL: [LagStatus; 6] = [
        LagStatus::Ok,
        LagStatus::Warning,
        LagStatus::Growing,
        LagStatus::Critical,
        LagStatus::Stalled,
        LagStatus::Stopped,
    ];

    /// The name used in the JSON snapshot and as the `status` label.
    pub const fn as_str(self) -> &'static str {
        match self {
            LagStatus::Ok => "OK",
            LagStatus::Warning => "WARNING",
            LagStatus::Growing => "GROWING",
            LagStatus::Critical => "CRITICAL",
            LagStatus::Stalled => "STALLED",
            LagStatus::Stopped => "STOPPED",
        }
    }
}

impl fmt::Display for LagStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The estimated time to catch up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "state", content = "seconds", rename_all = "snake_case")]
pub enum CatchUp {
    /// No lag.
    CaughtUp,
    /// Lag / (consumption rate − production rate), in seconds, at the window's rates.
    Estimate(f64),
    /// Lag, and the consumer is not faster than the producers over the window.
    NotCatchingUp,
    /// Lag, and fewer than two samples (or none spanning any time) to take rates from.
    Unknown,
}

impl CatchUp {
    /// The value of `consumer_catch_up_seconds`: 0, the estimate, or +Inf; `None`
    /// (no value written) when unknown.
    pub fn gauge_seconds(self) -> Option<f64> {
        match self {
            CatchUp::CaughtUp => Some(0.0),
            CatchUp::Estimate(seconds) => Some(seconds),
            CatchUp::NotCatchingUp => Some(f64::INFINITY),
            CatchUp::Unknown => None,
        }
    }

    /// The catch-up of several partitions: the slowest one.
    fn slowest(self, other: CatchUp) -> CatchUp {
        use CatchUp::*;
        match (self, other) {
            (NotCatchingUp, _) | (_, NotCatchingUp) => NotCatchingUp,
            (Unknown, _) | (_, Unknown) => Unknown,
            (Estimate(a), Estimate(b)) => Estimate(a.max(b)),
            (Estimate(a), CaughtUp) | (CaughtUp, Estimate(a)) => Estimate(a),
            (CaughtUp, CaughtUp) => CaughtUp,
        }
    }
}

/// Settings of the lag monitor. Every field has a documented default.
#[derive(Debug, Clone)]
pub struct LagConfig {
    /// Samples kept per partition; older ones drop. Default 10 (sampled every 15 s,
    /// 2¼ minutes). At most [`WINDOW_LEN_LIMIT`]. `(window_len_max − 1) × sampling
    /// interval` must reach `judge_span_min`, or no window is long enough to judge
    /// GROWING, STALLED or STOPPED ([`LagMonitor::run`] warns).
    pub window_len_max: usize,
    /// Samples older than this before the newest drop, however few are kept.
    /// Default 10 minutes.
    pub window_duration: Duration,
    /// GROWING, STALLED and STOPPED are judged only over a window of at least this many
    /// samples... Default 3; at least 2 and at most `window_len_max`.
    pub judge_len_min: usize,
    /// ...spanning at least this long, so a single slow sample interval judges nothing.
    /// Default 60 s; at most `window_duration`.
    pub judge_span_min: Duration,
    /// Lag (messages) from which a partition is WARNING. Default 1,000.
    pub warning_lag_messages: u64,
    /// Lag (messages) over which a partition is CRITICAL. Default 5,000.
    pub critical_lag_messages: u64,
}

impl Default for LagConfig {
    fn default() -> Self {
        Self {
            window_len_max: 10,
            window_duration: Duration::from_secs(600),
            judge_len_min: 3,
            judge_span_min: Duration::from_secs(60),
            warning_lag_messages: 1_000,
            critical_lag_messages: 5_000,
        }
    }
}

impl LagConfig {
    /// Checks the bounds documented on each field.
    pub fn validate(&self) -> Result<(), Error> {
        if self.window_len_max < 2 || self.window_len_max > WINDOW_LEN_LIMIT {
            return Err(Error::permanent(format!(
                "lag window_len_max must be 2 to {WINDOW_LEN_LIMIT}, got {}",
                self.window_len_max
            )));
        }
        if self.judge_len_min < 2 || self.judge_len_min > self.window_len_max {
            return Err(Error::permanent(format!(
                "lag judge_len_min must be 2 to window_len_max ({}), got {}",
                self.window_len_max, self.judge_len_min
            )));
        }
        if self.window_duration.is_zero() || self.judge_span_min > self.window_duration {
            return Err(Error::permanent(
                "lag window_duration must be positive and at least judge_span_min",
            ));
        }
        if self.warning_lag_messages > self.critical_lag_messages {
            return Err(Error::permanent(
                "lag warning_lag_messages must not exceed critical_lag_messages",
            ));
        }
        Ok(())
    }
}

/// One sample of one partition, as the window keeps it.
#[derive(Debug, Clone)]
struct Observation {
    at: OffsetDateTime,
    end_offset: u64,
    committed_offset: Option<u64>,
    committed_at: Option<OffsetDateTime>,
    lag_messages: u64,
    lag_seconds: Option<f64>,
}

impl Observation {
    fn new(at: OffsetDateTime, sample: &PartitionSample) -> Self {
        let lag_messages = sample.lag_messages();
        let lag_seconds = if lag_messages == 0 {
            Some(0.0)
        } else {
            // A record stamped after the sample (clocks apart) is no lag in time.
            sample
                .oldest_unconsumed_at
                .map(|oldest| (at - oldest).as_seconds_f64().max(0.0))
        };
        Self {
            at,
            end_offset: sample.end_offset,
            committed_offset: sample.committed_offset,
            committed_at: sample.committed_at,
            lag_messages,
            lag_seconds,
        }
    }
}

type Window = VecDeque<Observation>;

/// The windows of one group on one topic, by partition.
type TopicWindows = BTreeMap<u32, Window>;

struct State {
    config: LagConfig,
    /// group → topic → partition → window. Groups and topics are the ones the service
    /// registered (never taken from input); partitions are the topic's, which the
    /// broker's configuration bounds.
    groups: BTreeMap<String, BTreeMap<String, TopicWindows>>,
}

/// The lag monitor. Cheap to clone: clones share the windows, so one clone can sample
/// on a timer ([`LagMonitor::run`]) while another serves [`LagMonitor::snapshot`].
#[derive(Clone)]
pub struct LagMonitor {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for LagMonitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("LagMonitor")
            .field("config", &state.config)
            .field("groups", &state.groups.len())
            .finish()
    }
}

impl LagMonitor {
    /// A monitor with `config`, once it is valid ([`LagConfig::validate`]).
    pub fn new(config: LagConfig) -> Result<Self, Error> {
        config.validate()?;
        Ok(Self {
            state: Arc::new(Mutex::new(State {
                config,
                groups: BTreeMap::new(),
            })),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is only ever left consistent: a panic elsewhere does not spoil it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Watches `group` on `topic`: [`LagMonitor::sample`] probes it, and it shows in the
    /// snapshot (with no partitions) before its first sample.
    pub fn watch(&self, group: &str, topic: &str) {
        self.lock()
            .groups
            .entry(group.to_owned())
            .or_default()
            .entry(topic.to_owned())
            .or_default();
    }

    /// Adds the samples of `group` on `topic` taken at `at`. A partition absent from
    /// `samples` is forgotten (the topic was recreated smaller); a sample not later
    /// than the newest one kept for its partition is ignored (rates need time to
    /// pass). Watches the pair if it was not.
    pub fn record(
        &self,
        group: &str,
        topic: &str,
        at: OffsetDateTime,
        samples: &[PartitionSample],
    ) {
        let mut state = self.lock();
        let config = state.config.clone();
        let windows = state
            .groups
            .entry(group.to_owned())
            .or_default()
            .entry(topic.to_owned())
            .or_default();
        let sampled: BTreeSet<u32> = samples.iter().map(|s| s.partition).collect();
        windows.retain(|partition, _| sampled.contains(partition));
        for sample in samples {
            let window = windows.entry(sample.partition).or_default();
            if window.back().is_some_and(|newest| newest.at >= at) {
                tracing::debug!(
                    group,
                    topic,
                    partition = sample.partition,
                    "lag sample out of order, ignored"
                );
                continue;
            }
            window.push_back(Observation::new(at, sample));
            while window.len() > config.window_len_max {
                window.pop_front();
            }
            while window
                .front()
                .is_some_and(|oldest| (at - oldest.at) > config.window_duration)
            {
                window.pop_front();
            }
        }
    }

    /// Samples every watched group and topic through `probe`, stamped with `clock`.
    /// A probe error skips that pair this time (logged).
    pub async fn sample(&self, probe: &dyn PartitionProbe, clock: &dyn Clock) {
        let watched: Vec<(String, String)> = {
            let state = self.lock();
            state
                .groups
                .iter()
                .flat_map(|(group, topics)| topics.keys().map(|t| (group.clone(), t.clone())))
                .collect()
        };
        for (group, topic) in watched {
            match probe.partition_samples(&group, &topic).await {
                Ok(samples) => self.record(&group, &topic, clock.now(), &samples),
                Err(error) => {
                    tracing::debug!(group, topic, %error, "lag sample failed");
                }
            }
        }
    }

    /// Samples every `interval` (on the timer, not only when consumers commit, so a
    /// consumer that stopped is still seen) and exports the gauges, until `stop`.
    pub async fn run(
        self,
        probe: Arc<dyn PartitionProbe>,
        clock: Arc<dyn Clock>,
        interval: Duration,
        stop: CancellationToken,
    ) {
        {
            let config = &self.lock().config;
            let reach = interval.saturating_mul(config.window_len_max.saturating_sub(1) as u32);
            if reach < config.judge_span_min {
                tracing::warn!(
                    ?interval,
                    window_len_max = config.window_len_max,
                    judge_span_min = ?config.judge_span_min,
                    "lag windows never span judge_span_min at this interval: GROWING, STALLED and STOPPED cannot be judged"
                );
            }
        }
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    self.sample(probe.as_ref(), clock.as_ref()).await;
                    self.snapshot().export();
                }
            }
        }
    }

    /// Every group, topic and partition with its numbers and status, judged at each
    /// partition's newest sample.
    pub fn snapshot(&self) -> LagSnapshot {
        let state = self.lock();
        let groups = state
            .groups
            .iter()
            .map(|(group, topics)| {
                let topics: Vec<TopicLag> = topics
                    .iter()
                    .map(|(topic, windows)| {
                        let partitions: Vec<PartitionLag> = windows
                            .iter()
                            .filter_map(|(&partition, window)| {
                                judge(&state.config, partition, window)
                            })
                            .collect();
                        TopicLag::of(topic.clone(), partitions)
                    })
                    .collect();
                GroupLag {
                    group: group.clone(),
                    status: topics
                        .iter()
                        .map(|t| t.status)
                        .max()
                        .unwrap_or(LagStatus::Ok),
                    lag_messages: topics.iter().map(|t| t.lag_messages).sum(),
                    lag_seconds: max_known(topics.iter().map(|t| t.lag_seconds)),
                    topics,
                }
            })
            .collect();
        LagSnapshot { groups }
    }
}

fn max_known(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    values.flatten().reduce(f64::max)
}

/// Everything the monitor knows, for the JSON endpoint (`serde_json::to_string`).
#[derive(Debug, Clone, Serialize)]
pub struct LagSnapshot {
    pub groups: Vec<GroupLag>,
}

/// One consumer group over every topic it was watched on.
#[derive(Debug, Clone, Serialize)]
pub struct GroupLag {
    pub group: String,
    /// The worst status of its partitions.
    pub status: LagStatus,
    pub lag_messages: u64,
    /// The oldest unconsumed record's age over its topics; `null` when none is known.
    pub lag_seconds: Option<f64>,
    pub topics: Vec<TopicLag>,
}

/// One group on one topic.
#[derive(Debug, Clone, Serialize)]
pub struct TopicLag {
    pub topic: String,
    /// The worst status of its partitions.
    pub status: LagStatus,
    /// The sum over partitions.
    pub lag_messages: u64,
    /// The largest over partitions; `null` when none is known.
    pub lag_seconds: Option<f64>,
    /// The slowest partition's.
    pub catch_up: CatchUp,
    pub partitions: Vec<PartitionLag>,
}

impl TopicLag {
    fn of(topic: String, partitions: Vec<PartitionLag>) -> Self {
        Self {
            topic,
            status: partitions
                .iter()
                .map(|p| p.status)
                .max()
                .unwrap_or(LagStatus::Ok),
            lag_messages: partitions.iter().map(|p| p.lag_messages).sum(),
            lag_seconds: max_known(partitions.iter().map(|p| p.lag_seconds)),
            catch_up: partitions
                .iter()
                .map(|p| p.catch_up)
                .fold(CatchUp::CaughtUp, CatchUp::slowest),
            partitions,
        }
    }
}

/// One partition, judged over its window.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionLag {
    pub partition: u32,
    pub status: LagStatus,
    /// When the newest sample was taken (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub sampled_at: OffsetDateTime,
    pub end_offset: u64,
    pub committed_offset: Option<u64>,
    pub lag_messages: u64,
    /// Sample time − storage time of the oldest unconsumed record; 0 when caught up;
    /// `null` when the broker could not tell that record's time.
    pub lag_seconds: Option<f64>,
    /// Committed offsets per second over the window (only forward moves count: a
    /// reset for a replay is not consumption); `null` with fewer than two samples.
    pub consumption_per_second: Option<f64>,
    /// End offsets per second over the window.
    pub production_per_second: Option<f64>,
    /// (newest lag − oldest lag) / window span; negative while catching up.
    pub lag_growth_per_second: Option<f64>,
    pub catch_up: CatchUp,
    /// Samples in the window and the time they span.
    pub window_len: usize,
    pub window_seconds: f64,
}

/// Rates over a window: the sum of forward moves divided by its span.
fn forward_rate(
    window: &Window,
    value: impl Fn(&Observation) -> Option<u64>,
    span_seconds: f64,
) -> f64 {
    let moved: u64 = window
        .iter()
        .zip(window.iter().skip(1))
        .map(|(before, after)| match (value(before), value(after)) {
            (Some(before), Some(after)) => after.saturating_sub(before),
            _ => 0,
        })
        .sum();
    moved as f64 / span_seconds
}

/// The numbers and status of one partition; `None` for an empty window.
fn judge(config: &LagConfig, partition: u32, window: &Window) -> Option<PartitionLag> {
    let newest = window.back()?;
    let oldest = window.front()?;
    let span_seconds = (newest.at - oldest.at).as_seconds_f64();
    let rates = (span_seconds > 0.0).then(|| {
        let consumption = forward_rate(window, |o| o.committed_offset, span_seconds);
        let production = forward_rate(window, |o| Some(o.end_offset), span_seconds);
        let growth = (newest.lag_messages as f64 - oldest.lag_messages as f64) / span_seconds;
        (consumption, production, growth)
    });
    let catch_up = match rates {
        _ if newest.lag_messages == 0 => CatchUp::CaughtUp,
        None => CatchUp::Unknown,
        Some((consumption, production, _)) if consumption > production => {
            CatchUp::Estimate(newest.lag_messages as f64 / (consumption - production))
        }
        Some(_) => CatchUp::NotCatchingUp,
    };
    Some(PartitionLag {
        partition,
        status: status(config, window),
        sampled_at: newest.at,
        end_offset: newest.end_offset,
        committed_offset: newest.committed_offset,
        lag_messages: newest.lag_messages,
        lag_seconds: newest.lag_seconds,
        consumption_per_second: rates.map(|r| r.0),
        production_per_second: rates.map(|r| r.1),
        lag_growth_per_second: rates.map(|r| r.2),
        catch_up,
        window_len: window.len(),
        window_seconds: span_seconds,
    })
}

/// The status rules of `docs/lag.md`, in order.
fn status(config: &LagConfig, window: &Window) -> LagStatus {
    let (Some(oldest), Some(newest)) = (window.front(), window.back()) else {
        return LagStatus::Ok;
    };
    // 1. Caught up is OK, whatever else: an idle topic is never stopped.
    if newest.lag_messages == 0 {
        return LagStatus::Ok;
    }
    let judged =
        window.len() >= config.judge_len_min && (newest.at - oldest.at) >= config.judge_span_min;
    let lagging_throughout = window.iter().all(|o| o.lag_messages > 0);
    // 2. Stuck: lag at every sample and the committed offset never moved.
    if judged
        && lagging_throughout
        && window
            .iter()
            .all(|o| o.committed_offset == newest.committed_offset)
    {
        // Burrow's split: commits that arrive without moving are STALLED; no commit
        // during the window is STOPPED. A commit is seen only through a commit time
        // the broker reports after the window's first sample: with offsets alone, an
        // offset that never moved shows no commit.
        let committed_in_window = newest.committed_offset.is_some()
            && newest.committed_at.is_some_and(|at| at > oldest.at);
        return if committed_in_window {
            LagStatus::Stalled
        } else {
            LagStatus::Stopped
        };
    }
    // 3. The level of the newest lag.
    let level = if newest.lag_messages > config.critical_lag_messages {
        LagStatus::Critical
    } else if newest.lag_messages >= config.warning_lag_messages {
        LagStatus::Warning
    } else {
        LagStatus::Ok
    };
    // 4. Falling behind while working: lag never falls between samples and ends
    //    higher, while the committed offset advances.
    let growing = judged
        && lagging_throughout
        && newest.lag_messages > oldest.lag_messages
        && window
            .iter()
            .zip(window.iter().skip(1))
            .all(|(before, after)| after.lag_messages >= before.lag_messages)
        && matches!(
            (oldest.committed_offset, newest.committed_offset),
            (Some(before), Some(after)) if after > before
        );
    if growing {
        level.max(LagStatus::Growing)
    } else {
        level
    }
}

impl LagSnapshot {
    /// Sets the lag gauges (see `docs/lag.md`):
    ///
    /// - per group and topic: `consumer_lag_messages` (sum over partitions — the same
    ///   series and meaning [`crate::Exporter`] writes), `consumer_lag_seconds` (the
    ///   oldest partition's), `consumer_catch_up_seconds` (the slowest partition's; 0
    ///   caught up, +Inf not catching up, unwritten while unknown), and
    ///   `consumer_lag_status` with one series per status, 1 for the current one and 0
    ///   for the others;
    /// - per partition: `consumer_partition_lag_messages` and
    ///   `consumer_partition_lag_seconds`.
    pub fn export(&self) {
        for group in &self.groups {
            for topic in &group.topics {
                if topic.partitions.is_empty() {
                    continue;
                }
                let labels = [
                    ("group", group.group.clone()),
                    ("topic", topic.topic.clone()),
                ];
                metrics::gauge!("consumer_lag_messages", &labels).set(topic.lag_messages as f64);
                if let Some(seconds) = topic.lag_seconds {
                    metrics::gauge!("consumer_lag_seconds", &labels).set(seconds);
                }
                if let Some(seconds) = topic.catch_up.gauge_seconds() {
                    metrics::gauge!("consumer_catch_up_seconds", &labels).set(seconds);
                }
                for status in LagStatus::ALL {
                    metrics::gauge!(
                        "consumer_lag_status",
                        "group" => group.group.clone(),
                        "topic" => topic.topic.clone(),
                        "status" => status.as_str()
                    )
                    .set(if status == topic.status { 1.0 } else { 0.0 });
                }
                for partition in &topic.partitions {
                    let labels = [
                        ("group", group.group.clone()),
                        ("topic", topic.topic.clone()),
                        ("partition", partition.partition.to_string()),
                    ];
                    metrics::gauge!("consumer_partition_lag_messages", &labels)
                        .set(partition.lag_messages as f64);
                    if let Some(seconds) = partition.lag_seconds {
                        metrics::gauge!("consumer_partition_lag_seconds", &labels).set(seconds);
                    }
                }
            }
        }
    }
}
