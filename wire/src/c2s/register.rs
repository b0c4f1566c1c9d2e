//! In-band registration before authentication (XEP-0077 sections 3.1 and 3.2): the
//! form, the submission, and the answers. The shell creates the account (PBKDF2 and
//! a database write, off the core) and applies its rate limit.

use crate::error::{StanzaError, StanzaErrorCondition};
use crate::jid::BareJid;
use crate::stanza::write_attribute;

pub const NS_REGISTER: &str = "jabber:iq:register";

/// Bytes of a password registered in band (PBKDF2 input stays cheap to hash).
pub const PASSWORD_BYTES_MAX: usize = 1024;

/// What a registration IQ asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// `get`: the form.
    Form,
    /// `set` with a username and a password.
    Create { user: BareJid, password: String },
    /// Anything else, answered with this error.
    Refuse(StanzaErrorCondition),
}

/// Reads the `<query xmlns='jabber:iq:register'>` IQ `iq` for `domain`.
pub fn parse(iq: roxmltree::Node<'_, '_>, domain: &str) -> Request {
    let Some(query) = iq.children().find(|c| c.has_tag_name((NS_REGISTER, "query"))) else {
        return Request::Refuse(StanzaErrorCondition::ServiceUnavailable);
    };
    match iq.attribute("type") {
        Some("get") => return Request::Form,
        Some("set") => {}
        _ => return Request::Refuse(StanzaErrorCondition::BadRequest),
    }
    let field = |name: &str| query.children().find(|c| c.has_tag_name((NS_REGISTER, name)));
    if field("remove").is_some() {
        // Cancelling needs an authenticated stream (XEP-0077 section 3.2).
        return Request::Refuse(StanzaErrorCondition::NotAuthorized);
    }
    let text = |name: &str| field(name).and_then(|f| f.text()).unwrap_or("");
    let (username, password) = (text("username"), text("password"));
    if username.is_empty() || password.is_empty() || password.len() > PASSWORD_BYTES_MAX {
        return Request::Refuse(StanzaErrorCondition::NotAcceptable);
    }
    match BareJid::new(Some(username), domain) {
        Ok(user) => Request::Create { user, password: password.to_owned() },
        Err(_) => Request::Refuse(StanzaErrorCondition::NotAcceptable),
    }
}

/// The registration form (XEP-0077 section 3.1, example 2).
pub fn write_form(id: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"<iq type='result'");
    write_attribute(out, "id", id);
    out.extend_from_slice(
        b"><query xmlns='jabber:iq:register'><instructions>Choose a username and password.</instructions>\
          <username/><password/></query></iq>",
    );
}

/// The answer to a submission: success, or an error.
pub fn write_outcome(id: &str, outcome: Result<(), StanzaErrorCondition>, out: &mut Vec<u8>) {
    match outcome {
        Ok(()) => {
            out.extend_from_slice(b"<iq type='result'");
            write_attribute(out, "id", id);
            out.extend_from_slice(b"/>");
        }
        Err(condition) => {
            out.extend_from_slice(b"<iq type='error'");
            write_attribute(out, "id", id);
            out.push(b'>');
            StanzaError::new(condition).write(out);
            out.extend_from_slice(b"</iq>");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(xml: &str) -> Request {
        let document = roxmltree::Document::parse(xml).unwrap();
        parse(document.root_element(), "localhost")
    }

    /// Forms, valid submissions and each refusal.
    #[test]
    fn reads_registration_requests() {
        assert_eq!(parse_text("<iq type='get' id='r'><query xmlns='jabber:iq:register'/></iq>"), Request::Form);
        let create = parse_text(
            "<iq type='set' id='r'><query xmlns='jabber:iq:register'><username>Eve</username><password>pw</password></query></iq>",
        );
        assert_eq!(create, Request::Create { user: "eve@localhost".parse().unwrap(), password: "pw".into() });
        let cases = [
            ("<iq type='set' id='r'><query xmlns='jabber:iq:register'><username>eve</username></query></iq>", StanzaErrorCondition::NotAcceptable),
            ("<iq type='set' id='r'><query xmlns='jabber:iq:register'><username>a@b</username><password>p</password></query></iq>", StanzaErrorCondition::NotAcceptable),
            ("<iq type='set' id='r'><query xmlns='jabber:iq:register'><remove/></query></iq>", StanzaErrorCondition::NotAuthorized),
            ("<iq type='get' id='r'><query xmlns='jabber:iq:version'/></iq>", StanzaErrorCondition::ServiceUnavailable),
        ];
        for (xml, condition) in cases {
            assert_eq!(parse_text(xml), Request::Refuse(condition), "{xml}");
        }
    }
}
