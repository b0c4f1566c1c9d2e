"""Black-box test: XEP-0198 stream management with slixmpp's xep_0198 plugin.

alice enables resumable stream management over STARTTLS; her socket is then killed
(no </stream:stream>, as a phone losing its network) while bob keeps writing to
her. She connects again, resumes with previd and h, and must get every message once,
in order. Optionally (a 4th and 5th argument) she resumes on another node's port.

Usage: sm.py HOST STARTTLS_PORT CA_FILE [RESUME_HOST RESUME_PORT]
"""
import asyncio
import inspect
import ssl
import sys

import slixmpp
from common import TIMEOUT, expect, nothing, run

HOST, PORT, CA = sys.argv[1], int(sys.argv[2]), sys.argv[3]
RESUME_HOST = sys.argv[4] if len(sys.argv) > 4 else HOST
RESUME_PORT = int(sys.argv[5]) if len(sys.argv) > 5 else PORT


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, stream_management):
        super().__init__(jid, "secret")
        self.ssl_context = ssl.create_default_context(cafile=CA)
        self.enable_starttls = True
        self.enable_direct_tls = False
        self.enable_plaintext = False
        self.messages = asyncio.Queue()
        self.events = asyncio.Queue()
        if stream_management:
            self.register_plugin("xep_0198")
        for event in ("session_start", "sm_enabled", "session_resumed", "sm_failed", "disconnected"):
            self.add_event_handler(event, lambda _e, name=event: self.events.put_nowait(name))
        self.add_event_handler("message", lambda m: self.messages.put_nowait(m))

    def connect_to(self, host, port):
        if "use_ssl" in inspect.signature(self.connect).parameters:
            self.connect((host, port), use_ssl=False, force_starttls=True)
        else:
            self.connect(host, port)


async def main():
    print(f"slixmpp {slixmpp.__version__}")
    alice = Client("alice@localhost/phone", stream_management=True)
    bob = Client("bob@localhost/sm-peer", stream_management=False)
    alice.connect_to(HOST, PORT)
    bob.connect_to(HOST, PORT)
    await expect(alice.events, lambda e: e == "session_start", "alice's session")
    await expect(alice.events, lambda e: e == "sm_enabled", "stream management enabled")
    await expect(bob.events, lambda e: e == "session_start", "bob's session")
    assert alice.plugin["xep_0198"].sm_id, "no resumption id"

    bob.send_message(mto="alice@localhost/phone", mbody="m1", mtype="chat")
    await expect(alice.messages, lambda m: m["body"] == "m1", "m1")
    await asyncio.sleep(0.3)  # alice answers the server's <r/> for m1

    # The network goes: the socket is closed under the stream, no </stream:stream>.
    alice.transport.abort()
    await expect(alice.events, lambda e: e == "disconnected", "the disconnection")
    await asyncio.sleep(0.3)
    for body in ("m2", "m3", "m4"):
        bob.send_message(mto="alice@localhost/phone", mbody=body, mtype="chat")
    await asyncio.sleep(0.3)

    alice.connect_to(RESUME_HOST, RESUME_PORT)
    event = await expect(alice.events, lambda e: e in ("session_resumed", "sm_failed", "session_start"), "the resumption")
    # A failed resumption would still deliver m2..m4, from offline storage: not enough.
    assert event == "session_resumed", f"{event} instead of session_resumed"
    got = [(await expect(alice.messages, lambda m: True, f"message {i}"))["body"] for i in range(3)]
    assert got == ["m2", "m3", "m4"], got
    await nothing(alice.messages, lambda m: True)
    print(f"resumed on port {RESUME_PORT}: m2, m3, m4 arrived once, in order; m1 not repeated")

    bob.send_message(mto="alice@localhost/phone", mbody="m5", mtype="chat")
    await expect(alice.messages, lambda m: m["body"] == "m5", "m5 after the resumption")
    alice.disconnect()
    bob.disconnect()
    await asyncio.sleep(0.2)


if __name__ == "__main__":
    run(main, "stream management")
