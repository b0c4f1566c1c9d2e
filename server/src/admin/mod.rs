//! The admin port: GraphQL over HTTP (tiny_http) at `/api/graphql`, a GraphiQL page on
//! GET from a browser, and Prometheus metrics at `/metrics`. One thread of its own;
//! it reaches the cores through `Node`'s query channels and storage directly.
//!
//! GraphQL library: async-graphql, the most widely used and maintained GraphQL server
//! crate; its executor needs no async runtime (we drive it with `block_on` here), and
//! its introspection is what the CLI builds its commands from.

pub mod import;
pub mod schema;

use std::io::Read;
use std::net::TcpListener;
use std::sync::Arc;
use std::thread::JoinHandle;

use base64::Engine as _;
use starling_shard::Node;

use crate::config::Config;
use crate::store::Storage;
use schema::{Admin, AdminSchema};

/// Largest request body accepted.
const BODY_BYTES_MAX: usize = 1024 * 1024;

pub struct AdminServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl AdminServer {
    pub fn start(
        listener: TcpListener,
        config: &Config,
        storage: Box<dyn Storage>,
        node: Arc<Node>,
    ) -> Result<AdminServer, String> {
        let server = Arc::new(tiny_http::Server::from_listener(listener, None).map_err(|e| e.to_string())?);
        let admin = Admin {
            storage: std::sync::Mutex::new(storage),
            node: Some(node.clone()),
            node_name: config.general.node_name.clone(),
            hosts: config.general.hosts.clone(),
            scram_iterations: config.auth.scram_iterations,
        };
        let schema = schema::build(Some(admin));
        let credentials = config.admin.as_ref().and_then(|a| a.credentials.clone());
        let serving = server.clone();
        let thread = std::thread::Builder::new()
            .name("starling-admin".into())
            .spawn(move || serve(&serving, &schema, credentials.as_ref(), &node))
            .map_err(|e| e.to_string())?;
        Ok(AdminServer { server, thread: Some(thread) })
    }

    pub fn stop(mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(server: &tiny_http::Server, schema: &AdminSchema, credentials: Option<&(String, String)>, node: &Node) {
    for mut request in server.incoming_requests() {
        let body =
            if *request.method() == tiny_http::Method::Post { read_body(&mut request) } else { Some(Vec::new()) };
        let response = match body {
            Some(body) => answer(request_parts(&request), &body, schema, credentials, node, &request),
            None => json(413, &serde_json::json!({"errors": [{"message": "Request body too large"}]})),
        };
        let _ = request.respond(response);
    }
}

struct Parts {
    method: tiny_http::Method,
    path: String,
    query: Option<String>,
}

fn request_parts(request: &tiny_http::Request) -> Parts {
    let url = request.url();
    let (path, query) = match url.split_once('?') {
        Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
        None => (url.to_owned(), None),
    };
    Parts { method: request.method().clone(), path, query }
}

type Response = tiny_http::Response<std::io::Cursor<Vec<u8>>>;

fn json(status: u16, body: &serde_json::Value) -> Response {
    let header = tiny_http::Header::from_bytes("Content-Type", "application/json").expect("static header");
    tiny_http::Response::from_data(body.to_string().into_bytes()).with_status_code(status).with_header(header)
}

fn answer(
    parts: Parts,
    body: &[u8],
    schema: &AdminSchema,
    credentials: Option<&(String, String)>,
    node: &Node,
    request: &tiny_http::Request,
) -> Response {
    if parts.path == "/metrics" && parts.method == tiny_http::Method::Get {
        let header = tiny_http::Header::from_bytes("Content-Type", "text/plain; version=0.0.4").expect("static header");
        return tiny_http::Response::from_data(metrics(node).into_bytes()).with_header(header);
    }
    if parts.path != "/api/graphql" {
        return json(
            404,
            &serde_json::json!({"errors": [{"message": "Not found", "extensions": {"code": "not_found"}}]}),
        );
    }
    if let Some(rejection) = check_credentials(request, credentials) {
        return rejection;
    }
    let wants_html =
        request.headers().iter().any(|h| h.field.equiv("Accept") && h.value.as_str().contains("text/html"));
    match parts.method {
        tiny_http::Method::Get if wants_html || parts.query.is_none() => {
            let page = async_graphql::http::graphiql_source("/api/graphql", None);
            let header =
                tiny_http::Header::from_bytes("Content-Type", "text/html; charset=utf-8").expect("static header");
            tiny_http::Response::from_data(page.into_bytes()).with_header(header)
        }
        tiny_http::Method::Get => {
            let query = parts.query.unwrap_or_default();
            let document =
                query.split('&').find_map(|pair| pair.strip_prefix("query=")).map(percent_decode).unwrap_or_default();
            execute(schema, async_graphql::Request::new(document))
        }
        tiny_http::Method::Post => {
            let (status, answer) = execute_post(schema, body);
            json(status, &answer)
        }
        _ => json(405, &serde_json::json!({"errors": [{"message": "Method not allowed"}]})),
    }
}

/// HTTP Basic credentials, when configured (MongooseIM's 401 bodies otherwise).
fn check_credentials(request: &tiny_http::Request, credentials: Option<&(String, String)>) -> Option<Response> {
    let (user, password) = credentials?;
    let header = request.headers().iter().find(|h| h.field.equiv("Authorization")).map(|h| h.value.as_str().to_owned());
    let Some(header) = header else {
        return Some(json(
            401,
            &serde_json::json!({"errors": [{"extensions": {"code": "no_permissions"}, "message": "Cannot execute query ROOT without permissions"}]}),
        ));
    };
    let expected = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let given = header.strip_prefix("Basic ").unwrap_or("");
    if starling_wire::sasl::constant_time_eq(given.trim().as_bytes(), expected.as_bytes()) {
        return None;
    }
    Some(json(
        401,
        &serde_json::json!({"errors": [{"extensions": {"code": "wrong_credentials"}, "message": "The provided credentials are wrong"}]}),
    ))
}

/// Runs one GraphQL request and shapes the answer like MongooseIM: resolver errors
/// keep `data` and HTTP 200; a request that failed before execution gets 400 and no
/// `data`.
pub fn execute(schema: &AdminSchema, request: async_graphql::Request) -> Response {
    let (status, body) = run(schema, request);
    json(status, &body)
}

pub fn run(schema: &AdminSchema, request: async_graphql::Request) -> (u16, serde_json::Value) {
    let response = futures_lite::future::block_on(schema.execute(request));
    let executed = !matches!(response.data, async_graphql::Value::Null);
    let mut body = serde_json::to_value(&response).unwrap_or_else(|_| serde_json::json!({}));
    if let Some(errors) = body.get_mut("errors").and_then(|e| e.as_array_mut()) {
        for error in errors {
            let Some(object) = error.as_object_mut() else { continue };
            object.remove("locations");
            let message = object.get("message").and_then(|m| m.as_str()).unwrap_or("").to_owned();
            let extensions = object.entry("extensions").or_insert_with(|| serde_json::json!({}));
            if extensions.get("code").is_none() {
                let code = if message.contains("Failed to parse") || message.contains("Invalid value") {
                    "input_coercion"
                } else if executed {
                    "internal_server_error"
                } else {
                    "parser_error"
                };
                extensions["code"] = serde_json::Value::String(code.into());
            }
        }
    }
    let coercion = body
        .get("errors")
        .and_then(|e| e.as_array())
        .is_some_and(|errors| errors.iter().any(|e| e["extensions"]["code"] == "input_coercion"));
    if (!executed || coercion) && body.get("errors").is_some() {
        if let Some(object) = body.as_object_mut() {
            object.remove("data");
        }
        return (400, body);
    }
    (200, body)
}

/// Reads a POST body and executes it.
pub fn execute_post(schema: &AdminSchema, body: &[u8]) -> (u16, serde_json::Value) {
    match serde_json::from_slice::<async_graphql::Request>(body) {
        Ok(request) => run(schema, request),
        Err(_) => (
            400,
            serde_json::json!({"errors": [{"extensions": {"code": "invalid_json_body"}, "message": "The request JSON body is invalid"}]}),
        ),
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let hex = bytes
            .get(at + 1..at + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[at], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(byte)) => {
                out.push(byte);
                at += 2;
            }
            (byte, _) => out.push(byte),
        }
        at += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Prometheus text exposition of the node's counters.
fn metrics(node: &Node) -> String {
    let stats = node.stats();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
    };
    metric("starling_connections", "gauge", "Open client connections.", stats.connections as u64);
    metric("starling_sessions", "gauge", "Bound sessions.", stats.sessions as u64);
    metric("starling_connections_accepted_total", "counter", "Accepted TCP connections.", stats.connections_accepted);
    metric("starling_logins_total", "counter", "Sessions bound.", stats.logins);
    metric("starling_login_failures_total", "counter", "Streams that ended before binding.", stats.login_failures);
    metric("starling_stanzas_routed_total", "counter", "Stanzas routed between accounts.", stats.stanzas_routed);
    metric(
        "starling_stanzas_delivered_total",
        "counter",
        "Stanzas that reached the recipient's core.",
        stats.stanzas_delivered,
    );
    metric(
        "starling_panics_contained_total",
        "counter",
        "Panics (our bugs) that ended one stream or task instead of a core.",
        stats.panics,
    );
    for (name, value) in &stats.counters {
        let name = format!("starling_{name}_total");
        out.push_str(&format!("# TYPE {name} counter\n{name} {value}\n"));
    }
    let health = node.health(std::time::Duration::from_secs(1));
    out.push_str("# HELP starling_core_up Whether each core answered a health check within 1 s.\n");
    out.push_str("# TYPE starling_core_up gauge\n");
    for core in &health {
        out.push_str(&format!("starling_core_up{{core=\"{}\"}} {}\n", core.core, u8::from(core.answered_in.is_some())));
    }
    out
}

/// Reads the whole body of `request` (bounded).
pub(crate) fn read_body(request: &mut tiny_http::Request) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    request.as_reader().take(BODY_BYTES_MAX as u64 + 1).read_to_end(&mut body).ok()?;
    (body.len() <= BODY_BYTES_MAX).then_some(body)
}
