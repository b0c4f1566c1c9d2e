//! What a node holds of other owners' entries, and the epoch rules that keep it right.
//!
//! Every entry belongs to exactly one owner `(node_num, core)`, and only the owner
//! writes it, so each (owner, peer) pair is a single-writer stream: no locks, no
//! conflicts. An owner's link carries an epoch; a newer epoch supersedes an older one
//! (frames still in flight on an old connection are ignored), and a snapshot's end
//! removes whatever that owner no longer has. When an owner's link is gone (after
//! the grace), its entries are dropped.
//!
//! [`Replica`] applies changes to any [`ReplicaStore`]; the shard keeps a compact
//! store of its own, and [`MemoryStore`] is the reference used by the simulation.

use std::collections::{BTreeMap, HashMap};

use crate::frame::Table;

/// An owner: one core of one node (`node_num` from discovery).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerId {
    pub node_num: u16,
    pub core: u16,
}

/// A change from an owner's link, tagged by the shell with the link's epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Connected,
    SnapshotBegin,
    Put {
        table: Table,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Remove {
        table: Table,
        key: Vec<u8>,
    },
    SnapshotEnd,
    /// The link is gone (grace expired): drop the owner's entries.
    Down,
}

/// Where replicated entries live.
pub trait ReplicaStore {
    fn put(&mut self, owner: OwnerId, epoch: u64, table: Table, key: &[u8], value: &[u8]);
    fn remove(&mut self, owner: OwnerId, table: Table, key: &[u8]);
    /// Removes the owner's entries tagged with an epoch older than `epoch`.
    fn sweep(&mut self, owner: OwnerId, epoch: u64);
    /// Removes every entry of the owner tagged with `epoch` or older.
    fn drop_owner(&mut self, owner: OwnerId, epoch: u64);
}

/// Per-owner epochs and the rules; generic over the store.
#[derive(Debug, Default)]
pub struct Replica<S> {
    epochs: HashMap<OwnerId, u64>,
    pub store: S,
}

impl<S: ReplicaStore> Replica<S> {
    pub fn new(store: S) -> Replica<S> {
        Replica { epochs: HashMap::new(), store }
    }

    /// The epoch currently accepted for `owner`.
    pub fn epoch(&self, owner: OwnerId) -> Option<u64> {
        self.epochs.get(&owner).copied()
    }

    /// Applies a change; returns false when it was stale and ignored.
    pub fn apply(&mut self, owner: OwnerId, epoch: u64, change: &Change) -> bool {
        let current = self.epochs.get(&owner).copied().unwrap_or(0);
        if epoch < current {
            return false;
        }
        if epoch > current {
            self.epochs.insert(owner, epoch);
        }
        match change {
            Change::Connected | Change::SnapshotBegin => {}
            Change::Put { table, key, value } => self.store.put(owner, epoch, *table, key, value),
            Change::Remove { table, key } => self.store.remove(owner, *table, key),
            Change::SnapshotEnd => self.store.sweep(owner, epoch),
            Change::Down => self.store.drop_owner(owner, epoch),
        }
        true
    }
}

/// One key's entries: owner -> (epoch, value).
pub type Claims = BTreeMap<OwnerId, (u64, Vec<u8>)>;

/// A plain store: (table, key) -> entries by owner. Used by tests and the simulation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryStore {
    pub entries: BTreeMap<(Table, Vec<u8>), Claims>,
}

impl MemoryStore {
    /// Entries held for `owner`: key -> value.
    pub fn of(&self, owner: OwnerId) -> BTreeMap<(Table, Vec<u8>), Vec<u8>> {
        self.entries
            .iter()
            .filter_map(|(key, owners)| owners.get(&owner).map(|(_, value)| (key.clone(), value.clone())))
            .collect()
    }

    pub fn owners(&self) -> Vec<OwnerId> {
        let mut owners: Vec<OwnerId> = self.entries.values().flat_map(|o| o.keys().copied()).collect();
        owners.sort();
        owners.dedup();
        owners
    }

    pub fn len(&self) -> usize {
        self.entries.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn retain(&mut self, mut keep: impl FnMut(OwnerId, u64) -> bool) {
        for owners in self.entries.values_mut() {
            owners.retain(|owner, (epoch, _)| keep(*owner, *epoch));
        }
        self.entries.retain(|_, owners| !owners.is_empty());
    }
}

impl ReplicaStore for MemoryStore {
    fn put(&mut self, owner: OwnerId, epoch: u64, table: Table, key: &[u8], value: &[u8]) {
        self.entries.entry((table, key.to_vec())).or_default().insert(owner, (epoch, value.to_vec()));
    }

    fn remove(&mut self, owner: OwnerId, table: Table, key: &[u8]) {
        let slot = (table, key.to_vec());
        if let Some(owners) = self.entries.get_mut(&slot) {
            owners.remove(&owner);
            if owners.is_empty() {
                self.entries.remove(&slot);
            }
        }
    }

    fn sweep(&mut self, owner: OwnerId, epoch: u64) {
        self.retain(|o, e| o != owner || e >= epoch);
    }

    fn drop_owner(&mut self, owner: OwnerId, epoch: u64) {
        self.retain(|o, e| o != owner || e > epoch);
    }
}

/// Shared-key tables (cluster id, room names): every node holds every owner's claim
/// and they all pick the same winner, the highest `(timestamp, node_num)`.
pub fn winner<'a>(claims: impl Iterator<Item = (u64, u16, &'a [u8])>) -> Option<&'a [u8]> {
    claims.max_by_key(|(timestamp, node, _)| (*timestamp, *node)).map(|(_, _, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: OwnerId = OwnerId { node_num: 1, core: 0 };

    fn put(key: &str, value: &str) -> Change {
        Change::Put { table: Table::Session, key: key.into(), value: value.into() }
    }

    /// A snapshot in a newer epoch replaces what the owner had; frames of the old
    /// epoch that arrive afterwards are ignored.
    #[test]
    fn newer_snapshot_replaces_and_stale_frames_are_ignored() {
        let mut replica = Replica::new(MemoryStore::default());
        replica.apply(A, 1, &Change::Connected);
        replica.apply(A, 1, &put("x", "1"));
        replica.apply(A, 1, &put("y", "1"));
        // The owner reconnects with epoch 2 and now has only y.
        replica.apply(A, 2, &Change::SnapshotBegin);
        replica.apply(A, 2, &put("y", "2"));
        replica.apply(A, 2, &Change::SnapshotEnd);
        assert!(!replica.apply(A, 1, &put("z", "late")), "stale epoch");
        let held = replica.store.of(A);
        assert_eq!(held.len(), 1);
        assert_eq!(held[&(Table::Session, b"y".to_vec())], b"2");
    }

    /// An owner going down drops its entries, but not those of a newer epoch that
    /// arrived before the down notice.
    #[test]
    fn down_drops_only_up_to_its_epoch() {
        let mut replica = Replica::new(MemoryStore::default());
        replica.apply(A, 1, &put("x", "1"));
        replica.apply(A, 1, &Change::Down);
        assert!(replica.store.is_empty());
        replica.apply(A, 3, &put("y", "3"));
        assert!(!replica.apply(A, 2, &Change::Down), "an old link's down notice is stale");
        assert_eq!(replica.store.len(), 1);
    }

    /// Shared keys: the highest (timestamp, node) wins, whatever the order.
    #[test]
    fn shared_key_winner_is_deterministic() {
        let claims = [(5u64, 2u16, &b"b"[..]), (5, 3, b"c"), (4, 9, b"a")];
        assert_eq!(winner(claims.iter().copied()), Some(&b"c"[..]));
        assert_eq!(winner(claims.iter().rev().copied()), Some(&b"c"[..]));
    }
}
