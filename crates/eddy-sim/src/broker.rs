//! The simulated broker: one topic with partitions, one consumer group, eager
//! rebalancing, and faults drawn from the simulation's seed.
//!
//! It keeps the contract of the embedded log and of Eddy's Kafka adapter: a partition
//! belongs to one member at a time; partition `p` is assigned to the live member at
//! `p % n` in id order; a live owner whose partition is assigned elsewhere stops
//! fetching it and hands it over once everything it fetched is committed (a crashed
//! owner at once); the new owner starts from the group's committed offset, so what was
//! not committed is delivered again; commits from a member that does not own the
//! partition are ignored; retention deletes only what the group committed.
//!
//! Not modelled: a live owner losing its partition while its work is unfinished (the
//! log's `session_timeout` forcing a release). Two members would then work one key at
//! once, and a dead letter by one and a late success by the other can apply a key out
//! of order — at-least-once without fencing; see `docs/failure-modes.md`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use eddy_core::{Delivery, Envelope, Error, Message, Publisher, Subscriber, Subscription};
use rand::rngs::StdRng;
use rand::Rng;

/// Fault rates, changed by the schedule as it runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// A fetch fails (transiently, or — one in four — permanently).
    pub fetch_error: f64,
    /// A commit fails.
    pub commit_error: f64,
}

#[derive(Debug, Default)]
struct Member {
    /// Partition it owns → the next offset to hand out.
    assigned: BTreeMap<u32, u64>,
}

#[derive(Debug)]
struct State {
    topic: String,
    partitions: Vec<Vec<Envelope>>,
    /// Records below this were deleted by retention, per partition.
    deleted_below: Vec<u64>,
    dead_letters: Vec<Envelope>,
    committed: BTreeMap<u32, u64>,
    members: BTreeMap<u64, Member>,
    /// Who each partition is assigned to (it may still be owned by another member,
    /// which is handing it over).
    target: Vec<Option<u64>>,
    next_member: u64,
    faults: Faults,
    rng: StdRng,
}

/// The broker, shared by the producer, the members and the checker.
#[derive(Debug, Clone)]
pub struct SimBroker {
    state: Arc<Mutex<State>>,
}

/// How long an idle fetch waits before answering "nothing" (simulated time).
const IDLE_FETCH: Duration = Duration::from_millis(5);

impl SimBroker {
    pub fn new(topic: &str, partitions: u32, rng: StdRng) -> Self {
        let partitions = partitions.max(1) as usize;
        Self {
            state: Arc::new(Mutex::new(State {
                topic: topic.to_owned(),
                partitions: vec![Vec::new(); partitions],
                deleted_below: vec![0; partitions],
                dead_letters: Vec::new(),
                committed: BTreeMap::new(),
                members: BTreeMap::new(),
                target: vec![None; partitions],
                next_member: 0,
                faults: Faults::default(),
                rng,
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_faults(&self, faults: Faults) {
        self.state().faults = faults;
    }

    /// A new member of the group; the group rebalances at once.
    pub fn join(&self) -> SimMember {
        let mut state = self.state();
        let id = state.next_member;
        state.next_member += 1;
        state.members.insert(id, Member::default());
        state.rebalance();
        SimMember {
            id,
            broker: self.clone(),
        }
    }

    /// Member `id` is gone (crashed, or closed): the group rebalances.
    pub fn leave(&self, id: u64) {
        let mut state = self.state();
        if state.members.remove(&id).is_some() {
            state.rebalance();
        }
    }

    /// Deletes what the group committed, as retention does.
    pub fn purge_committed(&self) {
        let mut state = self.state();
        for p in 0..state.partitions.len() {
            let committed = state.committed.get(&(p as u32)).copied().unwrap_or(0);
            state.deleted_below[p] = state.deleted_below[p].max(committed);
        }
    }

    /// Per partition: (end offset, committed offset).
    pub fn positions(&self) -> Vec<(u64, u64)> {
        let state = self.state();
        state
            .partitions
            .iter()
            .enumerate()
            .map(|(p, records)| {
                let committed = state.committed.get(&(p as u32)).copied().unwrap_or(0);
                (records.len() as u64, committed)
            })
            .collect()
    }

    pub fn dead_letters(&self) -> Vec<Envelope> {
        self.state().dead_letters.clone()
    }

    pub fn live_members(&self) -> usize {
        self.state().members.len()
    }
}

impl State {
    /// Assigns every partition to the live member at `p % n`; then hands over what
    /// can be handed over.
    fn rebalance(&mut self) {
        let ids: Vec<u64> = self.members.keys().copied().collect();
        for (p, target) in self.target.iter_mut().enumerate() {
            *target = (!ids.is_empty()).then(|| ids[p % ids.len()]);
        }
        self.hand_over();
    }

    fn owner(&self, p: u32) -> Option<u64> {
        self.members
            .iter()
            .find(|(_, m)| m.assigned.contains_key(&p))
            .map(|(id, _)| *id)
    }

    /// Moves each partition to its target once its owner (if any) committed all it
    /// fetched; the new owner starts at the committed offset.
    fn hand_over(&mut self) {
        for p in 0..self.partitions.len() as u32 {
            let Some(target) = self.target[p as usize] else {
                continue;
            };
            let committed = self.committed.get(&p).copied().unwrap_or(0);
            match self.owner(p) {
                Some(owner) if owner == target => continue,
                Some(owner) => {
                    let fetched = self.members[&owner].assigned[&p];
                    if committed < fetched {
                        continue; // still working: it hands over once committed
                    }
                    if let Some(member) = self.members.get_mut(&owner) {
                        member.assigned.remove(&p);
                    }
                }
                None => {}
            }
            let from = committed.max(self.deleted_below[p as usize]);
            if let Some(member) = self.members.get_mut(&target) {
                member.assigned.insert(p, from);
            }
        }
    }

    /// Whether `member` may fetch `p`: it owns it and is not handing it over.
    fn fetchable(&self, member: u64, p: u32) -> bool {
        self.target[p as usize] == Some(member)
    }

    fn partition_of(&self, key: &str) -> usize {
        // FNV-1a, as the log partitions.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in key.as_bytes() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        (hash % self.partitions.len() as u64) as usize
    }
}

#[async_trait]
impl Publisher for SimBroker {
    async fn publish(&self, topic: &str, events: &[Envelope]) -> Result<(), Error> {
        let mut state = self.state();
        if topic != state.topic {
            state.dead_letters.extend_from_slice(events);
            return Ok(());
        }
        for event in events {
            let p = state.partition_of(&event.key);
            state.partitions[p].push(event.clone());
        }
        Ok(())
    }
}

/// One member of the group.
#[derive(Debug)]
pub struct SimMember {
    pub id: u64,
    broker: SimBroker,
}

/// Hands out an already joined member on `subscribe` (the world decides when members
/// join, so their ids follow the seed).
#[derive(Debug)]
pub struct JoinedMember(pub Mutex<Option<SimMember>>);

#[async_trait]
impl Subscriber for JoinedMember {
    async fn subscribe(&self, _: &str, _: &str) -> Result<Box<dyn Subscription>, Error> {
        let member = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| Error::permanent("this member was subscribed already"))?;
        Ok(Box::new(member))
    }
}

#[async_trait]
impl Subscription for SimMember {
    async fn fetch(&self, max_len: usize) -> Result<Vec<Delivery>, Error> {
        let out = {
            let mut state = self.broker.state();
            let faults = state.faults;
            if state.rng.gen_bool(faults.fetch_error.clamp(0.0, 1.0)) {
                return Err(if state.rng.gen_bool(0.25) {
                    Error::permanent("simulated: the broker refused the fetch")
                } else {
                    Error::transient("simulated: the connection dropped")
                });
            }
            state.hand_over();
            let topic = state.topic.clone();
            let fetchable: Vec<u32> = (0..state.partitions.len() as u32)
                .filter(|p| state.fetchable(self.id, *p))
                .collect();
            let State {
                members,
                partitions,
                deleted_below,
                ..
            } = &mut *state;
            let Some(member) = members.get_mut(&self.id) else {
                return Err(Error::permanent("simulated: not a member (crashed)"));
            };
            let mut out = Vec::new();
            for (p, next) in member.assigned.iter_mut() {
                if !fetchable.contains(p) {
                    continue;
                }
                let records = &partitions[*p as usize];
                *next = (*next).max(deleted_below[*p as usize]);
                while out.len() < max_len.max(1) && (*next as usize) < records.len() {
                    out.push(Delivery {
                        topic: topic.clone(),
                        partition: *p,
                        offset: *next,
                        message: Message::Event(records[*next as usize].clone()),
                    });
                    *next += 1;
                }
            }
            out
        };
        if out.is_empty() {
            tokio::time::sleep(IDLE_FETCH).await;
        }
        Ok(out)
    }

    async fn commit(&self, offsets: &[(u32, u64)]) -> Result<(), Error> {
        let mut state = self.broker.state();
        let faults = state.faults;
        if state.rng.gen_bool(faults.commit_error.clamp(0.0, 1.0)) {
            return Err(Error::transient("simulated: the commit failed"));
        }
        let owned: Vec<u32> = match state.members.get(&self.id) {
            Some(member) => member.assigned.keys().copied().collect(),
            None => return Ok(()),
        };
        for &(p, next) in offsets {
            // Only the owner moves the group's position (as the log's lease check).
            if owned.contains(&p) {
                let committed = state.committed.entry(p).or_insert(0);
                *committed = (*committed).max(next);
            }
        }
        state.hand_over();
        Ok(())
    }

    async fn close(&self) -> Result<(), Error> {
        self.broker.leave(self.id);
        Ok(())
    }
}
