// converse.js in Debian's headless Chromium (driven by playwright-core) against a
// real Starling process over WebSocket or BOSH: alice logs in in the browser, bob
// with xmpp.js over TCP; messages go both ways and the archive (XEP-0313) is loaded.
// URL is ws(s)://... (WebSocket) or http(s)://... (BOSH, posted cross-origin: the
// page is served from another port, so CORS preflights are part of the test).
// Usage: node converse.mjs PAGE_PORT URL TCP_PORT SCREENSHOT
import { chromium } from "playwright-core";
import { client, xml } from "@xmpp/client";

const [pagePort, url, tcpPort, screenshot] = process.argv.slice(2);
const bosh = url.startsWith("http");
const transport = bosh ? "BOSH" : "WebSocket";
const deadline = setTimeout(() => fail("timed out"), 90_000);
let browser;

async function fail(why) {
  console.error(`FAILED: ${why}`);
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
}

browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });
const page = await browser.newPage();
page.on("console", (m) => {
  if (m.type() === "error") console.log(`(browser console: ${m.text()})`);
});
await page.goto(`http://127.0.0.1:${pagePort}/converse.html?${bosh ? "bosh" : "ws"}=${encodeURIComponent(url)}`);
await page
  .waitForFunction(() => window.api && window.api.connection.connected(), null, { timeout: 30_000 })
  .catch(() => fail("converse.js did not log in"));
const aliceJid = await page.evaluate(() => window.api.user.jid());
// The connection converse.js made is the one asked for.
// (Strophe's BOSH protocol object keeps its requests in `_requests`; names are minified.)
const used = await page.evaluate(() => {
  const connection = window.api.connection.get();
  return { service: connection?.service, bosh: Array.isArray(connection?._proto?._requests) };
});
if (used.service !== url || used.bosh !== bosh) await fail(`converse.js connected with ${JSON.stringify(used)}, expected ${transport}`);

const bob = client({ service: `xmpp://127.0.0.1:${tcpPort}`, domain: "localhost", username: "bob", password: "secret", resource: "tcp" });
bob.on("error", (error) => {
  if (error.name === "TimeoutError" && /starttls/.test(error.stack ?? "")) return; // xmpp.js race, see xmppjs.mjs
  fail(`bob: ${error}`);
});
const bobMessages = [];
bob.on("stanza", (s) => {
  if (s.is("message") && s.getChildText("body")) bobMessages.push(s.getChildText("body"));
});
const online = new Promise((resolve) => bob.on("online", resolve));
await bob.start();
await online;
await bob.send(xml("presence"));

await bob.send(xml("message", { to: aliceJid, type: "chat" }, xml("body", {}, "hello converse")));
await page
  .waitForFunction(() => window.received.includes("hello converse"), null, { timeout: 20_000 })
  .catch(() => fail(`converse.js did not receive bob's message (${transport})`));
await page.evaluate(async () => {
  const chat = await window.api.chats.open("bob@localhost");
  await chat.sendMessage({ body: "hello bob, from the browser" });
});
for (let i = 0; i < 100 && !bobMessages.includes("hello bob, from the browser"); i++) {
  await new Promise((r) => setTimeout(r, 100));
}
if (!bobMessages.includes("hello bob, from the browser")) await fail("bob did not receive converse.js's message");

// History: the archive holds both messages (converse.js queries MAM itself).
const history = await page.evaluate(async () => {
  const result = await window.api.archive.query({ with: "bob@localhost", max: 10 });
  // converse.js 14 returns the archived <message/> elements themselves.
  return JSON.stringify(result.messages.map((m) => m.querySelector?.("body")?.textContent ?? m.body ?? null));
});
const archived = JSON.parse(history).filter(Boolean).length;
if (archived < 2) await fail(`the archive returned ${history}, expected both messages (${transport})`);
await page.screenshot({ path: screenshot });
console.log(`converse.js in headless Chromium over ${transport}: logged in as ${aliceJid}, messages both ways, ${archived} archived; screenshot ${screenshot}`);
await bob.stop().catch(() => {});
await browser.close();
clearTimeout(deadline);
process.exit(0);
