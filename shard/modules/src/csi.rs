//! `mod_csi`: client state indication (XEP-0352). While a client says it is inactive
//! (`<inactive/>`), presence updates and chat-state-only messages wait, as
//! MongooseIM's mod_csi holds them: a newer presence from the same sender replaces
//! the older one (collapsed). Messages with a body, IQs and everything else go at
//! once. `<active/>` sends what waited, in order; so does a full buffer.
//!
//! Per inactive session it keeps the held stanzas (at most `buffer_max`); an active
//! session costs nothing.

use std::cell::RefCell;
use std::collections::HashMap;

use starling_shard::module::{Module, Push, Sender};
use starling_shard::{Core, SessionId};
use starling_wire::jid::FullJid;
use starling_wire::stanza::{MessageType, Stanza, StanzaKind};

pub const NS_CSI: &str = "urn:xmpp:csi:0";

/// A stanza held for an inactive client: (presence sender, bytes).
type Held = (Option<Box<str>>, Vec<u8>);

/// An inactive session: its full JID and what waits for it.
type Inactive = (Box<str>, Vec<Held>);

/// The CSI module of one core.
pub struct Csi {
    buffer_max: usize,
    /// Inactive sessions: their full JID and what waits for them.
    inactive: RefCell<HashMap<SessionId, Inactive>>,
}

impl Csi {
    pub fn new(buffer_max: usize) -> Csi {
        Csi { buffer_max, inactive: RefCell::new(HashMap::new()) }
    }

    /// Sends everything held for `session`, in order.
    fn release(&self, core: &Core, session: SessionId) {
        let Some((full, held)) = self.inactive.borrow_mut().remove(&session) else { return };
        for (_, bytes) in held {
            core.push_raw(session, &full, &bytes);
        }
    }
}

impl Module for Csi {
    fn name(&self) -> &'static str {
        "mod_csi"
    }

    /// What waited for an inactive client goes to the session now, so it moves
    /// with the session's mail; the client starts active on the other node.
    fn export_session(&self, core: &Core, _jid: &FullJid, session: SessionId) -> Vec<u8> {
        self.release(core, session);
        Vec::new()
    }

    fn stream_features(&self) -> String {
        format!("<csi xmlns='{NS_CSI}'/>")
    }

    fn inline_features(&self) -> &[&'static str] {
        &[NS_CSI]
    }

    /// XEP-0352's `<inactive/>` (or `<active/>`) inside a Bind 2 request (XEP-0386):
    /// the session starts inactive, as if the nonza came right after binding.
    fn on_inline_enable(&self, core: &Core, sender: &mut Sender<'_>, element: &[u8]) -> Vec<u8> {
        self.on_nonza(core, sender, element);
        Vec::new()
    }

    fn on_nonza(&self, core: &Core, sender: &mut Sender<'_>, element: &[u8]) -> bool {
        let inactive = if element.starts_with(b"<inactive") {
            true
        } else if element.starts_with(b"<active") {
            false
        } else {
            return false;
        };
        let namespace = starling_wire::xml::attribute(element, b"xmlns").and_then(|a| a.value());
        if namespace.as_deref() != Some(NS_CSI) {
            return false;
        }
        if inactive {
            self.inactive
                .borrow_mut()
                .entry(sender.session)
                .or_insert_with(|| (sender.jid.as_str().into(), Vec::new()));
        } else {
            self.release(core, sender.session);
        }
        true
    }

    fn wants_push(&self) -> bool {
        true
    }

    fn on_push(&self, core: &Core, session: SessionId, _full: &str, stanza: &Stanza<'_>) -> Push {
        let mut inactive = self.inactive.borrow_mut();
        let Some((_, held)) = inactive.get_mut(&session) else { return Push::Send };
        let sender = match stanza.kind {
            StanzaKind::Presence => Some(stanza.from.and_then(|f| f.value()).unwrap_or_default().into_owned()),
            StanzaKind::Message if chat_state_only(stanza) => None,
            _ => return Push::Send,
        };
        if let Some(sender) = &sender {
            if let Some(slot) = held.iter_mut().find(|(s, _)| s.as_deref() == Some(sender.as_str())) {
                slot.1 = stanza.bytes.to_vec();
                return Push::Taken;
            }
        }
        held.push((sender.map(Into::into), stanza.bytes.to_vec()));
        let full = held.len() >= self.buffer_max;
        drop(inactive);
        if full {
            // Bounded: what waits goes now, and the session stays inactive.
            let jid = self.inactive.borrow().get(&session).map(|(jid, _)| jid.clone());
            self.release(core, session);
            if let Some(jid) = jid {
                self.inactive.borrow_mut().insert(session, (jid, Vec::new()));
            }
        }
        Push::Taken
    }

    fn on_session_close(&self, _core: &Core, _jid: &FullJid, session: SessionId, _was_available: bool) {
        self.inactive.borrow_mut().remove(&session);
    }
}

/// A message that only carries a chat state (XEP-0085), no body.
fn chat_state_only(stanza: &Stanza<'_>) -> bool {
    let payload = stanza.payload();
    stanza.message_type() != MessageType::Error
        && !crate::contains(payload, b"<body")
        && crate::contains(payload, b"http://jabber.org/protocol/chatstates")
}
