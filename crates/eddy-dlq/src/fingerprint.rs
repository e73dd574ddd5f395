//! Failures grouped by what went wrong, not by which event it happened to.

/// Longest normalised message a fingerprint reads: the start of a message says what
/// failed; the rest is mostly the data it failed on.
const MESSAGE_CHARS_MAX: usize = 200;

/// `message` with what differs between occurrences of one failure masked: every run of
/// letters and digits that holds a digit (numbers, ids, UUIDs, hex) becomes `#`, runs
/// of white space one space, and the text is cut to 200 characters. "order 0193…
/// not found (attempt 3)" and "order 0194… not found (attempt 1)" normalise alike.
pub fn normalise(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MESSAGE_CHARS_MAX));
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.chars().any(|c| c.is_ascii_digit()) {
            out.push('#');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in message.chars().take(MESSAGE_CHARS_MAX) {
        if c.is_alphanumeric() || c == '-' || c == '_' {
            word.push(c);
            continue;
        }
        flush(&mut word, &mut out);
        if c.is_whitespace() {
            if !out.ends_with(' ') {
                out.push(' ');
            }
        } else {
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out.trim().to_owned()
}

/// The fingerprint of a failure: 16 hex digits of a stable hash (FNV-1a, the same in
/// every process and release) of its kind, normalised message, consumer group and
/// event type — the handler that failed and how.
pub fn fingerprint(kind: &str, message: &str, group: &str, event_type: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [kind, &normalise(message), group, event_type] {
        for byte in part.bytes().chain(std::iter::once(0xff)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_ids_are_masked_so_one_bug_is_one_fingerprint() {
        assert_eq!(
            normalise("order 0193f1c2-aa00-7000-8000-000000000001 not found (attempt 3)"),
            "order # not found (attempt #)"
        );
        assert_eq!(
            normalise("  connection   refused\n to 10.0.0.7:5432 "),
            "connection refused to #.#.#.#:#"
        );
        let a = fingerprint(
            "permanent",
            "order 17 is poison",
            "notifications",
            "orders.OrderConfirmed",
        );
        let b = fingerprint(
            "permanent",
            "order 4242 is poison",
            "notifications",
            "orders.OrderConfirmed",
        );
        assert_eq!(a, b);
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn a_different_kind_group_type_or_message_is_a_different_fingerprint() {
        let base = fingerprint("permanent", "bad payload", "g", "t.E");
        for other in [
            fingerprint("transient", "bad payload", "g", "t.E"),
            fingerprint("permanent", "bad header", "g", "t.E"),
            fingerprint("permanent", "bad payload", "h", "t.E"),
            fingerprint("permanent", "bad payload", "g", "t.F"),
            // Parts do not run into each other.
            fingerprint("permanent", "bad payloadg", "", "t.E"),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn long_messages_are_cut_and_stable() {
        let long = "x".repeat(10_000);
        assert_eq!(normalise(&long).chars().count(), MESSAGE_CHARS_MAX);
        assert_eq!(
            fingerprint("permanent", &long, "g", "t"),
            fingerprint("permanent", &format!("{long}y"), "g", "t")
        );
    }
}
