// xmpp.js 0.14 against a real Starling process: alice over WebSocket (ws:// and
// wss://), bob over TCP with STARTTLS; they exchange messages both ways and see each
// other's presence. Node 20 needs --experimental-websocket (run.sh passes it).
// Usage: node --experimental-websocket xmppjs.mjs WS_URL WSS_URL TCP_PORT
import { client, xml } from "@xmpp/client";

const [wsUrl, wssUrl, tcpPort] = process.argv.slice(2);
const deadline = setTimeout(() => fail("timed out"), 60_000);

function fail(why) {
  console.error(`FAILED: ${why}`);
  process.exit(1);
}

function connect(service, username, resource) {
  const xmpp = client({ service, domain: "localhost", username, password: "secret", resource });
  xmpp.on("error", (error) => {
    // xmpp.js 0.14 race: after STARTTLS it writes its stream header, then listens
    // for the server's; on loopback the answer can come first, and the (unneeded)
    // wait times out 2 s later while the session works on. Not a server error.
    if (error.name === "TimeoutError" && /starttls/.test(error.stack ?? "")) {
      console.log(`(xmpp.js: ${username}'s post-STARTTLS header wait timed out; the session went on)`);
      return;
    }
    fail(`${username} over ${service}: ${error}`);
  });
  // What the login used: SASL2's <success/> with Bind 2's <bound/> inside.
  xmpp.used = { sasl2: false, bind2: false, mechanism: null, token: false };
  xmpp.on("send", (element) => {
    if (element.is("authenticate", "urn:xmpp:sasl:2")) xmpp.used.mechanism = element.attrs.mechanism;
  });
  xmpp.on("nonza", (element) => {
    if (element.is("success", "urn:xmpp:sasl:2")) {
      xmpp.used.sasl2 = true;
      xmpp.used.bind2 = !!element.getChild("bound", "urn:xmpp:bind:0");
      xmpp.used.token = !!element.getChild("token", "urn:xmpp:fast:0");
    }
  });
  return xmpp;
}

function waitFor(xmpp, predicate, what) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => fail(`no ${what}`), 20_000);
    const onStanza = (stanza) => {
      if (predicate(stanza)) {
        clearTimeout(timer);
        xmpp.removeListener("stanza", onStanza);
        resolve(stanza);
      }
    };
    xmpp.on("stanza", onStanza);
  });
}

async function chat(aliceService, label) {
  const alice = connect(aliceService, "alice", `xmppjs-${label}`);
  const bob = connect(`xmpp://127.0.0.1:${tcpPort}`, "bob", `xmppjs-tcp-${label}`);
  const aliceOnline = new Promise((resolve) => alice.on("online", resolve));
  const bobOnline = new Promise((resolve) => bob.on("online", resolve));
  await alice.start();
  await bob.start();
  const aliceJid = (await aliceOnline).toString();
  const bobJid = (await bobOnline).toString();
  for (const [who, entity] of [["alice", alice], ["bob", bob]]) {
    if (!entity.used.sasl2 || !entity.used.bind2) fail(`${who} over ${label} did not use SASL2 and Bind 2: ${JSON.stringify(entity.used)}`);
  }
  const body = (s) => s.is("message") && s.getChildText("body");
  const gotByAlice = waitFor(alice, (s) => body(s) === `hello ${label}`, `message to alice over ${label}`);
  await bob.send(xml("message", { to: aliceJid, type: "chat" }, xml("body", {}, `hello ${label}`)));
  const received = await gotByAlice;
  if (received.attrs.from !== bobJid) fail(`from was ${received.attrs.from}, expected ${bobJid}`);
  const gotByBob = waitFor(bob, (s) => body(s) === `back ${label}`, `message to bob from ${label}`);
  await alice.send(xml("message", { to: bobJid, type: "chat" }, xml("body", {}, `back ${label}`)));
  await gotByBob;
  // Presence: bob's directed presence reaches alice.
  const presence = waitFor(alice, (s) => s.is("presence") && s.attrs.from === bobJid, `presence over ${label}`);
  await bob.send(xml("presence", { to: aliceJid }));
  await presence;
  // XEP-0484: the first login got a token; the second uses it (no password).
  if (!alice.used.token) fail(`alice over ${label} got no FAST token: ${JSON.stringify(alice.used)}`);
  await alice.stop();
  alice.used = { sasl2: false, bind2: false, mechanism: null, token: false };
  const again = new Promise((resolve) => alice.once("online", resolve));
  await alice.start();
  await again;
  if (alice.used.mechanism !== "HT-SHA-256-NONE" || !alice.used.sasl2) {
    fail(`alice's second login over ${label} did not use FAST: ${JSON.stringify(alice.used)}`);
  }
  const afterFast = waitFor(alice, (s) => body(s) === `fast ${label}`, `message after the FAST login over ${label}`);
  await bob.send(xml("message", { to: alice.jid.toString(), type: "chat" }, xml("body", {}, `fast ${label}`)));
  await afterFast;
  await alice.stop();
  await bob.stop();
  console.log(`xmpp.js over ${label}: SASL2 + Bind 2 (${aliceJid}), messages both ways, presence, second login with FAST ok`);
}

await chat(wsUrl, "ws");
await chat(wssUrl, "wss");
clearTimeout(deadline);
