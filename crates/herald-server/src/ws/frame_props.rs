//! Property tests of the frame parser: whatever a client sends, it neither
//! panics nor holds more than a header or a control frame, and any valid
//! sequence of masked frames, however fragmented and however the reads cut
//! it, gives back exactly the messages that were framed.
//!
//! `PROPTEST_CASES=100000 cargo test -p herald-server --lib frame_props`
//! for a longer run.

use proptest::prelude::*;

use super::frame::{header, Incoming, Reader, BINARY, CLOSE, CONTINUATION, MAX_HEADER, PING, TEXT};

/// The most a reader leaves in the buffer between calls: the longest header
/// with its mask (14) and a control frame's longest payload (125).
const MOST_KEPT: usize = 14 + 125;

/// A masked client frame, encoded here independently of [`header`].
fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
    if payload.len() < 126 {
        out.push(0x80 | payload.len() as u8);
    } else if let Ok(short) = u16::try_from(payload.len()) {
        out.push(0x80 | 126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Feeds `wire` to a reader in chunks of the given sizes (cycled), taking
/// every message as soon as it is whole. Stops at the first error.
fn feed(
    reader: &mut Reader,
    wire: &[u8],
    chunks: &[usize],
) -> (Vec<Incoming>, Option<super::frame::FrameError>) {
    let mut buf = Vec::new();
    let mut got = Vec::new();
    let mut at = 0;
    let mut sizes = chunks.iter().cycle();
    while at < wire.len() {
        let size = sizes.next().copied().unwrap_or(1).max(1);
        let end = (at + size).min(wire.len());
        buf.extend_from_slice(&wire[at..end]);
        at = end;
        loop {
            match reader.next(&mut buf) {
                Ok(Some(message)) => got.push(message),
                Ok(None) => break,
                Err(e) => return (got, Some(e)),
            }
        }
        assert!(buf.len() <= MOST_KEPT, "reader kept {} bytes", buf.len());
    }
    (got, None)
}

/// A message to frame: text or binary, mostly short, sometimes long enough
/// for the 16-bit and 64-bit length forms.
fn message() -> impl Strategy<Value = Incoming> {
    let bytes = prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), 0..200),
        1 => proptest::collection::vec(any::<u8>(), 60_000..70_000),
    ];
    prop_oneof![
        any::<String>().prop_map(|s| Incoming::Text(s.into_bytes())),
        proptest::string::string_regex("[a\u{e9}\u{20ac}\u{1f600}]{0,64}")
            .expect("valid regex")
            .prop_map(|s| Incoming::Text(s.into_bytes())),
        bytes.clone().prop_map(|b| match String::from_utf8(b) {
            Ok(s) => Incoming::Text(s.into_bytes()),
            Err(e) => Incoming::Binary(e.into_bytes()),
        }),
        bytes.prop_map(Incoming::Binary),
    ]
}

/// One message as frames: cut at arbitrary byte offsets (a code point may
/// be split between fragments), with pings between some fragments.
#[derive(Debug)]
struct Framed {
    message: Incoming,
    /// Cut points, as fractions of the payload's length.
    cuts: Vec<prop::sample::Index>,
    /// A ping after the fragment with this index, if any.
    ping: Option<(prop::sample::Index, Vec<u8>)>,
    mask: [u8; 4],
}

fn framed() -> impl Strategy<Value = Framed> {
    (
        message(),
        proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
        proptest::option::of((
            any::<prop::sample::Index>(),
            proptest::collection::vec(any::<u8>(), 0..=125),
        )),
        any::<[u8; 4]>(),
    )
        .prop_map(|(message, cuts, ping, mask)| Framed {
            message,
            cuts,
            ping,
            mask,
        })
}

impl Framed {
    /// The wire bytes, and what the reader must give for them.
    fn encode(&self, wire: &mut Vec<u8>, want: &mut Vec<Incoming>) {
        let (opcode, payload) = match &self.message {
            Incoming::Text(p) => (TEXT, p),
            Incoming::Binary(p) => (BINARY, p),
            _ => unreachable!("only data messages are generated"),
        };
        let mut cuts: Vec<usize> = self
            .cuts
            .iter()
            .map(|i| i.index(payload.len() + 1))
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        cuts.retain(|&c| c > 0 && c < payload.len());
        let mut bounds = vec![0];
        bounds.extend(cuts);
        bounds.push(payload.len());
        let fragments = bounds.len() - 1;
        let ping_after = self.ping.as_ref().map(|(i, p)| (i.index(fragments), p));
        for f in 0..fragments {
            let last = f + 1 == fragments;
            let op = if f == 0 { opcode } else { CONTINUATION };
            wire.extend(client_frame(
                last,
                op,
                &payload[bounds[f]..bounds[f + 1]],
                self.mask,
            ));
            if let Some((after, ping)) = ping_after {
                if after == f && !last {
                    wire.extend(client_frame(true, PING, ping, self.mask));
                    want.push(Incoming::Ping(ping.clone()));
                }
            }
        }
        want.push(match &self.message {
            Incoming::Text(p) => Incoming::Text(p.clone()),
            Incoming::Binary(p) => Incoming::Binary(p.clone()),
            _ => unreachable!("only data messages are generated"),
        });
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_and_errors_carry_a_close_code(
        wire in proptest::collection::vec(any::<u8>(), 0..600),
        chunks in proptest::collection::vec(1usize..80, 1..8),
        max in 0usize..400,
    ) {
        let mut reader = Reader::new(max);
        let (got, error) = feed(&mut reader, &wire, &chunks);
        if let Some(e) = error {
            prop_assert!([1002, 1007, 1009].contains(&e.disconnect().code), "{e:?}");
        }
        for message in got {
            match message {
                Incoming::Text(t) => {
                    prop_assert!(std::str::from_utf8(&t).is_ok());
                    prop_assert!(t.len() <= max);
                }
                Incoming::Binary(b) => prop_assert!(b.len() <= max),
                Incoming::Ping(p) => prop_assert!(p.len() <= 125),
                Incoming::Pong | Incoming::Close(_) => {}
            }
        }
    }

    #[test]
    fn arbitrary_payloads_in_valid_frames_never_panic(
        frames in proptest::collection::vec(
            (any::<bool>(), 0u8..16, proptest::collection::vec(any::<u8>(), 0..140), any::<[u8; 4]>()),
            0..8,
        ),
        chunks in proptest::collection::vec(1usize..80, 1..8),
    ) {
        // Well-formed headers, arbitrary flags, opcodes and payloads: the
        // parser's rules, not its header decoding, are what is exercised.
        let mut wire = Vec::new();
        for (fin, opcode, payload, mask) in &frames {
            wire.extend(client_frame(*fin, *opcode, payload, *mask));
        }
        let mut reader = Reader::new(256);
        let (_, error) = feed(&mut reader, &wire, &chunks);
        if let Some(e) = error {
            prop_assert!([1002, 1007, 1009].contains(&e.disconnect().code), "{e:?}");
        }
    }

    #[test]
    fn valid_frames_give_back_exactly_the_framed_messages(
        messages in proptest::collection::vec(framed(), 1..6),
        close in proptest::option::of(prop_oneof![Just(1000u16), 3000u16..5000]),
        chunks in proptest::collection::vec(1usize..5000, 1..10),
    ) {
        let mut wire = Vec::new();
        let mut want = Vec::new();
        for m in &messages {
            m.encode(&mut wire, &mut want);
        }
        if let Some(code) = close {
            wire.extend(client_frame(true, CLOSE, &super::frame::close_payload(code, "bye"), [1, 2, 3, 4]));
            want.push(Incoming::Close(Some(code)));
        }
        let mut reader = Reader::new(1 << 20);
        let (got, error) = feed(&mut reader, &wire, &chunks);
        prop_assert_eq!(error, None);
        prop_assert_eq!(got, want);
    }

    #[test]
    fn header_lengths_round_trip_through_the_parser(
        len in prop_oneof![
            prop::sample::select(vec![0usize, 1, 124, 125, 126, 127, 65_534, 65_535, 65_536, 65_537]),
            0usize..70_000,
        ],
        opcode in prop::sample::select(vec![TEXT, BINARY]),
        mask in any::<[u8; 4]>(),
    ) {
        let mut head = [0u8; MAX_HEADER];
        let n = header(opcode, len, &mut head);
        // The shortest form, as RFC 6455 section 5.2 requires.
        let want_n = if len < 126 { 2 } else if len <= 0xFFFF { 4 } else { 10 };
        prop_assert_eq!(n, want_n);
        prop_assert_eq!(head[0], 0x80 | opcode);
        // The same header, masked as a client would send it, parses back
        // to a message of that length.
        let mut wire = head[..n].to_vec();
        wire[1] |= 0x80;
        wire.extend_from_slice(&mask);
        let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
        wire.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let mut reader = Reader::new(1 << 20);
        let got = reader.next(&mut wire);
        let want = if opcode == TEXT { Incoming::Text(payload) } else { Incoming::Binary(payload) };
        prop_assert_eq!(got, Ok(Some(want)));
        prop_assert!(wire.is_empty());
    }

    #[test]
    fn header_lengths_decode_to_what_was_written(len in any::<u64>()) {
        let Ok(len) = usize::try_from(len) else { return Ok(()); };
        let mut head = [0u8; MAX_HEADER];
        let n = header(BINARY, len, &mut head);
        let decoded = match head[1] {
            126 => u64::from(u16::from_be_bytes([head[2], head[3]])),
            127 => u64::from_be_bytes([head[2], head[3], head[4], head[5], head[6], head[7], head[8], head[9]]),
            short => u64::from(short),
        };
        prop_assert_eq!(decoded, len as u64);
        // The 64-bit form's most significant bit must be 0.
        prop_assert!(n != 10 || head[2] & 0x80 == 0 || len as u64 > i64::MAX as u64);
    }
}
