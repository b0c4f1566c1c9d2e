//! The admin port: GraphQL over HTTP at `/api/graphql`, a GraphiQL page on GET from a
//! browser, and Prometheus metrics at `/metrics`, served by a fixed pool of threads
//! (`http.rs`); it reaches the cores through `Node`'s query channels and storage
//! directly.
//!
//! Cross-site and DNS-rebinding requests are refused (a web page in a browser on the
//! operator's machine must not drive the API): GET never runs a mutation; POST needs
//! `Content-Type: application/json` (a page cannot send that cross-site without a
//! CORS preflight, which we never answer); a `Host` must be an IP address or
//! `localhost` (a rebound name is not); an `Origin`, when sent, must be this port's
//! own. `/metrics` needs the credentials when they are set; `[listen.metrics]`
//! serves it alone, without them, for Prometheus.
//!
//! GraphQL library: async-graphql, the most widely used and maintained GraphQL server
//! crate; its executor needs no async runtime (we drive it with `block_on` here), and
//! its introspection is what the CLI builds its commands from.

pub mod http;
pub mod import;
pub mod schema;

use std::net::TcpListener;
use std::sync::Arc;

use base64::Engine as _;
use starling_shard::Node;

use crate::config::Config;
use crate::store::Storage;
use http::{Request, Response};
use schema::{Admin, AdminSchema};

pub struct AdminServer {
    servers: Vec<http::Server>,
}

impl AdminServer {
    /// Serves the admin API on `listener`, and metrics alone on `metrics` if given.
    pub fn start(
        listener: TcpListener,
        metrics: Option<TcpListener>,
        config: &Config,
        storage: Box<dyn Storage>,
        node: Arc<Node>,
    ) -> Result<AdminServer, String> {
        let admin = Admin {
            storage: std::sync::Mutex::new(storage),
            node: Some(node.clone()),
            node_name: config.general.node_name.clone(),
            hosts: config.general.hosts.clone(),
            scram_iterations: config.auth.scram_iterations,
        };
        let schema = schema::build(Some(admin));
        let credentials = config.admin.as_ref().and_then(|a| a.credentials.clone());
        let api_node = node.clone();
        let api: Arc<dyn Fn(&Request) -> Response + Send + Sync> =
            Arc::new(move |request| answer(request, &schema, credentials.as_ref(), &api_node));
        let mut servers = vec![http::Server::start(listener, "starling-admin", api).map_err(|e| e.to_string())?];
        if let Some(metrics) = metrics {
            let only_metrics: Arc<dyn Fn(&Request) -> Response + Send + Sync> =
                Arc::new(move |request| match (request.method.as_str(), request.path.as_str()) {
                    ("GET", "/metrics") => metrics_response(&node),
                    _ => not_found(),
                });
            servers.push(http::Server::start(metrics, "starling-metrics", only_metrics).map_err(|e| e.to_string())?);
        }
        Ok(AdminServer { servers })
    }

    pub fn stop(self) {
        for server in self.servers {
            server.stop();
        }
    }
}

fn json(status: u16, body: &serde_json::Value) -> Response {
    Response::new(status, "application/json", body.to_string().into_bytes())
}

fn error(status: u16, code: &str, message: &str) -> Response {
    json(status, &serde_json::json!({"errors": [{"message": message, "extensions": {"code": code}}]}))
}

fn not_found() -> Response {
    error(404, "not_found", "Not found")
}

fn metrics_response(node: &Node) -> Response {
    Response::new(200, "text/plain; version=0.0.4", metrics(node).into_bytes())
}

/// Whether a `Host` (or an origin's host) names this machine by address: an IP
/// literal or `localhost`, with or without a port. A DNS-rebinding page's requests
/// carry its own domain name here.
fn local_host(host: &str) -> bool {
    let bare = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        rest.split_once(']').map(|(ip, _)| ip).unwrap_or(rest)
    } else {
        host.rsplit_once(':').filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h)
    };
    bare.eq_ignore_ascii_case("localhost") || bare.parse::<std::net::IpAddr>().is_ok()
}

/// Refuses what a browser would send on behalf of a foreign page.
fn cross_site(request: &Request) -> Option<Response> {
    let host = request.header("host");
    if let Some(host) = host {
        if !local_host(host) {
            return Some(error(403, "forbidden_host", "The admin port answers only to an IP address or localhost"));
        }
    }
    if let Some(origin) = request.header("origin") {
        let own = host.is_some_and(|host| {
            origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(host)
        });
        if !own {
            return Some(error(403, "forbidden_origin", "Cross-origin requests are not accepted"));
        }
    }
    None
}

fn answer(request: &Request, schema: &AdminSchema, credentials: Option<&(String, String)>, node: &Node) -> Response {
    if let Some(refusal) = cross_site(request) {
        return refusal;
    }
    if request.path == "/metrics" && request.method == "GET" {
        if let Some(rejection) = check_credentials(request, credentials) {
            return rejection;
        }
        return metrics_response(node);
    }
    if request.path != "/api/graphql" {
        return not_found();
    }
    if let Some(rejection) = check_credentials(request, credentials) {
        return rejection;
    }
    let wants_html = request.header("accept").is_some_and(|accept| accept.contains("text/html"));
    match request.method.as_str() {
        "GET" if wants_html || request.query.is_none() => {
            let page = async_graphql::http::graphiql_source("/api/graphql", None);
            Response::new(200, "text/html; charset=utf-8", page.into_bytes())
        }
        "GET" => {
            let query = request.query.as_deref().unwrap_or_default();
            let document =
                query.split('&').find_map(|pair| pair.strip_prefix("query=")).map(percent_decode).unwrap_or_default();
            if !only_queries(&document) {
                return error(405, "method_not_allowed", "Mutations must be sent with POST");
            }
            execute(schema, async_graphql::Request::new(document))
        }
        "POST" => {
            let json_body = request.header("content-type").is_some_and(|t| {
                t.split(';').next().is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
            });
            if !json_body {
                return error(415, "unsupported_media_type", "POST needs Content-Type: application/json");
            }
            let (status, answer) = execute_post(schema, &request.body);
            json(status, &answer)
        }
        _ => error(405, "method_not_allowed", "Method not allowed"),
    }
}

/// Whether a GraphQL document has only query operations (a document that does not
/// parse is left to the executor, which reports it).
fn only_queries(document: &str) -> bool {
    use async_graphql::parser::types::{DocumentOperations, OperationType};
    let Ok(parsed) = async_graphql::parser::parse_query(document) else { return true };
    let is_query = |ty: OperationType| ty == OperationType::Query;
    match &parsed.operations {
        DocumentOperations::Single(operation) => is_query(operation.node.ty),
        DocumentOperations::Multiple(operations) => operations.values().all(|o| is_query(o.node.ty)),
    }
}

/// HTTP Basic credentials, when configured (MongooseIM's 401 bodies otherwise).
fn check_credentials(request: &Request, credentials: Option<&(String, String)>) -> Option<Response> {
    let (user, password) = credentials?;
    let Some(header) = request.header("authorization") else {
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
