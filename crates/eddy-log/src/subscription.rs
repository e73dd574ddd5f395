//! One member of a consumer group on a topic of the embedded log.
//!
//! Group membership works by leases. Every `heartbeat_interval` a member records its
//! heartbeat, lists the live members (heartbeat within `session_timeout`), and computes
//! the same assignment every member computes: partition `p` goes to the live member at
//! index `p % members` in id order. It then renews the leases it holds, takes the free or
//! expired leases of partitions assigned to it (starting from the group's committed
//! offset), and gives back partitions assigned elsewhere once everything it fetched from
//! them is committed (or after `session_timeout`, so a stuck handler cannot hold a
//! partition forever; the new owner then redelivers, and idempotent handlers absorb it).
//!
//! A member that crashes stops renewing; its leases expire after `session_timeout` and
//! the partitions' uncommitted messages are delivered again to the next owner.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use eddy_core::envelope::to_micros;
use eddy_core::{Delivery, Error, Message, Subscription, Undecodable};
use eddy_sql::{classify, envelope_row, Tx};
use sqlx::Row;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use tokio::time::Instant;

use eddy_sql::signal::SignalReceiver;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::log::{signal_channel, Log};

/// One member's view of a topic in a consumer group. Create it with
/// [`eddy_core::Subscriber::subscribe`] on a [`Log`], which returns once the member has
/// joined the group: its first heartbeat is committed, so every member whose heartbeat
/// starts afterwards counts it in the assignment. (If that heartbeat fails, `subscribe`
/// still returns; the member joins at its next heartbeat or fetch.)
pub struct LogSubscription {
    member: Arc<Member>,
    signal: Mutex<SignalReceiver>,
    stop: CancellationToken,
}

struct Member {
    log: Log,
    topic: String,
    group: String,
    member_id: String,
    partitions: u32,
    state: Mutex<State>,
}

impl fmt::Debug for LogSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogSubscription")
            .field("topic", &self.member.topic)
            .field("group", &self.member.group)
            .field("member_id", &self.member.member_id)
            .finish_non_exhaustive()
    }
}

impl Drop for LogSubscription {
    /// Stops the heartbeat. Without [`Subscription::close`] this is what a crash looks
    /// like to the group: the leases expire after `session_timeout`.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct State {
    owned: BTreeMap<u32, Owned>,
    last_heartbeat: Option<Instant>,
    /// Rotates which partition is read first, so a busy partition cannot starve others.
    next_first: usize,
    closed: bool,
}

#[derive(Debug, Clone, Copy)]
struct Owned {
    /// The next offset to fetch.
    fetch_next: u64,
    /// Everything below this is committed.
    committed: u64,
    /// Set when the partition is assigned to another member: no more fetching.
    releasing_since: Option<Instant>,
}

impl LogSubscription {
    /// A new member that has joined the group (see the type's docs). Joining here, not
    /// only on the heartbeat task: a member whose `subscribe` had returned could
    /// otherwise stay unknown to the group for as long as that task waited to be
    /// scheduled, and a member (re)joining meanwhile would take its partitions too.
    pub(crate) async fn join(log: Log, topic: &str, group: &str, partitions: u32) -> Self {
        let signal = log.db().subscribe_signal(&signal_channel(topic));
        let member_id = log.member_id_for(group, topic);
        let member = Arc::new(Member {
            log,
            topic: topic.to_owned(),
            group: group.to_owned(),
            member_id,
            partitions,
            state: Mutex::new(State {
                owned: BTreeMap::new(),
                last_heartbeat: None,
                next_first: 0,
                closed: false,
            }),
        });
        {
            let mut state = member.state.lock().await;
            if let Err(error) = member.heartbeat(&mut state).await {
                tracing::warn!(topic = %member.topic, group = %member.group, %error, "cannot join the group yet; the next heartbeat tries again");
            }
        }
        let stop = CancellationToken::new();
        tokio::spawn(heartbeat_loop(Arc::downgrade(&member), stop.clone()));
        Self {
            member,
            signal: Mutex::new(signal),
            stop,
        }
    }

    /// The partitions this member owns right now.
    pub async fn assigned_partitions(&self) -> Vec<u32> {
        self.member
            .state
            .lock()
            .await
            .owned
            .keys()
            .copied()
            .collect()
    }

    pub fn member_id(&self) -> &str {
        &self.member.member_id
    }
}

/// Heartbeats run on their own task, so a member whose handlers are slow (and which
/// therefore fetches rarely) keeps its partitions: the failure where backoff plus
/// processing outlasts the poll interval and the member is thrown out cannot happen.
async fn heartbeat_loop(member: Weak<Member>, stop: CancellationToken) {
    loop {
        let interval = match member.upgrade() {
            Some(member) => {
                let mut state = member.state.lock().await;
                if state.closed {
                    return;
                }
                let due = state
                    .last_heartbeat
                    .is_none_or(|at| at.elapsed() >= member.log.inner.config.heartbeat_interval);
                if due {
                    if let Err(error) = member.heartbeat(&mut state).await {
                        tracing::warn!(topic = %member.topic, group = %member.group, %error, "heartbeat failed");
                    }
                }
                member.log.inner.config.heartbeat_interval
            }
            None => return,
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

impl Member {
    fn now_us(&self) -> i64 {
        to_micros(self.log.inner.clock.now())
    }

    /// Renews membership and leases and rebalances; see the module docs.
    ///
    /// The new ownership is worked out on a copy and becomes the member's only when the
    /// transaction commits: a failed heartbeat (a lost connection, a deadlock with
    /// another member's heartbeat) leaves the table and the member agreeing, as they did
    /// before it.
    async fn heartbeat(&self, state: &mut State) -> Result<(), Error> {
        let config = &self.log.inner.config;
        let session_us = i64::try_from(config.session_timeout.as_micros()).unwrap_or(i64::MAX);
        let mut tx = self.log.db().begin().await?;
        // Read after `begin`, which may wait for a connection: a lease must not be
        // dated earlier than the transaction that writes it.
        let started = Instant::now();
        let now = self.now_us();
        let expires = now.saturating_add(session_us);
        let members = self.live_members(&mut tx, now, session_us).await?;
        let me = members
            .iter()
            .position(|m| m == &self.member_id)
            .unwrap_or(0);
        let member_count = members.len().max(1);

        // Leases the table says are ours — the ones we track, and possibly stale ones a
        // failed heartbeat or an earlier life of this instance id left behind — renewed
        // in the same statement: one another member took meanwhile is neither renewed
        // nor returned, so it cannot stay in what this member fetches.
        let held: Vec<i64> = sqlx::query_scalar(
            "UPDATE eddy_log_leases SET expires_at_us = $1 WHERE consumer_group = $2 AND topic = $3 AND member_id = $4 RETURNING partition",
        )
        .bind(expires)
        .bind(&self.group)
        .bind(&self.topic)
        .bind(&self.member_id)
        .fetch_all(tx.conn())
        .await
        .map_err(|e| classify("cannot renew leases", e))?;
        // Leases we believed ours but lost (we were too slow and someone took over).
        let mut owned = state.owned.clone();
        owned.retain(|p, _| held.contains(&i64::from(*p)));

        for partition in 0..self.partitions {
            let mine = partition as usize % member_count == me;
            let tracked = owned.get_mut(&partition);
            match (mine, tracked) {
                (true, Some(tracked)) => {
                    // Assigned here again before a release drained: serve it again.
                    tracked.releasing_since = None;
                }
                (true, None) => {
                    if let Some(start) = self.take_lease(&mut tx, partition, now, expires).await? {
                        tracing::debug!(topic = %self.topic, group = %self.group, partition, start, "partition assigned");
                        owned.insert(
                            partition,
                            Owned {
                                fetch_next: start,
                                committed: start,
                                releasing_since: None,
                            },
                        );
                    }
                }
                (false, Some(tracked)) => {
                    let since = *tracked.releasing_since.get_or_insert_with(Instant::now);
                    let drained = tracked.committed >= tracked.fetch_next;
                    if drained || since.elapsed() >= config.session_timeout {
                        self.release_lease(&mut tx, partition).await?;
                        owned.remove(&partition);
                        tracing::debug!(topic = %self.topic, group = %self.group, partition, drained, "partition released");
                    }
                }
                (false, None) if held.contains(&i64::from(partition)) => {
                    // Ours in the table only: nothing of it is in flight here.
                    self.release_lease(&mut tx, partition).await?;
                    tracing::debug!(topic = %self.topic, group = %self.group, partition, "stale lease released");
                }
                (false, None) => {}
            }
        }
        tx.commit().await?;
        state.owned = owned;
        // The leases run from `started`, not from the commit: the fetch gate must not
        // outlive them.
        state.last_heartbeat = Some(started);
        Ok(())
    }

    /// Records this member's heartbeat, forgets members silent for a session, and lists
    /// the live ones in id order (the order the assignment is computed in).
    async fn live_members(
        &self,
        tx: &mut Tx,
        now: i64,
        session_us: i64,
    ) -> Result<Vec<String>, Error> {
        sqlx::query(
            "INSERT INTO eddy_log_members (consumer_group, topic, member_id, heartbeat_at_us) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (consumer_group, topic, member_id) DO UPDATE SET heartbeat_at_us = excluded.heartbeat_at_us",
        )
        .bind(&self.group)
        .bind(&self.topic)
        .bind(&self.member_id)
        .bind(now)
        .execute(tx.conn())
        .await
        .map_err(|e| classify("cannot record heartbeat", e))?;
        sqlx::query(
            "DELETE FROM eddy_log_members WHERE consumer_group = $1 AND topic = $2 AND heartbeat_at_us < $3",
        )
        .bind(&self.group)
        .bind(&self.topic)
        .bind(now.saturating_sub(session_us))
        .execute(tx.conn())
        .await
        .map_err(|e| classify("cannot expire members", e))?;
        sqlx::query_scalar(
            "SELECT member_id FROM eddy_log_members WHERE consumer_group = $1 AND topic = $2 ORDER BY member_id",
        )
        .bind(&self.group)
        .bind(&self.topic)
        .fetch_all(tx.conn())
        .await
        .map_err(|e| classify("cannot list members", e))
    }

    /// Takes `partition`'s lease if it is free, expired or already ours; then the
    /// offset to start from (the group's committed one). `None`: someone else holds it.
    async fn take_lease(
        &self,
        tx: &mut Tx,
        partition: u32,
        now: i64,
        expires: i64,
    ) -> Result<Option<u64>, Error> {
        let taken = sqlx::query(
            "INSERT INTO eddy_log_leases (consumer_group, topic, partition, member_id, expires_at_us) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET member_id = excluded.member_id, expires_at_us = excluded.expires_at_us \
             WHERE eddy_log_leases.expires_at_us < $6 OR eddy_log_leases.member_id = excluded.member_id",
        )
        .bind(&self.group)
        .bind(&self.topic)
        .bind(i64::from(partition))
        .bind(&self.member_id)
        .bind(expires)
        .bind(now)
        .execute(tx.conn())
        .await
        .map_err(|e| classify("cannot take a lease", e))?
        .rows_affected()
            == 1;
        if !taken {
            return Ok(None);
        }
        let committed: Option<i64> = sqlx::query_scalar(
            "SELECT next_offset FROM eddy_log_offsets WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
        )
        .bind(&self.group)
        .bind(&self.topic)
        .bind(i64::from(partition))
        .fetch_optional(tx.conn())
        .await
        .map_err(|e| classify("cannot read the committed offset", e))?;
        Ok(Some(committed.unwrap_or(0).max(0) as u64))
    }

    async fn release_lease(&self, tx: &mut Tx, partition: u32) -> Result<(), Error> {
        sqlx::query(
            "DELETE FROM eddy_log_leases WHERE consumer_group = $1 AND topic = $2 AND partition = $3 AND member_id = $4",
        )
        .bind(&self.group)
        .bind(&self.topic)
        .bind(i64::from(partition))
        .bind(&self.member_id)
        .execute(tx.conn())
        .await
        .map_err(|e| classify("cannot release a lease", e))?;
        Ok(())
    }

    async fn read_available(
        &self,
        state: &mut State,
        max_len: usize,
    ) -> Result<Vec<Delivery>, Error> {
        let fetchable: Vec<(u32, u64)> = state
            .owned
            .iter()
            .filter(|(_, o)| o.releasing_since.is_none())
            .map(|(p, o)| (*p, o.fetch_next))
            .collect();
        if fetchable.is_empty() {
            return Ok(Vec::new());
        }
        // One cheap query tells which partitions have anything new.
        let ends = self.log.end_offsets(&self.topic).await?;
        let with_data: Vec<(u32, u64)> = fetchable
            .into_iter()
            .filter(|(p, next)| ends.get(p).is_some_and(|end| end > next))
            .collect();
        if with_data.is_empty() {
            return Ok(Vec::new());
        }
        let first = state.next_first % with_data.len();
        state.next_first = state.next_first.wrapping_add(1);
        let mut out = Vec::new();
        // Positions move only after the last await, so a cancelled fetch loses nothing.
        let mut advanced = Vec::new();
        for i in 0..with_data.len() {
            let remaining = max_len.saturating_sub(out.len());
            if remaining == 0 {
                break;
            }
            let (partition, next) = with_data[(first + i) % with_data.len()];
            let rows = sqlx::query(&format!(
                "SELECT record_offset, {} FROM eddy_log_records WHERE topic = $1 AND partition = $2 AND record_offset >= $3 ORDER BY record_offset LIMIT $4",
                envelope_row::COLUMNS
            ))
            .bind(&self.topic)
            .bind(i64::from(partition))
            .bind(i64::try_from(next).unwrap_or(i64::MAX))
            .bind(i64::try_from(remaining).unwrap_or(i64::MAX))
            .fetch_all(self.log.db().pool())
            .await
            .map_err(|e| classify("cannot fetch records", e))?;
            for (index, row) in rows.iter().enumerate() {
                let offset: i64 = row
                    .try_get("record_offset")
                    .map_err(|e| classify("cannot read an offset", e))?;
                let offset = offset.max(0) as u64;
                if index == 0 && offset > next {
                    self.report_hole(partition, next, offset);
                }
                let message = match envelope_row::read_envelope(row) {
                    Ok(envelope) => Message::Event(envelope),
                    Err(error) => Message::Undecodable(Undecodable {
                        key: row.try_get::<String, _>("event_key").ok(),
                        headers: Vec::new(),
                        // Best effort: the row is already undecodable, and its error
                        // text travels with it to the dead letters.
                        payload: row.try_get::<Vec<u8>, _>("payload").unwrap_or_default(),
                        error: error.to_string(),
                    }),
                };
                advanced.push((partition, offset + 1));
                out.push(Delivery {
                    topic: self.topic.clone(),
                    partition,
                    offset,
                    message,
                });
            }
        }
        for (partition, next) in advanced {
            if let Some(owned) = state.owned.get_mut(&partition) {
                owned.fetch_next = owned.fetch_next.max(next);
            }
        }
        Ok(out)
    }
}

impl Member {
    /// Offsets are dense, so records missing between `next` and the first one found
    /// were deleted by retention before this group read them: said, counted, skipped.
    fn report_hole(&self, partition: u32, next: u64, found: u64) {
        let missing = found - next;
        if next == 0 {
            // A group reading from the start finds what retention kept: nothing of
            // its own was lost.
            tracing::info!(topic = %self.topic, group = %self.group, partition, first_kept = found, "group starts at the oldest record kept");
            return;
        }
        self.log
            .inner
            .stats
            .holes_seen
            .fetch_add(missing, Ordering::Relaxed);
        tracing::error!(topic = %self.topic, group = %self.group, partition, from = next, to = found, missing, "records were deleted before this group consumed them; reading on from the next kept record");
    }
}

#[async_trait]
impl Subscription for LogSubscription {
    async fn fetch(&self, max_len: usize) -> Result<Vec<Delivery>, Error> {
        let member = &self.member;
        let config = &member.log.inner.config;
        let max_len = max_len.max(1);
        loop {
            {
                let mut state = member.state.lock().await;
                if state.closed {
                    return Err(Error::permanent("subscription is closed"));
                }
                // A heartbeat's margin short of the session: leases are surely live.
                let live_for = config
                    .session_timeout
                    .saturating_sub(config.heartbeat_interval);
                let renewed_within_session = state
                    .last_heartbeat
                    .is_some_and(|at| at.elapsed() < live_for);
                if !renewed_within_session {
                    // A member whose join failed joins here rather than at the next
                    // tick; and one whose heartbeats have failed for a session may have
                    // lost its partitions to others: it renews before it fetches again,
                    // or fails.
                    member.heartbeat(&mut state).await?;
                }
                let deliveries = member.read_available(&mut state, max_len).await?;
                if !deliveries.is_empty() {
                    return Ok(deliveries);
                }
            }
            // Wait without holding the state, so commits and heartbeats go on.
            let mut signal = self.signal.lock().await;
            let _ = tokio::time::timeout(config.fallback_poll_interval, signal.changed()).await;
        }
    }

    async fn commit(&self, offsets: &[(u32, u64)]) -> Result<(), Error> {
        self.member.commit(offsets).await
    }

    async fn close(&self) -> Result<(), Error> {
        self.stop.cancel();
        self.member.close().await
    }
}

impl Member {
    async fn commit(&self, offsets: &[(u32, u64)]) -> Result<(), Error> {
        let mut state = self.state.lock().await;
        let now = self.now_us();
        let mut tx = self.log.db().begin().await?;
        for &(partition, next_offset) in offsets {
            // Only the lease holder may move the group's position.
            let result = sqlx::query(
                "INSERT INTO eddy_log_offsets (consumer_group, topic, partition, next_offset, updated_at_us) \
                 SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM eddy_log_leases WHERE consumer_group = $1 AND topic = $2 AND partition = $3 AND member_id = $6) \
                 ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET next_offset = excluded.next_offset, updated_at_us = excluded.updated_at_us \
                 WHERE excluded.next_offset > eddy_log_offsets.next_offset",
            )
            .bind(&self.group)
            .bind(&self.topic)
            .bind(i64::from(partition))
            .bind(i64::try_from(next_offset).unwrap_or(i64::MAX))
            .bind(now)
            .bind(&self.member_id)
            .execute(tx.conn())
            .await
            .map_err(|e| classify("cannot commit offsets", e))?;
            if result.rows_affected() == 0 {
                tracing::debug!(topic = %self.topic, partition, next_offset, "commit skipped: not the owner or not newer");
            }
        }
        tx.commit().await?;
        for &(partition, next_offset) in offsets {
            if let Some(owned) = state.owned.get_mut(&partition) {
                owned.committed = owned.committed.max(next_offset);
            }
        }
        Ok(())
    }

    async fn close(&self) -> Result<(), Error> {
        let mut state = self.state.lock().await;
        if state.closed {
            return Ok(());
        }
        state.closed = true;
        state.owned.clear();
        let mut tx = self.log.db().begin().await?;
        for table in ["eddy_log_leases", "eddy_log_members"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE consumer_group = $1 AND topic = $2 AND member_id = $3"
            ))
            .bind(&self.group)
            .bind(&self.topic)
            .bind(&self.member_id)
            .execute(tx.conn())
            .await
            .map_err(|e| classify("cannot leave the group", e))?;
        }
        tx.commit().await?;
        // Other members learn of the departure at their next heartbeat.
        self.log.db().signal(&signal_channel(&self.topic));
        Ok(())
    }
}
