// strophe.js 5 and StanzaJS 12 over WebSocket, and StanzaJS 12 over BOSH, against a
// real Starling process: alice (strophe.js, WebSocket), bob (StanzaJS, WebSocket)
// and carol (StanzaJS, BOSH) exchange messages both ways; both StanzaJS clients
// must have stream management enabled and their acknowledgements answered.
// (strophe.js's BOSH needs a browser's XMLHttpRequest: converse.mjs covers it.)
// Usage: node webclients.mjs WS_URL BOSH_URL
import { Strophe, $msg, $pres } from "strophe.js";
import * as XMPP from "stanza";

const [wsUrl, boshUrl] = process.argv.slice(2);
const deadline = setTimeout(() => fail("timed out"), 80_000);

function fail(why) {
  console.error(`FAILED: ${why}`);
  process.exit(1);
}

function strophe(jid) {
  return new Promise((resolve) => {
    const connection = new Strophe.Connection(wsUrl, { protocol: "ws" });
    connection.messages = [];
    connection.addHandler((stanza) => {
      const body = stanza.getElementsByTagName("body")[0];
      if (body) connection.messages.push({ from: stanza.getAttribute("from"), body: body.textContent });
      return true;
    }, null, "message");
    connection.connect(jid, "secret", (status, condition) => {
      if (status === Strophe.Status.CONNECTED) resolve(connection);
      if (status === Strophe.Status.AUTHFAIL || status === Strophe.Status.CONNFAIL) {
        fail(`strophe.js ${jid}: status ${status} ${condition ?? ""}`);
      }
    });
  });
}

function stanza(jid, transports = { websocket: wsUrl, bosh: false }) {
  const client = XMPP.createClient({
    jid,
    password: "secret",
    transports,
    resource: "stanzajs",
  });
  client.messages = [];
  client.on("message", (msg) => {
    if (msg.body) client.messages.push({ from: msg.from, body: msg.body });
  });
  client.on("stream:error", (error) => fail(`StanzaJS stream error: ${JSON.stringify(error)}`));
  return new Promise((resolve) => {
    client.on("session:started", () => resolve(client));
    client.connect();
  });
}

async function until(what, check) {
  for (let i = 0; i < 100; i++) {
    const value = check();
    if (value) return value;
    await new Promise((r) => setTimeout(r, 100));
  }
  fail(`no ${what}`);
}

const alice = await strophe("alice@localhost/strophe");
const bob = await stanza("bob@localhost");
const aliceJid = alice.jid;
const bobJid = bob.jid;
alice.send($pres());
bob.sendPresence();

bob.sendMessage({ to: aliceJid, type: "chat", body: "from stanza" });
const got = await until("StanzaJS's message at strophe.js", () => alice.messages.find((m) => m.body === "from stanza"));
if (got.from !== bobJid) fail(`from ${got.from}, expected ${bobJid}`);
alice.send($msg({ to: bobJid, type: "chat" }).c("body").t("from strophe"));
const back = await until("strophe.js's message at StanzaJS", () => bob.messages.find((m) => m.body === "from strophe"));
if (back.from !== aliceJid) fail(`from ${back.from}, expected ${aliceJid}`);

// StanzaJS enabled stream management; the server counted what it sent.
await until("stream management at StanzaJS", () => bob.sm && bob.sm.started);
await bob.sm.request();
await new Promise((r) => setTimeout(r, 500));
if (bob.sm.unacked.length !== 0) fail(`StanzaJS has ${bob.sm.unacked.length} unacknowledged stanzas`);
console.log(`strophe.js and StanzaJS over WebSocket: messages both ways; StanzaJS stream management on, acknowledged (${bob.sm.handled} handled)`);

// StanzaJS over BOSH, stream management on, chatting with strophe.js over WebSocket.
const carol = await stanza("carol@localhost", { websocket: false, bosh: boshUrl });
if (carol.transport?.constructor?.name !== "BOSH") fail(`carol's transport is ${carol.transport?.constructor?.name}`);
const carolJid = carol.jid;
carol.sendPresence();
carol.sendMessage({ to: aliceJid, type: "chat", body: "from bosh" });
const viaBosh = await until("the BOSH client's message at strophe.js", () => alice.messages.find((m) => m.body === "from bosh"));
if (viaBosh.from !== carolJid) fail(`from ${viaBosh.from}, expected ${carolJid}`);
for (let i = 0; i < 5; i++) alice.send($msg({ to: carolJid, type: "chat" }).c("body").t(`to bosh ${i}`));
await until("strophe.js's messages at the BOSH client", () => carol.messages.filter((m) => m.body.startsWith("to bosh")).length === 5);
const order = carol.messages.filter((m) => m.body.startsWith("to bosh")).map((m) => m.body);
if (order.join() !== [0, 1, 2, 3, 4].map((i) => `to bosh ${i}`).join()) fail(`out of order over BOSH: ${order}`);
await until("stream management over BOSH", () => carol.sm && carol.sm.started);
await carol.sm.request();
await new Promise((r) => setTimeout(r, 500));
if (carol.sm.unacked.length !== 0) fail(`StanzaJS over BOSH has ${carol.sm.unacked.length} unacknowledged stanzas`);
console.log(`StanzaJS over BOSH: messages both ways, in order; stream management on, acknowledged (${carol.sm.handled} handled)`);

// Disconnects are bounded: StanzaJS's disconnect() can wait on its own stream's end
// after a write-after-end of its WebSocket transport (seen once on a loaded machine);
// the server's side of a BOSH terminate is tested in server/tests/bosh.rs.
const settle = (promise, who) =>
  Promise.race([promise, new Promise((r) => setTimeout(() => r(console.log(`(${who}: disconnect not settled in 5 s)`)), 5_000))]);
alice.disconnect();
await settle(bob.disconnect(), "StanzaJS over WebSocket");
await settle(carol.disconnect(), "StanzaJS over BOSH");
clearTimeout(deadline);
process.exit(0);
