//! Rosters and presence subscriptions (RFC 6121 sections 2 and 3, XEP-0237 roster
//! versioning): the stored model, the subscription state machine as pure functions,
//! and the roster XML the server reads and writes.
//!
//! ```text
//!   client roster get/set --> parse_set --> Roster (cached on the home core) --> Store
//!   subscription presence --> outbound()/inbound() --> Transition {changed, route, ...}
//! ```
//! The state of one contact is (subscription, pending-out `ask`, pending-in, pre-approved).
//! A contact known only through a pending inbound request is not in the roster the
//! user sees (RFC 6121 section 3.1.3) but is stored, so the request survives a restart.

use starling_wire::error::StanzaErrorCondition;
use starling_wire::jid::Jid;
use starling_wire::stanza::{write_attribute, PresenceType};
use starling_wire::xml::escape;

pub const NS_ROSTER: &str = "jabber:iq:roster";

/// Bytes of a roster item's name or of one group name (RFC 6121 leaves it to the
/// server; ejabberd and Prosody accept about this much).
pub const ROSTER_TEXT_BYTES_MAX: usize = 1024;
/// Groups one roster item may be in.
pub const ROSTER_GROUPS_MAX: usize = 32;

/// Who sees whose presence (RFC 6121 section 2.1.2.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Subscription {
    #[default]
    None,
    /// The user sees the contact's presence.
    To,
    /// The contact sees the user's presence.
    From,
    Both,
}

impl Subscription {
    pub fn as_str(self) -> &'static str {
        match self {
            Subscription::None => "none",
            Subscription::To => "to",
            Subscription::From => "from",
            Subscription::Both => "both",
        }
    }

    pub fn parse(text: &str) -> Subscription {
        match text {
            "to" => Subscription::To,
            "from" => Subscription::From,
            "both" => Subscription::Both,
            _ => Subscription::None,
        }
    }

    /// The user receives the contact's presence.
    pub fn to(self) -> bool {
        matches!(self, Subscription::To | Subscription::Both)
    }

    /// The contact receives the user's presence.
    pub fn from(self) -> bool {
        matches!(self, Subscription::From | Subscription::Both)
    }

    fn with(to: bool, from: bool) -> Subscription {
        match (to, from) {
            (false, false) => Subscription::None,
            (true, false) => Subscription::To,
            (false, true) => Subscription::From,
            (true, true) => Subscription::Both,
        }
    }
}

/// One contact of a user, as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RosterItem {
    /// The contact's bare JID, normalised.
    pub jid: String,
    pub name: String,
    pub subscription: Subscription,
    /// The user asked to subscribe and the contact has not answered (pending out).
    pub ask: bool,
    /// The contact asked to subscribe and the user has not answered (pending in).
    pub pending_in: bool,
    /// The user pre-approved a subscription request from the contact (section 3.4).
    pub approved: bool,
    /// In the roster the user sees; false for a contact known only by a pending request.
    pub visible: bool,
    pub groups: Vec<String>,
}

/// A user's roster with its version (XEP-0237: a counter bumped on every change).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roster {
    pub version: u64,
    pub items: Vec<RosterItem>,
}

impl Roster {
    pub fn item(&self, jid: &str) -> Option<&RosterItem> {
        self.items.iter().find(|i| i.jid == jid)
    }

    pub fn item_mut(&mut self, jid: &str) -> Option<&mut RosterItem> {
        self.items.iter_mut().find(|i| i.jid == jid)
    }

    /// The item for `jid`, created (hidden, no subscription) when missing.
    pub fn entry(&mut self, jid: &str) -> &mut RosterItem {
        let index = match self.items.iter().position(|i| i.jid == jid) {
            Some(index) => index,
            None => {
                self.items.push(RosterItem { jid: jid.to_owned(), ..RosterItem::default() });
                self.items.len() - 1
            }
        };
        &mut self.items[index]
    }

    /// Visible items (what a roster get returns).
    pub fn visible(&self) -> impl Iterator<Item = &RosterItem> {
        self.items.iter().filter(|i| i.visible)
    }

    /// Contacts that receive the user's presence.
    pub fn presence_subscribers(&self) -> impl Iterator<Item = &str> {
        self.items.iter().filter(|i| i.subscription.from()).map(|i| i.jid.as_str())
    }

    /// Contacts whose presence the user receives (probed at initial presence).
    pub fn presence_sources(&self) -> impl Iterator<Item = &str> {
        self.items.iter().filter(|i| i.subscription.to()).map(|i| i.jid.as_str())
    }
}

/// What a subscription stanza did to one roster item.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transition {
    /// The item changed: store it and push it to the user's interested resources.
    pub changed: bool,
    /// Pass the stanza on (to the contact for outbound, to the user's resources for inbound).
    pub forward: bool,
    /// Outbound `subscribed`: send the user's current presence to the contact.
    /// Outbound `unsubscribed`: send unavailable presence to the contact.
    pub send_presence: bool,
    /// Inbound `subscribe` from an already-subscribed or pre-approved contact: the
    /// server answers `subscribed` for the user (RFC 6121 section 3.1.3).
    pub auto_reply: bool,
}

/// The user sends subscription presence `kind` to the contact `item` (RFC 6121
/// sections 3.1.2, 3.2.2, 3.3.2, 3.4).
pub fn outbound(item: &mut RosterItem, kind: PresenceType) -> Transition {
    let before = item.clone();
    let mut transition = Transition { forward: true, ..Transition::default() };
    match kind {
        PresenceType::Subscribe => {
            if !item.subscription.to() {
                item.ask = true;
            }
            item.visible = true;
        }
        PresenceType::Subscribed => {
            if item.pending_in {
                item.subscription = Subscription::with(item.subscription.to(), true);
                item.pending_in = false;
                item.visible = true;
                transition.send_presence = true;
            } else if !item.subscription.from() {
                // Pre-approval: nothing is sent until the contact asks.
                item.approved = true;
                item.visible = true;
                transition.forward = false;
            } else {
                transition.forward = false;
            }
        }
        PresenceType::Unsubscribe => {
            item.subscription = Subscription::with(false, item.subscription.from());
            item.ask = false;
        }
        PresenceType::Unsubscribed => {
            transition.send_presence = item.subscription.from();
            item.subscription = Subscription::with(item.subscription.to(), false);
            item.pending_in = false;
            item.approved = false;
        }
        _ => transition.forward = false,
    }
    transition.changed = *item != before;
    transition
}

/// Subscription presence `kind` from the contact reaches the user's `item` (RFC 6121
/// sections 3.1.3, 3.1.5, 3.2.3, 3.3.3).
pub fn inbound(item: &mut RosterItem, kind: PresenceType) -> Transition {
    let before = item.clone();
    let mut transition = Transition::default();
    match kind {
        PresenceType::Subscribe => {
            if item.subscription.from() {
                transition.auto_reply = true;
            } else if item.approved {
                item.subscription = Subscription::with(item.subscription.to(), true);
                item.approved = false;
                transition.auto_reply = true;
            } else {
                item.pending_in = true;
                transition.forward = true;
            }
        }
        PresenceType::Subscribed if item.ask => {
            item.subscription = Subscription::with(true, item.subscription.from());
            item.ask = false;
            transition.forward = true;
        }
        PresenceType::Unsubscribe if item.subscription.from() || item.pending_in => {
            item.subscription = Subscription::with(item.subscription.to(), false);
            item.pending_in = false;
            transition.forward = true;
        }
        PresenceType::Unsubscribed if item.subscription.to() || item.ask => {
            item.subscription = Subscription::with(false, item.subscription.from());
            item.ask = false;
            transition.forward = true;
        }
        _ => {}
    }
    transition.changed = *item != before;
    transition
}

/// A roster set from the client (RFC 6121 section 2.3): add/update or remove one item.
#[derive(Debug, PartialEq, Eq)]
pub enum RosterSet {
    Update { jid: String, name: String, groups: Vec<String> },
    Remove { jid: String },
}

/// Parses the `<query xmlns='jabber:iq:roster'>` of a set, enforcing RFC 6121 section
/// 2.3.3's rules and the size limits.
pub fn parse_set(query: roxmltree::Node<'_, '_>, own_bare: &str) -> Result<RosterSet, StanzaErrorCondition> {
    let mut items = query.children().filter(|c| c.is_element());
    let (Some(item), None) = (items.next(), items.next()) else {
        return Err(StanzaErrorCondition::BadRequest);
    };
    if item.tag_name().name() != "item" || item.tag_name().namespace() != Some(NS_ROSTER) {
        return Err(StanzaErrorCondition::BadRequest);
    }
    let jid = item.attribute("jid").ok_or(StanzaErrorCondition::BadRequest)?;
    let jid = match Jid::parse(jid) {
        Ok(jid) => jid.to_bare().as_str().to_owned(),
        Err(_) => return Err(StanzaErrorCondition::JidMalformed),
    };
    if item.attribute("subscription") == Some("remove") {
        return Ok(RosterSet::Remove { jid });
    }
    if jid == own_bare {
        // ejabberd and Prosody refuse the user's own JID as a contact.
        return Err(StanzaErrorCondition::NotAllowed);
    }
    let name = item.attribute("name").unwrap_or("").to_owned();
    let mut groups: Vec<String> = Vec::new();
    for group in item.children().filter(|c| c.is_element()) {
        if group.tag_name().name() != "group" {
            continue;
        }
        let text = group.text().unwrap_or("");
        if text.is_empty() || text.len() > ROSTER_TEXT_BYTES_MAX {
            return Err(StanzaErrorCondition::NotAcceptable);
        }
        if groups.iter().any(|g| g == text) {
            return Err(StanzaErrorCondition::BadRequest);
        }
        groups.push(text.to_owned());
    }
    if name.len() > ROSTER_TEXT_BYTES_MAX || groups.len() > ROSTER_GROUPS_MAX {
        return Err(StanzaErrorCondition::NotAcceptable);
    }
    Ok(RosterSet::Update { jid, name, groups })
}

/// Appends one `<item/>` (with `subscription='remove'` when `removed`).
pub fn write_item(item: &RosterItem, removed: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(b"<item");
    write_attribute(out, "jid", &item.jid);
    if !item.name.is_empty() {
        write_attribute(out, "name", &item.name);
    }
    let subscription = if removed { "remove" } else { item.subscription.as_str() };
    write_attribute(out, "subscription", subscription);
    if item.ask && !removed {
        out.extend_from_slice(b" ask='subscribe'");
    }
    if item.approved && !removed {
        out.extend_from_slice(b" approved='true'");
    }
    if item.groups.is_empty() || removed {
        out.extend_from_slice(b"/>");
        return;
    }
    out.push(b'>');
    for group in &item.groups {
        out.extend_from_slice(b"<group>");
        escape(group, out);
        out.extend_from_slice(b"</group>");
    }
    out.extend_from_slice(b"</item>");
}

/// The roster result payload: every visible item and the version.
pub fn write_query(roster: &Roster, out: &mut Vec<u8>) {
    out.extend_from_slice(b"<query xmlns='jabber:iq:roster'");
    write_attribute(out, "ver", &roster.version.to_string());
    out.push(b'>');
    for item in roster.visible() {
        write_item(item, false, out);
    }
    out.extend_from_slice(b"</query>");
}

/// A roster push (RFC 6121 section 2.1.6) of `item` to the resource `to`.
pub fn write_push(item: &RosterItem, removed: bool, version: u64, to: &str, id: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"<iq type='set'");
    write_attribute(out, "to", to);
    write_attribute(out, "id", id);
    out.extend_from_slice(b"><query xmlns='jabber:iq:roster'");
    write_attribute(out, "ver", &version.to_string());
    out.push(b'>');
    write_item(item, removed, out);
    out.extend_from_slice(b"</query></iq>");
}

/// A roster change as another node's cache needs it: the whole item (with what the
/// XML does not carry: pending-in, visibility), whether it was removed, and the
/// roster version. Fields separated by U+001F, groups by U+001E (XML text never holds
/// either).
pub fn encode_change(item: &RosterItem, removed: bool, version: u64) -> Vec<u8> {
    let flag = |b: bool| if b { "1" } else { "0" };
    let fields = [
        version.to_string(),
        flag(removed).to_owned(),
        item.jid.clone(),
        item.name.clone(),
        item.subscription.as_str().to_owned(),
        flag(item.ask).to_owned(),
        flag(item.pending_in).to_owned(),
        flag(item.approved).to_owned(),
        flag(item.visible).to_owned(),
        item.groups.join("\u{1e}"),
    ];
    fields.join("\u{1f}").into_bytes()
}

/// The inverse of [`encode_change`]; `None` for anything else (peer input).
pub fn decode_change(bytes: &[u8]) -> Option<(RosterItem, bool, u64)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut fields = text.split('\u{1f}');
    let mut next = || fields.next();
    let version = next()?.parse().ok()?;
    let flag = |text: Option<&str>| -> Option<bool> {
        match text? {
            "1" => Some(true),
            "0" => Some(false),
            _ => None,
        }
    };
    let removed = flag(next())?;
    let jid = next()?.to_owned();
    let name = next()?.to_owned();
    let subscription = Subscription::parse(next()?);
    let (ask, pending_in, approved, visible) = (flag(next())?, flag(next())?, flag(next())?, flag(next())?);
    let groups = next()?;
    let groups = if groups.is_empty() { Vec::new() } else { groups.split('\u{1e}').map(str::to_owned).collect() };
    let item = RosterItem { jid, name, subscription, ask, pending_in, approved, visible, groups };
    Some((item, removed, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// A change round-trips through its cluster encoding; any bytes decode to a
        /// change or `None`, never a panic.
        #[test]
        fn changes_round_trip(
            jid in "[a-z]{1,8}@[a-z]{1,8}", name in "[ -~]{0,12}", groups in proptest::collection::vec("[a-z ]{1,6}", 0..3),
            flags in proptest::array::uniform5(proptest::bool::ANY), version: u64, garbage in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let item = RosterItem {
                jid, name, subscription: Subscription::Both, ask: flags[0], pending_in: flags[1], approved: flags[2],
                visible: flags[3], groups,
            };
            let encoded = encode_change(&item, flags[4], version);
            proptest::prop_assert_eq!(decode_change(&encoded), Some((item, flags[4], version)));
            let _ = decode_change(&garbage);
        }
    }

    fn item() -> RosterItem {
        RosterItem { jid: "bob@x".into(), visible: true, ..RosterItem::default() }
    }

    /// The full handshake of RFC 6121 section 3.1 on both sides ends in `to`/`from`,
    /// then a mutual subscription ends in `both` on each side.
    #[test]
    fn subscription_handshake_reaches_both() {
        let (mut alice, mut bob) = (item(), RosterItem { jid: "alice@x".into(), ..RosterItem::default() });
        let sent = outbound(&mut alice, PresenceType::Subscribe);
        assert!(sent.forward && sent.changed && alice.ask);
        let received = inbound(&mut bob, PresenceType::Subscribe);
        assert!(received.forward && bob.pending_in && !bob.visible, "pending in, not in the roster yet");
        let approved = outbound(&mut bob, PresenceType::Subscribed);
        assert!(approved.forward && approved.send_presence);
        assert_eq!(bob.subscription, Subscription::From);
        assert!(bob.visible);
        inbound(&mut alice, PresenceType::Subscribed);
        assert_eq!((alice.subscription, alice.ask), (Subscription::To, false));
        outbound(&mut bob, PresenceType::Subscribe);
        inbound(&mut alice, PresenceType::Subscribe);
        outbound(&mut alice, PresenceType::Subscribed);
        inbound(&mut bob, PresenceType::Subscribed);
        assert_eq!(alice.subscription, Subscription::Both);
        assert_eq!(bob.subscription, Subscription::Both);
    }

    /// A repeated subscribe from a subscribed contact is answered by the server, and a
    /// pre-approved contact is subscribed without asking the user.
    #[test]
    fn auto_replies_for_subscribed_and_pre_approved() {
        let mut subscribed = RosterItem { subscription: Subscription::From, ..item() };
        let t = inbound(&mut subscribed, PresenceType::Subscribe);
        assert!(t.auto_reply && !t.forward && !t.changed);
        let mut pre = item();
        let t = outbound(&mut pre, PresenceType::Subscribed);
        assert!(!t.forward && pre.approved, "pre-approval is not sent");
        let t = inbound(&mut pre, PresenceType::Subscribe);
        assert!(t.auto_reply && t.changed);
        assert_eq!((pre.subscription, pre.approved), (Subscription::From, false));
    }

    /// Unsolicited `subscribed` and `unsubscribed` change nothing (section 3.1.5).
    #[test]
    fn unsolicited_answers_are_ignored() {
        let mut contact = item();
        assert_eq!(inbound(&mut contact, PresenceType::Subscribed), Transition::default());
        assert_eq!(inbound(&mut contact, PresenceType::Unsubscribed), Transition::default());
        assert_eq!(contact, item());
    }

    /// Cancelling: unsubscribed removes the contact's view, unsubscribe the user's.
    #[test]
    fn cancelling_both_directions() {
        let mut both = RosterItem { subscription: Subscription::Both, ..item() };
        let t = outbound(&mut both, PresenceType::Unsubscribed);
        assert!(t.send_presence && t.forward);
        assert_eq!(both.subscription, Subscription::To);
        outbound(&mut both, PresenceType::Unsubscribe);
        assert_eq!(both.subscription, Subscription::None);
        let mut theirs = RosterItem { subscription: Subscription::Both, ..item() };
        assert!(inbound(&mut theirs, PresenceType::Unsubscribe).forward);
        assert!(inbound(&mut theirs, PresenceType::Unsubscribed).forward);
        assert_eq!(theirs.subscription, Subscription::None);
    }

    fn parse(xml: &str) -> Result<RosterSet, StanzaErrorCondition> {
        let document = roxmltree::Document::parse(xml).unwrap();
        parse_set(document.root_element(), "alice@x")
    }

    /// Roster sets: updates with groups, removal, and each refusal of section 2.3.3.
    #[test]
    fn parses_roster_sets() {
        let update =
            parse("<query xmlns='jabber:iq:roster'><item jid='Bob@X' name='B'><group>Friends</group></item></query>");
        assert_eq!(
            update,
            Ok(RosterSet::Update { jid: "bob@x".into(), name: "B".into(), groups: vec!["Friends".into()] })
        );
        let remove = parse("<query xmlns='jabber:iq:roster'><item jid='bob@x' subscription='remove'/></query>");
        assert_eq!(remove, Ok(RosterSet::Remove { jid: "bob@x".into() }));
        let cases = [
            ("<query xmlns='jabber:iq:roster'/>", StanzaErrorCondition::BadRequest),
            (
                "<query xmlns='jabber:iq:roster'><item jid='a@x'/><item jid='b@x'/></query>",
                StanzaErrorCondition::BadRequest,
            ),
            ("<query xmlns='jabber:iq:roster'><item jid='@@'/></query>", StanzaErrorCondition::JidMalformed),
            (
                "<query xmlns='jabber:iq:roster'><item jid='b@x'><group>g</group><group>g</group></item></query>",
                StanzaErrorCondition::BadRequest,
            ),
            (
                "<query xmlns='jabber:iq:roster'><item jid='b@x'><group/></item></query>",
                StanzaErrorCondition::NotAcceptable,
            ),
            ("<query xmlns='jabber:iq:roster'><item jid='alice@x'/></query>", StanzaErrorCondition::NotAllowed),
        ];
        for (xml, condition) in cases {
            assert_eq!(parse(xml), Err(condition), "{xml}");
        }
        let long = format!("<query xmlns='jabber:iq:roster'><item jid='b@x' name='{}'/></query>", "n".repeat(2000));
        assert_eq!(parse(&long), Err(StanzaErrorCondition::NotAcceptable));
    }

    /// Golden output of a roster result and a removal push.
    #[test]
    fn writes_roster_xml() {
        let roster = Roster {
            version: 7,
            items: vec![
                RosterItem { name: "B&B".into(), ask: true, groups: vec!["<g>".into()], ..item() },
                RosterItem { jid: "hidden@x".into(), pending_in: true, ..RosterItem::default() },
            ],
        };
        let mut out = Vec::new();
        write_query(&roster, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<query xmlns='jabber:iq:roster' ver='7'><item jid='bob@x' name='B&amp;B' subscription='none' ask='subscribe'><group>&lt;g&gt;</group></item></query>"
        );
        let mut push = Vec::new();
        write_push(&roster.items[0], true, 8, "alice@x/r", "p1", &mut push);
        assert_eq!(
            String::from_utf8(push).unwrap(),
            "<iq type='set' to='alice@x/r' id='p1'><query xmlns='jabber:iq:roster' ver='8'><item jid='bob@x' name='B&amp;B' subscription='remove'/></query></iq>"
        );
    }
}
