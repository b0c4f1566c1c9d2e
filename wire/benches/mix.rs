// Shared by the framer benchmark and the `frame_mix` example (instruction counts).

use starling_wire::framer::{Frame, Framer};
use starling_wire::limits::FramerLimits;

const HEADER: &str = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";

/// A mix shaped like chat traffic: mostly messages, some presence, pings, a roster.
pub fn stanza_mix() -> Vec<u8> {
    let mut text = String::from(HEADER);
    for i in 0..400 {
        text.push_str(&format!(
            "<message to='user{i}@localhost' id='msg-{i}-a1b2c3' type='chat' xml:lang='en'><body>Hey, are we still on for lunch tomorrow at 12:30? I booked the place near the office &amp; it has vegan options.</body><active xmlns='http://jabber.org/protocol/chatstates'/><request xmlns='urn:xmpp:receipts'/><origin-id xmlns='urn:xmpp:sid:0' id='b7c1e2a4-{i}'/></message>"
        ));
        if i % 4 == 0 {
            text.push_str("<presence><show>away</show><status>In a meeting</status><priority>5</priority><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://conversations.im' ver='Np2Q+yW5wIh0BJj4JqfI3ZdAq4s='/></presence>");
        }
        if i % 8 == 0 {
            text.push_str(&format!("<iq type='get' id='ping-{i}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"));
        }
        if i % 50 == 0 {
            text.push_str("<iq type='result' id='roster1'><query xmlns='jabber:iq:roster' ver='ver14'>");
            for j in 0..18 {
                text.push_str(&format!("<item jid='contact{j}@localhost' name='Contact {j}' subscription='both'><group>Friends</group></item>"));
            }
            text.push_str("</query></iq>");
        }
    }
    text.into_bytes()
}

pub fn frame_all(bytes: &[u8]) -> usize {
    let mut framer = Framer::new(FramerLimits::DEFAULT);
    let mut frames = 0;
    for chunk in bytes.chunks(16 * 1024) {
        let mut input = chunk;
        while let Some(frame) = framer.next(&mut input).expect("valid stream") {
            if let Frame::Element(element) = frame {
                frames += element.len() & 1;
            }
            frames += 1;
        }
    }
    frames
}
