//! [`Log`]: topics, appends and retention of the embedded log.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use eddy_core::envelope::{micros_before, to_micros};
use eddy_core::{Clock, Envelope, Error, Publisher, Subscriber, Subscription, SystemClock};
use eddy_sql::{classify, envelope_row, Db, Tx};

use crate::schema::MIGRATIONS;
use crate::subscription::LogSubscription;

/// The signal channel of `topic`: appends bump it at commit, and only that topic's
/// subscriptions wake. (PostgreSQL channel names end at 63 bytes; longer topic names
/// are replaced by their hash.)
pub(crate) fn signal_channel(topic: &str) -> String {
    let plain = format!("eddy_log.{topic}");
    if plain.len() <= 63 {
        plain
    } else {
        format!("eddy_log.#{:016x}", fnv1a(topic.as_bytes()))
    }
}

/// Settings of the embedded log. Every field has a documented default.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Partitions of a topic created implicitly by its first append or subscription.
    /// Default 8: the upper bound of group members that get work; per-key order holds
    /// whatever the count.
    pub default_partitions: u32,
    /// Create unknown topics on first use instead of failing. Default true.
    pub auto_create_topics: bool,
    /// How long a subscription sleeps between checks when no commit signal arrives
    /// (other processes on SQLite, a lost notification). Default 1 s.
    pub fallback_poll_interval: Duration,
    /// How often a member renews its membership and partition leases. Default 1 s.
    pub heartbeat_interval: Duration,
    /// A member silent for this long is presumed dead and its partitions are taken
    /// over, starting from their committed offsets. Default 10 s.
    pub session_timeout: Duration,
    /// Records older than this are deleted by [`Log::purge_expired`] once every group
    /// of their topic has committed past them. Default 7 days.
    pub retention: Duration,
    /// Records older than this are deleted even if a group has not consumed them —
    /// the bound on disk when a group is stuck or gone — and every such record is
    /// reported (an error log naming the groups, and [`LogStats::dropped_unconsumed`]).
    /// Default none: a record nobody consumed stays until someone does.
    pub unconsumed_retention: Option<Duration>,
    /// The retention of dead-letter topics (names ending in `.dlq`), usually longer:
    /// dead letters wait for a person. Default 30 days.
    pub dead_letter_retention: Duration,
    /// Rows per `INSERT` statement (bounded by SQLite's parameter limit). Default 500.
    pub insert_chunk_len: usize,
    /// A name for this process that survives its restarts (for example the service
    /// and host name). When set, member ids are `<instance_id>/<group>/<topic>/<n>`
    /// (n counts subscriptions of this `Log` to that group and topic), so a process
    /// restarted after a crash takes its partitions back at once instead of waiting
    /// `session_timeout` for its old leases to expire. Two live processes must never
    /// share an instance id. Default: none (a fresh UUIDv7 per member).
    pub instance_id: Option<String>,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            default_partitions: 8,
            auto_create_topics: true,
            fallback_poll_interval: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(1),
            session_timeout: Duration::from_secs(10),
            retention: Duration::from_secs(7 * 24 * 3600),
            unconsumed_retention: None,
            dead_letter_retention: Duration::from_secs(30 * 24 * 3600),
            insert_chunk_len: 500,
            instance_id: None,
        }
    }
}

/// The embedded durable log. Cheap to clone.
#[derive(Clone)]
pub struct Log {
    pub(crate) inner: Arc<LogInner>,
}

/// Counters of a [`Log`], readable while it runs.
#[derive(Debug, Default)]
pub struct LogStats {
    /// Records retention deleted although a group had not consumed them (only past
    /// [`LogConfig::unconsumed_retention`]).
    pub dropped_unconsumed: AtomicU64,
    /// Records a subscription found missing below the next one it read: deleted
    /// before its group consumed them. It reports them and reads on.
    pub holes_seen: AtomicU64,
}

impl LogStats {
    pub fn dropped_unconsumed(&self) -> u64 {
        self.dropped_unconsumed.load(Ordering::Relaxed)
    }
    pub fn holes_seen(&self) -> u64 {
        self.holes_seen.load(Ordering::Relaxed)
    }
}

pub(crate) struct LogInner {
    pub(crate) db: Db,
    pub(crate) config: LogConfig,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) stats: LogStats,
    partitions: Mutex<HashMap<String, u32>>,
    members: Mutex<HashMap<(String, String), u32>>,
}

impl fmt::Debug for Log {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Log")
            .field("db", &self.inner.db)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// 64-bit FNV-1a.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The partition of `key` among `partitions`: FNV-1a, stable across processes and
/// versions (it decides where history lives, so it must never change).
pub fn partition_for_key(key: &str, partitions: u32) -> u32 {
    let hash = fnv1a(key.as_bytes());
    // The remainder is below `partitions`, so it fits.
    u32::try_from(hash % u64::from(partitions.max(1))).unwrap_or(0)
}

impl Log {
    /// Opens the log on `db`, creating its tables if needed.
    pub async fn open(db: Db, config: LogConfig) -> Result<Self, Error> {
        Self::open_with_clock(db, config, Arc::new(SystemClock)).await
    }

    pub async fn open_with_clock(
        db: Db,
        config: LogConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, Error> {
        if config.default_partitions == 0 || config.insert_chunk_len == 0 {
            return Err(Error::permanent(
                "default_partitions and insert_chunk_len must be at least 1",
            ));
        }
        db.migrate(MIGRATIONS).await?;
        Ok(Self {
            inner: Arc::new(LogInner {
                db,
                config,
                clock,
                stats: LogStats::default(),
                partitions: Mutex::new(HashMap::new()),
                members: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The member id of the next subscription to `group` on `topic`.
    pub(crate) fn member_id_for(&self, group: &str, topic: &str) -> String {
        match &self.inner.config.instance_id {
            None => uuid::Uuid::now_v7().to_string(),
            Some(instance) => {
                let mut members = self
                    .inner
                    .members
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let n = members
                    .entry((group.to_owned(), topic.to_owned()))
                    .or_insert(0);
                let id = format!("{instance}/{group}/{topic}/{n}");
                *n += 1;
                id
            }
        }
    }

    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    pub fn config(&self) -> &LogConfig {
        &self.inner.config
    }

    /// Creates `topic` with `partitions` partitions; returns the partition count it has
    /// (an existing topic keeps its own count).
    pub async fn create_topic(&self, topic: &str, partitions: u32) -> Result<u32, Error> {
        if topic.is_empty() || topic.len() > 249 {
            return Err(Error::permanent(format!(
                "topic names are 1 to 249 characters, got {topic:?}"
            )));
        }
        if partitions == 0 {
            return Err(Error::permanent("a topic needs at least one partition"));
        }
        let mut tx = self.inner.db.begin().await?;
        let count = self.create_topic_in(&mut tx, topic, partitions).await?;
        tx.commit().await?;
        self.cache_partitions(topic, count);
        Ok(count)
    }

    /// [`Log::create_topic`] inside a caller's transaction (not cached until it commits).
    async fn create_topic_in(
        &self,
        tx: &mut Tx,
        topic: &str,
        partitions: u32,
    ) -> Result<u32, Error> {
        let now = to_micros(self.inner.clock.now());
        let created = sqlx::query(
            "INSERT INTO eddy_log_topics (topic, partitions, created_at_us) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(topic)
        .bind(i64::from(partitions))
        .bind(now)
        .execute(tx.conn())
        .await
        .map_err(|e| classify("cannot create topic", e))?
        .rows_affected()
            == 1;
        if created {
            for partition in 0..partitions {
                sqlx::query(
                    "INSERT INTO eddy_log_partitions (topic, partition, next_offset) VALUES ($1, $2, 0)",
                )
                .bind(topic)
                .bind(i64::from(partition))
                .execute(tx.conn())
                .await
                .map_err(|e| classify("cannot create partitions", e))?;
            }
        }
        let count: i64 =
            sqlx::query_scalar("SELECT partitions FROM eddy_log_topics WHERE topic = $1")
                .bind(topic)
                .fetch_one(tx.conn())
                .await
                .map_err(|e| classify("cannot read topic", e))?;
        u32::try_from(count).map_err(|e| Error::permanent("bad partition count").with_source(e))
    }

    /// The partition count of `topic` as seen by `tx`, creating the topic in `tx` if
    /// allowed. Inside the transaction, because SQLite has one writer: a second
    /// transaction opened here would wait for this one forever.
    async fn partitions_in(&self, tx: &mut Tx, topic: &str) -> Result<u32, Error> {
        if let Some(count) = self.cached_partitions(topic) {
            return Ok(count);
        }
        let count: Option<i64> =
            sqlx::query_scalar("SELECT partitions FROM eddy_log_topics WHERE topic = $1")
                .bind(topic)
                .fetch_optional(tx.conn())
                .await
                .map_err(|e| classify("cannot read topic", e))?;
        match count {
            Some(count) => {
                let count = u32::try_from(count)
                    .map_err(|e| Error::permanent("bad partition count").with_source(e))?;
                self.cache_partitions(topic, count);
                Ok(count)
            }
            None if self.inner.config.auto_create_topics => {
                self.create_topic_in(tx, topic, self.inner.config.default_partitions)
                    .await
            }
            // An operator may create it: about the environment, not the events.
            None => Err(Error::unavailable(format!(
                "topic {topic:?} does not exist"
            ))),
        }
    }

    /// The partition count of `topic`, creating the topic if allowed.
    pub async fn partitions(&self, topic: &str) -> Result<u32, Error> {
        if let Some(count) = self.cached_partitions(topic) {
            return Ok(count);
        }
        let mut tx = self.inner.db.begin().await?;
        let count = self.partitions_in(&mut tx, topic).await?;
        tx.commit().await?;
        self.cache_partitions(topic, count);
        Ok(count)
    }

    fn cached_partitions(&self, topic: &str) -> Option<u32> {
        self.inner
            .partitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(topic)
            .copied()
    }

    fn forget_partitions(&self, topic: &str) {
        self.inner
            .partitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(topic);
    }

    fn cache_partitions(&self, topic: &str, count: u32) {
        self.inner
            .partitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(topic.to_owned(), count);
    }

    /// Appends `events` to `topic` inside `tx`: they become visible, and subscribers
    /// are woken, when `tx` commits. Returns each event's `(partition, offset)`.
    ///
    /// Each touched partition's row stays locked until `tx` ends, so keep the
    /// transaction short; partitions are locked in ascending order to avoid deadlocks
    /// between appends.
    pub async fn append(
        &self,
        tx: &mut Tx,
        topic: &str,
        events: &[Envelope],
    ) -> Result<Vec<(u32, u64)>, Error> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let partitions = self.partitions_in(tx, topic).await?;
        let mut by_partition: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (index, event) in events.iter().enumerate() {
            by_partition
                .entry(partition_for_key(&event.key, partitions))
                .or_default()
                .push(index);
        }
        let now = to_micros(self.inner.clock.now());
        let mut positions = vec![(0u32, 0u64); events.len()];
        for (partition, indexes) in by_partition {
            let len = i64::try_from(indexes.len())
                .map_err(|e| Error::permanent("batch too large").with_source(e))?;
            let end: i64 = sqlx::query_scalar(
                "UPDATE eddy_log_partitions SET next_offset = next_offset + $1 WHERE topic = $2 AND partition = $3 RETURNING next_offset",
            )
            .bind(len)
            .bind(topic)
            .bind(i64::from(partition))
            .fetch_optional(tx.conn())
            .await
            .map_err(|e| classify("cannot reserve offsets", e))?
            .ok_or_else(|| {
                // Cached from a creation that rolled back: forget it and try again.
                self.forget_partitions(topic);
                Error::transient(format!("partition {partition} of {topic:?} does not exist"))
            })?;
            let first = end - len;
            for (chunk_index, chunk) in indexes
                .chunks(self.inner.config.insert_chunk_len)
                .enumerate()
            {
                let chunk_first = first + (chunk_index * self.inner.config.insert_chunk_len) as i64;
                let mut sql = format!(
                    "INSERT INTO eddy_log_records (topic, partition, record_offset, appended_at_us, {}) VALUES ",
                    envelope_row::COLUMNS
                );
                let mut next = 1;
                for i in 0..chunk.len() {
                    if i > 0 {
                        sql.push_str(", ");
                    }
                    next = envelope_row::push_placeholders(&mut sql, next, 4);
                }
                let mut query = sqlx::query(&sql);
                for (i, &index) in chunk.iter().enumerate() {
                    let offset = chunk_first + i as i64;
                    query = query
                        .bind(topic)
                        .bind(i64::from(partition))
                        .bind(offset)
                        .bind(now);
                    query = envelope_row::bind_envelope(query, &events[index]);
                    positions[index] = (partition, u64::try_from(offset).unwrap_or(0));
                }
                query
                    .execute(tx.conn())
                    .await
                    .map_err(|e| classify("cannot append records", e))?;
            }
        }
        tx.signal_on_commit(&signal_channel(topic)).await?;
        Ok(positions)
    }

    /// The log's counters.
    pub fn stats(&self) -> &LogStats {
        &self.inner.stats
    }

    /// Deletes records past their retention that every group of their topic has
    /// committed past (a topic nobody consumes loses them at the retention), and —
    /// if [`LogConfig::unconsumed_retention`] is set — records past it whoever has not
    /// consumed them, reporting each such drop. At most `batch_len_max` records per
    /// call; returns how many went. Call it periodically (the platform does).
    pub async fn purge_expired(&self, batch_len_max: i64) -> Result<u64, Error> {
        let topics: Vec<(String, i64)> =
            sqlx::query_as("SELECT topic, partitions FROM eddy_log_topics ORDER BY topic")
                .fetch_all(self.inner.db.pool())
                .await
                .map_err(|e| classify("cannot list topics", e))?;
        let mut budget = batch_len_max.max(0);
        let mut total = 0;
        for (topic, partitions) in topics {
            for partition in 0..partitions {
                if budget == 0 {
                    return Ok(total);
                }
                let deleted = self.purge_partition(&topic, partition, budget).await?;
                budget -= i64::try_from(deleted).unwrap_or(budget);
                total += deleted;
            }
        }
        Ok(total)
    }

    /// [`Log::purge_expired`] on one partition.
    async fn purge_partition(
        &self,
        topic: &str,
        partition: i64,
        budget: i64,
    ) -> Result<u64, Error> {
        let config = &self.inner.config;
        let now = self.inner.clock.now();
        let retention = if topic.ends_with(".dlq") {
            config.dead_letter_retention
        } else {
            config.retention
        };
        let positions = self.group_positions(topic, partition).await?;
        // Below the lowest position every group has consumed; no group: no one waits.
        let consumed_below = positions.iter().map(|(_, p)| *p).min().unwrap_or(i64::MAX);
        let mut deleted = self
            .delete_records(
                topic,
                partition,
                micros_before(now, retention),
                consumed_below,
                budget,
            )
            .await?;
        if let Some(hard) = config.unconsumed_retention {
            let left = budget - i64::try_from(deleted).unwrap_or(budget);
            if left > 0 {
                let dropped = self
                    .delete_records(topic, partition, micros_before(now, hard), i64::MAX, left)
                    .await?;
                if dropped > 0 {
                    self.inner
                        .stats
                        .dropped_unconsumed
                        .fetch_add(dropped, Ordering::Relaxed);
                    let behind: Vec<&str> = positions.iter().map(|(g, _)| g.as_str()).collect();
                    tracing::error!(topic, partition, dropped, groups = ?behind, "retention deleted records a group had not consumed (unconsumed_retention)");
                }
                deleted += dropped;
            }
        }
        Ok(deleted)
    }

    /// Every group of `topic` with its committed position on `partition` (0 when it
    /// has members but never committed there).
    async fn group_positions(
        &self,
        topic: &str,
        partition: i64,
    ) -> Result<Vec<(String, i64)>, Error> {
        sqlx::query_as(
            "SELECT g.consumer_group, COALESCE(o.next_offset, 0) FROM \
             (SELECT consumer_group FROM eddy_log_offsets WHERE topic = $1 UNION SELECT consumer_group FROM eddy_log_members WHERE topic = $1) g \
             LEFT JOIN eddy_log_offsets o ON o.consumer_group = g.consumer_group AND o.topic = $1 AND o.partition = $2",
        )
        .bind(topic)
        .bind(partition)
        .fetch_all(self.inner.db.pool())
        .await
        .map_err(|e| classify("cannot read the groups' positions", e))
    }

    /// Deletes up to `limit` records of a partition appended before `before_us` with
    /// offsets below `below`, oldest first.
    async fn delete_records(
        &self,
        topic: &str,
        partition: i64,
        before_us: i64,
        below: i64,
        limit: i64,
    ) -> Result<u64, Error> {
        let result = sqlx::query(
            "DELETE FROM eddy_log_records WHERE topic = $1 AND partition = $2 AND record_offset IN \
             (SELECT record_offset FROM eddy_log_records WHERE topic = $1 AND partition = $2 AND appended_at_us < $3 AND record_offset < $4 ORDER BY record_offset LIMIT $5)",
        )
        .bind(topic)
        .bind(partition)
        .bind(before_us)
        .bind(below)
        .bind(limit)
        .execute(self.inner.db.pool())
        .await
        .map_err(|e| classify("cannot purge expired records", e))?;
        Ok(result.rows_affected())
    }

    /// The end offset (next offset to be written) of every partition of `topic`.
    pub async fn end_offsets(&self, topic: &str) -> Result<BTreeMap<u32, u64>, Error> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT partition, next_offset FROM eddy_log_partitions WHERE topic = $1",
        )
        .bind(topic)
        .fetch_all(self.inner.db.pool())
        .await
        .map_err(|e| classify("cannot read end offsets", e))?;
        Ok(rows
            .into_iter()
            .map(|(p, o)| (p as u32, o.max(0) as u64))
            .collect())
    }

    /// The committed offsets of `group` on `topic`.
    pub async fn committed_offsets(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<BTreeMap<u32, u64>, Error> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT partition, next_offset FROM eddy_log_offsets WHERE consumer_group = $1 AND topic = $2",
        )
        .bind(group)
        .bind(topic)
        .fetch_all(self.inner.db.pool())
        .await
        .map_err(|e| classify("cannot read committed offsets", e))?;
        Ok(rows
            .into_iter()
            .map(|(p, o)| (p as u32, o.max(0) as u64))
            .collect())
    }
}

impl Log {
    /// For each partition in `from`, the first record of `topic` still kept at or after
    /// the given offset: its offset and when the log appended it (`appended_at_us`, the
    /// log's own clock — not the event's `occurred_at`, which a producer may set long
    /// before publishing). A partition without such a record (caught up, or retention
    /// deleted everything from there on) is absent. The lag monitor takes the age of a
    /// group's oldest unconsumed record from this: one indexed lookup per partition.
    pub async fn first_kept_records(
        &self,
        topic: &str,
        from: &BTreeMap<u32, u64>,
    ) -> Result<BTreeMap<u32, (u64, eddy_core::OffsetDateTime)>, Error> {
        let mut found = BTreeMap::new();
        for (&partition, &offset) in from {
            let row: Option<(i64, i64)> = sqlx::query_as(
                "SELECT record_offset, appended_at_us FROM eddy_log_records \
                 WHERE topic = $1 AND partition = $2 AND record_offset >= $3 ORDER BY record_offset LIMIT 1",
            )
            .bind(topic)
            .bind(i64::from(partition))
            .bind(i64::try_from(offset).unwrap_or(i64::MAX))
            .fetch_optional(self.inner.db.pool())
            .await
            .map_err(|e| classify("cannot read the first unconsumed record", e))?;
            if let Some((record_offset, appended_at_us)) = row {
                let appended_at = eddy_core::envelope::from_micros(appended_at_us)?;
                found.insert(partition, (record_offset.max(0) as u64, appended_at));
            }
        }
        Ok(found)
    }

    /// Records of `topic` that `group` has not committed, over every partition, as
    /// Kafka counts it: from the committed offset (or the oldest record still kept,
    /// whichever is later — a record retention deleted is not waiting for anyone) to
    /// the end. A group that never committed lags by everything kept.
    pub async fn lag(&self, group: &str, topic: &str) -> Result<u64, Error> {
        let ends = self.end_offsets(topic).await?;
        let committed = self.committed_offsets(group, topic).await?;
        let mut lag = 0u64;
        for (partition, end) in ends {
            let oldest: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(record_offset) FROM eddy_log_records WHERE topic = $1 AND partition = $2",
            )
            .bind(topic)
            .bind(i64::from(partition))
            .fetch_one(self.inner.db.pool())
            .await
            .map_err(|e| classify("cannot read the oldest kept offset", e))?;
            // Nothing kept: everything before the end is gone.
            let low = oldest.map_or(end, |o| o.max(0) as u64);
            let position = committed.get(&partition).copied().unwrap_or(0).max(low);
            lag += end.saturating_sub(position);
        }
        Ok(lag)
    }
}

#[async_trait]
impl Publisher for Log {
    fn system(&self) -> &'static str {
        "eddy_log"
    }

    async fn publish(&self, topic: &str, events: &[Envelope]) -> Result<(), Error> {
        let mut tx = self.inner.db.begin().await?;
        self.append(&mut tx, topic, events).await?;
        tx.commit().await
    }
}

#[async_trait]
impl Subscriber for Log {
    fn system(&self) -> &'static str {
        "eddy_log"
    }

    /// Returns a member that has joined `group`: see [`LogSubscription`].
    async fn subscribe(&self, topic: &str, group: &str) -> Result<Box<dyn Subscription>, Error> {
        let partitions = self.partitions(topic).await?;
        Ok(Box::new(
            LogSubscription::join(self.clone(), topic, group, partitions).await,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::partition_for_key;

    #[test]
    fn the_partition_of_a_key_never_changes() {
        // Pinned values: changing the hash would move history between partitions.
        assert_eq!(partition_for_key("", 8), partition_for_key("", 8));
        assert_eq!(partition_for_key("order-1", 1), 0);
        let spread: std::collections::BTreeSet<u32> = (0..100)
            .map(|i| partition_for_key(&format!("key-{i}"), 8))
            .collect();
        assert_eq!(spread.len(), 8, "100 keys reach every one of 8 partitions");
    }
}
