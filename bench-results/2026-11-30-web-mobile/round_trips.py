"""Counts the round trips from TCP connect to a bound session with carbons and
stream management on, for three logins, against a running Starling node whose
listener requires STARTTLS. A round trip is one wait for the server after
sending: the client never sends ahead (no pipelining beyond what each protocol
does in one message). TLS 1.3's handshake counts as one.

Usage: round_trips.py HOST PORT CA_FILE USER PASSWORD
"""
import base64, hashlib, hmac, os, socket, ssl, sys, uuid

HOST, PORT, CA, USER, PASSWORD = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>").encode()
UA = str(uuid.uuid4())


class Conn:
    def __init__(self):
        self.sock = socket.create_connection((HOST, PORT))
        self.waits = 0
        self.buffer = b""

    def ask(self, data, until):
        """Sends `data`, waits for the server until `until` appears: one round trip."""
        self.sock.sendall(data)
        self.waits += 1
        while until.encode() not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"closed waiting for {until}: {self.buffer[-300:]!r}")
            self.buffer += chunk
        at = self.buffer.index(until.encode())
        seen, self.buffer = self.buffer, b""
        return seen.decode(errors="replace")

    def starttls(self):
        self.ask(HEADER, "</stream:features>")
        self.ask(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>", "<proceed")
        context = ssl.create_default_context(cafile=CA)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")  # handshake
        self.waits += 1
        return self.ask(HEADER, "</stream:features>")


def scram_first():
    nonce = base64.b64encode(os.urandom(18)).decode()
    bare = f"n={USER},r={nonce}"
    return nonce, bare, "n,," + bare


def scram_final(server_first, bare):
    fields = dict(item.split("=", 1) for item in server_first.split(","))
    salted = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), base64.b64decode(fields["s"]), int(fields["i"]))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored = hashlib.sha256(client_key).digest()
    without = f"c=biws,r={fields['r']}"
    auth_message = f"{bare},{server_first},{without}".encode()
    signature = hmac.new(stored, auth_message, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    return f"{without},p={base64.b64encode(proof).decode()}"


def text(element, tag):
    return element.split(f"<{tag}", 1)[1].split(">", 1)[1].split("<", 1)[0]


def legacy():
    c = Conn()
    c.starttls()
    _, bare, first = scram_first()
    challenge = c.ask(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{base64.b64encode(first.encode()).decode()}</auth>".encode(), "</challenge>")
    final = scram_final(base64.b64decode(text(challenge, "challenge")).decode(), bare)
    c.ask(f"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{base64.b64encode(final.encode()).decode()}</response>".encode(), "<success")
    c.ask(HEADER, "</stream:features>")
    c.ask(b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>", "</iq>")
    c.ask(b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>", "<enabled")
    c.ask(b"<iq type='set' id='c'><enable xmlns='urn:xmpp:carbons:2'/></iq>", "id='c'")
    return c.waits


def sasl2(token=None, request_token=False):
    c = Conn()
    c.starttls()
    bind = ("<bind xmlns='urn:xmpp:bind:0'><tag>rt</tag><enable xmlns='urn:xmpp:sm:3' resume='true'/>"
            "<enable xmlns='urn:xmpp:carbons:2'/></bind>")
    ua = f"<user-agent id='{UA}'/>"
    if token:
        proof = hmac.new(token.encode(), b"Initiator", hashlib.sha256).digest()
        initial = base64.b64encode(USER.encode() + b"\0" + proof).decode()
        success = c.ask(f"<authenticate xmlns='urn:xmpp:sasl:2' mechanism='HT-SHA-256-NONE'><initial-response>{initial}</initial-response>{ua}<fast xmlns='urn:xmpp:fast:0'/>{bind}</authenticate>".encode(), "</success>")
    else:
        _, bare, first = scram_first()
        extra = "<request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>" if request_token else ""
        challenge = c.ask(f"<authenticate xmlns='urn:xmpp:sasl:2' mechanism='SCRAM-SHA-256'><initial-response>{base64.b64encode(first.encode()).decode()}</initial-response>{ua}{extra}{bind}</authenticate>".encode(), "</challenge>")
        final = scram_final(base64.b64decode(text(challenge, "challenge")).decode(), bare)
        success = c.ask(f"<response xmlns='urn:xmpp:sasl:2'>{base64.b64encode(final.encode()).decode()}</response>".encode(), "</success>")
    assert "<enabled" in success and "urn:xmpp:bind:0" in success, success
    new_token = success.split(" token='", 1)[1].split("'", 1)[0] if " token='" in success else None
    return c.waits, new_token


legacy_waits = legacy()
sasl2_waits, token = sasl2(request_token=True)
fast_waits, _ = sasl2(token=token)
print(f"round trips from TCP connect to a bound session with carbons and SM on (STARTTLS, TLS 1.3):")
print(f"  legacy (SASL SCRAM, restart, bind, SM enable, carbons IQ): {legacy_waits}")
print(f"  SASL2 + Bind 2 (SCRAM, SM and carbons inline):            {sasl2_waits}")
print(f"  FAST (HT-SHA-256-NONE token, SM and carbons inline):       {fast_waits}")
print(f"  (STARTTLS costs 2 of each: header + starttls; direct TLS (XEP-0368) saves them)")
