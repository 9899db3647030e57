//! RFC 6455 framing for the server side, with no I/O: headers for the
//! unmasked frames the server sends, and a parser for the masked frames a
//! client sends (fragments joined, control frames checked, text checked
//! for UTF-8 as it arrives, sizes bounded before anything is buffered).
//!
//! No extension is negotiated, so the reserved bits must be zero.

use herald_core::disconnect::{Disconnect, INVALID_DATA, MESSAGE_TOO_BIG, PROTOCOL_ERROR};

pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// The longest header a server frame needs (no mask).
pub const MAX_HEADER: usize = 10;

/// Writes the header of a final, unmasked frame carrying `len` payload
/// bytes into `out`; returns the header's length (2, 4 or 10).
pub fn header(opcode: u8, len: usize, out: &mut [u8; MAX_HEADER]) -> usize {
    out[0] = 0x80 | opcode;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// A close frame's payload: the code, then the reason (at most 123 bytes,
/// cut at a character boundary).
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}

/// A whole message or control frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A text message, checked to be UTF-8.
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    /// The client's close frame and its code, if it gave one.
    Close(Option<u16>),
}

/// Why a client's bytes cannot be accepted; each maps to a close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("message larger than the limit")]
    TooBig,
    #[error("text is not UTF-8")]
    BadUtf8,
}

impl FrameError {
    /// The close code and reason this error ends the connection with.
    pub fn disconnect(self) -> Disconnect {
        match self {
            FrameError::Protocol(_) => PROTOCOL_ERROR,
            FrameError::TooBig => MESSAGE_TOO_BIG,
            FrameError::BadUtf8 => INVALID_DATA,
        }
    }
}

/// Parses client frames out of a byte buffer as the bytes arrive.
///
/// A data frame's payload is unmasked and moved into its message as soon as
/// it is received, so the caller's buffer holds at most a header or a control
/// frame (at most 139 bytes) between calls; text is checked for UTF-8 on the
/// way, so invalid text is refused at the first bad byte, not once the
/// message is complete (RFC 6455 section 8.1: fail fast).
#[derive(Debug)]
pub struct Reader {
    /// The largest message (all fragments together) accepted.
    max_message: usize,
    /// The data message in progress: its frames so far. Boxed, so that an
    /// idle connection's reader is 16 bytes: every idle WebSocket carries
    /// one, and at 56 bytes inline each idle connection cost ~300 B more RSS
    /// (measured; its task future grew from 912 to 928 bytes, likely past
    /// the allocator's 1 KiB small chunks).
    partial: Option<Box<Partial>>,
}

/// A data message being received.
#[derive(Debug)]
struct Partial {
    opcode: u8,
    payload: Vec<u8>,
    /// Text only: how many trailing bytes of `payload` begin a code point
    /// that has not arrived whole yet (0 to 3); all before them is UTF-8.
    open: u8,
    /// The data frame whose header was taken and whose payload is arriving.
    frame: Option<DataFrame>,
}

impl Partial {
    /// Checks the bytes appended from `from` on, with the code point left
    /// open before them.
    fn check_text(&mut self, from: usize) -> Result<(), FrameError> {
        let begin = from - usize::from(self.open);
        match std::str::from_utf8(&self.payload[begin..]) {
            Ok(_) => self.open = 0,
            // Valid so far, with an incomplete code point at the end.
            Err(e) if e.error_len().is_none() => {
                self.open = (self.payload.len() - begin - e.valid_up_to()) as u8;
            }
            Err(_) => return Err(FrameError::BadUtf8),
        }
        Ok(())
    }
}

/// A data frame's state once its header is parsed.
#[derive(Debug, Clone, Copy)]
struct DataFrame {
    fin: bool,
    mask: [u8; 4],
    /// Payload bytes still to come.
    remaining: usize,
    /// Position of the next payload byte in the mask (0 to 3).
    phase: u8,
}

/// A frame header: what comes before the payload.
struct Header {
    fin: bool,
    opcode: u8,
    len: usize,
    /// Where the mask starts (the payload starts 4 bytes later).
    at: usize,
}

impl Reader {
    pub fn new(max_message: usize) -> Self {
        Reader {
            max_message,
            partial: None,
        }
    }

    /// Takes the next message or control frame from the front of `buf`,
    /// removing the bytes it used. `Ok(None)`: more bytes are needed (pass
    /// the same buffer again with them appended). A frame longer than the
    /// limit is refused from its header, before its payload arrives.
    pub fn next(&mut self, buf: &mut Vec<u8>) -> Result<Option<Incoming>, FrameError> {
        loop {
            if let Some(frame) = self.partial.as_ref().and_then(|p| p.frame) {
                let Some(done) = self.payload(frame, buf)? else {
                    return Ok(None);
                };
                match done {
                    Some(message) => return Ok(Some(message)),
                    None => continue,
                }
            }
            let Some(head) = self.header(buf)? else {
                return Ok(None);
            };
            let start = head.at + 4;
            let mask = [
                buf[head.at],
                buf[head.at + 1],
                buf[head.at + 2],
                buf[head.at + 3],
            ];
            if head.opcode & 0x8 != 0 {
                // Control frames are short: taken whole, in one piece.
                let end = start + head.len;
                if buf.len() < end {
                    return Ok(None);
                }
                let mut payload = buf[start..end].to_vec();
                unmask(&mut payload, mask, 0);
                buf.drain(..end);
                return control(head.opcode, payload).map(Some);
            }
            buf.drain(..start);
            if head.opcode != CONTINUATION {
                self.partial = Some(Box::new(Partial {
                    opcode: head.opcode,
                    payload: Vec::new(),
                    open: 0,
                    frame: None,
                }));
            }
            let Some(partial) = self.partial.as_mut() else {
                // `header` refuses a continuation without a first fragment.
                return Err(FrameError::Protocol(
                    "continuation without a first fragment",
                ));
            };
            partial.frame = Some(DataFrame {
                fin: head.fin,
                mask,
                remaining: head.len,
                phase: 0,
            });
        }
    }

    /// Checks the header at the front of `buf`; `None` until it (and its
    /// mask) has arrived. A frame is refused as soon as its header shows it
    /// breaks a rule.
    fn header(&self, buf: &[u8]) -> Result<Option<Header>, FrameError> {
        let [b0, b1, ..] = buf[..] else {
            return Ok(None);
        };
        if b0 & 0x70 != 0 {
            return Err(FrameError::Protocol("reserved bits set"));
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        if !matches!(opcode, CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG) {
            return Err(FrameError::Protocol("unknown opcode"));
        }
        if b1 & 0x80 == 0 {
            return Err(FrameError::Protocol("client frames must be masked"));
        }
        let (len, at): (u64, usize) = match b1 & 0x7F {
            126 => {
                let Some(bytes) = buf.get(2..4) else {
                    return Ok(None);
                };
                (u64::from(u16::from_be_bytes([bytes[0], bytes[1]])), 4)
            }
            127 => {
                let Some(bytes) = buf.get(2..10) else {
                    return Ok(None);
                };
                let mut be = [0u8; 8];
                be.copy_from_slice(bytes);
                (u64::from_be_bytes(be), 10)
            }
            short => (u64::from(short), 2),
        };
        if opcode & 0x8 != 0 {
            if !fin {
                return Err(FrameError::Protocol("fragmented control frame"));
            }
            if len > 125 {
                return Err(FrameError::Protocol("control frame over 125 bytes"));
            }
        } else {
            match (opcode, &self.partial) {
                (CONTINUATION, None) => {
                    return Err(FrameError::Protocol(
                        "continuation without a first fragment",
                    ))
                }
                (TEXT | BINARY, Some(_)) => {
                    return Err(FrameError::Protocol("new message inside a fragmented one"))
                }
                _ => {}
            }
            let so_far = self.partial.as_ref().map_or(0, |p| p.payload.len());
            if len > (self.max_message.saturating_sub(so_far)) as u64 {
                return Err(FrameError::TooBig);
            }
        }
        if buf.len() < at + 4 {
            return Ok(None);
        }
        Ok(Some(Header {
            fin,
            opcode,
            // At most max_message or 125 here, so it fits a usize.
            len: len as usize,
            at,
        }))
    }

    /// Moves what has arrived of the current data frame's payload into its
    /// message. `None`: the frame needs more bytes; `Some(None)`: the frame
    /// is complete but the message is not; `Some(Some(_))`: the message is.
    fn payload(
        &mut self,
        mut frame: DataFrame,
        buf: &mut Vec<u8>,
    ) -> Result<Option<Option<Incoming>>, FrameError> {
        let Some(partial) = self.partial.as_mut() else {
            // A data frame always starts or continues a message.
            return Err(FrameError::Protocol(
                "continuation without a first fragment",
            ));
        };
        let take = frame.remaining.min(buf.len());
        let from = partial.payload.len();
        partial.payload.extend_from_slice(&buf[..take]);
        buf.drain(..take);
        unmask(
            &mut partial.payload[from..],
            frame.mask,
            usize::from(frame.phase),
        );
        if partial.opcode == TEXT {
            partial.check_text(from)?;
        }
        frame.remaining -= take;
        frame.phase = ((usize::from(frame.phase) + take) & 3) as u8;
        if frame.remaining > 0 {
            partial.frame = Some(frame);
            return Ok(None);
        }
        partial.frame = None;
        if !frame.fin {
            return Ok(Some(None));
        }
        let Some(done) = self.partial.take() else {
            return Ok(Some(None));
        };
        let done = *done;
        if done.open != 0 {
            // The message ends inside a code point.
            return Err(FrameError::BadUtf8);
        }
        Ok(Some(Some(if done.opcode == BINARY {
            Incoming::Binary(done.payload)
        } else {
            Incoming::Text(done.payload)
        })))
    }
}

/// XORs `bytes` with the mask, the first byte being at `phase` in it.
fn unmask(bytes: &mut [u8], mask: [u8; 4], phase: usize) {
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte ^= mask[(phase + i) & 3];
    }
}

fn control(opcode: u8, payload: Vec<u8>) -> Result<Incoming, FrameError> {
    match opcode {
        CLOSE => close(&payload),
        PING => Ok(Incoming::Ping(payload)),
        _ => Ok(Incoming::Pong),
    }
}

fn close(payload: &[u8]) -> Result<Incoming, FrameError> {
    match payload {
        [] => Ok(Incoming::Close(None)),
        [_] => Err(FrameError::Protocol("close frame with a one-byte body")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            // RFC 6455 section 7.4: codes a peer may send.
            let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid {
                return Err(FrameError::Protocol("invalid close code"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(FrameError::BadUtf8);
            }
            Ok(Incoming::Close(Some(code)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame, as a browser would send it.
    fn client(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        if payload.len() < 126 {
            out.push(0x80 | payload.len() as u8);
        } else if payload.len() <= 0xFFFF {
            out.push(0x80 | 126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn headers_use_the_shortest_length_form() {
        let mut h = [0u8; MAX_HEADER];
        assert_eq!(header(TEXT, 5, &mut h), 2);
        assert_eq!(&h[..2], &[0x81, 5]);
        assert_eq!(header(TEXT, 125, &mut h), 2);
        assert_eq!(header(TEXT, 126, &mut h), 4);
        assert_eq!(&h[..4], &[0x81, 126, 0, 126]);
        assert_eq!(header(BINARY, 65535, &mut h), 4);
        assert_eq!(header(TEXT, 65536, &mut h), 10);
        assert_eq!(&h[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(header(CLOSE, 0, &mut h), 2);
        assert_eq!(h[0], 0x88);
    }

    #[test]
    fn parses_masked_text_and_keeps_what_follows() {
        let mut r = Reader::new(1024);
        let mut buf = client(true, TEXT, b"hello");
        buf.extend_from_slice(&client(true, PING, b"p")[..3]);
        assert_eq!(
            r.next(&mut buf),
            Ok(Some(Incoming::Text(b"hello".to_vec())))
        );
        // Half a ping: wait for the rest.
        assert_eq!(r.next(&mut buf), Ok(None));
        assert_eq!(buf.len(), 3);
        buf.extend_from_slice(&client(true, PING, b"p")[3..]);
        assert_eq!(r.next(&mut buf), Ok(Some(Incoming::Ping(b"p".to_vec()))));
        assert!(buf.is_empty());
    }

    #[test]
    fn byte_by_byte_arrival_gives_the_same_messages() {
        let mut wire = client(true, TEXT, &[b'x'; 300]);
        wire.extend(client(false, TEXT, b"ab"));
        wire.extend(client(true, PONG, b""));
        wire.extend(client(true, CONTINUATION, b"cd"));
        wire.extend(client(true, CLOSE, &close_payload(1000, "done")));
        let mut r = Reader::new(1024);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for byte in wire {
            buf.push(byte);
            while let Some(m) = r.next(&mut buf).expect("valid frames") {
                got.push(m);
            }
        }
        assert_eq!(
            got,
            vec![
                Incoming::Text(vec![b'x'; 300]),
                Incoming::Pong,
                Incoming::Text(b"abcd".to_vec()),
                Incoming::Close(Some(1000)),
            ]
        );
    }

    #[test]
    fn refuses_what_the_rfc_forbids() {
        let cases: Vec<(Vec<u8>, FrameError)> = vec![
            // Unmasked.
            (
                vec![0x81, 0x01, b'a'],
                FrameError::Protocol("client frames must be masked"),
            ),
            // RSV1 without a negotiated extension.
            (
                {
                    let mut f = client(true, TEXT, b"a");
                    f[0] |= 0x40;
                    f
                },
                FrameError::Protocol("reserved bits set"),
            ),
            (
                client(true, 0x3, b""),
                FrameError::Protocol("unknown opcode"),
            ),
            (
                client(false, PING, b""),
                FrameError::Protocol("fragmented control frame"),
            ),
            (
                client(true, PING, &[0; 126]),
                FrameError::Protocol("control frame over 125 bytes"),
            ),
            (
                client(true, CONTINUATION, b"x"),
                FrameError::Protocol("continuation without a first fragment"),
            ),
            (
                [client(false, TEXT, b"a"), client(true, TEXT, b"b")].concat(),
                FrameError::Protocol("new message inside a fragmented one"),
            ),
            (client(true, TEXT, &[0xff, 0xfe]), FrameError::BadUtf8),
            (
                client(true, CLOSE, &[3]),
                FrameError::Protocol("close frame with a one-byte body"),
            ),
            (
                client(true, CLOSE, &close_payload(1005, "")),
                FrameError::Protocol("invalid close code"),
            ),
            (
                client(true, CLOSE, &[0x03, 0xe8, 0xff]),
                FrameError::BadUtf8,
            ),
        ];
        for (wire, want) in cases {
            let mut r = Reader::new(1024);
            let mut buf = wire.clone();
            let mut result = r.next(&mut buf);
            if result == Ok(None) {
                result = r.next(&mut buf);
            }
            assert_eq!(result, Err(want), "{wire:02x?}");
        }
    }

    #[test]
    fn invalid_text_in_a_first_fragment_is_refused_before_the_last_arrives() {
        let mut r = Reader::new(1024);
        let mut buf = client(false, TEXT, b"ok \xff");
        assert_eq!(r.next(&mut buf), Err(FrameError::BadUtf8));
        // In a middle fragment, too.
        let mut r = Reader::new(1024);
        let mut buf = [
            client(false, TEXT, b"ok"),
            client(false, CONTINUATION, &[0xc0, 0x80]),
        ]
        .concat();
        assert_eq!(r.next(&mut buf), Err(FrameError::BadUtf8));
    }

    #[test]
    fn a_code_point_split_across_fragments_is_accepted() {
        let euro = "\u{20ac}".as_bytes(); // e2 82 ac
        let mut r = Reader::new(1024);
        let mut buf = client(false, TEXT, &[b'a', euro[0]]);
        assert_eq!(r.next(&mut buf), Ok(None));
        buf.extend(client(false, CONTINUATION, &euro[1..2]));
        buf.extend(client(true, PING, b"between"));
        assert_eq!(
            r.next(&mut buf),
            Ok(Some(Incoming::Ping(b"between".to_vec())))
        );
        buf.extend(client(true, CONTINUATION, &[euro[2], b'b']));
        assert_eq!(
            r.next(&mut buf),
            Ok(Some(Incoming::Text("a\u{20ac}b".as_bytes().to_vec())))
        );
    }

    #[test]
    fn a_message_ending_inside_a_code_point_is_refused() {
        let mut r = Reader::new(1024);
        let mut buf = [
            client(false, TEXT, b"a"),
            client(true, CONTINUATION, &[0xe2, 0x82]),
        ]
        .concat();
        assert_eq!(r.next(&mut buf), Err(FrameError::BadUtf8));
    }

    #[test]
    fn invalid_text_is_refused_before_its_frame_is_complete() {
        let mut payload = vec![b'a'; 100];
        payload[10] = 0xff;
        let wire = client(true, TEXT, &payload);
        let mut r = Reader::new(1024);
        // Header, mask and the first 10 payload bytes: valid so far.
        let mut buf = wire[..6 + 10].to_vec();
        assert_eq!(r.next(&mut buf), Ok(None));
        assert!(buf.is_empty(), "the payload so far was taken");
        // One more byte, the bad one: refused with 89 bytes still to come.
        buf.push(wire[6 + 10]);
        assert_eq!(r.next(&mut buf), Err(FrameError::BadUtf8));
        // A code point split inside one frame by the reads is fine.
        let wire = client(true, TEXT, "x\u{1f600}y".as_bytes());
        let mut r = Reader::new(1024);
        let mut buf = Vec::new();
        let mut got = None;
        for byte in wire {
            buf.push(byte);
            if let Some(m) = r.next(&mut buf).expect("valid text") {
                got = Some(m);
            }
        }
        assert_eq!(got, Some(Incoming::Text("x\u{1f600}y".as_bytes().to_vec())));
    }

    #[test]
    fn binary_is_not_checked_for_utf8() {
        let mut r = Reader::new(1024);
        let mut buf = [
            client(false, BINARY, &[0xff]),
            client(true, CONTINUATION, &[0xe2]),
        ]
        .concat();
        assert_eq!(
            r.next(&mut buf),
            Ok(Some(Incoming::Binary(vec![0xff, 0xe2])))
        );
    }

    #[test]
    fn the_size_limit_is_checked_from_the_header_and_across_fragments() {
        let mut r = Reader::new(10);
        // Only the header of an 11-byte frame has arrived: refused already.
        let mut buf = client(true, TEXT, &[b'a'; 11])[..6].to_vec();
        assert_eq!(r.next(&mut buf), Err(FrameError::TooBig));
        // A 2^63-byte length claim.
        let mut r = Reader::new(10);
        let mut buf = vec![0x81, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(r.next(&mut buf), Err(FrameError::TooBig));
        // 6 + 5 bytes in two fragments.
        let mut r = Reader::new(10);
        let mut buf = [
            client(false, TEXT, b"aaaaaa"),
            client(true, CONTINUATION, b"bbbbb"),
        ]
        .concat();
        assert_eq!(r.next(&mut buf), Err(FrameError::TooBig));
        // Exactly the limit is fine.
        let mut r = Reader::new(10);
        let mut buf = client(true, TEXT, &[b'a'; 10]);
        assert_eq!(r.next(&mut buf), Ok(Some(Incoming::Text(vec![b'a'; 10]))));
    }

    #[test]
    fn a_reader_stays_small() {
        // One per idle connection: the limit and an empty box. (At 56
        // bytes inline it cost ~300 B of RSS per idle WebSocket, measured.)
        assert!(std::mem::size_of::<Reader>() <= 16);
    }

    #[test]
    fn close_payloads_are_cut_at_a_character_boundary() {
        let long = "é".repeat(100);
        let p = close_payload(4001, &long);
        assert!(p.len() <= 125);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
        assert_eq!(&p[..2], &4001u16.to_be_bytes());
    }

    #[test]
    fn random_bytes_never_panic_and_stay_bounded() {
        // A small xorshift generator: deterministic, no dependency.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut rand = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let len = (rand() % 64) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| rand() as u8).collect();
            let mut r = Reader::new(32);
            for _ in 0..len + 1 {
                match r.next(&mut buf) {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
