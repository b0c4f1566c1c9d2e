//! The clustering shell: each core replicates its own sessions to every peer node
//! over its own links, serves the links other nodes' cores open to it, and forwards
//! stanzas for sessions on other nodes.
//!
//! ```text
//!  core c of node A                                     node B (any core accepts)
//!   local session changes --> Link(A,c -> B).queue --> OutLink --TCP--> InLink
//!   router: remote target --> Route frame on the same link             |  per change: the
//!                                                                      v  home core of the JID
//!  node B core h: Replica<RemoteSessions>.apply(owner (A,c), epoch, change); Route -> mailbox
//! ```
//! One link per (core, peer node): each owner is one core, so every link is a
//! single-writer stream. The protocol is `starling_replicate`; this module only moves
//! bytes and dispatches events to home cores.

pub mod store;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite, Future};
use glommio::net::{TcpListener, TcpStream};
use starling_replicate::frame::{Frame, Table};
use starling_replicate::limits::{
    HANDSHAKES_PER_ADDRESS_MAX, HANDSHAKES_PER_CORE_MAX, LINK_QUEUE_BYTES_MAX, OWNER_GRACE, RECONNECT_MAX,
    RECONNECT_MIN,
};
use starling_replicate::link::{InEvent, InLink, LinkSettings, OutEvent, OutLink};
use starling_replicate::membership::DiscoveredNode;
use starling_replicate::replica::{Change, OwnerId, Replica};
use starling_wire::c2s::Entropy;

use crate::flow::Congestion;

use crate::core::Core;
use store::{RemoteSessions, SessionEntry};

/// Clustering settings (from `[internal_databases.cets]` and discovery).
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    pub link: LinkSettings,
}

/// A change or stanza waiting for a link.
enum Outgoing {
    Put { key: Box<str>, value: [u8; SessionEntry::BYTES] },
    Remove { key: Box<str> },
    Route { recipient: Box<str>, stanza: Vec<u8> },
    Deliver { account: Box<str>, stanza: Vec<u8> },
    Event { module: &'static str, account: Box<str>, payload: Rc<[u8]> },
}

impl Outgoing {
    fn bytes(&self) -> usize {
        match self {
            Outgoing::Put { key, .. } => key.len() + 32,
            Outgoing::Remove { key } => key.len() + 16,
            Outgoing::Route { recipient, stanza } => recipient.len() + stanza.len() + 16,
            Outgoing::Deliver { account, stanza } => account.len() + stanza.len() + 16,
            Outgoing::Event { module, account, payload } => module.len() + account.len() + payload.len() + 16,
        }
    }
}

/// The largest item one frame carries: the frame limit less room for the frame's own
/// fields (a larger stanza is refused at the sender, with an error to its author).
const FRAME_ITEM_BYTES_MAX: usize = starling_replicate::limits::FRAME_BYTES_MAX as usize - 1024;

/// What another node hands this node: a stanza to deliver to an account whose
/// sessions are here, or a module's event about an account. Travels to the account's
/// home core and is handled there (`dispatch`).
pub(crate) enum Inbound {
    Deliver { account: Box<str>, stanza: Vec<u8> },
    Event { module: Box<str>, account: Box<str>, payload: Vec<u8> },
}

impl Inbound {
    fn account(&self) -> &str {
        match self {
            Inbound::Deliver { account, .. } | Inbound::Event { account, .. } => account,
        }
    }
}

/// Handles `inbound` on the home core of its account.
pub(crate) fn dispatch(core: &Core, inbound: Inbound) {
    match inbound {
        Inbound::Deliver { stanza, .. } => crate::router::deliver_forwarded(core, &stanza),
        Inbound::Event { module, account, payload } if &*module == crate::resume::RESUME_EVENT => {
            crate::resume::on_event(core, &account, &payload);
        }
        Inbound::Event { module, account, payload } => {
            for candidate in core.module_list() {
                if candidate.name() == &*module {
                    candidate.on_event(core, &account, &payload);
                }
            }
        }
    }
}

/// One out-link of this core: its queue and state, shared with its task.
pub(crate) struct Link {
    peer: DiscoveredNode,
    queue: RefCell<VecDeque<Outgoing>>,
    queued_bytes: Cell<usize>,
    established: Cell<bool>,
    stop: Cell<bool>,
    waker: Cell<Option<Waker>>,
    /// Set when the queue overflowed: the link is reset and resynchronised.
    overflowed: Cell<bool>,
    /// Congested above `LINK_QUEUE_BYTES_MAX`: senders wait (`flow.rs`).
    valve: Rc<crate::flow::Valve>,
}

impl Link {
    fn push(&self, item: Outgoing) -> bool {
        if !self.established.get() {
            return false;
        }
        let bytes = item.bytes();
        if bytes > FRAME_ITEM_BYTES_MAX {
            // It could never be sent (the frame limit); the caller answers with an error.
            return false;
        }
        if self.queued_bytes.get() + bytes > LINK_QUEUE_BYTES_MAX * 4 {
            // Senders wait from LINK_QUEUE_BYTES_MAX on; four times that means the
            // peer has stopped reading altogether: drop the link; the next one starts
            // from a snapshot, so the tables lose nothing.
            self.overflowed.set(true);
            self.wake();
            return false;
        }
        self.queued_bytes.set(self.queued_bytes.get() + bytes);
        if self.queued_bytes.get() > LINK_QUEUE_BYTES_MAX {
            self.valve.set(true);
        }
        self.queue.borrow_mut().push_back(item);
        self.wake();
        true
    }

    fn wake(&self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// An in-link served on this core.
#[derive(Clone, Debug)]
pub(crate) struct Serving {
    pub node: String,
}

/// A change for the core that homes the entry's account.
pub(crate) struct ReplicaOp {
    pub owner: OwnerId,
    pub epoch: u64,
    pub change: Change,
}

/// A core's clustering state.
pub(crate) struct Cluster {
    pub settings: ClusterSettings,
    pub discovered: RefCell<Vec<DiscoveredNode>>,
    pub discovery_works: Cell<bool>,
    links: RefCell<HashMap<u16, Rc<Link>>>,
    pub replica: RefCell<Replica<RemoteSessions>>,
    pub serving: RefCell<HashMap<u64, Serving>>,
    next_epoch: Cell<u64>,
    pub routes_dropped: Cell<u64>,
    /// In-links of this core still in their handshake, oldest first: link id and
    /// socket (`HANDSHAKES_PER_CORE_MAX`).
    handshaking: RefCell<VecDeque<Handshake>>,
    /// Refused and failed links: one log line per interval.
    refused_log: crate::guard::LogEvery,
}

impl Cluster {
    pub fn new(settings: ClusterSettings) -> Cluster {
        // Epochs grow across restarts: start from the wall clock in microseconds.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        Cluster {
            settings,
            discovered: RefCell::new(Vec::new()),
            discovery_works: Cell::new(false),
            links: RefCell::new(HashMap::new()),
            replica: RefCell::new(Replica::new(RemoteSessions::default())),
            serving: RefCell::new(HashMap::new()),
            next_epoch: Cell::new(start),
            routes_dropped: Cell::new(0),
            handshaking: RefCell::new(VecDeque::new()),
            refused_log: crate::guard::LogEvery::new(Duration::from_secs(10)),
        }
    }

    pub fn node_num(&self) -> u16 {
        self.settings.link.node_num
    }

    /// Peers whose links from this core are up, by name.
    pub fn established_peers(&self) -> Vec<String> {
        self.links.borrow().values().filter(|l| l.established.get()).map(|l| l.peer.name.clone()).collect()
    }

    /// Queues a session change for every peer.
    pub fn publish(&self, full: &str, entry: Option<SessionEntry>) {
        for link in self.links.borrow().values() {
            let item = match entry {
                Some(entry) => Outgoing::Put { key: full.into(), value: entry.encode() },
                None => Outgoing::Remove { key: full.into() },
            };
            link.push(item);
        }
    }

    /// Whether node `node_num` can be handed stanzas now: this core's link to it is
    /// up. Sessions replicated from a node whose link is down (killed, partitioned)
    /// stay in the table until it is declared gone, but delivery treats them as
    /// absent, so a message is stored offline rather than bounced or lost.
    pub(crate) fn reachable(&self, node_num: u16) -> bool {
        self.links.borrow().get(&node_num).is_some_and(|link| link.established.get())
    }

    /// Hands a stanza for `account` to node `node_num`, which delivers it (its
    /// sessions are there); false if that link is down. A link over its mark is noted
    /// on `core` (the sender waits).
    pub fn deliver(&self, core: &Core, node_num: u16, account: &str, stanza: &[u8]) -> bool {
        let link = self.links.borrow().get(&node_num).cloned();
        let Some(link) = link else { return false };
        let sent = link.push(Outgoing::Deliver { account: account.into(), stanza: stanza.to_vec() });
        if sent && link.valve.is_congested() {
            core.note_congestion(link.valve.clone());
        }
        sent
    }

    /// Sends a module's event about `account` to every peer node.
    pub fn broadcast_event(&self, module: &'static str, account: &str, payload: Vec<u8>) {
        let payload: Rc<[u8]> = payload.into();
        for link in self.links.borrow().values() {
            link.push(Outgoing::Event { module, account: account.into(), payload: payload.clone() });
        }
    }

    /// Sends an event about `account` to node `node_num` only; false if this core's
    /// link to it is down.
    pub(crate) fn event_to(&self, node_num: u16, module: &'static str, account: &str, payload: Vec<u8>) -> bool {
        let link = self.links.borrow().get(&node_num).cloned();
        let Some(link) = link else { return false };
        link.push(Outgoing::Event { module, account: account.into(), payload: payload.into() })
    }

    /// Peer nodes this core's links reach now.
    pub(crate) fn reachable_peers(&self) -> usize {
        self.links.borrow().values().filter(|link| link.established.get()).count()
    }

    /// Sends a stanza to `recipient` on node `node_num`; false if that link is down.
    /// A link over its mark is noted on `core` (the sender waits, `flow.rs`).
    pub fn route(&self, core: &Core, node_num: u16, recipient: &str, stanza: &[u8]) -> bool {
        let link = self.links.borrow().get(&node_num).cloned();
        let Some(link) = link else {
            self.routes_dropped.set(self.routes_dropped.get() + 1);
            return false;
        };
        let sent = link.push(Outgoing::Route { recipient: recipient.into(), stanza: stanza.to_vec() });
        if !sent {
            self.routes_dropped.set(self.routes_dropped.get() + 1);
        } else if link.valve.is_congested() {
            core.note_congestion(link.valve.clone());
        }
        sent
    }
}

/// Applies a discovery result on this core: starts links to new peers, stops links to
/// peers that are gone or moved.
pub(crate) fn reconcile(core: &Rc<Core>, nodes: Vec<DiscoveredNode>) {
    let Some(cluster) = &core.cluster else { return };
    let me = cluster.node_num();
    let mut links = cluster.links.borrow_mut();
    links.retain(|num, link| {
        let keep =
            nodes.iter().any(|n| n.node_num == *num && n.address == link.peer.address && n.name == link.peer.name);
        if !keep {
            link.stop.set(true);
            link.wake();
        }
        keep
    });
    for node in &nodes {
        if node.node_num == me || links.contains_key(&node.node_num) {
            continue;
        }
        let Ok(address) = node.address.parse::<SocketAddr>() else {
            log::warn!("cluster: node {} has an unusable address {:?}", node.name, node.address);
            continue;
        };
        let link = Rc::new(Link {
            peer: node.clone(),
            queue: RefCell::new(VecDeque::new()),
            queued_bytes: Cell::new(0),
            established: Cell::new(false),
            stop: Cell::new(false),
            waker: Cell::new(None),
            overflowed: Cell::new(false),
            valve: Rc::new(crate::flow::Valve::default()),
        });
        links.insert(node.node_num, link.clone());
        glommio::spawn_local(run_link(core.clone(), link, address)).detach();
    }
    drop(links);
    *cluster.discovered.borrow_mut() = nodes;
    cluster.discovery_works.set(true);
}

fn nonce(core: &Core) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    core.entropy.borrow_mut().fill(&mut bytes);
    bytes
}

/// Keeps one out-link up, reconnecting with backoff, until it is stopped.
async fn run_link(core: Rc<Core>, link: Rc<Link>, address: SocketAddr) {
    let mut backoff = RECONNECT_MIN;
    // Stanzas sent on the current connection and not yet acknowledged by the peer.
    let mut unacked: VecDeque<Outgoing> = VecDeque::new();
    while !link.stop.get() && !core.stopping.get() {
        let connected =
            glommio::timer::timeout(Duration::from_secs(3), async { Ok(TcpStream::connect(address).await) }).await;
        if let Ok(Ok(stream)) = connected {
            let _ = stream.set_nodelay(true);
            let started = Instant::now();
            match crate::contain::wait(&core, "a replication link", drive(&core, &link, stream, &mut unacked)).await {
                Ok(Ok(())) | Err(()) => {}
                Ok(Err(reason)) => log::info!("cluster: link to {} closed: {reason}", link.peer.name),
            }
            if started.elapsed() > Duration::from_secs(10) {
                backoff = RECONNECT_MIN;
            }
        }
        link.established.set(false);
        link.overflowed.set(false);
        // What the peer never acknowledged, then what never left this node, is
        // routed again now that the peer is unreachable (offline storage, another
        // resource, or an error to its sender), never dropped.
        let queued: Vec<Outgoing> = link.queue.borrow_mut().drain(..).collect();
        link.queued_bytes.set(0);
        link.valve.set(false);
        reroute(&core, &link.peer.name, unacked.drain(..).chain(queued));
        if link.stop.get() {
            break;
        }
        glommio::timer::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

/// Routes again, on this core, the stanzas a link to `peer` ended with: sent and
/// unacknowledged, or still queued. Table changes and module events are not
/// repeated (the next link starts from a snapshot). Presence is state and is not
/// repeated; a message the server made for its recipient (from the recipient's own
/// bare JID: carbons copies) is not routed again; everything else is delivered anew
/// by RFC 6121 section 8.5, with the peer now unreachable.
fn reroute(core: &Core, peer: &str, items: impl Iterator<Item = Outgoing>) {
    let mut rerouted = 0;
    for item in items {
        let (recipient, stanza) = match &item {
            Outgoing::Route { recipient, stanza } => (&**recipient, stanza),
            Outgoing::Deliver { account, stanza } => (&**account, stanza),
            Outgoing::Put { .. } | Outgoing::Remove { .. } | Outgoing::Event { .. } => continue,
        };
        let Ok(parsed) = starling_wire::stanza::Stanza::parse(stanza) else { continue };
        let own_bare = recipient.split('/').next().unwrap_or(recipient);
        let from_own_bare = parsed.from.and_then(|f| f.value()).is_some_and(|from| from == own_bare);
        match parsed.kind {
            starling_wire::stanza::StanzaKind::Presence => continue,
            starling_wire::stanza::StanzaKind::Message if from_own_bare => continue,
            _ => {}
        }
        rerouted += 1;
        crate::router::deliver(core, stanza);
    }
    if rerouted > 0 {
        log::info!("cluster: the link to {peer} ended with {rerouted} stanzas unacknowledged; routed again");
        core.count("stanzas_rerouted", rerouted);
    }
}

/// One connection's life: handshake, snapshot, then changes and routes. Route and
/// Deliver items sent wait in `unacked` until the peer acknowledges them.
async fn drive(
    core: &Rc<Core>,
    link: &Link,
    mut stream: TcpStream,
    unacked: &mut VecDeque<Outgoing>,
) -> Result<(), String> {
    // Invariant: links exist only on cores with clustering on.
    let cluster = core.cluster.as_ref().expect("clustering on");
    let epoch = cluster.next_epoch.get() + 1;
    cluster.next_epoch.set(epoch);
    let mut out = OutLink::new(&cluster.settings.link, core.id as u16, epoch, nonce(core), Instant::now());
    let mut snapshot: Option<std::vec::IntoIter<(Box<str>, SessionEntry)>> = None;
    let mut snapshot_entries = 0u64;
    loop {
        if link.stop.get() || core.stopping.get() {
            return Ok(());
        }
        if link.overflowed.get() {
            return Err("queue overflow (the peer is too slow)".into());
        }
        // Feed the link: the snapshot first, then queued changes, within its bound.
        if let Some(entries) = &mut snapshot {
            while out.room() > 4096 {
                match entries.next() {
                    Some((key, entry)) => {
                        let _ = out.send(&Frame::Put {
                            table: Table::Session,
                            key: key.as_bytes(),
                            value: &entry.encode(),
                        });
                        snapshot_entries += 1;
                    }
                    None => {
                        let _ = out.send(&Frame::SnapshotEnd { entries: snapshot_entries });
                        snapshot = None;
                        break;
                    }
                }
            }
        }
        if snapshot.is_none() && out.is_established() {
            let mut queue = link.queue.borrow_mut();
            while out.room() > 4096 {
                let Some(item) = queue.pop_front() else { break };
                let sent = match &item {
                    Outgoing::Put { key, value } => {
                        out.send(&Frame::Put { table: Table::Session, key: key.as_bytes(), value })
                    }
                    Outgoing::Remove { key } => out.send(&Frame::Remove { table: Table::Session, key: key.as_bytes() }),
                    Outgoing::Route { recipient, stanza } => out.send(&Frame::Route { recipient, stanza }),
                    Outgoing::Deliver { account, stanza } => out.send(&Frame::Deliver { account, stanza }),
                    Outgoing::Event { module, account, payload } => {
                        out.send(&Frame::Event { module, account, payload })
                    }
                };
                if sent.is_err() {
                    // No room after all: it stays first in line.
                    queue.push_front(item);
                    break;
                }
                link.queued_bytes.set(link.queued_bytes.get().saturating_sub(item.bytes()));
                if link.queued_bytes.get() <= LINK_QUEUE_BYTES_MAX {
                    link.valve.set(false);
                }
                if matches!(item, Outgoing::Route { .. } | Outgoing::Deliver { .. }) {
                    unacked.push_back(item);
                }
            }
        }
        let wake = wait(core, link, &mut stream, &mut out, snapshot.is_some()).await?;
        let now = Instant::now();
        if let Some(n) = wake {
            let read = core.read_buffer.borrow();
            match out.handle_input(&cluster.settings.link, &read[..n], now) {
                Ok(Some(OutEvent::Established { peer })) => {
                    log::info!("cluster: core {} linked to {peer}", core.id);
                    // Changes queue from now on; the snapshot copies the table now,
                    // so it covers everything before them.
                    link.established.set(true);
                    let entries = local_entries(core);
                    let _ = out.send(&Frame::SnapshotBegin);
                    snapshot = Some(entries.into_iter());
                    snapshot_entries = 0;
                }
                Ok(None) => {}
                Err(error) => return Err(error.to_string()),
            }
            for _ in 0..out.take_acked() {
                unacked.pop_front();
            }
        }
        out.handle_timeout(now).map_err(|e| e.to_string())?;
    }
}

/// This core's sessions as replicated entries.
fn local_entries(core: &Core) -> Vec<(Box<str>, SessionEntry)> {
    core.sessions.borrow().all().map(|s| (s.jid.as_str().into(), s.entry())).collect()
}

/// Writes what the link has to send and waits for input (`Some(bytes read)`), room for
/// queued work or the rest of the snapshot, or the link's next timeout (`None`).
async fn wait(
    core: &Core,
    link: &Link,
    stream: &mut TcpStream,
    out: &mut OutLink,
    snapshot_left: bool,
) -> Result<Option<usize>, String> {
    let mut timer = glommio::timer::Timer::new(out.next_timeout().saturating_duration_since(Instant::now()));
    futures_lite::future::poll_fn(|cx| {
        loop {
            let pending = out.transmit();
            if pending.is_empty() {
                break;
            }
            match std::pin::Pin::new(&mut *stream).poll_write(cx, pending) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Err("write failed".to_string())),
                Poll::Ready(Ok(n)) => out.transmitted(n, Instant::now()),
                Poll::Pending => break,
            }
        }
        {
            let mut buffer = core.read_buffer.borrow_mut();
            match std::pin::Pin::new(&mut *stream).poll_read(cx, &mut buffer[..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Err("closed by the peer".to_string())),
                Poll::Ready(Ok(n)) => return Poll::Ready(Ok(Some(n))),
                Poll::Pending => {}
            }
        }
        let work = out.is_established() && out.room() > 4096 && (snapshot_left || !link.queue.borrow().is_empty());
        if work || link.stop.get() || link.overflowed.get() {
            return Poll::Ready(Ok(None));
        }
        link.waker.set(Some(cx.waker().clone()));
        if std::pin::Pin::new(&mut timer).poll(cx).is_ready() {
            return Poll::Ready(Ok(None));
        }
        Poll::Pending
    })
    .await
}

/// Accepts in-links on this core's replication socket. Past
/// `HANDSHAKES_PER_CORE_MAX` connections still in their handshake, the oldest of
/// them is closed to make room (counted as `cluster_handshakes_evicted`, logged once
/// per 10 s): strangers that hold connections open cannot keep a peer out, since a
/// peer's handshake needs only a round trip while theirs never ends. Refusing the
/// newest instead let 200 idle connections keep a restarted node out of the cluster
/// (found by a breaker). And one source address holds at most
/// `HANDSHAKES_PER_ADDRESS_MAX` places: past it, its own oldest is closed, so a
/// stranger churning connections from one address cannot evict the handshake of a
/// peer that is farther away than its churn is fast (found by the second breaker: a
/// peer 50 ms away never linked under 1,275 connections/s).
pub(crate) async fn accept(core: Rc<Core>, listener: TcpListener) {
    // Invariant: the replication listener exists only with clustering on.
    let cluster = core.cluster.as_ref().expect("clustering on");
    let log = crate::guard::LogEvery::new(Duration::from_secs(10));
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(error) => {
                if let Some(left_out) = log.tick(Instant::now()) {
                    log::warn!("cluster: accept failed: {error} ({left_out} similar events since the last line)");
                }
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let id = core.next_id();
        let from = stream.peer_addr().ok().map(|a| a.ip());
        {
            let mut handshaking = cluster.handshaking.borrow_mut();
            let same_address = handshaking.iter().filter(|h| h.from == from).count();
            let evict = if same_address >= HANDSHAKES_PER_ADDRESS_MAX {
                handshaking.iter().position(|h| h.from == from)
            } else if handshaking.len() >= HANDSHAKES_PER_CORE_MAX {
                Some(0)
            } else {
                None
            };
            if let Some(oldest) = evict.and_then(|at| handshaking.remove(at)) {
                {
                    // SAFETY: `oldest.fd` is the socket of an in-link task of this
                    // core that has not ended: a task removes its entry
                    // (`Handshaking`) before its stream is dropped, and this core runs
                    // one task at a time, so the descriptor is open and still that
                    // socket.
                    let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(oldest.fd) };
                    let _ = socket2::SockRef::from(&socket).shutdown(std::net::Shutdown::Both);
                    core.count("cluster_handshakes_evicted", 1);
                    if let Some(left_out) = log.tick(Instant::now()) {
                        log::warn!(
                            "cluster: {HANDSHAKES_PER_CORE_MAX} replication connections in their handshake; \
                             closed the oldest ({left_out} similar events since the last line)"
                        );
                    }
                }
            }
            handshaking.push_back(Handshake { id, from, fd: stream.as_raw_fd() });
        }
        let _ = stream.set_nodelay(true);
        crate::contain::spawn(core.clone(), "a replication link", serve(core.clone(), stream, id));
    }
}

/// An in-link still in its handshake: its id, source address and socket.
struct Handshake {
    id: u64,
    from: Option<std::net::IpAddr>,
    fd: std::os::fd::RawFd,
}

/// Holds an in-link's place among the handshaking until it is established or gone.
struct Handshaking<'a> {
    cluster: &'a Cluster,
    id: u64,
}

impl Handshaking<'_> {
    fn done(&mut self) {
        let id = self.id;
        self.cluster.handshaking.borrow_mut().retain(|each| each.id != id);
    }
}

impl Drop for Handshaking<'_> {
    fn drop(&mut self) {
        self.done();
    }
}

/// Serves one owner's link: dispatches its changes and stanzas to the home cores.
async fn serve(core: Rc<Core>, mut stream: TcpStream, id: u64) {
    // Invariant: the replication listener exists only with clustering on.
    let cluster = core.cluster.as_ref().expect("clustering on");
    // Dropped before `stream` (locals before parameters): see `accept`.
    let mut handshaking = Handshaking { cluster, id };
    let mut link = InLink::new(nonce(&core), Instant::now());
    let mut owner: Option<(OwnerId, u64, String)> = None;
    let reason = loop {
        if link.is_established() {
            handshaking.done();
        }
        let mut timer = glommio::timer::Timer::new(link.next_timeout().saturating_duration_since(Instant::now()));
        let read = futures_lite::future::poll_fn(|cx| {
            loop {
                let pending = link.transmit();
                if pending.is_empty() {
                    break;
                }
                match std::pin::Pin::new(&mut stream).poll_write(cx, pending) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Err("write failed".to_string())),
                    Poll::Ready(Ok(n)) => link.transmitted(n, Instant::now()),
                    Poll::Pending => break,
                }
            }
            let mut buffer = core.read_buffer.borrow_mut();
            match std::pin::Pin::new(&mut stream).poll_read(cx, &mut buffer[..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Err("closed by the owner".to_string())),
                Poll::Ready(Ok(n)) => return Poll::Ready(Ok(Some(n))),
                Poll::Pending => {}
            }
            drop(buffer);
            if std::pin::Pin::new(&mut timer).poll(cx).is_ready() {
                return Poll::Ready(Ok(None));
            }
            Poll::Pending
        })
        .await;
        let now = Instant::now();
        match read {
            Err(reason) => break reason,
            Ok(Some(n)) => {
                let result = {
                    let buffer = core.read_buffer.borrow();
                    link.handle_input(&cluster.settings.link, &buffer[..n], now, &mut |event| {
                        on_event(&core, id, &mut owner, event);
                    })
                };
                if let Err(error) = result {
                    // Whatever we queued (a refusal) goes out before we close.
                    let pending = link.transmit().to_vec();
                    let _ = crate::io::write_all_plain(&mut stream, &pending).await;
                    break error.to_string();
                }
                // A local recipient is behind: stop reading this link until it catches
                // up (TCP then slows the peer's link, whose senders wait; `flow.rs`).
                let congested = core.take_congestion();
                if !congested.is_empty() {
                    crate::flow::drained(congested).await;
                }
            }
            Ok(None) => {}
        }
        if let Err(error) = link.handle_timeout(now) {
            break error.to_string();
        }
    };
    handshaking.done();
    cluster.serving.borrow_mut().remove(&id);
    if let Some((owner, epoch, node)) = owner {
        log::info!("cluster: link from {node} core {} closed: {reason}", owner.core);
        // After the grace, every core drops this owner's entries (unless a newer
        // link of the same owner arrived meanwhile: its epoch is higher).
        glommio::timer::sleep(OWNER_GRACE).await;
        broadcast(&core, owner, epoch, Change::Down);
    } else if let Some(left_out) = cluster.refused_log.tick(Instant::now()) {
        log::info!("cluster: refused a replication link: {reason} ({left_out} similar events since the last line)");
    }
}

/// Handles one event of an in-link.
fn on_event(core: &Rc<Core>, id: u64, owner: &mut Option<(OwnerId, u64, String)>, event: InEvent<'_>) {
    // Invariant: only called on cores with clustering on.
    let cluster = core.cluster.as_ref().expect("clustering on");
    match event {
        InEvent::Owner { node, node_num, core: owner_core, epoch } => {
            let id_ = OwnerId { node_num, core: owner_core };
            *owner = Some((id_, epoch, node.to_owned()));
            cluster.serving.borrow_mut().insert(id, Serving { node: node.to_owned() });
            broadcast(core, id_, epoch, Change::Connected);
        }
        InEvent::SnapshotBegin => {}
        InEvent::SnapshotEnd { .. } => {
            if let Some((o, epoch, _)) = owner {
                broadcast(core, *o, *epoch, Change::SnapshotEnd);
            }
        }
        InEvent::Put { table, key, value } => {
            if let Some((o, epoch, _)) = owner {
                let change = Change::Put { table, key: key.to_vec(), value: value.to_vec() };
                to_home(core, key, ReplicaOp { owner: *o, epoch: *epoch, change });
            }
        }
        InEvent::Remove { table, key } => {
            if let Some((o, epoch, _)) = owner {
                to_home(
                    core,
                    key,
                    ReplicaOp { owner: *o, epoch: *epoch, change: Change::Remove { table, key: key.to_vec() } },
                );
            }
        }
        InEvent::Route { recipient, stanza } => {
            let bare = recipient.split('/').next().unwrap_or(recipient);
            let home = core.home_of(bare);
            if home == core.id {
                let what = || crate::contain::describe(stanza);
                let _ = crate::contain::call(core, &what, || crate::router::deliver_local(core, recipient, stanza));
            } else {
                core.send_route_to_core(home, recipient, stanza);
            }
        }
        InEvent::Deliver { account, stanza } => {
            to_account_home(core, Inbound::Deliver { account: account.into(), stanza: stanza.to_vec() })
        }
        InEvent::Event { module, account, payload } => to_account_home(
            core,
            Inbound::Event { module: module.into(), account: account.into(), payload: payload.to_vec() },
        ),
    }
}

fn to_account_home(core: &Core, inbound: Inbound) {
    let home = core.home_of(inbound.account());
    if home == core.id {
        let what = || "a stanza or event from another node".to_owned();
        let _ = crate::contain::call(core, &what, || dispatch(core, inbound));
    } else {
        core.forward_to_core(home, inbound);
    }
}

fn to_home(core: &Core, key: &[u8], op: ReplicaOp) {
    let full = std::str::from_utf8(key).unwrap_or("");
    let bare = full.split('/').next().unwrap_or(full);
    let home = core.home_of(bare);
    if home == core.id {
        apply(core, op);
    } else {
        core.send_replica_to_core(home, op);
    }
}

/// Sends a change to every core (this one included).
fn broadcast(core: &Core, owner: OwnerId, epoch: u64, change: Change) {
    for target in 0..core.count {
        let op = ReplicaOp { owner, epoch, change: change.clone() };
        if target == core.id {
            apply(core, op);
        } else {
            core.send_replica_to_core(target, op);
        }
    }
}

/// Applies a change to this core's replica; a put for a full JID also bound here
/// settles the conflict: the newer session wins, the older gets `conflict`.
pub(crate) fn apply(core: &Core, op: ReplicaOp) {
    let Some(cluster) = &core.cluster else { return };
    let applied = cluster.replica.borrow_mut().apply(op.owner, op.epoch, &op.change);
    let Change::Put { table: Table::Session, key, value } = &op.change else { return };
    let (true, Ok(full), Some(remote)) = (applied, std::str::from_utf8(key), SessionEntry::decode(value)) else {
        return;
    };
    let local = core.sessions.borrow().session(full).map(|s| (s.entry(), s.mailbox.clone()));
    if let Some((entry, mailbox)) = local {
        if (remote.created_ms, op.owner.node_num) > (entry.created_ms, cluster.node_num()) {
            mailbox.kick(starling_wire::error::StreamErrorCondition::Conflict);
        }
    }
}

/// Link and table figures of this core, for `cets systemInfo` and `tableInfo`.
#[derive(Clone, Debug, Default)]
pub struct CoreClusterStats {
    pub discovered: Vec<DiscoveredNode>,
    pub discovery_works: bool,
    pub out_up: Vec<String>,
    pub in_up: Vec<String>,
    pub remote_sessions: usize,
    pub remote_bytes: usize,
    pub other_tables: Vec<(Table, usize)>,
}

pub(crate) fn stats(core: &Core) -> Option<CoreClusterStats> {
    let cluster = core.cluster.as_ref()?;
    let replica = cluster.replica.borrow();
    Some(CoreClusterStats {
        discovered: cluster.discovered.borrow().clone(),
        discovery_works: cluster.discovery_works.get(),
        out_up: cluster.established_peers(),
        in_up: cluster.serving.borrow().values().map(|s| s.node.clone()).collect(),
        remote_sessions: replica.store.len(),
        remote_bytes: replica.store.heap_bytes(),
        other_tables: [Table::Sm, Table::Component, Table::ClusterId]
            .into_iter()
            .map(|t| (t, replica.store.table_len(t)))
            .collect(),
    })
}
