//! IQs a client sends about its own account: the roster (RFC 6121 section 2, XEP-0237),
//! vCard-temp (XEP-0054), private XML storage (XEP-0049), the blocking command
//! (XEP-0191), message carbons (XEP-0280), the message archive (XEP-0313, in
//! `archive.rs`) and personal eventing (XEP-0163, in `pep.rs`).
//!
//! ```text
//!   session --stanza--> from_client --sync answer--> Done (reply in state.out)
//!                                    \--needs the store--> Wait(future) --reply bytes--> session
//! ```
//! A session awaits a `Wait` before it reads its next stanza, so one client's requests
//! are answered in order; a reply is sent only after the store has the change.

use std::future::Future;
use std::pin::Pin;

use starling_wire::error::{StanzaError, StanzaErrorCondition};
use starling_wire::jid::{BareJid, Jid};
use starling_wire::stanza::{write_attribute, IqType, Stanza};

use crate::account::{self, Shared};
use crate::blocking::DataKind;
use crate::core::Core;
use crate::limits::{BLOCKED_JIDS_MAX, DOCUMENT_BYTES_MAX, ROSTER_ITEMS_MAX};
use crate::roster::{self, RosterSet, NS_ROSTER};
use crate::session::State;

pub const NS_VCARD: &str = "vcard-temp";
pub const NS_PRIVATE: &str = "jabber:iq:private";
pub const NS_BLOCKING: &str = "urn:xmpp:blocking";
pub const NS_CARBONS: &str = "urn:xmpp:carbons:2";

/// Work a handler could not finish on the core; resolves to bytes for the client.
pub(crate) type Pending = Pin<Box<dyn Future<Output = Vec<u8>>>>;

/// What handling a client's stanza came to.
pub(crate) enum Outcome {
    /// Not an IM request: the caller handles it.
    NotMine,
    /// Answered; any reply is in `state.out`.
    Done,
    /// Waits for the store; the session sends what it resolves to.
    Wait(Pending),
}

/// A request kept for an answer written later, away from the borrowed stanza.
pub(crate) struct Request {
    bytes: Vec<u8>,
    /// Who answers (empty: the user's server).
    from: String,
    /// The requester's full JID.
    to: String,
}

impl Request {
    pub fn new(stanza: &Stanza<'_>, from: &str, to: &str) -> Request {
        Request { bytes: stanza.bytes.to_vec(), from: from.to_owned(), to: to.to_owned() }
    }

    /// The requester's bare JID.
    pub fn requester_bare(&self) -> &str {
        self.to.split('/').next().unwrap_or(&self.to)
    }

    pub fn result(&self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + payload.len());
        if let Ok(stanza) = Stanza::parse(&self.bytes) {
            stanza.write_iq_result(&self.from, &self.to, payload, &mut out);
        }
        out
    }

    pub fn error(&self, condition: StanzaErrorCondition) -> Vec<u8> {
        self.error_with(StanzaError::new(condition))
    }

    pub fn error_with(&self, error: StanzaError) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        if let Ok(stanza) = Stanza::parse(&self.bytes) {
            stanza.write_error_reply(&self.from, &self.to, &error, &mut out);
        }
        out
    }
}

/// Handles an IQ from the client to itself (no `to`, or its own bare JID).
pub(crate) fn from_client(core: &Core, state: &mut State, stanza: &Stanza<'_>) -> Outcome {
    let Some(kind @ (IqType::Get | IqType::Set)) = stanza.iq_type() else { return Outcome::NotMine };
    let Ok(text) = std::str::from_utf8(stanza.bytes) else { return Outcome::NotMine };
    let Ok(document) = roxmltree::Document::parse(text) else { return Outcome::NotMine };
    let mut children = document.root_element().children().filter(|c| c.is_element());
    let (Some(child), None) = (children.next(), children.next()) else { return Outcome::NotMine };
    let namespace = child.tag_name().namespace().unwrap_or("");
    let request = Request::new(stanza, "", state.jid.as_str());
    let fail = |state: &mut State, condition| {
        state.out.extend_from_slice(&request.error(condition));
        Outcome::Done
    };
    match (kind, namespace, child.tag_name().name()) {
        (IqType::Get, NS_ROSTER, "query") => roster_get(core, state, request, child.attribute("ver")),
        (IqType::Set, NS_ROSTER, "query") => match roster::parse_set(child, state.jid.bare_str()) {
            Ok(change) => roster_set(core, state, request, change),
            Err(condition) => fail(state, condition),
        },
        (_, NS_VCARD, "vCard") => vcard(core, state, request, kind, &text[child.range()]),
        (_, NS_PRIVATE, "query") => private(core, state, request, kind, child, text),
        (IqType::Get, NS_BLOCKING, "blocklist") => blocklist(core, state, request),
        (IqType::Set, NS_BLOCKING, name @ ("block" | "unblock")) => match blocking_items(child) {
            Ok(jids) if name == "block" && jids.is_empty() => fail(state, StanzaErrorCondition::BadRequest),
            Ok(jids) => block(core, state, request, name == "block", jids),
            Err(condition) => fail(state, condition),
        },
        (IqType::Set, NS_CARBONS, name @ ("enable" | "disable")) => {
            if let Some(session) = core.sessions.borrow_mut().session_mut(state.jid.as_str()) {
                session.carbons = name == "enable";
            }
            state.out.extend_from_slice(&request.result(b""));
            Outcome::Done
        }
        (_, crate::archive::NS_MAM, _) => crate::archive::from_client(core, state, request, kind, child),
        (_, crate::pep::NS_PUBSUB | crate::pep::NS_PUBSUB_OWNER, "pubsub") => {
            crate::pep::from_client(core, state, request, kind, child, text)
        }
        _ => Outcome::NotMine,
    }
}

/// Runs `work` with the account loaded; a store failure answers `internal-server-error`.
fn with_account<F, W>(core: &Core, state: &State, request: Request, work: F) -> Outcome
where
    F: FnOnce(&Core, &BareJid, &Shared, Request) -> W + 'static,
    W: Future<Output = Vec<u8>> + 'static,
{
    let core = core.rc();
    let bare = state.jid.to_bare();
    Outcome::Wait(Box::pin(async move {
        match account::load(&core, &bare).await {
            Ok(account) => work(&core, &bare, &account, request).await,
            Err(error) => {
                log::warn!("im: cannot load {bare}: {error}");
                request.error(StanzaErrorCondition::InternalServerError)
            }
        }
    }))
}

/// Answers with `request`'s result once `write` is stored, or `internal-server-error`.
async fn after_write<E: std::fmt::Display>(request: Request, write: impl Future<Output = Result<(), E>>) -> Vec<u8> {
    match write.await {
        Ok(()) => request.result(b""),
        Err(error) => {
            log::warn!("im: store write failed: {error}");
            request.error(StanzaErrorCondition::InternalServerError)
        }
    }
}

fn roster_get(core: &Core, state: &State, request: Request, ver: Option<&str>) -> Outcome {
    if let Some(session) = core.sessions.borrow_mut().session_mut(state.jid.as_str()) {
        session.interested = true;
    }
    let ver = ver.map(str::to_owned);
    with_account(core, state, request, move |_, _, account, request| {
        let account = account.borrow();
        // XEP-0237 section 2.4: an up-to-date client gets an empty result.
        let reply = if ver.as_deref() == Some(account.roster.version.to_string().as_str()) {
            request.result(b"")
        } else {
            let mut query = Vec::with_capacity(64 + account.roster.items.len() * 96);
            roster::write_query(&account.roster, &mut query);
            request.result(&query)
        };
        std::future::ready(reply)
    })
}

fn roster_set(core: &Core, state: &State, request: Request, change: RosterSet) -> Outcome {
    with_account(core, state, request, move |core, bare, account, request| {
        let write = apply_roster_set(core, bare, account, change);
        match write {
            Ok(write) => Box::pin(after_write(request, write)) as Pending,
            Err(condition) => Box::pin(std::future::ready(request.error(condition))),
        }
    })
}

pub(crate) type Write = Pin<Box<dyn Future<Output = Result<(), crate::blocking::StoreError>>>>;

/// Applies a roster set to the cached roster, pushes it, and returns the store write.
fn apply_roster_set(
    core: &Core,
    bare: &BareJid,
    account: &Shared,
    change: RosterSet,
) -> Result<Write, StanzaErrorCondition> {
    let mut account = account.borrow_mut();
    let roster = &mut account.roster;
    match change {
        RosterSet::Update { jid, name, groups } => {
            if roster.item(&jid).is_none() && roster.items.len() >= ROSTER_ITEMS_MAX {
                return Err(StanzaErrorCondition::ResourceConstraint);
            }
            roster.version += 1;
            let version = roster.version;
            let item = roster.entry(&jid);
            item.name = name;
            item.groups = groups;
            item.visible = true;
            let item = item.clone();
            push_roster_item(core, bare, &item, false, version);
            Ok(Box::pin(account::store_item(core, bare, item, version)))
        }
        RosterSet::Remove { jid } => {
            let index = roster.items.iter().position(|i| i.jid == jid && i.visible);
            let Some(index) = index else { return Err(StanzaErrorCondition::ItemNotFound) };
            let item = roster.items.remove(index);
            roster.version += 1;
            let version = roster.version;
            // RFC 6121 section 2.5.2: removing a contact cancels both subscriptions.
            if item.subscription.to() || item.ask {
                crate::subscription::send(core, bare.as_str(), &item.jid, "unsubscribe");
            }
            if item.subscription.from() || item.pending_in {
                crate::subscription::send(core, bare.as_str(), &item.jid, "unsubscribed");
            }
            push_roster_item(core, bare, &item, true, version);
            Ok(Box::pin(account::delete_item(core, bare, item.jid, version)))
        }
    }
}

/// Sends a roster push of `item` to every interested resource of `bare` bound on
/// this node (those that asked for the roster).
pub(crate) fn push_roster_item(core: &Core, bare: &BareJid, item: &roster::RosterItem, removed: bool, version: u64) {
    for session in core.sessions.borrow().sessions(bare.as_str()).iter().filter(|s| s.interested) {
        let mut push = Vec::with_capacity(256);
        let id = format!("push{}", core.next_id());
        roster::write_push(item, removed, version, session.jid.as_str(), &id, &mut push);
        core.push(&session.mailbox, &push);
    }
}

fn vcard(core: &Core, state: &mut State, request: Request, kind: IqType, source: &str) -> Outcome {
    if kind == IqType::Get {
        let bare = state.jid.to_bare();
        return Outcome::Wait(Box::pin(read_vcard(core.rc(), bare, request)));
    }
    if source.len() > DOCUMENT_BYTES_MAX {
        state.out.extend_from_slice(&request.error(StanzaErrorCondition::NotAcceptable));
        return Outcome::Done;
    }
    let user = state.jid.to_bare();
    let value = source.as_bytes().to_vec();
    let owner = user.clone();
    let write =
        core.shared.db.run_for(user.as_str(), move |store| store.set_data(&owner, DataKind::Vcard, "", Some(&value)));
    Outcome::Wait(Box::pin(async move { after_write(request, write).await }))
}

/// Answers a vCard get for `user` (XEP-0054 section 3.1: an empty vCard when none).
pub(crate) async fn read_vcard(core: std::rc::Rc<Core>, user: BareJid, request: Request) -> Vec<u8> {
    let key = user.clone();
    match core.shared.db.run_for(user.as_str(), move |store| store.data(&key, DataKind::Vcard, "")).await {
        Ok(Some(vcard)) => request.result(&vcard),
        Ok(None) => request.result(b"<vCard xmlns='vcard-temp'/>"),
        Err(error) => {
            log::warn!("im: vCard of {user}: {error}");
            request.error(StanzaErrorCondition::InternalServerError)
        }
    }
}

fn private(
    core: &Core,
    state: &mut State,
    request: Request,
    kind: IqType,
    query: roxmltree::Node<'_, '_>,
    text: &str,
) -> Outcome {
    let mut children = query.children().filter(|c| c.is_element());
    let (Some(child), None) = (children.next(), children.next()) else {
        state.out.extend_from_slice(&request.error(StanzaErrorCondition::BadRequest));
        return Outcome::Done;
    };
    // XEP-0049 section 3: the child must be qualified by a namespace other than ours.
    let namespace = child.tag_name().namespace().unwrap_or("");
    let source = &text[child.range()];
    if namespace.is_empty() || namespace == NS_PRIVATE || source.len() > DOCUMENT_BYTES_MAX {
        state.out.extend_from_slice(&request.error(StanzaErrorCondition::NotAcceptable));
        return Outcome::Done;
    }
    let key = format!("{} {namespace}", child.tag_name().name());
    let user = state.jid.to_bare();
    if kind == IqType::Set {
        let value = source.as_bytes().to_vec();
        let owner = user.clone();
        let write = core
            .shared
            .db
            .run_for(user.as_str(), move |store| store.set_data(&owner, DataKind::Private, &key, Some(&value)));
        return Outcome::Wait(Box::pin(async move { after_write(request, write).await }));
    }
    let empty = source.as_bytes().to_vec();
    let owner = user.clone();
    let read = core.shared.db.run_for(user.as_str(), move |store| store.data(&owner, DataKind::Private, &key));
    Outcome::Wait(Box::pin(async move {
        match read.await {
            Ok(stored) => {
                let mut query = b"<query xmlns='jabber:iq:private'>".to_vec();
                query.extend_from_slice(stored.as_deref().unwrap_or(&empty));
                query.extend_from_slice(b"</query>");
                request.result(&query)
            }
            Err(_) => request.error(StanzaErrorCondition::InternalServerError),
        }
    }))
}

/// The normalised JIDs of a block/unblock request's `<item/>`s.
fn blocking_items(command: roxmltree::Node<'_, '_>) -> Result<Vec<String>, StanzaErrorCondition> {
    let mut jids: Vec<String> = Vec::new();
    for item in command.children().filter(|c| c.is_element() && c.tag_name().name() == "item") {
        let jid = item.attribute("jid").ok_or(StanzaErrorCondition::BadRequest)?;
        let jid = Jid::parse(jid).map_err(|_| StanzaErrorCondition::JidMalformed)?;
        if !jids.iter().any(|j| j == jid.as_str()) {
            jids.push(jid.as_str().to_owned());
        }
    }
    Ok(jids)
}

fn blocklist(core: &Core, state: &State, request: Request) -> Outcome {
    with_account(core, state, request, |_, _, account, request| {
        let mut list = b"<blocklist xmlns='urn:xmpp:blocking'>".to_vec();
        write_items(&account.borrow().blocked, &mut list);
        list.extend_from_slice(b"</blocklist>");
        std::future::ready(request.result(&list))
    })
}

fn write_items(jids: &[String], out: &mut Vec<u8>) {
    for jid in jids {
        out.extend_from_slice(b"<item");
        write_attribute(out, "jid", jid);
        out.extend_from_slice(b"/>");
    }
}

/// XEP-0191 sections 3.3 and 3.4: changes the block list, pushes the change to the
/// account's resources, and tells newly blocked contacts the user went away.
fn block(core: &Core, state: &State, request: Request, blocking: bool, jids: Vec<String>) -> Outcome {
    with_account(core, state, request, move |core, bare, account, request| {
        let mut cached = account.borrow_mut();
        let write: Write = if blocking {
            let added: Vec<String> = jids.into_iter().filter(|j| !cached.blocked.contains(j)).collect();
            if cached.blocked.len() + added.len() > BLOCKED_JIDS_MAX {
                return Box::pin(std::future::ready(request.error(StanzaErrorCondition::ResourceConstraint)))
                    as Pending;
            }
            cached.blocked.extend(added.iter().cloned());
            drop(cached);
            for jid in &added {
                crate::presence::send_unavailable_to(core, bare.as_str(), jid);
            }
            push_blocking(core, bare, "block", &added);
            let user = bare.clone();
            Box::pin(core.shared.db.run_for(bare.as_str(), move |store| store.block(&user, &added)))
        } else {
            let removed: Vec<String> = if jids.is_empty() {
                std::mem::take(&mut cached.blocked)
            } else {
                cached.blocked.retain(|j| !jids.contains(j));
                jids.clone()
            };
            drop(cached);
            push_blocking(core, bare, "unblock", if jids.is_empty() { &[] } else { &removed });
            let user = bare.clone();
            Box::pin(core.shared.db.run_for(bare.as_str(), move |store| store.unblock(&user, &jids)))
        };
        let reply = after_write(request, write);
        Box::pin(reply) as Pending
    })
}

fn push_blocking(core: &Core, bare: &BareJid, command: &str, jids: &[String]) {
    for session in core.sessions.borrow().sessions(bare.as_str()) {
        let mut push = b"<iq type='set'".to_vec();
        write_attribute(&mut push, "to", session.jid.as_str());
        write_attribute(&mut push, "id", &format!("push{}", core.next_id()));
        push.extend_from_slice(format!("><{command} xmlns='urn:xmpp:blocking'>").as_bytes());
        write_items(jids, &mut push);
        push.extend_from_slice(format!("</{command}></iq>").as_bytes());
        core.push(&session.mailbox, &push);
    }
}
