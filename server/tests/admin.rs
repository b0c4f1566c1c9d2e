//! The admin port and CLI against a running node: MongooseIM's JSON shapes, HTTP
//! Basic credentials, the schema-built CLI and its exit codes.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use common::{Client, TestNode};

fn with_credentials(config: &mut starling_server::config::Config) {
    if let Some(admin) = &mut config.admin {
        admin.credentials = Some(("admin".into(), "s3cret".into()));
    }
}

/// Writes a config file pointing the CLI at the node's admin port.
fn cli_config(node: &TestNode, credentials: Option<(&str, &str)>) -> std::path::PathBuf {
    let path = node.dir.path().join("cli.toml");
    let auth = credentials.map(|(u, p)| format!("username = '{u}'\npassword = '{p}'\n")).unwrap_or_default();
    std::fs::write(&path, format!("[listen.admin]\nport = {}\n{auth}", node.admin.port())).unwrap();
    path
}

fn starling(config: &std::path::Path, args: &[&str]) -> (i32, serde_json::Value, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_starling")).arg("--config").arg(config).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    (output.status.code().unwrap_or(-1), json, stdout)
}

fn post(node: &TestNode, authorization: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let mut stream = TcpStream::connect(node.admin).unwrap();
    let authorization = authorization.map(|a| format!("Authorization: Basic {a}\r\n")).unwrap_or_default();
    write!(
        stream,
        "POST /api/graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{authorization}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

/// registerUser prints MongooseIM's JSON; registering again prints the `exists` error
/// and exits 1; the new account can log in.
#[test]
fn register_user_and_exists_error() {
    let node = TestNode::start_with(with_credentials);
    let config = cli_config(&node, Some(("admin", "s3cret")));
    let args = ["account", "registerUser", "--username", "dave", "--domain", "localhost", "--password", "pw"];
    let (code, json, _) = starling(&config, &args);
    assert_eq!(code, 0);
    assert_eq!(
        json,
        serde_json::json!({"data": {"account": {"registerUser": {"jid": "dave@localhost", "message": "User dave@localhost successfully registered"}}}})
    );
    let (code, json, _) = starling(&config, &args);
    assert_eq!(code, 1);
    assert_eq!(json["data"], serde_json::json!({"account": {"registerUser": null}}));
    let error = &json["errors"][0];
    assert_eq!(error["extensions"]["code"], "exists");
    assert_eq!(error["extensions"]["jid"], "dave@localhost");
    assert_eq!(error["message"], "User dave@localhost already registered at node starling@localhost");
    assert_eq!(error["path"], serde_json::json!(["account", "registerUser"]));
    let mut dave = Client::connect(node.c2s);
    dave.open();
    dave.scram("dave", "pw").unwrap();
}

/// The other account commands, with their MongooseIM messages.
#[test]
fn account_commands() {
    let node = TestNode::start();
    let config = cli_config(&node, None);
    let (code, json, _) = starling(&config, &["account", "checkUser", "--user", "alice@localhost"]);
    assert_eq!((code, json["data"]["account"]["checkUser"]["exist"].clone()), (0, serde_json::json!(true)));
    let (_, json, _) =
        starling(&config, &["account", "checkPassword", "--user", "alice@localhost", "--password", "secret"]);
    assert_eq!(json["data"]["account"]["checkPassword"]["correct"], true);
    let (_, json, _) = starling(&config, &["account", "countUsers", "--domain", "localhost"]);
    assert_eq!(json["data"]["account"]["countUsers"], 3);
    let (_, json, _) = starling(&config, &["account", "listUsers", "--domain", "localhost"]);
    assert_eq!(
        json["data"]["account"]["listUsers"],
        serde_json::json!(["alice@localhost", "bob@localhost", "carol@localhost"])
    );
    let (code, json, _) = starling(&config, &["account", "listUsers", "--domain", "nowhere.example"]);
    assert_eq!((code, json["errors"][0]["extensions"]["code"].clone()), (1, serde_json::json!("domain_not_found")));
    let (code, _, _) =
        starling(&config, &["account", "changeUserPassword", "--user", "bob@localhost", "--newPassword", "new"]);
    assert_eq!(code, 0);
    let mut bob = Client::connect(node.c2s);
    bob.open();
    bob.scram("bob", "new").unwrap();
    // Removing an account closes its sessions.
    let mut alice = Client::login(node.c2s, "alice", "secret", "r");
    let (code, json, _) = starling(&config, &["account", "removeUser", "--user", "alice@localhost"]);
    assert_eq!(code, 0, "{json}");
    assert_eq!(json["data"]["account"]["removeUser"]["message"], "User alice@localhost successfully unregistered");
    assert_eq!(alice.expect_stream_error(), starling_wire::error::StreamErrorCondition::NotAuthorized);
    let (code, json, _) = starling(&config, &["account", "removeUser", "--user", "alice@localhost"]);
    assert_eq!((code, json["errors"][0]["extensions"]["code"].clone()), (1, serde_json::json!("not_allowed")));
    let (code, json, _) = starling(&config, &["server", "status"]);
    assert_eq!((code, json["data"]["server"]["status"]["statusCode"].clone()), (0, serde_json::json!("RUNNING")));
}

/// importUsers takes MongooseIM's CSV (plain passwords) and precomputed SCRAM keys,
/// and sorts rows into its result lists.
#[test]
fn import_users_from_csv() {
    let node = TestNode::start();
    let config = cli_config(&node, None);
    let keys = starling_server::store::AccountKeys::from_password("fast", std::num::NonZeroU32::new(64).unwrap());
    let csv = format!(
        "john,localhost,smith\nalice,localhost,smith\nelise,localhost,\n,localhost,password\nelise,elise,localhost,esile\nzed,other.example,x\nquick,localhost,\"{}\"\n",
        keys.to_mongooseim()
    );
    let file = node.dir.path().join("users.csv");
    std::fs::write(&file, csv).unwrap();
    let (code, json, out) = starling(&config, &["account", "importUsers", "--filename", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let result = &json["data"]["account"]["importUsers"];
    assert_eq!(result["status"], "Completed");
    assert_eq!(result["created"], serde_json::json!(["john@localhost", "quick@localhost"]));
    assert_eq!(result["existing"], serde_json::json!(["alice@localhost"]));
    assert_eq!(result["emptyPassword"], serde_json::json!(["elise@localhost"]));
    assert_eq!(result["invalidJID"], serde_json::json!([",localhost,password"]));
    assert_eq!(result["invalidRecord"], serde_json::json!(["elise,elise,localhost,esile"]));
    assert_eq!(result["notAllowed"], serde_json::json!(["zed@other.example"]));
    let mut quick = Client::connect(node.c2s);
    quick.open();
    quick.scram("quick", "fast").unwrap();
}

/// Wrong or missing HTTP Basic credentials get 401 with MongooseIM's bodies; the
/// right ones work; input errors are 400 with `input_coercion`.
#[test]
fn http_credentials_and_status_codes() {
    use base64::Engine as _;
    let node = TestNode::start_with(with_credentials);
    let query = r#"{"query": "{ server { status { statusCode } } }"}"#;
    let (status, body) = post(&node, None, query);
    assert_eq!((status, body["errors"][0]["extensions"]["code"].clone()), (401, serde_json::json!("no_permissions")));
    let wrong = base64::engine::general_purpose::STANDARD.encode("admin:nope");
    let (status, body) = post(&node, Some(&wrong), query);
    assert_eq!(
        (status, body["errors"][0]["extensions"]["code"].clone()),
        (401, serde_json::json!("wrong_credentials"))
    );
    assert_eq!(body["errors"][0]["message"], "The provided credentials are wrong");
    let right = base64::engine::general_purpose::STANDARD.encode("admin:s3cret");
    let (status, body) = post(&node, Some(&right), query);
    assert_eq!((status, body["data"]["server"]["status"]["statusCode"].clone()), (200, serde_json::json!("RUNNING")));
    let bad = r#"{"query": "{ account { checkUser(user: \"no-at-sign\") { exist } } }"}"#;
    let (status, body) = post(&node, Some(&right), bad);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"][0]["extensions"]["code"], "input_coercion");
    assert!(body.get("data").is_none());
    let (status, _) = post(&node, Some(&right), "not json");
    assert_eq!(status, 400);
    // The CLI with wrong credentials exits 1 with the error printed.
    let config = cli_config(&node, Some(("admin", "nope")));
    let (code, json, _) = starling(&config, &["server", "status"]);
    assert_eq!((code, json["errors"][0]["extensions"]["code"].clone()), (1, serde_json::json!("wrong_credentials")));
}

/// Exit codes: 2 without arguments, 1 for unknown commands and missing arguments, 0
/// for help, 3 when no node listens.
#[test]
fn cli_exit_codes() {
    let node = TestNode::start();
    let config = cli_config(&node, None);
    assert_eq!(starling(&config, &[]).0, 2);
    assert_eq!(starling(&config, &["nosuch"]).0, 1);
    assert_eq!(starling(&config, &["account", "nosuch"]).0, 1);
    let (code, _, out) = starling(&config, &["account", "registerUser", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("domain") && out.contains("DomainName!"), "{out}");
    let (code, _, out) = starling(&config, &["account", "registerUser", "--domain", "localhost"]);
    assert_eq!(code, 1);
    assert!(out.starts_with("Missing mandatory arguments for command 'registerUser': 'password'"), "{out}");
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = unused.local_addr().unwrap().port();
    drop(unused);
    let dead = node.dir.path().join("dead.toml");
    std::fs::write(&dead, format!("[listen.admin]\nport = {port}\n")).unwrap();
    assert_eq!(starling(&dead, &["server", "status"]).0, 3);
}

/// Prometheus metrics count sessions.
#[test]
fn metrics_endpoint() {
    let node = TestNode::start();
    let _alice = Client::login(node.c2s, "alice", "secret", "r");
    node.wait_sessions(1);
    let mut stream = TcpStream::connect(node.admin).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.contains("\nstarling_sessions 1\n"), "{response}");
    assert!(response.contains("# TYPE starling_logins_total counter"));
}
