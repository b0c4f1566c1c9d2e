//! The storage the feature modules need, on top of the runtime's [`AuthStore`]:
//! rosters, block lists, offline messages, per-account documents (vCards, private
//! XML, preferences), the message archive and PEP items. The server implements it
//! for SQLite and PostgreSQL; one instance per DB thread.

use starling_shard::db::{AuthStore, StoreError};
use starling_wire::jid::BareJid;

use crate::roster::{Roster, RosterItem};

/// The modules' storage interface (see each method). A backend that has not
/// implemented a call answers `Query`, so clients get `internal-server-error`, never
/// a crash.
pub trait Store: AuthStore {
    /// The roster and block list of `user` (empty for a new account).
    fn account(&mut self, user: &BareJid) -> Result<AccountData, StoreError> {
        let _ = user;
        Err(unsupported())
    }
    /// Inserts or replaces one roster item and sets the roster version.
    fn roster_put(&mut self, user: &BareJid, item: &RosterItem, version: u64) -> Result<(), StoreError> {
        let _ = (user, item, version);
        Err(unsupported())
    }
    /// Removes one roster item and sets the roster version.
    fn roster_delete(&mut self, user: &BareJid, jid: &str, version: u64) -> Result<(), StoreError> {
        let _ = (user, jid, version);
        Err(unsupported())
    }
    /// Adds JIDs to the block list (XEP-0191).
    fn block(&mut self, user: &BareJid, jids: &[String]) -> Result<(), StoreError> {
        let _ = (user, jids);
        Err(unsupported())
    }
    /// Removes JIDs from the block list; an empty list removes every entry.
    fn unblock(&mut self, user: &BareJid, jids: &[String]) -> Result<(), StoreError> {
        let _ = (user, jids);
        Err(unsupported())
    }
    /// Stores an offline message (XEP-0160); `false` when `user` already has `max`.
    fn offline_push(&mut self, user: &BareJid, stanza: &[u8], max: usize) -> Result<bool, StoreError> {
        let _ = (user, stanza, max);
        Err(unsupported())
    }
    /// The oldest `max` offline messages of `user` with their ids, oldest first; they
    /// stay stored until [`Store::offline_delete`] (after they reached the client).
    fn offline_peek(&mut self, user: &BareJid, max: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let _ = (user, max);
        Err(unsupported())
    }
    /// Deletes the offline messages of `user` with ids up to `last` (inclusive).
    fn offline_delete(&mut self, user: &BareJid, last: u64) -> Result<(), StoreError> {
        let _ = (user, last);
        Err(unsupported())
    }
    /// One stored XML document of `user` (vCard, private XML, ...).
    fn data(&mut self, user: &BareJid, kind: DataKind, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let _ = (user, kind, key);
        Err(unsupported())
    }
    /// Stores (`Some`) or deletes (`None`) one document of `user`.
    fn set_data(&mut self, user: &BareJid, kind: DataKind, key: &str, value: Option<&[u8]>) -> Result<(), StoreError> {
        let _ = (user, kind, key, value);
        Err(unsupported())
    }
    /// Appends a message to the archive of `user` (XEP-0313).
    fn archive_put(&mut self, user: &BareJid, message: &ArchivedMessage) -> Result<(), StoreError> {
        let _ = (user, message);
        Err(unsupported())
    }
    /// Appends many messages, to many archives, in one transaction (the batched
    /// writer's call; all or nothing). The default writes them one by one.
    fn archive_put_many(&mut self, rows: &[(BareJid, ArchivedMessage)]) -> Result<(), StoreError> {
        rows.iter().try_for_each(|(user, message)| self.archive_put(user, message))
    }
    /// Deletes the oldest messages of `user`'s archive beyond the newest `keep`.
    fn archive_trim(&mut self, user: &BareJid, keep: u64) -> Result<ArchiveTrim, StoreError> {
        let _ = (user, keep);
        Err(unsupported())
    }
    /// One page of the archive of `user`.
    fn archive_query(&mut self, user: &BareJid, query: &ArchiveQuery) -> Result<ArchivePage, StoreError> {
        let _ = (user, query);
        Err(unsupported())
    }
    /// Publishes item `id` (replacing one with the same id) on the PEP node `node`
    /// of `user`, creating the node with `access` if needed; keeps the newest
    /// `max_items`. `Ok(false)`: the node exists with another access model.
    fn pep_publish(
        &mut self,
        user: &BareJid,
        item: &PepItem,
        access: &str,
        max_items: usize,
    ) -> Result<bool, StoreError> {
        let _ = (user, item, access, max_items);
        Err(unsupported())
    }
    /// The node's access model and its newest `max` items, newest first; `None` when
    /// the node does not exist.
    fn pep_items(&mut self, user: &BareJid, node: &str, max: usize) -> Result<Option<PepNode>, StoreError> {
        let _ = (user, node, max);
        Err(unsupported())
    }
    /// Removes one item; `false` when it was not there.
    fn pep_retract(&mut self, user: &BareJid, node: &str, id: &str) -> Result<bool, StoreError> {
        let _ = (user, node, id);
        Err(unsupported())
    }
    /// Deletes a node and its items; `false` when there was none.
    fn pep_delete(&mut self, user: &BareJid, node: &str) -> Result<bool, StoreError> {
        let _ = (user, node);
        Err(unsupported())
    }
    /// Every node of `user` with its access model, by name.
    fn pep_nodes(&mut self, user: &BareJid) -> Result<Vec<(String, String)>, StoreError> {
        let _ = user;
        Err(unsupported())
    }
}

fn unsupported() -> StoreError {
    StoreError::Query("not supported by this storage backend yet".into())
}

/// What `archive_trim` did: messages left in the archive, and messages deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArchiveTrim {
    pub remaining: u64,
    pub deleted: u64,
}

/// One PEP item (XEP-0163).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PepItem {
    pub node: String,
    pub id: String,
    /// The `<item>`'s child, as XML text.
    pub payload: Vec<u8>,
}

/// A PEP node as read: its access model and items, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PepNode {
    pub access: String,
    pub items: Vec<PepItem>,
}

/// What the home core loads for an account when it first needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountData {
    pub roster: Roster,
    /// Blocked JIDs (XEP-0191), normalised, in the order they were added.
    pub blocked: Vec<String>,
}

/// Kinds of per-account XML documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKind {
    /// XEP-0054 vCard-temp (key "").
    Vcard,
    /// XEP-0049 private XML storage (key: the child's `name namespace`).
    Private,
    /// XEP-0012 last activity (key ""; value `seconds-since-epoch status`).
    LastActivity,
    /// XEP-0313 archiving preferences (key "").
    ArchivePreferences,
}

impl DataKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DataKind::Vcard => "vcard",
            DataKind::Private => "private",
            DataKind::LastActivity => "last",
            DataKind::ArchivePreferences => "mam_prefs",
        }
    }
}

/// One archived message (XEP-0313).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedMessage {
    /// Unique in the archive across the cluster and increasing with time.
    pub id: u64,
    /// Microseconds since the UNIX epoch.
    pub timestamp_us: u64,
    /// The other party's bare JID.
    pub with: String,
    /// The message as delivered (stamped).
    pub stanza: Vec<u8>,
}

/// A page request against an archive (XEP-0313 filters, XEP-0059 paging).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiveQuery {
    pub with: Option<String>,
    pub start_us: Option<u64>,
    pub end_us: Option<u64>,
    /// Only ids greater than this.
    pub after_id: Option<u64>,
    /// Only ids smaller than this.
    pub before_id: Option<u64>,
    /// The page is taken from the end (RSM `<before/>`, empty or with an id).
    pub from_end: bool,
    pub max: usize,
}

/// One page of archived messages, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchivePage {
    pub messages: Vec<ArchivedMessage>,
    /// No more messages in the paging direction.
    pub complete: bool,
    /// Messages matching the filters (without paging).
    pub count: u64,
}

impl ArchivePage {
    /// The page from up to `query.max + 1` rows read in paging order (the extra row
    /// only tells whether more follow).
    pub fn from_rows(mut rows: Vec<ArchivedMessage>, query: &ArchiveQuery, count: u64) -> ArchivePage {
        let complete = rows.len() <= query.max;
        rows.truncate(query.max);
        if query.from_end {
            rows.reverse();
        }
        ArchivePage { messages: rows, complete, count }
    }
}
