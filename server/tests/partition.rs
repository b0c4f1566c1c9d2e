//! A network partition between two nodes, made with network namespaces this test
//! creates (two namespaces joined by a veth pair; cutting the link is `ip link set
//! down`): both sides keep serving their users during the cut, converge after it
//! with no operator action, and a full JID logged in on both sides ends with the
//! newer session while the older one gets the `conflict` stream error.
//!
//! Needs root and `ip` (iproute2); it fails, loudly, without them.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Client;
use starling_server::store::{AccountKeys, Storage};
use starling_wire::error::StreamErrorCondition;

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("iproute2 `ip`");
    assert!(status.success(), "ip {args:?} failed (this test needs root)");
}

/// Two namespaces joined by a veth pair; removed on drop.
struct Net {
    a: String,
    b: String,
    veth_a: String,
}

impl Net {
    fn new() -> Net {
        let id = std::process::id() % 100_000;
        let net = Net { a: format!("stA{id}"), b: format!("stB{id}"), veth_a: format!("va{id}") };
        let veth_b = format!("vb{id}");
        ip(&["netns", "add", &net.a]);
        ip(&["netns", "add", &net.b]);
        ip(&["link", "add", &net.veth_a, "type", "veth", "peer", "name", &veth_b]);
        ip(&["link", "set", &net.veth_a, "netns", &net.a]);
        ip(&["link", "set", &veth_b, "netns", &net.b]);
        ip(&["netns", "exec", &net.a, "ip", "addr", "add", "10.77.0.1/24", "dev", &net.veth_a]);
        ip(&["netns", "exec", &net.b, "ip", "addr", "add", "10.77.0.2/24", "dev", &veth_b]);
        for (ns, dev) in [(&net.a, &net.veth_a), (&net.b, &veth_b)] {
            ip(&["netns", "exec", ns, "ip", "link", "set", "lo", "up"]);
            ip(&["netns", "exec", ns, "ip", "link", "set", dev, "up"]);
        }
        net
    }

    fn cut(&self) {
        ip(&["netns", "exec", &self.a, "ip", "link", "set", &self.veth_a, "down"]);
    }

    fn heal(&self) {
        ip(&["netns", "exec", &self.a, "ip", "link", "set", &self.veth_a, "up"]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.a]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.b]).status();
    }
}

/// A TCP connection opened from inside namespace `ns`.
fn connect_in(ns: &str, address: SocketAddr) -> std::io::Result<TcpStream> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = std::fs::File::open(&path)?;
                // SAFETY: setns on a namespace file we opened, for this thread only.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                TcpStream::connect_timeout(&address, Duration::from_secs(2))
            })
            .join()
            .expect("connect thread")
    })
}

struct Node {
    ns: String,
    child: Child,
    c2s: SocketAddr,
    admin: SocketAddr,
}

impl Node {
    fn start(dir: &std::path::Path, name: &str, ns: &str, ip: &str, db: &std::path::Path) -> Node {
        let data = dir.join(name);
        std::fs::create_dir_all(&data).unwrap();
        let config = data.join("starling.toml");
        std::fs::write(
            &config,
            format!(
                "[general]\nnode_name = '{name}'\ndata_dir = '{}'\ncores = 2\nloglevel = 'info'\n\
                 [[listen.c2s]]\nport = 5222\nip_address = '0.0.0.0'\ntls.mode = 'none'\n[listen.admin]\nport = 5551\n\
                 [auth.password]\nscram_iterations = 64\n\
                 [outgoing_pools.rdbms.default.connection]\ndriver = 'sqlite'\ndatabase = '{}'\n\
                 [internal_databases.cets]\ncluster_name = 'p'\nsecret = 's'\nlisten = '0.0.0.0:5270'\naddress = '{ip}:5270'\n",
                data.display(),
                db.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(data.join("server.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_starling"), "serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Node {
            ns: ns.to_owned(),
            child,
            c2s: "127.0.0.1:5222".parse().unwrap(),
            admin: "127.0.0.1:5551".parse().unwrap(),
        }
    }

    fn joined(&self) -> Vec<String> {
        let Ok(mut stream) = connect_in(&self.ns, self.admin) else { return Vec::new() };
        let body = r#"{"query": "{ cets { systemInfo { joinedNodes } } }"}"#;
        let _ = write!(
            stream,
            "POST /api/graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        let json: serde_json::Value =
            response.split_once("\r\n\r\n").and_then(|(_, b)| serde_json::from_str(b).ok()).unwrap_or_default();
        let mut names: Vec<String> = json["data"]["cets"]["systemInfo"]["joinedNodes"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    fn login(&self, user: &str, resource: &str) -> Client {
        let stream = connect_in(&self.ns, self.c2s).expect("connect to the node");
        Client::login_on(stream, user, "secret", resource)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn partition_and_heal() {
    let net = Net::new();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    {
        let mut store = starling_server::store::sqlite::Sqlite::open(&db).unwrap();
        let keys = AccountKeys::from_password("secret", std::num::NonZeroU32::new(64).unwrap());
        for user in ["alice", "bob", "carol", "dave"] {
            store.register(&format!("{user}@localhost").parse().unwrap(), &keys).unwrap();
        }
    }
    let a = Node::start(dir.path(), "a@p", &net.a, "10.77.0.1", &db);
    let b = Node::start(dir.path(), "b@p", &net.b, "10.77.0.2", &db);
    let both = vec!["a@p".to_string(), "b@p".to_string()];
    wait_for(Duration::from_secs(15), "a and b joined", || a.joined() == both && b.joined() == both);

    net.cut();
    wait_for(Duration::from_secs(10), "each side alone", || a.joined() == ["a@p"] && b.joined() == ["b@p"]);
    // Both sides keep serving their own users.
    let mut alice = a.login("alice", "r");
    let mut dave = a.login("dave", "r");
    let mut bob = b.login("bob", "r");
    dave.presence();
    alice.send("<message to='dave@localhost/r'><body>during the cut</body></message>");
    dave.expect("during the cut");
    bob.send("<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>");
    bob.expect("id='p'");
    // The same full JID on both sides: the later login is the newer session.
    let mut older = a.login("carol", "same");
    std::thread::sleep(Duration::from_millis(50));
    let mut newer = b.login("carol", "same");

    net.heal();
    wait_for(Duration::from_secs(20), "a and b joined again", || a.joined() == both && b.joined() == both);
    assert_eq!(older.expect_stream_error(), StreamErrorCondition::Conflict);
    newer.send("<iq type='get' id='alive'><ping xmlns='urn:xmpp:ping'/></iq>");
    newer.expect("id='alive'");
    // And the cluster routes across again.
    bob.presence();
    std::thread::sleep(Duration::from_millis(500));
    alice.send("<message to='bob@localhost/r'><body>after the heal</body></message>");
    bob.expect("after the heal");
}
