//! The per-peer link state machines, sans-IO.
//!
//! Every owner (one core of one node) opens an [`OutLink`] to each peer node and
//! pushes its entries on it: a snapshot, then ordered changes, and stanzas for that
//! node's sessions. The peer serves it with an [`InLink`]. Both sides send heartbeats.
//!
//! ```text
//!  owner (OutLink)                          peer (InLink)
//!   Hello{version, cluster, node, epoch, nonce_o} -->
//!        <-- Challenge{nonce_p, HMAC(secret, peer|cluster|nonce_o|nonce_p)}  (or Refuse)
//!   Proof{HMAC(secret, owner|cluster|nonce_p|nonce_o)} -->
//!        <-- Welcome                                                         (or Refuse)
//!   SnapshotBegin, Put*, SnapshotEnd, then Put/Remove/Route/Deliver ... -->
//!        <-- Ack{stanzas}  (after each read that took Route or Deliver frames)
//!   <-- Heartbeat -->  (both ways, after a second of silence)
//! ```
//! Every frame after `Welcome` (both ways) is followed by a 16-byte tag, the
//! AES-256-GCM tag over the frame (GMAC: the frame is associated data, nothing is
//! encrypted) with a key per direction derived from the secret and both nonces, and
//! that direction's frame count as the nonce: a third party on the path can neither inject, alter, replay nor
//! reorder frames without the link closing (`LinkError::BadTag`). Frames are not
//! encrypted (like Erlang distribution without TLS): run clusters on a private network.
//!
//! Before the handshake a link reads nothing but handshake frames of at most
//! [`HANDSHAKE_FRAME_BYTES_MAX`] and gives up after [`HANDSHAKE_TIMEOUT`]; it holds no
//! timer that is already due (an idle unauthenticated connection costs no CPU).
//! Stanzas are acknowledged end to end: the owner's shell keeps each `Route` and
//! `Deliver` it sent until the peer's cumulative `Ack` counts it
//! ([`OutLink::take_acked`]), and routes the rest again if the link ends, so a peer
//! that hangs or dies costs no stanza (one it took but could not acknowledge in
//! time may arrive twice).
//! Drive a link with `handle_input` (bytes read), `handle_timeout` (at
//! `next_timeout`), and write out what `transmit` returns, acknowledging it with
//! `transmitted`. Errors close the link; the shell logs the reason and reconnects.

use std::time::Instant;

use crate::frame::{Frame, FrameError, Refusal, PROTOCOL_VERSION};
use crate::limits::{
    FRAME_BYTES_MAX, HANDSHAKE_FRAME_BYTES_MAX, HANDSHAKE_TIMEOUT, HEARTBEAT_INTERVAL, LINK_DEAD_AFTER,
    LINK_QUEUE_BYTES_MAX, TAG_BYTES,
};

/// What both ends need to know about themselves.
#[derive(Clone, Debug)]
pub struct LinkSettings {
    pub cluster: String,
    pub node: String,
    /// This node's number from discovery (unique in the cluster).
    pub node_num: u16,
    pub secret: Vec<u8>,
}

/// Why a link closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("malformed frame: {0}")]
    Frame(#[from] FrameError),
    #[error("the peer refused the link: {0:?}")]
    Refused(Refusal),
    #[error("we refused the link: {0:?}")]
    Refusing(Refusal),
    #[error("unexpected frame in state {0}")]
    Unexpected(&'static str),
    #[error("the peer could not prove it knows the cluster secret")]
    BadProof,
    #[error("no frame from the peer for too long")]
    Silent,
    #[error("handshake took too long")]
    HandshakeTimeout,
    #[error("the link's send queue is full (the peer does not read)")]
    Overloaded,
    #[error("a frame's integrity tag is wrong (altered, injected or replayed)")]
    BadTag,
}

/// The send queue is full; try again after `transmitted` made room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backpressure;

fn proof(secret: &[u8], role: &[u8], cluster: &str, first: &[u8; 32], second: &[u8; 32]) -> [u8; 32] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut context = ring::hmac::Context::with_key(&key);
    context.update(role);
    context.update(&(cluster.len() as u32).to_be_bytes());
    context.update(cluster.as_bytes());
    context.update(first);
    context.update(second);
    let mut out = [0u8; 32];
    out.copy_from_slice(context.sign().as_ref());
    out
}

fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One direction's integrity key and the count of frames sealed (or opened) with it.
/// The tag is AES-256-GCM's over the frame as associated data and no plaintext (that
/// is, GMAC), with the sequence number as the nonce: a few times cheaper per byte
/// than HMAC-SHA256 with AES-NI and CLMUL (`examples/link_cost.rs`), and a nonce is
/// never reused under a key (one key per link and direction, a counter per frame).
struct Seal {
    key: ring::aead::LessSafeKey,
    sequence: u64,
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seal").field("sequence", &self.sequence).finish_non_exhaustive()
    }
}

impl Seal {
    /// The key for frames the `direction` side sends, after a handshake with these nonces.
    fn new(settings: &LinkSettings, direction: &[u8], owner_nonce: &[u8; 32], peer_nonce: &[u8; 32]) -> Seal {
        let mut role = b"seal ".to_vec();
        role.extend_from_slice(direction);
        let derived = proof(&settings.secret, &role, &settings.cluster, owner_nonce, peer_nonce);
        // Invariant: `derived` is 32 bytes, AES-256's key length.
        let key = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &derived).expect("a 32-byte key");
        Seal { key: ring::aead::LessSafeKey::new(key), sequence: 0 }
    }

    fn tag(&mut self, frame: &[u8]) -> [u8; TAG_BYTES] {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&self.sequence.to_be_bytes());
        self.sequence += 1;
        let nonce = ring::aead::Nonce::assume_unique_for_key(nonce);
        let mut out = [0u8; TAG_BYTES];
        // Fails only for associated data over 2^61 bytes; a zero tag then ends the link.
        if let Ok(tag) = self.key.seal_in_place_separate_tag(nonce, ring::aead::Aad::from(frame), &mut []) {
            out.copy_from_slice(tag.as_ref());
        }
        out
    }

    /// Checks the tag that follows `frame`; constant time.
    fn open(&mut self, frame: &[u8], tag: &[u8]) -> Result<(), LinkError> {
        let expected = self.tag(frame);
        let differs = expected.iter().zip(tag).fold(0u8, |acc, (x, y)| acc | (x ^ y));
        if differs != 0 || tag.len() != TAG_BYTES {
            return Err(LinkError::BadTag);
        }
        Ok(())
    }
}

/// What both kinds of link share: the bytes to write, a partial frame read, and the
/// clocks behind heartbeats and liveness.
#[derive(Debug)]
struct Pipe {
    outgoing: Vec<u8>,
    started: Instant,
    last_heard: Instant,
    last_sent: Instant,
    /// Seals frames we send, once the handshake is done.
    seal: Option<Seal>,
}

impl Pipe {
    fn new(now: Instant) -> Pipe {
        Pipe { outgoing: Vec::new(), started: now, last_heard: now, last_sent: now, seal: None }
    }

    fn push(&mut self, frame: &Frame<'_>) {
        let start = self.outgoing.len();
        frame.encode(&mut self.outgoing);
        if let Some(seal) = &mut self.seal {
            let tag = seal.tag(&self.outgoing[start..]);
            self.outgoing.extend_from_slice(&tag);
        }
    }

    fn transmitted(&mut self, n: usize, now: Instant) {
        self.outgoing.drain(..n);
        if n > 0 {
            self.last_sent = now;
        }
    }

    fn handle_timeout(&mut self, established: bool, now: Instant) -> Result<(), LinkError> {
        if !established && now.duration_since(self.started) >= HANDSHAKE_TIMEOUT {
            return Err(LinkError::HandshakeTimeout);
        }
        if now.duration_since(self.last_heard) >= LINK_DEAD_AFTER {
            return Err(LinkError::Silent);
        }
        if established && self.outgoing.is_empty() && now.duration_since(self.last_sent) >= HEARTBEAT_INTERVAL {
            self.push(&Frame::Heartbeat);
        }
        Ok(())
    }

    /// The next time `handle_timeout` has something to do: never a time already
    /// passed that it would not act on (that would spin the core).
    fn next_timeout(&self, established: bool) -> Instant {
        let dead = self.last_heard + LINK_DEAD_AFTER;
        if !established {
            return dead.min(self.started + HANDSHAKE_TIMEOUT);
        }
        if self.outgoing.is_empty() {
            return dead.min(self.last_sent + HEARTBEAT_INTERVAL);
        }
        // A heartbeat waits behind unsent bytes; only silence matters meanwhile.
        dead
    }
}

/// A partial frame held between reads, and the check of sealed frames.
#[derive(Debug, Default)]
struct Reader {
    held: Vec<u8>,
    /// Checks the peer's frames once its side of the handshake is done.
    open: Option<Seal>,
}

/// What handling one frame asks of the reader.
enum Then {
    Continue,
    /// The frames after this one are sealed with this key (boxed: an AES key
    /// schedule with its GHASH table is 560 bytes).
    Open(Box<Seal>),
}

impl Reader {
    /// Decodes frames from `input` (after any partial one held), calling `each`.
    fn frames(
        &mut self,
        input: &[u8],
        mut each: impl FnMut(Frame<'_>) -> Result<Then, LinkError>,
    ) -> Result<(), LinkError> {
        if self.held.is_empty() {
            // The common case: whole frames straight from the read buffer, no copy.
            let (used, result) = decode_all(input, &mut self.open, &mut each);
            self.held.extend_from_slice(&input[used..]);
            return result;
        }
        self.held.extend_from_slice(input);
        let (used, result) = decode_all(&self.held, &mut self.open, &mut each);
        self.held.drain(..used);
        result
    }
}

/// Decodes whole frames from the front of `bytes`, checking their tags once `open`
/// is set; returns the bytes used.
fn decode_all(
    bytes: &[u8],
    open: &mut Option<Seal>,
    each: &mut impl FnMut(Frame<'_>) -> Result<Then, LinkError>,
) -> (usize, Result<(), LinkError>) {
    let mut at = 0;
    loop {
        let rest = bytes.get(at..).unwrap_or_default();
        // Before the handshake only small frames are read: an unauthenticated peer
        // must not make us buffer a megabyte.
        let limit = if open.is_some() { FRAME_BYTES_MAX } else { HANDSHAKE_FRAME_BYTES_MAX };
        if let Some(header) = rest.get(..4) {
            let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
            if length > limit {
                return (at, Err(FrameError::TooLarge(length).into()));
            }
        }
        match Frame::decode(rest) {
            Ok(Some((frame, used))) => {
                let mut total = used;
                if let Some(seal) = open.as_mut() {
                    let Some(tag) = rest.get(used..used + TAG_BYTES) else { return (at, Ok(())) };
                    let Some(framed) = rest.get(..used) else { return (at, Ok(())) };
                    if let Err(error) = seal.open(framed, tag) {
                        return (at, Err(error));
                    }
                    total += TAG_BYTES;
                }
                match each(frame) {
                    Err(error) => return (at, Err(error)),
                    Ok(Then::Continue) => {}
                    Ok(Then::Open(seal)) => *open = Some(*seal),
                }
                at += total;
            }
            Ok(None) => return (at, Ok(())),
            Err(error) => return (at, Err(error.into())),
        }
    }
}

#[derive(Debug)]
enum OutState {
    AwaitChallenge,
    AwaitWelcome { peer: String, peer_nonce: [u8; 32] },
    Established { peer: String },
}

/// The owner's side of a link to one peer node.
#[derive(Debug)]
pub struct OutLink {
    state: OutState,
    core: u16,
    epoch: u64,
    nonce: [u8; 32],
    pipe: Pipe,
    reader: Reader,
    /// `Route` and `Deliver` frames queued on this link, and how many of them the
    /// peer has acknowledged; `newly_acked` is what the shell has not taken yet.
    stanzas_sent: u64,
    stanzas_acked: u64,
    newly_acked: u64,
}

/// A change in an out-link the shell must act on.
#[derive(Debug, PartialEq, Eq)]
pub enum OutEvent {
    /// The peer accepted us: send the snapshot now, then changes.
    Established { peer: String },
}

impl OutLink {
    /// Starts a link for owner `core` with a fresh `epoch` (larger than any this
    /// owner used before) and a random `nonce`.
    pub fn new(settings: &LinkSettings, core: u16, epoch: u64, nonce: [u8; 32], now: Instant) -> OutLink {
        let mut pipe = Pipe::new(now);
        pipe.push(&Frame::Hello {
            version: PROTOCOL_VERSION,
            cluster: &settings.cluster,
            node: &settings.node,
            node_num: settings.node_num,
            core,
            epoch,
            nonce,
        });
        OutLink {
            state: OutState::AwaitChallenge,
            core,
            epoch,
            nonce,
            pipe,
            reader: Reader::default(),
            stanzas_sent: 0,
            stanzas_acked: 0,
            newly_acked: 0,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn core(&self) -> u16 {
        self.core
    }

    pub fn peer(&self) -> Option<&str> {
        match &self.state {
            OutState::Established { peer } | OutState::AwaitWelcome { peer, .. } => Some(peer),
            OutState::AwaitChallenge => None,
        }
    }

    pub fn is_established(&self) -> bool {
        matches!(self.state, OutState::Established { .. })
    }

    /// Handles bytes from the peer.
    pub fn handle_input(
        &mut self,
        settings: &LinkSettings,
        input: &[u8],
        now: Instant,
    ) -> Result<Option<OutEvent>, LinkError> {
        self.pipe.last_heard = now;
        let mut event = None;
        let mut reader = std::mem::take(&mut self.reader);
        let result = reader.frames(input, |frame| {
            let (e, then) = self.on_frame(settings, frame)?;
            if let Some(e) = e {
                event = Some(e);
            }
            Ok(then)
        });
        self.reader = reader;
        result.map(|()| event)
    }

    fn on_frame(&mut self, settings: &LinkSettings, frame: Frame<'_>) -> Result<(Option<OutEvent>, Then), LinkError> {
        match (&self.state, frame) {
            (_, Frame::Refuse { reason }) => Err(LinkError::Refused(reason)),
            (_, Frame::Heartbeat) => Ok((None, Then::Continue)),
            (OutState::AwaitChallenge, Frame::Challenge { version, node, nonce, proof: theirs }) => {
                if version != PROTOCOL_VERSION {
                    return Err(LinkError::Refused(Refusal::Version));
                }
                let expected = proof(&settings.secret, b"peer", &settings.cluster, &self.nonce, &nonce);
                if !same(&expected, &theirs) {
                    return Err(LinkError::BadProof);
                }
                let ours = proof(&settings.secret, b"owner", &settings.cluster, &nonce, &self.nonce);
                self.pipe.push(&Frame::Proof { proof: ours });
                self.state = OutState::AwaitWelcome { peer: node.to_owned(), peer_nonce: nonce };
                Ok((None, Then::Continue))
            }
            (OutState::AwaitWelcome { peer, peer_nonce }, Frame::Welcome) => {
                let peer = peer.clone();
                self.pipe.seal = Some(Seal::new(settings, b"owner", &self.nonce, peer_nonce));
                let open = Seal::new(settings, b"peer", &self.nonce, peer_nonce);
                self.state = OutState::Established { peer: peer.clone() };
                Ok((Some(OutEvent::Established { peer }), Then::Open(Box::new(open))))
            }
            (OutState::Established { .. }, Frame::Ack { stanzas }) => {
                if stanzas < self.stanzas_acked || stanzas > self.stanzas_sent {
                    return Err(LinkError::Unexpected("an ack for stanzas never sent"));
                }
                self.newly_acked += stanzas - self.stanzas_acked;
                self.stanzas_acked = stanzas;
                Ok((None, Then::Continue))
            }
            (OutState::AwaitChallenge, _) => Err(LinkError::Unexpected("await challenge")),
            (OutState::AwaitWelcome { .. }, _) => Err(LinkError::Unexpected("await welcome")),
            (OutState::Established { .. }, _) => Err(LinkError::Unexpected("established (owner side)")),
        }
    }

    /// Queues a data frame (snapshot, change, route). Only once established.
    pub fn send(&mut self, frame: &Frame<'_>) -> Result<(), Backpressure> {
        debug_assert!(self.is_established(), "data before the handshake");
        if self.pipe.outgoing.len() >= LINK_QUEUE_BYTES_MAX {
            return Err(Backpressure);
        }
        if matches!(frame, Frame::Route { .. } | Frame::Deliver { .. }) {
            self.stanzas_sent += 1;
        }
        self.pipe.push(frame);
        Ok(())
    }

    /// How many more of the `Route` and `Deliver` frames sent on this link, in
    /// sending order, the peer has acknowledged since the last call: the shell may
    /// forget that many of the oldest stanzas it holds for this link.
    pub fn take_acked(&mut self) -> u64 {
        std::mem::take(&mut self.newly_acked)
    }

    /// `Route` and `Deliver` frames sent and not yet acknowledged.
    pub fn unacked(&self) -> u64 {
        self.stanzas_sent - self.stanzas_acked
    }

    /// Room left in the send queue, in bytes.
    pub fn room(&self) -> usize {
        LINK_QUEUE_BYTES_MAX.saturating_sub(self.pipe.outgoing.len())
    }

    pub fn queued_bytes(&self) -> usize {
        self.pipe.outgoing.len()
    }

    /// Bytes to write now.
    pub fn transmit(&self) -> &[u8] {
        &self.pipe.outgoing
    }

    /// `n` bytes of `transmit` were written.
    pub fn transmitted(&mut self, n: usize, now: Instant) {
        self.pipe.transmitted(n, now);
    }

    /// Heartbeats and liveness; call at `next_timeout`.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), LinkError> {
        let established = self.is_established();
        self.pipe.handle_timeout(established, now)
    }

    pub fn next_timeout(&self) -> Instant {
        self.pipe.next_timeout(self.is_established())
    }
}

/// What an in-link tells the shell, borrowing from the input.
#[derive(Debug, PartialEq, Eq)]
pub enum InEvent<'a> {
    /// The owner proved itself; its changes follow. Newer epochs supersede older.
    Owner {
        node: &'a str,
        node_num: u16,
        core: u16,
        epoch: u64,
    },
    SnapshotBegin,
    SnapshotEnd {
        entries: u64,
    },
    Put {
        table: crate::frame::Table,
        key: &'a [u8],
        value: &'a [u8],
    },
    Remove {
        table: crate::frame::Table,
        key: &'a [u8],
    },
    Route {
        recipient: &'a str,
        stanza: &'a [u8],
    },
    Deliver {
        account: &'a str,
        stanza: &'a [u8],
    },
    Event {
        module: &'a str,
        account: &'a str,
        payload: &'a [u8],
    },
}

#[derive(Debug)]
enum InState {
    AwaitHello,
    AwaitProof { node: String, node_num: u16, core: u16, epoch: u64, owner_nonce: [u8; 32] },
    Established,
}

/// The peer's side of a link from one owner.
#[derive(Debug)]
pub struct InLink {
    state: InState,
    nonce: [u8; 32],
    pipe: Pipe,
    reader: Reader,
    /// `Route` and `Deliver` frames handed to the sink, and how many of them the
    /// owner has been told of.
    stanzas_taken: u64,
    stanzas_acked: u64,
}

impl InLink {
    /// Serves a new connection; `nonce` is our random challenge.
    pub fn new(nonce: [u8; 32], now: Instant) -> InLink {
        InLink {
            state: InState::AwaitHello,
            nonce,
            pipe: Pipe::new(now),
            reader: Reader::default(),
            stanzas_taken: 0,
            stanzas_acked: 0,
        }
    }

    pub fn is_established(&self) -> bool {
        matches!(self.state, InState::Established)
    }

    /// Handles bytes from the owner, reporting events to `sink`.
    pub fn handle_input(
        &mut self,
        settings: &LinkSettings,
        input: &[u8],
        now: Instant,
        sink: &mut dyn FnMut(InEvent<'_>),
    ) -> Result<(), LinkError> {
        if self.is_established() && now.duration_since(self.pipe.last_heard) >= LINK_DEAD_AFTER {
            // We heard nothing for as long as the owner waits before it gives up on
            // us (we were frozen, or not reading): it has routed its unacknowledged
            // stanzas again, so these bytes must not be delivered a second time.
            return Err(LinkError::Silent);
        }
        self.pipe.last_heard = now;
        let mut reader = std::mem::take(&mut self.reader);
        let result = reader.frames(input, |frame| self.on_frame(settings, frame, sink));
        self.reader = reader;
        result?;
        if self.stanzas_taken > self.stanzas_acked {
            // One cumulative ack per read, after the sink has taken the stanzas.
            self.pipe.push(&Frame::Ack { stanzas: self.stanzas_taken });
            self.stanzas_acked = self.stanzas_taken;
        }
        Ok(())
    }

    fn on_frame(
        &mut self,
        settings: &LinkSettings,
        frame: Frame<'_>,
        sink: &mut dyn FnMut(InEvent<'_>),
    ) -> Result<Then, LinkError> {
        match (&self.state, frame) {
            (_, Frame::Heartbeat) => Ok(Then::Continue),
            (_, Frame::Refuse { reason }) => Err(LinkError::Refused(reason)),
            (InState::AwaitHello, Frame::Hello { version, cluster, node, node_num, core, epoch, nonce }) => {
                let refusal = if version != PROTOCOL_VERSION {
                    Some(Refusal::Version)
                } else if cluster != settings.cluster {
                    Some(Refusal::Cluster)
                } else {
                    None
                };
                if let Some(reason) = refusal {
                    self.pipe.push(&Frame::Refuse { reason });
                    return Err(LinkError::Refusing(reason));
                }
                let ours = proof(&settings.secret, b"peer", &settings.cluster, &nonce, &self.nonce);
                self.pipe.push(&Frame::Challenge {
                    version: PROTOCOL_VERSION,
                    node: &settings.node,
                    nonce: self.nonce,
                    proof: ours,
                });
                self.state = InState::AwaitProof { node: node.to_owned(), node_num, core, epoch, owner_nonce: nonce };
                Ok(Then::Continue)
            }
            (InState::AwaitProof { node, node_num, core, epoch, owner_nonce }, Frame::Proof { proof: theirs }) => {
                let expected = proof(&settings.secret, b"owner", &settings.cluster, &self.nonce, owner_nonce);
                if !same(&expected, &theirs) {
                    self.pipe.push(&Frame::Refuse { reason: Refusal::Secret });
                    return Err(LinkError::Refusing(Refusal::Secret));
                }
                self.pipe.push(&Frame::Welcome);
                self.pipe.seal = Some(Seal::new(settings, b"peer", owner_nonce, &self.nonce));
                let open = Seal::new(settings, b"owner", owner_nonce, &self.nonce);
                sink(InEvent::Owner { node, node_num: *node_num, core: *core, epoch: *epoch });
                self.state = InState::Established;
                Ok(Then::Open(Box::new(open)))
            }
            (InState::Established, Frame::SnapshotBegin) => {
                sink(InEvent::SnapshotBegin);
                Ok(Then::Continue)
            }
            (InState::Established, Frame::SnapshotEnd { entries }) => {
                sink(InEvent::SnapshotEnd { entries });
                Ok(Then::Continue)
            }
            (InState::Established, Frame::Put { table, key, value }) => {
                sink(InEvent::Put { table, key, value });
                Ok(Then::Continue)
            }
            (InState::Established, Frame::Remove { table, key }) => {
                sink(InEvent::Remove { table, key });
                Ok(Then::Continue)
            }
            (InState::Established, Frame::Route { recipient, stanza }) => {
                sink(InEvent::Route { recipient, stanza });
                self.stanzas_taken += 1;
                Ok(Then::Continue)
            }
            (InState::Established, Frame::Deliver { account, stanza }) => {
                sink(InEvent::Deliver { account, stanza });
                self.stanzas_taken += 1;
                Ok(Then::Continue)
            }
            (InState::Established, Frame::Event { module, account, payload }) => {
                sink(InEvent::Event { module, account, payload });
                Ok(Then::Continue)
            }
            (InState::AwaitHello, _) => Err(LinkError::Unexpected("await hello")),
            (InState::AwaitProof { .. }, _) => Err(LinkError::Unexpected("await proof")),
            (InState::Established, _) => Err(LinkError::Unexpected("established (peer side)")),
        }
    }

    /// Bytes to write now.
    pub fn transmit(&self) -> &[u8] {
        &self.pipe.outgoing
    }

    /// `n` bytes of `transmit` were written.
    pub fn transmitted(&mut self, n: usize, now: Instant) {
        self.pipe.transmitted(n, now);
    }

    /// Heartbeats and liveness; call at `next_timeout`.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), LinkError> {
        let established = self.is_established();
        self.pipe.handle_timeout(established, now)
    }

    pub fn next_timeout(&self) -> Instant {
        self.pipe.next_timeout(self.is_established())
    }
}

#[cfg(test)]
mod tests;
