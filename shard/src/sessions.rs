//! The session table shard of one core: every account homed on this core (all its
//! resources live here, DESIGN.md section 2) with its bound sessions.
//!
//! Only this core reads or writes it; lookups borrow `&str` keys so routing does not
//! allocate.

use std::collections::HashMap;
use std::rc::Rc;

use starling_wire::jid::{BareJid, FullJid};

use crate::mailbox::Mailbox;

/// Identifies one bound session on this node (unique per core, tagged with the core).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionId(pub u64);

/// One bound resource.
pub struct Session {
    pub(crate) id: SessionId,
    pub(crate) jid: FullJid,
    pub(crate) mailbox: Rc<Mailbox>,
    /// Set by initial presence, cleared by unavailable presence (RFC 6121 section 4).
    pub(crate) available: bool,
    pub(crate) priority: i8,
    /// When it was bound (ms since the UNIX epoch): the newer of two sessions with
    /// one full JID wins.
    pub(crate) created_ms: u64,
    /// Module flags, replicated with the session (`module::SessionFlags`).
    pub(crate) flags: crate::module::SessionFlags,
}

impl Session {
    pub fn id(&self) -> SessionId {
        self.id
    }

    pub fn jid(&self) -> &FullJid {
        &self.jid
    }

    /// It sent available presence (RFC 6121 section 4.2).
    pub fn available(&self) -> bool {
        self.available
    }

    /// Its presence priority (RFC 6121 section 4.7.2.3).
    pub fn priority(&self) -> i8 {
        self.priority
    }

    pub fn flags(&self) -> crate::module::SessionFlags {
        self.flags
    }

    /// The replicated form of this session.
    pub fn entry(&self) -> crate::cluster::store::SessionEntry {
        crate::cluster::store::SessionEntry {
            session: self.id.0,
            created_ms: self.created_ms,
            priority: self.priority,
            available: self.available,
            flags: self.flags.0,
        }
    }
}

/// One core's session table (`Core::sessions`).
#[derive(Default)]
pub(crate) struct SessionTable {
    accounts: HashMap<Box<str>, Vec<Session>>,
    count: usize,
}

/// What binding did to an existing session with the same full JID.
pub(crate) enum Bound {
    Fresh,
    /// The old session's mailbox; it must be closed with `conflict`.
    Replaced(Rc<Mailbox>),
}

impl SessionTable {
    pub fn len(&self) -> usize {
        self.count
    }

    /// The sessions of the account `bare` (normalised text).
    pub fn sessions(&self, bare: &str) -> &[Session] {
        self.accounts.get(bare).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn session(&self, full: &str) -> Option<&Session> {
        let (bare, _) = full.split_once('/')?;
        self.sessions(bare).iter().find(|s| s.jid.as_str() == full)
    }

    pub fn session_mut(&mut self, full: &str) -> Option<&mut Session> {
        let (bare, _) = full.split_once('/')?;
        self.accounts.get_mut(bare)?.iter_mut().find(|s| s.jid.as_str() == full)
    }

    /// Adds `session`, replacing one with the same full JID (RFC 6120 section
    /// 7.7.2.2: the new session wins, the old one gets `conflict`).
    pub fn bind(&mut self, session: Session) -> Bound {
        let sessions = self.accounts.entry(session.jid.bare_str().into()).or_default();
        if let Some(old) = sessions.iter_mut().find(|s| s.jid == session.jid) {
            let old = std::mem::replace(old, session);
            return Bound::Replaced(old.mailbox);
        }
        sessions.push(session);
        self.count += 1;
        Bound::Fresh
    }

    /// Removes the session `id` of `jid`, if it is still the one bound (a replaced
    /// session must not remove its successor). Returns it.
    pub fn unbind(&mut self, jid: &FullJid, id: SessionId) -> Option<Session> {
        let bare = jid.bare_str();
        let sessions = self.accounts.get_mut(bare)?;
        let index = sessions.iter().position(|s| s.id == id)?;
        let session = sessions.swap_remove(index);
        if sessions.is_empty() {
            self.accounts.remove(bare);
        }
        self.count -= 1;
        Some(session)
    }

    /// Every session.
    pub fn all(&self) -> impl Iterator<Item = &Session> {
        self.accounts.values().flatten()
    }

    /// Every bound full JID (admin listing).
    pub fn jids(&self) -> impl Iterator<Item = &FullJid> {
        self.accounts.values().flatten().map(|s| &s.jid)
    }

    /// Closes every session of `user` with `condition`; returns how many.
    pub fn kick_account(&self, user: &BareJid, condition: starling_wire::error::StreamErrorCondition) -> usize {
        let sessions = self.sessions(user.as_str());
        for session in sessions {
            session.mailbox.kick(condition);
        }
        sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn session(jid: &str, id: u64) -> Session {
        Session {
            id: SessionId(id),
            jid: jid.parse().unwrap(),
            mailbox: Rc::new(Mailbox::default()),
            available: false,
            priority: 0,
            created_ms: 0,
            flags: Default::default(),
        }
    }

    /// Binding the same full JID twice replaces the first session and reports it; the
    /// replaced session's unbind does not remove its successor.
    #[test]
    fn rebinding_replaces_and_stale_unbind_is_ignored() {
        let mut table = SessionTable::default();
        assert!(matches!(table.bind(session("a@x/r", 1)), Bound::Fresh));
        assert!(matches!(table.bind(session("a@x/r", 2)), Bound::Replaced(_)));
        assert_eq!(table.len(), 1);
        let jid: FullJid = "a@x/r".parse().unwrap();
        assert!(table.unbind(&jid, SessionId(1)).is_none());
        assert_eq!(table.session("a@x/r").unwrap().id, SessionId(2));
        assert!(table.unbind(&jid, SessionId(2)).is_some());
        assert_eq!(table.len(), 0);
    }

    proptest! {
        /// The table agrees with a BTreeMap model under any sequence of binds and unbinds.
        #[test]
        fn matches_a_map_model(ops in proptest::collection::vec((0u8..3, 0u8..4, 0u8..3, any::<bool>()), 0..200)) {
            let mut table = SessionTable::default();
            let mut model: BTreeMap<String, u64> = BTreeMap::new();
            for (step, (user, resource, _, bind)) in ops.into_iter().enumerate() {
                let jid = format!("u{user}@x/r{resource}");
                let id = step as u64;
                if bind {
                    table.bind(session(&jid, id));
                    model.insert(jid, id);
                } else if let Some(&current) = model.get(&jid) {
                    // Unbinding a stale id is a no-op; the current one removes.
                    let full: FullJid = jid.parse().unwrap();
                    prop_assert!(table.unbind(&full, SessionId(current + 1_000_000)).is_none());
                    prop_assert!(table.unbind(&full, SessionId(current)).is_some());
                    model.remove(&jid);
                }
                prop_assert_eq!(table.len(), model.len());
            }
            for (jid, id) in &model {
                prop_assert_eq!(table.session(jid).map(|s| s.id), Some(SessionId(*id)));
            }
            let mut listed: Vec<String> = table.jids().map(|j| j.to_string()).collect();
            listed.sort();
            prop_assert_eq!(listed, model.keys().cloned().collect::<Vec<_>>());
        }
    }
}
