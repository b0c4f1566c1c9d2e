//! The replication wire format: length-prefixed binary frames.
//!
//! ```text
//! frame  = length:u32 (bytes after this field) type:u8 body
//! string = length:u16 bytes (UTF-8)        blob = length:u32 bytes
//! ```
//! All integers are big-endian. Decoding is check-then-parse: an incomplete frame is
//! `Ok(None)`; a frame over the limit, of an unknown type, with a field running past
//! its end or with bytes left over is an error (the link is closed, never a panic).
//! The protocol version travels in the handshake (`Hello`, `Challenge`). Once a link
//! is established every frame is followed by a 16-byte integrity tag, added and
//! checked by `link.rs` (version 4).

use crate::limits::{FRAME_BYTES_MAX, NAME_BYTES_MAX};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 4;

/// The replicated tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Full JID -> owner's session entry.
    Session = 1,
    /// Stream-management id -> session (XEP-0198; filled once resumption exists).
    Sm = 2,
    /// Component address -> owner (filled once components exist).
    Component = 3,
    /// The cluster's id (shared key: the highest (timestamp, node) wins).
    ClusterId = 4,
}

impl Table {
    pub const ALL: [Table; 4] = [Table::Session, Table::Sm, Table::Component, Table::ClusterId];

    pub fn from_byte(byte: u8) -> Option<Table> {
        Table::ALL.into_iter().find(|t| *t as u8 == byte)
    }

    /// MongooseIM's table names, for `cets tableInfo`.
    pub fn name(self) -> &'static str {
        match self {
            Table::Session => "cets_session",
            Table::Sm => "cets_stream_management_session",
            Table::Component => "cets_external_component",
            Table::ClusterId => "cets_cluster_id",
        }
    }
}

/// Why a peer refused a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Version = 1,
    Cluster = 2,
    Secret = 3,
    Busy = 4,
}

impl Refusal {
    fn from_byte(byte: u8) -> Option<Refusal> {
        [Refusal::Version, Refusal::Cluster, Refusal::Secret, Refusal::Busy].into_iter().find(|r| *r as u8 == byte)
    }
}

/// One frame, borrowing its variable parts from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Owner -> peer: who we are, and a challenge for the peer.
    Hello { version: u16, cluster: &'a str, node: &'a str, node_num: u16, core: u16, epoch: u64, nonce: [u8; 32] },
    /// Peer -> owner: its proof of the secret over our nonce, and its own challenge.
    Challenge { version: u16, node: &'a str, nonce: [u8; 32], proof: [u8; 32] },
    /// Owner -> peer: our proof over the peer's nonce.
    Proof { proof: [u8; 32] },
    /// Peer -> owner: the link is up.
    Welcome,
    /// Either side: the link is refused; the connection closes.
    Refuse { reason: Refusal },
    /// Either side: still alive.
    Heartbeat,
    /// Owner -> peer: a full copy of our entries follows.
    SnapshotBegin,
    /// Owner -> peer: the copy is complete; anything of ours not in it is gone.
    SnapshotEnd { entries: u64 },
    /// Owner -> peer: insert or replace an entry we own.
    Put { table: Table, key: &'a [u8], value: &'a [u8] },
    /// Owner -> peer: an entry of ours is gone.
    Remove { table: Table, key: &'a [u8] },
    /// A stanza for the session `recipient` (a full JID) on the receiving node.
    Route { recipient: &'a str, stanza: &'a [u8] },
    /// A stanza for the receiving node to deliver to `account` (a bare JID whose
    /// sessions it holds), running its delivery rules and hooks (version 2).
    Deliver { account: &'a str, stanza: &'a [u8] },
    /// A feature module's event about `account` (a bare JID) for the same module on
    /// the receiving node: a changed roster or block list (version 2).
    Event { module: &'a str, account: &'a str, payload: &'a [u8] },
    /// Peer -> owner: how many `Route` and `Deliver` frames the peer has taken on
    /// this link so far (cumulative). The owner holds each stanza until it is
    /// counted here and routes it again if the link ends first (version 3).
    Ack { stanzas: u64 },
}

/// Why bytes are not a valid frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(u32),
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("unknown table {0}")]
    UnknownTable(u8),
    #[error("unknown refusal {0}")]
    UnknownRefusal(u8),
    #[error("a field runs past the end of the frame")]
    Truncated,
    #[error("{0} bytes left over after the frame's fields")]
    TrailingBytes(usize),
    #[error("a name is not UTF-8 or is too long")]
    InvalidName,
    #[error("empty frame")]
    Empty,
}

mod kind {
    pub const HELLO: u8 = 1;
    pub const CHALLENGE: u8 = 2;
    pub const PROOF: u8 = 3;
    pub const WELCOME: u8 = 4;
    pub const REFUSE: u8 = 5;
    pub const HEARTBEAT: u8 = 6;
    pub const SNAPSHOT_BEGIN: u8 = 7;
    pub const SNAPSHOT_END: u8 = 8;
    pub const PUT: u8 = 9;
    pub const REMOVE: u8 = 10;
    pub const ROUTE: u8 = 11;
    pub const DELIVER: u8 = 12;
    pub const EVENT: u8 = 13;
    pub const ACK: u8 = 14;
}

impl Frame<'_> {
    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        match *self {
            Frame::Hello { version, cluster, node, node_num, core, epoch, nonce } => {
                out.push(kind::HELLO);
                out.extend_from_slice(&version.to_be_bytes());
                put_name(out, cluster);
                put_name(out, node);
                out.extend_from_slice(&node_num.to_be_bytes());
                out.extend_from_slice(&core.to_be_bytes());
                out.extend_from_slice(&epoch.to_be_bytes());
                out.extend_from_slice(&nonce);
            }
            Frame::Challenge { version, node, nonce, proof } => {
                out.push(kind::CHALLENGE);
                out.extend_from_slice(&version.to_be_bytes());
                put_name(out, node);
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&proof);
            }
            Frame::Proof { proof } => {
                out.push(kind::PROOF);
                out.extend_from_slice(&proof);
            }
            Frame::Welcome => out.push(kind::WELCOME),
            Frame::Refuse { reason } => {
                out.push(kind::REFUSE);
                out.push(reason as u8);
            }
            Frame::Heartbeat => out.push(kind::HEARTBEAT),
            Frame::SnapshotBegin => out.push(kind::SNAPSHOT_BEGIN),
            Frame::SnapshotEnd { entries } => {
                out.push(kind::SNAPSHOT_END);
                out.extend_from_slice(&entries.to_be_bytes());
            }
            Frame::Put { table, key, value } => {
                out.push(kind::PUT);
                out.push(table as u8);
                put_blob16(out, key);
                put_blob32(out, value);
            }
            Frame::Remove { table, key } => {
                out.push(kind::REMOVE);
                out.push(table as u8);
                put_blob16(out, key);
            }
            Frame::Route { recipient, stanza } => {
                out.push(kind::ROUTE);
                put_blob16(out, recipient.as_bytes());
                put_blob32(out, stanza);
            }
            Frame::Deliver { account, stanza } => {
                out.push(kind::DELIVER);
                put_blob16(out, account.as_bytes());
                put_blob32(out, stanza);
            }
            Frame::Event { module, account, payload } => {
                out.push(kind::EVENT);
                put_name(out, module);
                put_blob16(out, account.as_bytes());
                put_blob32(out, payload);
            }
            Frame::Ack { stanzas } => {
                out.push(kind::ACK);
                out.extend_from_slice(&stanzas.to_be_bytes());
            }
        }
        let length = out.len() - start - 4;
        // Pair assertion with the decoder's limit check: we never send what a peer
        // must refuse.
        assert!(length <= FRAME_BYTES_MAX as usize, "encoded frame over the limit");
        out[start..start + 4].copy_from_slice(&(length as u32).to_be_bytes());
    }

    /// Decodes the frame at the start of `input`: `Ok(None)` when more bytes are
    /// needed, else the frame and how many bytes it took.
    pub fn decode(input: &[u8]) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
        let Some(header) = input.get(..4) else { return Ok(None) };
        let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        if length > FRAME_BYTES_MAX {
            return Err(FrameError::TooLarge(length));
        }
        let total = 4 + length as usize;
        let Some(body) = input.get(4..total) else { return Ok(None) };
        let mut reader = Reader { bytes: body };
        let frame = reader.frame()?;
        if !reader.bytes.is_empty() {
            return Err(FrameError::TrailingBytes(reader.bytes.len()));
        }
        Ok(Some((frame, total)))
    }
}

/// A node or cluster name; the decoder refuses longer ones, so we never send them.
fn put_name(out: &mut Vec<u8>, text: &str) {
    assert!(text.len() <= NAME_BYTES_MAX, "name too long for the wire");
    put_blob16(out, text.as_bytes());
}

fn put_blob16(out: &mut Vec<u8>, bytes: &[u8]) {
    let length = u16::try_from(bytes.len()).expect("key under 64 KiB");
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_blob32(out: &mut Vec<u8>, bytes: &[u8]) {
    let length = u32::try_from(bytes.len()).expect("value under 4 GiB");
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.bytes.len() < n {
            return Err(FrameError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, FrameError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        let b = self.take(8)?;
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(b);
        Ok(u64::from_be_bytes(bytes))
    }

    fn array32(&mut self) -> Result<[u8; 32], FrameError> {
        let mut array = [0u8; 32];
        array.copy_from_slice(self.take(32)?);
        Ok(array)
    }

    fn name(&mut self) -> Result<&'a str, FrameError> {
        let length = self.u16()? as usize;
        let bytes = self.take(length)?;
        if length > NAME_BYTES_MAX {
            return Err(FrameError::InvalidName);
        }
        std::str::from_utf8(bytes).map_err(|_| FrameError::InvalidName)
    }

    fn recipient(&mut self) -> Result<&'a str, FrameError> {
        let length = self.u16()? as usize;
        std::str::from_utf8(self.take(length)?).map_err(|_| FrameError::InvalidName)
    }

    fn blob16(&mut self) -> Result<&'a [u8], FrameError> {
        let length = self.u16()? as usize;
        self.take(length)
    }

    fn blob32(&mut self) -> Result<&'a [u8], FrameError> {
        let length = self.u32()? as usize;
        self.take(length)
    }

    fn table(&mut self) -> Result<Table, FrameError> {
        let byte = self.u8()?;
        Table::from_byte(byte).ok_or(FrameError::UnknownTable(byte))
    }

    fn frame(&mut self) -> Result<Frame<'a>, FrameError> {
        let kind = self.u8().map_err(|_| FrameError::Empty)?;
        Ok(match kind {
            kind::HELLO => Frame::Hello {
                version: self.u16()?,
                cluster: self.name()?,
                node: self.name()?,
                node_num: self.u16()?,
                core: self.u16()?,
                epoch: self.u64()?,
                nonce: self.array32()?,
            },
            kind::CHALLENGE => Frame::Challenge {
                version: self.u16()?,
                node: self.name()?,
                nonce: self.array32()?,
                proof: self.array32()?,
            },
            kind::PROOF => Frame::Proof { proof: self.array32()? },
            kind::WELCOME => Frame::Welcome,
            kind::REFUSE => {
                let byte = self.u8()?;
                Frame::Refuse { reason: Refusal::from_byte(byte).ok_or(FrameError::UnknownRefusal(byte))? }
            }
            kind::HEARTBEAT => Frame::Heartbeat,
            kind::SNAPSHOT_BEGIN => Frame::SnapshotBegin,
            kind::SNAPSHOT_END => Frame::SnapshotEnd { entries: self.u64()? },
            kind::PUT => Frame::Put { table: self.table()?, key: self.blob16()?, value: self.blob32()? },
            kind::REMOVE => Frame::Remove { table: self.table()?, key: self.blob16()? },
            kind::ROUTE => Frame::Route { recipient: self.recipient()?, stanza: self.blob32()? },
            kind::DELIVER => Frame::Deliver { account: self.recipient()?, stanza: self.blob32()? },
            kind::EVENT => Frame::Event { module: self.name()?, account: self.recipient()?, payload: self.blob32()? },
            kind::ACK => Frame::Ack { stanzas: self.u64()? },
            other => return Err(FrameError::UnknownType(other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded(frame: &Frame<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        frame.encode(&mut out);
        out
    }

    fn arbitrary_frame() -> impl Strategy<Value = (u8, Vec<u8>, Vec<u8>, String, u64, u16)> {
        (
            0u8..14,
            proptest::collection::vec(any::<u8>(), 0..64),
            proptest::collection::vec(any::<u8>(), 0..200),
            "[a-z@./]{0,40}",
            any::<u64>(),
            any::<u16>(),
        )
    }

    fn build<'a>(kind: u8, key: &'a [u8], value: &'a [u8], text: &'a str, number: u64, small: u16) -> Frame<'a> {
        let mut nonce = [0u8; 32];
        nonce[..key.len().min(32)].copy_from_slice(&key[..key.len().min(32)]);
        match kind {
            0 => Frame::Hello {
                version: small,
                cluster: text,
                node: text,
                node_num: small,
                core: small,
                epoch: number,
                nonce,
            },
            1 => Frame::Challenge { version: small, node: text, nonce, proof: nonce },
            2 => Frame::Proof { proof: nonce },
            3 => Frame::Welcome,
            4 => Frame::Refuse { reason: Refusal::Secret },
            5 => Frame::Heartbeat,
            6 => Frame::SnapshotBegin,
            7 => Frame::SnapshotEnd { entries: number },
            8 => Frame::Put { table: Table::Session, key, value },
            9 => Frame::Remove { table: Table::ClusterId, key },
            10 => Frame::Deliver { account: text, stanza: value },
            11 => Frame::Event { module: text, account: text, payload: value },
            12 => Frame::Ack { stanzas: number },
            _ => Frame::Route { recipient: text, stanza: value },
        }
    }

    /// Golden: the byte layout of a put.
    #[test]
    fn put_layout() {
        let bytes = encoded(&Frame::Put { table: Table::Session, key: b"k", value: b"vv" });
        assert_eq!(bytes, vec![0, 0, 0, 11, 9, 1, 0, 1, b'k', 0, 0, 0, 2, b'v', b'v']);
    }

    /// Unknown types, tables, oversized lengths and trailing bytes are errors.
    #[test]
    fn refuses_bad_frames() {
        assert_eq!(Frame::decode(&[0, 0, 0, 1, 99]), Err(FrameError::UnknownType(99)));
        assert_eq!(Frame::decode(&[0, 0, 0, 4, 10, 9, 0, 0]), Err(FrameError::UnknownTable(9)));
        assert_eq!(Frame::decode(&[0xff, 0xff, 0xff, 0xff]), Err(FrameError::TooLarge(u32::MAX)));
        assert_eq!(Frame::decode(&[0, 0, 0, 2, 6, 0]), Err(FrameError::TrailingBytes(1)));
        assert_eq!(Frame::decode(&[0, 0, 0, 0]), Err(FrameError::Empty));
        assert_eq!(Frame::decode(&[0, 0, 0, 3, 10, 1, 0]), Err(FrameError::Truncated));
        assert_eq!(Frame::decode(&[0, 0, 0]), Ok(None));
    }

    proptest! {
        /// Every frame decodes to itself, consuming exactly its bytes.
        #[test]
        fn round_trip((kind, key, value, text, number, small) in arbitrary_frame()) {
            let frame = build(kind, &key, &value, &text, number, small);
            let bytes = encoded(&frame);
            prop_assert_eq!(Frame::decode(&bytes), Ok(Some((frame, bytes.len()))));
        }

        /// Every strict prefix of a frame is "need more bytes".
        #[test]
        fn truncation_needs_more((kind, key, value, text, number, small) in arbitrary_frame(), cut in any::<usize>()) {
            let bytes = encoded(&build(kind, &key, &value, &text, number, small));
            let cut = cut % bytes.len();
            prop_assert_eq!(Frame::decode(&bytes[..cut]), Ok(None));
        }

        /// Corrupting any byte gives an error or some frame, never a panic; and a
        /// corrupted length that still fits decodes only within its own bounds.
        #[test]
        fn corruption_never_panics((kind, key, value, text, number, small) in arbitrary_frame(), at in any::<usize>(), byte in any::<u8>()) {
            let mut bytes = encoded(&build(kind, &key, &value, &text, number, small));
            let at = at % bytes.len();
            bytes[at] = byte;
            if let Ok(Some((_, used))) = Frame::decode(&bytes) {
                prop_assert!(used <= bytes.len());
            }
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Frame::decode(&bytes);
        }
    }
}
