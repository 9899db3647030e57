//! RFC 6455 framing for the server side, with no I/O: headers for the
//! unmasked frames the server sends, and a parser for the masked frames a
//! client sends (fragments joined, control frames checked, text checked
//! for UTF-8, sizes bounded before anything is buffered).
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

/// Parses client frames out of a byte buffer.
#[derive(Debug)]
pub struct Reader {
    /// The largest message (all fragments together) accepted.
    max_message: usize,
    /// A fragmented message in progress: its opcode and payload so far.
    partial: Option<(u8, Vec<u8>)>,
}

impl Reader {
    pub fn new(max_message: usize) -> Self {
        Reader {
            max_message,
            partial: None,
        }
    }

    /// Takes the next message or control frame from the front of `buf`,
    /// removing the bytes it used. `Ok(None)`: more bytes are needed. A
    /// frame longer than the limit is refused from its header, before its
    /// payload arrives, so `buf` never holds much more than one message.
    pub fn next(&mut self, buf: &mut Vec<u8>) -> Result<Option<Incoming>, FrameError> {
        loop {
            let Some(frame) = self.frame(buf)? else {
                return Ok(None);
            };
            if let Some(done) = self.assemble(frame)? {
                return Ok(Some(done));
            }
        }
    }

    /// One raw frame (unmasked) from the front of `buf`.
    fn frame(&mut self, buf: &mut Vec<u8>) -> Result<Option<Frame>, FrameError> {
        let [b0, b1, ..] = buf[..] else {
            return Ok(None);
        };
        if b0 & 0x70 != 0 {
            return Err(FrameError::Protocol("reserved bits set"));
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
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
            let so_far = self.partial.as_ref().map_or(0, |(_, p)| p.len());
            if len > (self.max_message.saturating_sub(so_far)) as u64 {
                return Err(FrameError::TooBig);
            }
        }
        // `len` is at most max_message or 125 here, so it fits a usize.
        let len = len as usize;
        let start = at + 4;
        let Some(end) = start.checked_add(len) else {
            return Err(FrameError::TooBig);
        };
        if buf.len() < end {
            return Ok(None);
        }
        let mask = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        let mut payload = buf[start..end].to_vec();
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[i & 3];
        }
        buf.drain(..end);
        Ok(Some(Frame {
            fin,
            opcode,
            payload,
        }))
    }

    /// Joins fragments; returns a message when one is complete.
    fn assemble(&mut self, frame: Frame) -> Result<Option<Incoming>, FrameError> {
        let Frame {
            fin,
            opcode,
            payload,
        } = frame;
        match opcode {
            CONTINUATION => {
                let Some((first, mut so_far)) = self.partial.take() else {
                    return Err(FrameError::Protocol(
                        "continuation without a first fragment",
                    ));
                };
                so_far.extend_from_slice(&payload);
                if fin {
                    message(first, so_far).map(Some)
                } else {
                    self.partial = Some((first, so_far));
                    Ok(None)
                }
            }
            TEXT | BINARY => {
                if self.partial.is_some() {
                    return Err(FrameError::Protocol("new message inside a fragmented one"));
                }
                if fin {
                    message(opcode, payload).map(Some)
                } else {
                    self.partial = Some((opcode, payload));
                    Ok(None)
                }
            }
            CLOSE => close(&payload).map(Some),
            PING => Ok(Some(Incoming::Ping(payload))),
            PONG => Ok(Some(Incoming::Pong)),
            _ => Err(FrameError::Protocol("unknown opcode")),
        }
    }
}

struct Frame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

fn message(opcode: u8, payload: Vec<u8>) -> Result<Incoming, FrameError> {
    if opcode == BINARY {
        return Ok(Incoming::Binary(payload));
    }
    if std::str::from_utf8(&payload).is_err() {
        return Err(FrameError::BadUtf8);
    }
    Ok(Incoming::Text(payload))
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
