//! The benchmark payload and the tolerant scan that finds it again.
//!
//! Each published message carries `{"seq":N,"t":NANOS}` (plus optional
//! padding). Servers deliver it differently: Nchan and Pushpin send the raw
//! body, Herald wraps it in an envelope (`"data":{...}`), a server that
//! stores it as a string escapes the quotes (`{\"seq\":N,...}`), and a
//! long-poll answer may hold several. So receivers do not parse JSON: they
//! scan the frame bytes for every `seq`/`t` pair, skipping quotes,
//! backslashes, colons and blanks between a key and its number.

use std::time::{SystemTime, UNIX_EPOCH};

/// One benchmark mark found in a received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// Sequence number within the channel, from 0.
    pub seq: u64,
    /// Publisher's wall clock at send, in nanoseconds since the Unix epoch.
    pub sent_ns: u64,
}

/// Nanoseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Builds the payload for message `seq` sent at `sent_ns`, padded with a
/// `"pad"` string so the payload is at least `min_len` bytes.
pub fn make(seq: u64, sent_ns: u64, min_len: usize) -> String {
    let mut s = format!("{{\"seq\":{seq},\"t\":{sent_ns}");
    // `,"pad":""}` is 10 bytes.
    if min_len > s.len() + 11 {
        let pad = min_len - s.len() - 10;
        s.push_str(",\"pad\":\"");
        s.push_str(&"x".repeat(pad));
        s.push('"');
    }
    s.push('}');
    s
}

/// Characters allowed between a key and its number, or between the `seq`
/// number and the `t` key.
fn is_filler(b: u8) -> bool {
    matches!(b, b'"' | b'\\' | b':' | b' ' | b'\t' | b',' | b'\'')
}

/// At most this many filler bytes are skipped (`\":` plus blanks).
const MAX_FILLER: usize = 8;

fn skip_filler(buf: &[u8], mut i: usize) -> usize {
    let start = i;
    while i < buf.len() && i - start < MAX_FILLER && is_filler(buf[i]) {
        i += 1;
    }
    i
}

/// Parses decimal digits at `i`; returns the value and the index after them.
/// Refuses empty runs and values that overflow `u64`.
fn number(buf: &[u8], i: usize) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    let mut j = i;
    while j < buf.len() && buf[j].is_ascii_digit() {
        v = v.checked_mul(10)?.checked_add(u64::from(buf[j] - b'0'))?;
        j += 1;
    }
    (j > i).then_some((v, j))
}

/// Scans `buf` for every `seq`/`t` mark, in order of appearance.
#[cfg(test)]
pub fn scan(buf: &[u8]) -> Vec<Mark> {
    let mut out = Vec::new();
    scan_into(buf, &mut out);
    out
}

/// Like [`scan`] but appends to `out`, so a receive loop can reuse it.
pub fn scan_into(buf: &[u8], out: &mut Vec<Mark>) {
    const KEY: &[u8] = b"seq";
    let mut i = 0;
    while i + KEY.len() <= buf.len() {
        let Some(pos) = find(&buf[i..], KEY) else {
            return;
        };
        let after_key = i + pos + KEY.len();
        i = after_key;
        if let Some((mark, end)) = mark_after_key(buf, after_key) {
            out.push(mark);
            i = end;
        }
    }
}

fn mark_after_key(buf: &[u8], after_key: usize) -> Option<(Mark, usize)> {
    let j = skip_filler(buf, after_key);
    if j == after_key {
        // `seq` must be followed by a quote or colon, not be part of a word.
        return None;
    }
    let (seq, j) = number(buf, j)?;
    let j = skip_filler(buf, j);
    if buf.get(j) != Some(&b't') {
        return None;
    }
    let k = skip_filler(buf, j + 1);
    if k == j + 1 {
        return None;
    }
    let (sent_ns, end) = number(buf, k)?;
    Some((Mark { seq, sent_ns }, end))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(seq: u64, sent_ns: u64) -> Mark {
        Mark { seq, sent_ns }
    }

    #[test]
    fn raw_payload() {
        assert_eq!(
            scan(br#"{"seq":17,"t":1700000000123456789}"#),
            vec![m(17, 1700000000123456789)]
        );
    }

    #[test]
    fn payload_roundtrip_with_padding() {
        let p = make(42, 99, 100);
        assert_eq!(p.len(), 100);
        assert_eq!(scan(p.as_bytes()), vec![m(42, 99)]);
        let short = make(1, 2, 0);
        assert_eq!(short, r#"{"seq":1,"t":2}"#);
        let v: serde_json::Value = serde_json::from_str(&p).expect("json");
        assert_eq!(v["seq"], 42);
    }

    #[test]
    fn herald_envelope() {
        let f = br#"{"channel":"c","id":"0000017-3","data":{"seq":3,"t":55}}"#;
        assert_eq!(scan(f), vec![m(3, 55)]);
    }

    #[test]
    fn escaped_string_payload() {
        let f = br#"{"channel":"c","data":"{\"seq\":8,\"t\":1234}"}"#;
        assert_eq!(scan(f), vec![m(8, 1234)]);
    }

    #[test]
    fn sse_lines_and_spaces() {
        let f = b"id: 5\ndata: {\"seq\": 5, \"t\": 77}\n\n";
        assert_eq!(scan(f), vec![m(5, 77)]);
    }

    #[test]
    fn several_marks_in_long_poll_answer() {
        let f = br#"{"messages":[{"id":"a","data":{"seq":1,"t":10}},{"id":"b","data":{"seq":2,"t":20}}],"last_id":"b"}"#;
        assert_eq!(scan(f), vec![m(1, 10), m(2, 20)]);
    }

    #[test]
    fn ignores_lookalikes_and_garbage() {
        assert!(scan(b"").is_empty());
        assert!(scan(b"seq").is_empty());
        assert!(scan(b"sequence 12 t 3").is_empty());
        assert!(scan(br#"{"seq":,"t":3}"#).is_empty());
        assert!(scan(br#"{"seq":4}"#).is_empty());
        assert!(scan(br#"{"seq":4,"x":5}"#).is_empty());
        // Overflowing numbers are refused, the scan continues after them.
        assert_eq!(
            scan(br#"{"seq":99999999999999999999999,"t":1} {"seq":2,"t":3}"#),
            vec![m(2, 3)]
        );
        // A truncated frame yields what is complete.
        assert_eq!(scan(br#"{"seq":1,"t":2}{"seq":3,"t"#), vec![m(1, 2)]);
    }

    #[test]
    fn non_utf8_does_not_matter() {
        let mut f = vec![0xff, 0xfe];
        f.extend_from_slice(br#""seq":6,"t":7"#);
        assert_eq!(scan(&f), vec![m(6, 7)]);
    }

    #[test]
    fn now_is_after_2020() {
        assert!(now_ns() > 1_577_836_800_000_000_000);
    }
}
