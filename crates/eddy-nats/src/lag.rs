//! A consumer group's position on a topic, for the lag monitor (`eddy_telemetry`'s
//! `PartitionProbe`; the rules are in `docs/lag.md`).
//!
//! It answers with `eddy_core::PartitionSample`, as every adapter does. Its NATS facts:
//! a topic is one stream (partition 0); the committed offset is the group's durable
//! consumer's ack floor + 1 (the first message it has not acknowledged — later ones may be
//! acknowledged singly and still count as lag, as Kafka counts them), `None` when the
//! consumer does not exist; `committed_at` is the ack floor's `last_active`, moved by any
//! ack whether or not it moved the floor (nats-server 2.9.10), which tells a STALLED
//! consumer from a STOPPED one; the oldest unconsumed message is the first the stream
//! still keeps at or after the committed offset, timed by the server's clock.
//!
//! Offsets are the adapter's: a delivery's offset is its stream sequence, which JetStream
//! numbers from 1. The embedded log's meanings are kept — the end offset is the next one
//! to be written (`last_seq + 1`), the committed offset the next one to be read (the ack
//! floor + 1) — so every difference (the lag) is the same as the log's; only the first
//! offset of a stream is 1 where the log's is 0.

use async_nats::jetstream::consumer::SequenceInfo;
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::stream::RawMessageErrorKind;
use eddy_core::{Error, PartitionSample};

use crate::{transient, Nats};

impl Nats {
    /// Where `group` stands on `topic`: one position (partition 0), or none when the
    /// topic's stream does not exist (as the embedded log answers for an unknown topic).
    ///
    /// Three requests: the consumer's info (its ack floor), then the stream's (its
    /// sequences) — in that order, so the committed offset is never past the end — then
    /// the first message kept at or after the oldest unconsumed sequence, for its time.
    pub async fn partition_samples(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<Vec<PartitionSample>, Error> {
        let name = self.stream_name(topic);
        let stream = self
            .js
            .get_stream_no_info(&name)
            .await
            .map_err(|e| transient(&format!("cannot name stream {name}"), e))?;
        let ack_floor: Option<SequenceInfo> = match stream.consumer_info(group).await {
            Ok(info) => Some(info.ack_floor),
            Err(error) if error.kind() == ConsumerInfoErrorKind::NotFound => None,
            Err(error) if error.kind() == ConsumerInfoErrorKind::StreamNotFound => {
                return Ok(Vec::new())
            }
            Err(error) => {
                return Err(transient(
                    &format!("cannot read consumer {group} of stream {name}"),
                    error,
                ))
            }
        };
        let state = stream
            .get_info()
            .await
            .map_err(|e| transient(&format!("cannot read stream {name}"), e))?
            .state;
        let end_offset = state.last_sequence + 1;
        let committed_offset = ack_floor
            .as_ref()
            .map(|floor| (floor.stream_sequence + 1).min(end_offset));
        let oldest = match unconsumed_from(committed_offset, state.first_sequence, end_offset) {
            None => None,
            // The first kept at or after `from`, of any subject: every message of the
            // stream is the topic's. A message removed inside the stream (deleted one by
            // one) is skipped, where a get by sequence would find nothing.
            Some(from) => match stream.get_first_raw_message_by_subject(">", from).await {
                Ok(message) if message.sequence < end_offset => {
                    Some((message.sequence, message.time))
                }
                // Published since the stream's info was read: not part of this sample.
                Ok(_) => None,
                // Removed by limits since the stream's info was read.
                Err(error) if error.kind() == RawMessageErrorKind::NoMessageFound => None,
                Err(error) => {
                    return Err(transient(
                        &format!("cannot read message {from} of stream {name}"),
                        error,
                    ))
                }
            },
        };
        let (oldest_unconsumed_offset, oldest_unconsumed_at) = match oldest {
            Some((sequence, at)) => (sequence, Some(at)),
            None => (end_offset, None),
        };
        Ok(vec![PartitionSample {
            partition: 0,
            end_offset,
            committed_offset,
            committed_at: ack_floor.and_then(|floor| floor.last_active),
            oldest_unconsumed_offset,
            oldest_unconsumed_at,
        }])
    }
}

/// The sequence from which a group's unconsumed messages are looked for: its committed
/// offset, or the stream's first kept sequence when that is later or the group never
/// subscribed; `None` when that is the end (nothing waits). `first_kept` is 0 on a stream
/// that never held a message, and sequences start at 1.
fn unconsumed_from(committed: Option<u64>, first_kept: u64, end: u64) -> Option<u64> {
    let from = committed.unwrap_or(1).max(first_kept).max(1);
    (from < end).then_some(from)
}

#[cfg(test)]
mod tests {
    use super::unconsumed_from;

    #[test]
    fn a_stream_that_never_held_a_message_has_nothing_waiting() {
        // nats-server reports first_seq 0 and last_seq 0: end 1.
        assert_eq!(unconsumed_from(None, 0, 1), None);
        assert_eq!(unconsumed_from(Some(1), 0, 1), None);
    }

    #[test]
    fn a_group_that_never_subscribed_waits_from_the_first_kept_message() {
        assert_eq!(unconsumed_from(None, 1, 11), Some(1));
        assert_eq!(unconsumed_from(None, 4, 11), Some(4));
    }

    #[test]
    fn a_group_waits_from_its_committed_offset_unless_limits_removed_it() {
        assert_eq!(unconsumed_from(Some(5), 1, 11), Some(5));
        assert_eq!(unconsumed_from(Some(3), 4, 11), Some(4));
    }

    #[test]
    fn nothing_waits_once_everything_is_acknowledged_or_removed() {
        assert_eq!(unconsumed_from(Some(11), 1, 11), None);
        // Limits removed everything: first_seq is last_seq + 1.
        assert_eq!(unconsumed_from(Some(3), 11, 11), None);
        assert_eq!(unconsumed_from(None, 11, 11), None);
    }
}
