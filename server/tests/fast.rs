//! XEP-0484 FAST against a real node: a token requested in a SASL2 login logs the
//! client in next time without its password (HT-SHA-256-NONE), each FAST login
//! rotates the token, and a new password ends every token.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::{Client, TestNode};
use starling_wire::sasl;

const USER_AGENT: &str = "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d";

fn attribute(element: &str, name: &str) -> String {
    let start =
        element.find(&format!(" {name}='")).unwrap_or_else(|| panic!("no {name} in {element}")) + name.len() + 3;
    element[start..].split('\'').next().unwrap().to_owned()
}

/// A SASL2 login with PLAIN asking for a token; returns the token.
fn login_with_password(node: &TestNode) -> String {
    let mut client = Client::connect(node.c2s);
    let features = client.open();
    assert!(
        features.contains("<fast xmlns='urn:xmpp:fast:0'><mechanism>HT-SHA-256-NONE</mechanism></fast>"),
        "{features}"
    );
    let payload = sasl::encode_payload(b"\0alice\0secret");
    client.send(&format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>{payload}</initial-response>\
         <user-agent id='{USER_AGENT}'/><request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/></authenticate>"
    ));
    let success = client.expect("urn:xmpp:sasl:2");
    assert!(success.starts_with("<success"), "{success}");
    let token = success.split("<token").nth(1).expect("a <token/> in <success/>");
    attribute(&format!("<token{token}"), "token")
}

/// A FAST login with `token`: `Ok` with the next token if one came (rotation), or
/// `Err` with the failure.
fn login_with_token(node: &TestNode, token: &str) -> Result<Option<String>, String> {
    let mut client = Client::connect(node.c2s);
    client.open();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token.as_bytes());
    let mut initial = b"alice\0".to_vec();
    initial.extend_from_slice(ring::hmac::sign(&key, b"Initiator").as_ref());
    client.send(&format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='HT-SHA-256-NONE'><initial-response>{}</initial-response>\
         <user-agent id='{USER_AGENT}'/><fast xmlns='urn:xmpp:fast:0'/></authenticate>",
        sasl::encode_payload(&initial)
    ));
    let answer = client.expect("urn:xmpp:sasl:2");
    if !answer.starts_with("<success") {
        return Err(answer);
    }
    // The server proves it knows the token too.
    let additional = answer.split("<additional-data>").nth(1).unwrap().split('<').next().unwrap();
    let responder = sasl::decode_payload(additional.as_bytes()).unwrap();
    ring::hmac::verify(&key, b"Responder", &responder).expect("the server's proof");
    assert!(answer.contains("<authorization-identifier>alice@localhost</authorization-identifier>"), "{answer}");
    Ok(answer.split("<token").nth(1).map(|next| attribute(&format!("<token{next}"), "token")))
}

/// A fresh token logs in again and again without a new one (no database write per
/// login): rotation waits for `rotate_before_expire` (MongooseIM's default, 6 hours
/// before a 3-day expiry).
#[test]
fn a_fresh_token_is_not_rotated() {
    let node = TestNode::start();
    let token = login_with_password(&node);
    for _ in 0..3 {
        assert_eq!(login_with_token(&node, &token), Ok(None), "no rotation for a fresh token");
    }
}

#[test]
fn fast_tokens_log_in_rotate_and_end_with_the_password() {
    // Every token is "near its expiry": each FAST login rotates.
    let hour = std::time::Duration::from_secs(3600);
    let node = TestNode::start_with(|config| config.modules.fast_auth_token = Some((hour, hour)));
    let first = login_with_password(&node);
    let second = login_with_token(&node, &first).expect("the token logs in").expect("rotated");
    assert_ne!(second, first, "rotated");
    // The one used stays valid until the new one is used; then only the new ones.
    let third = login_with_token(&node, &first).expect("the previous token still works once rotated").expect("rotated");
    let _fourth = login_with_token(&node, &third).expect("the newest token");
    let refused = login_with_token(&node, &second).expect_err("two rotations later, gone");
    assert!(refused.starts_with("<failure xmlns='urn:xmpp:sasl:2'><not-authorized"), "{refused}");
    let forged = login_with_token(&node, "not-a-token").expect_err("forged");
    assert!(forged.contains("not-authorized"), "{forged}");

    // A new password ends every token.
    let token = login_with_password(&node);
    let body = r#"{"query":"mutation { account { changeUserPassword(user: \"alice@localhost\", newPassword: \"secret\") { message } } }"}"#;
    let mut stream = TcpStream::connect(node.admin).unwrap();
    write!(
        stream,
        "POST /api/graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.contains("\"message\""), "{response}");
    assert!(login_with_token(&node, &token).is_err(), "a token outlived a password change");
}
