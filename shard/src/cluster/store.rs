//! The replicated sessions a core holds: other nodes' sessions of the accounts homed
//! on this core, indexed by bare JID for routing.
//!
//! Memory per entry (the budget `bench-results` measures, target 100 bytes): the full
//! JID's text once, the owner, the epoch and the session's routing fields, in a
//! vector under the bare JID's hash-map slot.

use std::collections::HashMap;

use starling_replicate::frame::Table;
use starling_replicate::replica::{OwnerId, ReplicaStore};

/// What a session entry carries (the value of `cets_session`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionEntry {
    pub session: u64,
    /// When the session was bound (ms since the epoch): the newer of two sessions
    /// with one full JID wins.
    pub created_ms: u64,
    pub priority: i8,
    pub available: bool,
    /// Module flags (`module::SessionFlags`), seven bits.
    pub flags: u8,
}

impl SessionEntry {
    pub const BYTES: usize = 18;

    /// Byte 17: bit 0 available, bits 1..=7 the module flags.
    pub fn encode(&self) -> [u8; Self::BYTES] {
        let mut out = [0u8; Self::BYTES];
        out[..8].copy_from_slice(&self.session.to_be_bytes());
        out[8..16].copy_from_slice(&self.created_ms.to_be_bytes());
        out[16] = self.priority as u8;
        out[17] = u8::from(self.available) | (self.flags & 0x7f) << 1;
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<SessionEntry> {
        let bytes: &[u8; Self::BYTES] = bytes.try_into().ok()?;
        Some(SessionEntry {
            session: u64::from_be_bytes(bytes[..8].try_into().ok()?),
            created_ms: u64::from_be_bytes(bytes[8..16].try_into().ok()?),
            priority: bytes[16] as i8,
            available: bytes[17] & 1 == 1,
            flags: bytes[17] >> 1,
        })
    }
}

/// One replicated session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteSession {
    pub full: Box<str>,
    pub owner: OwnerId,
    pub epoch: u64,
    pub entry: SessionEntry,
}

/// Claims on one key of a shared table: (owner, epoch, value).
type Claims = Vec<(OwnerId, u64, Box<[u8]>)>;

/// The store behind a core's `Replica`.
#[derive(Default)]
pub struct RemoteSessions {
    by_bare: HashMap<Box<str>, Vec<RemoteSession>>,
    count: usize,
    /// Entries of the other tables (few: components, cluster id), kept whole.
    others: HashMap<(Table, Box<[u8]>), Claims>,
}

fn bare_of(full: &str) -> &str {
    full.split('/').next().unwrap_or(full)
}

impl RemoteSessions {
    pub fn sessions(&self, bare: &str) -> &[RemoteSession] {
        self.by_bare.get(bare).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn session(&self, full: &str) -> Option<&RemoteSession> {
        self.sessions(bare_of(full)).iter().find(|s| &*s.full == full)
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Entries of `table` (all owners), for `tableInfo`.
    pub fn table_len(&self, table: Table) -> usize {
        match table {
            Table::Session => self.count,
            other => self.others.iter().filter(|((t, _), _)| *t == other).map(|(_, v)| v.len()).sum(),
        }
    }

    /// Approximate heap bytes, for `tableInfo`'s memory.
    pub fn heap_bytes(&self) -> usize {
        let slots =
            self.by_bare.capacity() * (std::mem::size_of::<Box<str>>() + std::mem::size_of::<Vec<RemoteSession>>() + 1);
        let entries: usize = self
            .by_bare
            .iter()
            .map(|(bare, sessions)| {
                bare.len()
                    + sessions.capacity() * std::mem::size_of::<RemoteSession>()
                    + sessions.iter().map(|s| s.full.len()).sum::<usize>()
            })
            .sum();
        slots + entries
    }

    fn retain(&mut self, mut keep: impl FnMut(&RemoteSession) -> bool) {
        let mut removed = 0;
        self.by_bare.retain(|_, sessions| {
            let before = sessions.len();
            sessions.retain(|s| keep(s));
            removed += before - sessions.len();
            !sessions.is_empty()
        });
        self.count -= removed;
    }
}

impl ReplicaStore for RemoteSessions {
    fn put(&mut self, owner: OwnerId, epoch: u64, table: Table, key: &[u8], value: &[u8]) {
        if table != Table::Session {
            let slot = self.others.entry((table, key.into())).or_default();
            slot.retain(|(o, _, _)| *o != owner);
            slot.push((owner, epoch, value.into()));
            return;
        }
        let (Ok(full), Some(entry)) = (std::str::from_utf8(key), SessionEntry::decode(value)) else {
            log::warn!("cluster: malformed session entry from {owner:?}");
            return;
        };
        let sessions = self.by_bare.entry(bare_of(full).into()).or_default();
        match sessions.iter_mut().find(|s| &*s.full == full && s.owner == owner) {
            Some(existing) => {
                existing.epoch = epoch;
                existing.entry = entry;
            }
            None => {
                // Most accounts have one or two sessions: grow one at a time instead
                // of Vec's default of four (which tripled the memory per entry).
                sessions.reserve_exact(1);
                sessions.push(RemoteSession { full: full.into(), owner, epoch, entry });
                self.count += 1;
            }
        }
    }

    fn remove(&mut self, owner: OwnerId, table: Table, key: &[u8]) {
        if table != Table::Session {
            if let Some(slot) = self.others.get_mut(&(table, key.into())) {
                slot.retain(|(o, _, _)| *o != owner);
            }
            return;
        }
        let Ok(full) = std::str::from_utf8(key) else { return };
        let bare = bare_of(full);
        if let Some(sessions) = self.by_bare.get_mut(bare) {
            let before = sessions.len();
            sessions.retain(|s| !(&*s.full == full && s.owner == owner));
            self.count -= before - sessions.len();
            if sessions.is_empty() {
                self.by_bare.remove(bare);
            }
        }
    }

    fn sweep(&mut self, owner: OwnerId, epoch: u64) {
        self.retain(|s| s.owner != owner || s.epoch >= epoch);
        for slot in self.others.values_mut() {
            slot.retain(|(o, e, _)| *o != owner || *e >= epoch);
        }
    }

    fn drop_owner(&mut self, owner: OwnerId, epoch: u64) {
        self.retain(|s| s.owner != owner || s.epoch > epoch);
        for slot in self.others.values_mut() {
            slot.retain(|(o, e, _)| *o != owner || *e > epoch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: OwnerId = OwnerId { node_num: 1, core: 0 };

    fn entry(session: u64) -> SessionEntry {
        SessionEntry { session, created_ms: 7, priority: -2, available: true, flags: 5 }
    }

    /// Entries round-trip through their wire form.
    #[test]
    fn entry_round_trip() {
        assert_eq!(SessionEntry::decode(&entry(9).encode()), Some(entry(9)));
        assert_eq!(SessionEntry::decode(&[1, 2]), None);
    }

    /// Puts index by bare JID; sweeps and drops remove only the owner's old entries.
    #[test]
    fn index_sweep_and_drop() {
        let mut store = RemoteSessions::default();
        store.put(A, 1, Table::Session, b"a@x/1", &entry(1).encode());
        store.put(A, 1, Table::Session, b"a@x/2", &entry(2).encode());
        store.put(A, 2, Table::Session, b"a@x/2", &entry(3).encode());
        assert_eq!(store.sessions("a@x").len(), 2);
        assert_eq!(store.session("a@x/2").unwrap().entry.session, 3);
        store.sweep(A, 2);
        assert_eq!(store.len(), 1);
        store.drop_owner(A, 2);
        assert!(store.is_empty());
        assert!(store.sessions("a@x").is_empty());
    }
}
