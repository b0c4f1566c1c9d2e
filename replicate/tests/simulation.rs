//! Deterministic simulation of a cluster's replication (in the spirit of
//! TigerBeetle's VOPR): several nodes with several owners (cores) each, real
//! `OutLink`/`InLink`/`Replica` code, a simulated network of TCP-like connections
//! (ordered bytes in arbitrary chunks with random delays, closes, partitions that
//! stall traffic, node crashes and restarts, clock jumps) and a virtual clock.
//!
//! Checked after every step: every held entry belongs to the owner that wrote it;
//! a crashed node's entries are gone from every live node within the dead-link time
//! plus the grace; link queues stay under their bound. Checked at the end, after the
//! network heals and writes stop: every live node holds exactly what every other
//! live owner has.
//!
//! A failure prints its seed; `SIM_SEED=<seed>` replays it exactly (with the same
//! `SIM_STEPS`, default 2000) and `SIM_SEEDS=<n>` runs more seeds
//! (`scripts/simulate.sh` runs thousands).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use starling_replicate::frame::{Frame, Table};
use starling_replicate::limits::{LINK_DEAD_AFTER, LINK_QUEUE_BYTES_MAX, OWNER_GRACE, RECONNECT_MIN};
use starling_replicate::link::{InEvent, InLink, LinkSettings, OutEvent, OutLink};
use starling_replicate::replica::{Change, MemoryStore, OwnerId, Replica};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn bytes(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for chunk in out.chunks_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes());
        }
        out
    }
}

const NODES: usize = 4;
const CORES: u16 = 2;

/// One direction of a connection: chunks with delivery times.
#[derive(Default)]
struct Pipe {
    chunks: VecDeque<(Duration, Vec<u8>)>,
}

struct Connection {
    owner: (usize, u16),
    peer: usize,
    to_peer: Pipe,
    to_owner: Pipe,
    /// Closed by one side; the other learns it when the FIN arrives.
    closed_by_owner: Option<Duration>,
    closed_by_peer: Option<Duration>,
    /// The peer's incarnation it was opened to.
    peer_incarnation: u32,
    owner_incarnation: u32,
}

struct Core {
    local: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Peer node -> (connection, link).
    links: HashMap<usize, (usize, OutLink)>,
    reconnect_at: HashMap<usize, Duration>,
    next_epoch: u64,
    next_key: u64,
}

struct Node {
    alive: bool,
    incarnation: u32,
    settings: LinkSettings,
    cores: Vec<Core>,
    replica: Replica<MemoryStore>,
    /// Connection -> (in-link, owner and epoch once known).
    serving: HashMap<usize, (InLink, Option<(OwnerId, u64)>)>,
    /// Owners whose link went down: drop at this time unless superseded.
    pending_down: Vec<(Duration, OwnerId, u64)>,
    died_at: Option<Duration>,
    /// Epochs this node's owners used in earlier incarnations (must vanish).
    old_epochs: Vec<(OwnerId, u64)>,
}

struct World {
    rng: Rng,
    base: Instant,
    now: Duration,
    nodes: Vec<Node>,
    connections: Vec<Connection>,
    cut: BTreeSet<(usize, usize)>,
    seed: u64,
    /// When each step ran (timeouts fire only at steps; a clock jump delays them).
    step_times: Vec<Duration>,
}

fn owner_id(node: usize, core: u16) -> OwnerId {
    OwnerId { node_num: node as u16 + 1, core }
}

fn new_core(incarnation: u32) -> Core {
    Core {
        local: BTreeMap::new(),
        links: HashMap::new(),
        reconnect_at: HashMap::new(),
        next_epoch: (incarnation as u64) << 32,
        next_key: 0,
    }
}

impl World {
    fn new(seed: u64) -> World {
        let nodes = (0..NODES)
            .map(|n| Node {
                alive: true,
                incarnation: 1,
                settings: LinkSettings {
                    cluster: "sim".into(),
                    node: format!("n{n}"),
                    node_num: n as u16 + 1,
                    secret: b"s".to_vec(),
                },
                cores: (0..CORES).map(|_| new_core(1)).collect(),
                replica: Replica::new(MemoryStore::default()),
                serving: HashMap::new(),
                pending_down: Vec::new(),
                died_at: None,
                old_epochs: Vec::new(),
            })
            .collect();
        World {
            rng: Rng(seed.max(1)),
            base: Instant::now(),
            now: Duration::ZERO,
            nodes,
            connections: Vec::new(),
            cut: BTreeSet::new(),
            seed,
            step_times: Vec::new(),
        }
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    fn is_cut(&self, a: usize, b: usize) -> bool {
        self.cut.contains(&(a.min(b), a.max(b)))
    }

    fn delay(&mut self) -> Duration {
        Duration::from_micros(100 + self.rng.below(20_000))
    }

    /// Sends `bytes` on a connection in one to three chunks.
    fn send(&mut self, connection: usize, to_peer: bool, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        let mut rest = bytes;
        let mut at = self.now;
        while !rest.is_empty() {
            let take = if rest.len() > 1 && self.rng.chance(30) {
                1 + self.rng.below(rest.len() as u64 - 1) as usize
            } else {
                rest.len()
            };
            let tail = rest.split_off(take);
            at += self.delay();
            let pipe = if to_peer {
                &mut self.connections[connection].to_peer
            } else {
                &mut self.connections[connection].to_owner
            };
            // Ordered: never deliver before an earlier chunk.
            let at = pipe.chunks.back().map(|(t, _)| (*t).max(at)).unwrap_or(at);
            pipe.chunks.push_back((at, rest));
            rest = tail;
        }
    }

    fn step(&mut self) {
        // Time moves on; now and then the clock jumps.
        self.now += if self.rng.chance(1) {
            Duration::from_millis(500 + self.rng.below(2500))
        } else {
            Duration::from_millis(1 + self.rng.below(40))
        };
        self.step_times.push(self.now);
        self.perturb();
        self.connect();
        self.deliver();
        self.timeouts();
        self.flush();
    }

    fn perturb(&mut self) {
        let roll = self.rng.below(1000);
        let node = self.rng.below(NODES as u64) as usize;
        if roll < 300 && self.nodes[node].alive {
            let core = self.rng.below(CORES as u64) as u16;
            self.local_change(node, core);
        } else if roll < 308 {
            let other = self.rng.below(NODES as u64) as usize;
            if other != node {
                self.cut.insert((node.min(other), node.max(other)));
            }
        } else if roll < 325 && !self.cut.is_empty() {
            let first = *self.cut.iter().next().unwrap();
            self.cut.remove(&first);
        } else if roll < 329 && self.nodes.iter().filter(|n| n.alive).count() > 2 && self.nodes[node].alive {
            self.crash(node);
        } else if roll < 345 && !self.nodes[node].alive {
            self.restart(node);
        }
    }

    fn local_change(&mut self, node: usize, core: u16) {
        let rng_remove = self.rng.chance(35);
        let c = &mut self.nodes[node].cores[core as usize];
        let (key, value) = if rng_remove && !c.local.is_empty() {
            let key = c.local.keys().next().cloned().unwrap();
            c.local.remove(&key);
            (key, None)
        } else {
            c.next_key += 1;
            let key = format!("n{node}c{core}k{}", c.next_key % 40).into_bytes();
            let value = format!("v{}", c.next_key).into_bytes();
            c.local.insert(key.clone(), value.clone());
            (key, Some(value))
        };
        let now = self.instant();
        let mut outgoing = Vec::new();
        for (&peer, (connection, link)) in &mut self.nodes[node].cores[core as usize].links {
            if !link.is_established() {
                continue;
            }
            let frame = match &value {
                Some(v) => Frame::Put { table: Table::Session, key: &key, value: v },
                None => Frame::Remove { table: Table::Session, key: &key },
            };
            if link.send(&frame).is_err() {
                panic!("seed {}: backpressure in the simulation (queues should drain)", self.seed);
            }
            let _ = (peer, now);
            outgoing.push(*connection);
        }
    }

    fn crash(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        n.alive = false;
        n.died_at = Some(self.now);
        for core in 0..CORES {
            for epoch in n.cores[core as usize].links.values().map(|(_, l)| l.epoch()).collect::<Vec<_>>() {
                n.old_epochs.push((owner_id(node, core), epoch));
            }
        }
        n.serving.clear();
        n.pending_down.clear();
        for core in &mut n.cores {
            core.links.clear();
        }
        // The kernel resets every connection of the dead process: peers see a close.
        let now = self.now;
        for connection in &mut self.connections {
            if connection.owner.0 == node && connection.closed_by_owner.is_none() {
                connection.closed_by_owner = Some(now);
            }
            if connection.peer == node && connection.closed_by_peer.is_none() {
                connection.closed_by_peer = Some(now);
            }
        }
    }

    fn restart(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        n.alive = true;
        n.incarnation += 1;
        n.died_at = None;
        n.cores = (0..CORES).map(|_| new_core(n.incarnation)).collect();
        n.replica = Replica::new(MemoryStore::default());
    }

    /// Owners without a link to a peer open one (when the peer is reachable).
    fn connect(&mut self) {
        for node in 0..NODES {
            if !self.nodes[node].alive {
                continue;
            }
            for core in 0..CORES {
                for peer in 0..NODES {
                    if peer == node || self.nodes[node].cores[core as usize].links.contains_key(&peer) {
                        continue;
                    }
                    let due =
                        self.nodes[node].cores[core as usize].reconnect_at.get(&peer).copied().unwrap_or_default();
                    if self.now < due {
                        continue;
                    }
                    self.nodes[node].cores[core as usize].reconnect_at.insert(peer, self.now + RECONNECT_MIN);
                    if !self.nodes[peer].alive || self.is_cut(node, peer) {
                        continue;
                    }
                    let connection = self.connections.len();
                    let c = &mut self.nodes[node].cores[core as usize];
                    c.next_epoch += 1;
                    let nonce = self.rng.bytes();
                    let link = OutLink::new(
                        &self.nodes[node].settings,
                        core,
                        self.nodes[node].cores[core as usize].next_epoch,
                        nonce,
                        self.instant(),
                    );
                    let peer_incarnation = self.nodes[peer].incarnation;
                    let owner_incarnation = self.nodes[node].incarnation;
                    self.connections.push(Connection {
                        owner: (node, core),
                        peer,
                        to_peer: Pipe::default(),
                        to_owner: Pipe::default(),
                        closed_by_owner: None,
                        closed_by_peer: None,
                        peer_incarnation,
                        owner_incarnation,
                    });
                    let in_nonce = self.rng.bytes();
                    let now = self.instant();
                    self.nodes[peer].serving.insert(connection, (InLink::new(in_nonce, now), None));
                    self.nodes[node].cores[core as usize].links.insert(peer, (connection, link));
                }
            }
        }
    }

    fn deliver(&mut self) {
        for id in 0..self.connections.len() {
            let (owner, core, peer) =
                (self.connections[id].owner.0, self.connections[id].owner.1, self.connections[id].peer);
            if self.is_cut(owner, peer) {
                continue;
            }
            // Owner -> peer.
            while let Some((at, _)) = self.connections[id].to_peer.chunks.front() {
                if *at > self.now {
                    break;
                }
                let (_, bytes) = self.connections[id].to_peer.chunks.pop_front().unwrap();
                self.peer_input(id, peer, &bytes);
            }
            while let Some((at, _)) = self.connections[id].to_owner.chunks.front() {
                if *at > self.now {
                    break;
                }
                let (_, bytes) = self.connections[id].to_owner.chunks.pop_front().unwrap();
                self.owner_input(id, owner, core, &bytes);
            }
            // Closes arrive after the data.
            if let Some(at) = self.connections[id].closed_by_owner {
                if at <= self.now && self.connections[id].to_peer.chunks.is_empty() {
                    self.peer_closed(id, peer);
                }
            }
            if let Some(at) = self.connections[id].closed_by_peer {
                if at <= self.now && self.connections[id].to_owner.chunks.is_empty() {
                    self.owner_closed(id, owner, core);
                }
            }
        }
    }

    fn peer_input(&mut self, id: usize, peer: usize, bytes: &[u8]) {
        let now = self.instant();
        let n = &mut self.nodes[peer];
        if !n.alive || n.incarnation != self.connections[id].peer_incarnation {
            return;
        }
        let Some((link, known)) = n.serving.get_mut(&id) else { return };
        let mut changes: Vec<(OwnerId, u64, Change)> = Vec::new();
        let mut owner = *known;
        let result = link.handle_input(&n.settings, bytes, now, &mut |event| match event {
            InEvent::Owner { node_num, core, epoch, .. } => {
                let id = OwnerId { node_num, core };
                owner = Some((id, epoch));
                changes.push((id, epoch, Change::Connected));
            }
            InEvent::SnapshotBegin => changes.push((owner.unwrap().0, owner.unwrap().1, Change::SnapshotBegin)),
            InEvent::SnapshotEnd { .. } => changes.push((owner.unwrap().0, owner.unwrap().1, Change::SnapshotEnd)),
            InEvent::Put { table, key, value } => changes.push((
                owner.unwrap().0,
                owner.unwrap().1,
                Change::Put { table, key: key.to_vec(), value: value.to_vec() },
            )),
            InEvent::Remove { table, key } => {
                changes.push((owner.unwrap().0, owner.unwrap().1, Change::Remove { table, key: key.to_vec() }))
            }
            InEvent::Route { .. } | InEvent::Deliver { .. } | InEvent::Event { .. } => {}
        });
        *known = owner;
        for (owner, epoch, change) in &changes {
            n.replica.apply(*owner, *epoch, change);
        }
        let reply = link.transmit().to_vec();
        link.transmitted(reply.len(), now);
        if result.is_err() {
            self.close_serving(id, peer);
        }
        self.send(id, false, reply);
    }

    fn owner_input(&mut self, id: usize, owner: usize, core: u16, bytes: &[u8]) {
        let now = self.instant();
        let n = &mut self.nodes[owner];
        if !n.alive || n.incarnation != self.connections[id].owner_incarnation {
            return;
        }
        let peer = self.connections[id].peer;
        let settings = n.settings.clone();
        let c = &mut n.cores[core as usize];
        let Some((connection, link)) = c.links.get_mut(&peer) else { return };
        if *connection != id {
            return;
        }
        match link.handle_input(&settings, bytes, now) {
            Ok(Some(OutEvent::Established { .. })) => {
                link.send(&Frame::SnapshotBegin).unwrap();
                for (key, value) in &c.local {
                    link.send(&Frame::Put { table: Table::Session, key, value }).unwrap();
                }
                link.send(&Frame::SnapshotEnd { entries: c.local.len() as u64 }).unwrap();
            }
            Ok(None) => {}
            Err(_) => self.close_link(owner, core, peer),
        }
    }

    fn peer_closed(&mut self, id: usize, peer: usize) {
        if self.nodes[peer].serving.contains_key(&id) {
            self.close_serving(id, peer);
        }
    }

    fn owner_closed(&mut self, id: usize, owner: usize, core: u16) {
        let peer = self.connections[id].peer;
        if self.nodes[owner].cores[core as usize].links.get(&peer).is_some_and(|(c, _)| *c == id) {
            self.close_link(owner, core, peer);
        }
    }

    /// The peer side gives up a connection: the owner's entries go after the grace.
    fn close_serving(&mut self, id: usize, peer: usize) {
        let now = self.now;
        if let Some((_, Some((owner, epoch)))) = self.nodes[peer].serving.remove(&id) {
            self.nodes[peer].pending_down.push((now + OWNER_GRACE, owner, epoch));
        }
        if self.connections[id].closed_by_peer.is_none() {
            self.connections[id].closed_by_peer = Some(now);
        }
    }

    fn close_link(&mut self, owner: usize, core: u16, peer: usize) {
        let now = self.now;
        if let Some((id, _)) = self.nodes[owner].cores[core as usize].links.remove(&peer) {
            if self.connections[id].closed_by_owner.is_none() {
                self.connections[id].closed_by_owner = Some(now);
            }
        }
    }

    fn timeouts(&mut self) {
        let now = self.instant();
        for node in 0..NODES {
            if !self.nodes[node].alive {
                continue;
            }
            let mut dead_links = Vec::new();
            for core in 0..CORES {
                for (&peer, (_, link)) in &mut self.nodes[node].cores[core as usize].links {
                    if link.handle_timeout(now).is_err() {
                        dead_links.push((core, peer));
                    }
                }
            }
            for (core, peer) in dead_links {
                self.close_link(node, core, peer);
            }
            let mut dead_serving = Vec::new();
            for (&id, (link, _)) in &mut self.nodes[node].serving {
                if link.handle_timeout(now).is_err() {
                    dead_serving.push(id);
                }
            }
            for id in dead_serving {
                self.close_serving(id, node);
            }
            let due: Vec<(OwnerId, u64)> = self.nodes[node]
                .pending_down
                .iter()
                .filter(|(at, _, _)| *at <= self.now)
                .map(|(_, o, e)| (*o, *e))
                .collect();
            self.nodes[node].pending_down.retain(|(at, _, _)| *at > self.now);
            for (owner, epoch) in due {
                self.nodes[node].replica.apply(owner, epoch, &Change::Down);
            }
        }
    }

    /// Writes what every link has queued.
    fn flush(&mut self) {
        let now = self.instant();
        let mut sends = Vec::new();
        for node in 0..NODES {
            if !self.nodes[node].alive {
                continue;
            }
            for core in 0..CORES {
                for (_, (id, link)) in self.nodes[node].cores[core as usize].links.iter_mut() {
                    assert!(link.queued_bytes() <= LINK_QUEUE_BYTES_MAX, "queue bound");
                    let bytes = link.transmit().to_vec();
                    link.transmitted(bytes.len(), now);
                    sends.push((*id, true, bytes));
                }
            }
            for (id, (link, _)) in self.nodes[node].serving.iter_mut() {
                let bytes = link.transmit().to_vec();
                link.transmitted(bytes.len(), now);
                sends.push((*id, false, bytes));
            }
        }
        for (id, to_peer, bytes) in sends {
            self.send(id, to_peer, bytes);
        }
    }

    /// Whether a crashed node's entries must be gone by now: a live peer notices the
    /// silence at its first step after the dead time (plus the last in-flight
    /// delay), and drops the entries at its first step a grace later.
    fn must_be_gone(&self, died: Duration) -> bool {
        let silent = died + LINK_DEAD_AFTER + Duration::from_millis(100);
        let Some(noticed) = self.step_times.get(self.step_times.partition_point(|t| *t < silent)) else {
            return false;
        };
        self.now >= *noticed + OWNER_GRACE
    }

    /// Invariants that hold at every step.
    fn check_always(&self) {
        for (x, node) in self.nodes.iter().enumerate() {
            if !node.alive {
                continue;
            }
            for ((_, key), owners) in &node.replica.store.entries {
                for owner in owners.keys() {
                    let prefix = format!("n{}c{}k", owner.node_num - 1, owner.core);
                    assert!(
                        key.starts_with(prefix.as_bytes()),
                        "seed {}: node {x} holds {key:?} under the wrong owner {owner:?}",
                        self.seed
                    );
                }
            }
            for (y, other) in self.nodes.iter().enumerate() {
                let Some(died) = other.died_at else { continue };
                if !self.must_be_gone(died) {
                    continue;
                }
                for (owner, epoch) in &other.old_epochs {
                    let held =
                        node.replica.store.entries.values().any(|o| o.get(owner).is_some_and(|(e, _)| e == epoch));
                    assert!(!held, "seed {}: node {x} still holds entries of crashed node {y} ({owner:?} epoch {epoch}), dead since {died:?}, now {:?}", self.seed, self.now);
                }
            }
        }
    }

    /// After healing and a quiet period: every live node holds every live owner's table.
    fn check_converged(&self) {
        for (x, node) in self.nodes.iter().enumerate() {
            if !node.alive {
                continue;
            }
            for (y, other) in self.nodes.iter().enumerate() {
                if y == x {
                    continue;
                }
                for core in 0..CORES {
                    let held = node.replica.store.of(owner_id(y, core));
                    let expected: BTreeMap<(Table, Vec<u8>), Vec<u8>> = if other.alive {
                        other.cores[core as usize]
                            .local
                            .iter()
                            .map(|(k, v)| ((Table::Session, k.clone()), v.clone()))
                            .collect()
                    } else {
                        BTreeMap::new()
                    };
                    assert_eq!(
                        held, expected,
                        "seed {}: node {x}'s copy of owner n{y}c{core} did not converge",
                        self.seed
                    );
                }
            }
        }
    }
}

fn run(seed: u64, steps: usize) {
    let mut world = World::new(seed);
    for _ in 0..steps {
        world.step();
        world.check_always();
    }
    // Heal: no partitions, no more writes; some crashed nodes come back, the others
    // stay dead (their entries must be gone); let it settle.
    world.cut.clear();
    for node in 0..NODES {
        if !world.nodes[node].alive && world.rng.chance(50) {
            world.restart(node);
        }
    }
    let settle = world.now + Duration::from_secs(20);
    while world.now < settle {
        world.now += Duration::from_millis(5);
        world.step_times.push(world.now);
        world.connect();
        world.deliver();
        world.timeouts();
        world.flush();
        world.check_always();
    }
    world.check_converged();
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let count: u64 = std::env::var("SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(24);
    (1..=count).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect()
}

/// Many seeds of crashes, partitions, restarts and clock jumps converge, and the
/// invariants hold at every step.
#[test]
fn replication_survives_faults() {
    let steps = std::env::var("SIM_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
    for seed in seeds() {
        run(seed, steps);
    }
}
