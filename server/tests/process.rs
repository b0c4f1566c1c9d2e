//! The real `starling` binary as an operator runs it: a core that dies stops the
//! process (never a half-alive node), and a second process on a served port fails
//! at startup. Issue 9.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Client;

struct Server {
    child: Child,
    config: std::path::PathBuf,
    c2s: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_text(dir: &std::path::Path, c2s: u16, admin: u16) -> String {
    format!(
        "[general]\n  data_dir = '{}'\n  cores = 2\n[[listen.c2s]]\n  port = {c2s}\n  ip_address = '127.0.0.1'\n  tls.mode = 'none'\n\
         [listen.admin]\n  port = {admin}\n[auth.password]\n  scram_iterations = 64\n",
        dir.join("data").display()
    )
}

fn starling(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_starling")).arg("--config").arg(config).args(args).output().unwrap()
}

/// Starts `starling serve` on free ports and registers alice.
fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let ports = common::free_ports(2);
    let config = dir.path().join("starling.toml");
    std::fs::write(&config, config_text(dir.path(), ports[0], ports[1])).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(["serve", "--config"])
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !starling(&config, &["server", "status"]).status.success() {
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let args = ["account", "registerUser", "--username", "alice", "--domain", "localhost", "--password", "secret"];
    assert!(starling(&config, &args).status.success());
    Server { child, config, c2s: ports[0], _dir: dir }
}

/// Waits at most `limit` for the process to exit; its exit code.
fn exit_code_within(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// A core thread that dies (a panic outside any containment, injected) stops the
/// whole process at once with exit status 70 and a log line naming the core; before
/// this, the node stayed half-alive (issue 9). `server status` answers with each
/// core's health while all are up.
#[test]
fn a_dead_core_stops_the_process() {
    let mut server = start();
    let status = starling(&server.config, &["server", "status"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let cores = &status["data"]["server"]["status"]["cores"];
    assert_eq!(cores.as_array().map(Vec::len), Some(2), "{status}");
    assert_eq!(cores[0]["healthy"], true);
    let mut alice = Client::login(format!("127.0.0.1:{}", server.c2s).parse().unwrap(), "alice", "secret", "r");
    alice.send("<kill-core xmlns='urn:starling:fault'/>");
    let code = exit_code_within(&mut server.child, Duration::from_secs(10));
    if code.is_none() {
        let _ = server.child.kill();
    }
    let mut log = String::new();
    std::io::Read::read_to_string(server.child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert_eq!(code, Some(starling_shard::CORE_DIED_EXIT_CODE), "{log}");
    assert!(log.contains("stopping the process (exit 70)"), "{log}");
}

/// A second `starling serve` with the same client port (and another admin port) fails
/// at startup with "address in use" naming the port; before, SO_REUSEPORT let it
/// start and the kernel gave it half of the clients (issue 9). The first one keeps
/// serving.
#[test]
fn a_second_process_on_a_served_port_fails_at_startup() {
    let server = start();
    let dir = tempfile::tempdir().unwrap();
    let admin = common::free_ports(1)[0];
    let config = dir.path().join("second.toml");
    std::fs::write(&config, config_text(dir.path(), server.c2s, admin)).unwrap();
    let mut second = Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(["serve", "--config"])
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let code = exit_code_within(&mut second, Duration::from_secs(20));
    let mut log = String::new();
    std::io::Read::read_to_string(second.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(matches!(code, Some(c) if c != 0), "the second process must fail, got {code:?}: {log}");
    assert!(log.contains(&format!("127.0.0.1:{}", server.c2s)) && log.contains("in use"), "{log}");
    let mut alice = Client::login(format!("127.0.0.1:{}", server.c2s).parse().unwrap(), "alice", "secret", "r");
    alice.send("<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>");
    alice.expect("id='p'");
}
