//! Small typed events for tests.

use eddy_core::{Clock, Envelope, Event, JsonCodec, SystemClock};
use serde::{Deserialize, Serialize};

/// A numbered event on a key: tests check order by `seq` within a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Numbered {
    pub key: String,
    pub seq: u64,
}

impl Event for Numbered {
    const TYPE: &'static str = "test.Numbered";
    fn key(&self) -> String {
        self.key.clone()
    }
}

impl Numbered {
    pub fn envelope(key: impl Into<String>, seq: u64) -> Envelope {
        let event = Numbered {
            key: key.into(),
            seq,
        };
        // Encoding two plain fields cannot fail.
        JsonCodec::encode(&event, &SystemClock as &dyn Clock)
            .unwrap_or_else(|e| panic!("cannot encode a test event: {e}"))
    }

    /// `per_key` events on each of `keys` keys, interleaved: k0#0, k1#0, …, k0#1, …
    pub fn interleaved(keys: usize, per_key: u64) -> Vec<Envelope> {
        let mut out = Vec::with_capacity(keys * per_key as usize);
        for seq in 0..per_key {
            for key in 0..keys {
                out.push(Self::envelope(format!("key-{key}"), seq));
            }
        }
        out
    }
}
