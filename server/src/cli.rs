//! The admin CLI: `starling <category> <command> --arg value`, built from the admin
//! GraphQL schema the way `mongooseimctl` builds its commands: every category is a
//! field of the admin query or mutation type, every command a field of a category,
//! every argument an `--arg`, and every field of the result is selected.
//!
//! The command table comes from introspecting the schema in-process (no node needed);
//! the command itself runs on the node through its admin port. Exit codes follow
//! mongooseimctl: 0 success, 1 errors, 2 usage, 3 node unreachable.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;

use crate::admin::schema;

pub const EXIT_OK: i32 = 0;
pub const EXIT_ERROR: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_UNREACHABLE: i32 = 3;

/// Where the node's admin port is and how to log in to it.
pub struct Target {
    pub address: Option<SocketAddr>,
    pub credentials: Option<(String, String)>,
}

#[derive(Deserialize, Debug, Clone)]
struct TypeRef {
    kind: String,
    name: Option<String>,
    #[serde(rename = "ofType")]
    of_type: Option<Box<TypeRef>>,
}

impl TypeRef {
    /// GraphQL notation: `String!`, `[JID!]`.
    fn notation(&self) -> String {
        match (self.kind.as_str(), &self.of_type) {
            ("NON_NULL", Some(inner)) => format!("{}!", inner.notation()),
            ("LIST", Some(inner)) => format!("[{}]", inner.notation()),
            _ => self.name.clone().unwrap_or_default(),
        }
    }

    fn named(&self) -> &TypeRef {
        match &self.of_type {
            Some(inner) => inner.named(),
            None => self,
        }
    }

    fn is_list(&self) -> bool {
        self.kind == "LIST" || self.of_type.as_ref().is_some_and(|t| t.is_list())
    }
}

#[derive(Deserialize, Debug)]
struct Argument {
    name: String,
    #[serde(rename = "type")]
    type_ref: TypeRef,
}

#[derive(Deserialize, Debug)]
struct Field {
    name: String,
    description: Option<String>,
    #[serde(default)]
    args: Vec<Argument>,
    #[serde(rename = "type")]
    type_ref: TypeRef,
}

#[derive(Deserialize, Debug)]
struct Type {
    name: String,
    kind: String,
    fields: Option<Vec<Field>>,
}

/// One command: a field of a category type.
struct Command {
    operation: &'static str,
    description: String,
    arguments: Vec<Argument>,
    result: TypeRef,
}

/// Categories (with descriptions) and their commands, from the schema.
struct Commands {
    categories: BTreeMap<String, (String, BTreeMap<String, Command>)>,
    types: BTreeMap<String, Type>,
}

const INTROSPECTION: &str = "{ __schema { queryType { name } mutationType { name } types { name kind fields { name description \
    args { name type { ...T } } type { ...T } } } } } \
    fragment T on __Type { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name } } } } }";

impl Commands {
    fn from_schema() -> Commands {
        let schema = schema::build(None);
        let response = futures_lite::future::block_on(schema.execute(INTROSPECTION));
        let data = serde_json::to_value(&response.data).unwrap_or_default();
        let types: Vec<Type> = serde_json::from_value(data["__schema"]["types"].clone()).unwrap_or_default();
        let types: BTreeMap<String, Type> = types.into_iter().map(|t| (t.name.clone(), t)).collect();
        let mut categories = BTreeMap::new();
        for (root, operation) in [("AdminQuery", "query"), ("AdminMutation", "mutation")] {
            let Some(fields) = types.get(root).and_then(|t| t.fields.as_ref()) else { continue };
            for category in fields {
                let entry = categories
                    .entry(category.name.clone())
                    .or_insert_with(|| (category.description.clone().unwrap_or_default(), BTreeMap::new()));
                let category_type = category.type_ref.named().name.clone().unwrap_or_default();
                for command in types.get(&category_type).and_then(|t| t.fields.as_ref()).into_iter().flatten() {
                    entry.1.insert(
                        command.name.clone(),
                        Command {
                            operation,
                            description: command.description.clone().unwrap_or_default(),
                            arguments: command
                                .args
                                .iter()
                                .map(|a| Argument { name: a.name.clone(), type_ref: a.type_ref.clone() })
                                .collect(),
                            result: command.type_ref.clone(),
                        },
                    );
                }
            }
        }
        Commands { categories, types }
    }

    /// `{ a b { c } }` for the named type, every field, to a bounded depth.
    fn selection(&self, type_ref: &TypeRef, depth: usize) -> String {
        let named = type_ref.named();
        let Some(fields) = named
            .name
            .as_ref()
            .and_then(|n| self.types.get(n))
            .filter(|t| t.kind == "OBJECT")
            .and_then(|t| t.fields.as_ref())
        else {
            return String::new();
        };
        if depth == 0 {
            return " { __typename }".into();
        }
        let inner: Vec<String> =
            fields.iter().map(|f| format!("{}{}", f.name, self.selection(&f.type_ref, depth - 1))).collect();
        format!(" {{ {} }}", inner.join(" "))
    }
}

fn general_usage(commands: &Commands) -> String {
    let mut text = String::from("Usage: starling [--config FILE] [category] command [arguments]\n\n");
    text.push_str("Most Starling commands are grouped into the following categories:\n");
    let width = commands.categories.keys().map(String::len).max().unwrap_or(0) + 2;
    for (name, (description, _)) in &commands.categories {
        text.push_str(&format!("  {name:width$}{description}\n"));
    }
    text.push_str("To list the commands in a particular category:\n  starling category\n\n");
    text.push_str("The following basic commands do not have a category:\n");
    text.push_str("  graphql query  Execute GraphQL query or mutation\n");
    text.push_str("  serve          Run a node (starling serve --help)\n");
    text
}

fn category_usage(category: &str, commands: &BTreeMap<String, Command>) -> String {
    let mut text = format!("Usage: starling {category} command arguments\n\n");
    text.push_str(&format!("The following commands are available in the category '{category}':\n"));
    let width = commands.keys().map(String::len).max().unwrap_or(0) + 2;
    for (name, command) in commands {
        text.push_str(&format!("  {name:width$}{}\n", command.description));
    }
    text.push_str(&format!("To list the arguments for a particular command:\n  starling {category} command --help\n"));
    text
}

fn command_usage(category: &str, name: &str, command: &Command) -> String {
    let mut text = format!("Usage: starling {category} {name} arguments\n\n");
    text.push_str("Each argument has the format: --name value\n");
    text.push_str("Available arguments are listed below with the corresponding GraphQL types:\n");
    let width = command.arguments.iter().map(|a| a.name.len()).max().unwrap_or(0) + 2;
    for argument in &command.arguments {
        text.push_str(&format!("  {:width$}{}\n", argument.name, argument.type_ref.notation()));
    }
    text.push_str("\nScalar values do not need quoting unless they contain special characters or spaces.\n");
    text.push_str("Complex input types are passed as JSON maps or lists, depending on the type.\n");
    text.push_str("When a type is followed by '!', the corresponding argument is required.\n");
    text
}

/// Runs the CLI for `args` (after the program name); returns the exit code.
pub fn run(args: &[String], target: &Target) -> i32 {
    let commands = Commands::from_schema();
    match args {
        [] => {
            print!("{}", general_usage(&commands));
            EXIT_USAGE
        }
        [graphql, document] if graphql == "graphql" => send(target, serde_json::json!({ "query": document })),
        [graphql, ..] if graphql == "graphql" => {
            println!("This command requires one string type argument!");
            EXIT_ERROR
        }
        [help] if help == "--help" || help == "help" => {
            print!("{}", general_usage(&commands));
            EXIT_OK
        }
        [category, rest @ ..] => {
            let Some((_, category_commands)) = commands.categories.get(category) else {
                print!("Unknown category\n\n{}", general_usage(&commands));
                return EXIT_ERROR;
            };
            let [name, arguments @ ..] = rest else {
                print!("{}", category_usage(category, category_commands));
                return EXIT_OK;
            };
            let Some(command) = category_commands.get(name) else {
                print!("Unknown command '{name}'\n\n{}", category_usage(category, category_commands));
                return EXIT_ERROR;
            };
            if arguments == ["--help"] {
                print!("{}", command_usage(category, name, command));
                return EXIT_OK;
            }
            match request(&commands, category, name, command, arguments) {
                Ok(body) => send(target, body),
                Err(message) => {
                    print!("{message}\n\n{}", command_usage(category, name, command));
                    EXIT_ERROR
                }
            }
        }
    }
}

/// Builds the GraphQL request for a command and its `--name value` arguments.
fn request(
    commands: &Commands,
    category: &str,
    name: &str,
    command: &Command,
    arguments: &[String],
) -> Result<Value, String> {
    if !arguments.len().is_multiple_of(2) || arguments.iter().step_by(2).any(|a| !a.starts_with("--")) {
        return Err("Could not parse the command arguments".into());
    }
    let mut variables = serde_json::Map::new();
    for pair in arguments.chunks(2) {
        let key = &pair[0][2..];
        let Some(argument) = command.arguments.iter().find(|a| a.name == key) else {
            return Err(format!("Unknown argument '{key}' for command '{name}'"));
        };
        let invalid = || format!("Invalid value '{}' of argument '{key}' for command '{name}'", pair[1]);
        let named = argument.type_ref.named();
        let value = match (named.kind.as_str(), named.name.as_deref(), argument.type_ref.is_list()) {
            (_, _, true) | ("INPUT_OBJECT", _, _) => serde_json::from_str(&pair[1]).map_err(|_| invalid())?,
            (_, Some("Int" | "PosInt" | "NonNegInt"), _) => Value::from(pair[1].parse::<i64>().map_err(|_| invalid())?),
            (_, Some("Boolean"), _) => Value::Bool(pair[1].parse::<bool>().map_err(|_| invalid())?),
            _ => Value::String(pair[1].clone()),
        };
        variables.insert(key.to_owned(), value);
    }
    let missing: Vec<String> = command
        .arguments
        .iter()
        .filter(|a| a.type_ref.kind == "NON_NULL" && !variables.contains_key(&a.name))
        .map(|a| format!("'{}'", a.name))
        .collect();
    if !missing.is_empty() {
        return Err(format!("Missing mandatory arguments for command '{name}': {}", missing.join(", ")));
    }
    let declared: Vec<String> =
        command.arguments.iter().map(|a| format!("${}: {}", a.name, a.type_ref.notation())).collect();
    let used: Vec<String> = command.arguments.iter().map(|a| format!("{}: ${}", a.name, a.name)).collect();
    let (declared, used) = if declared.is_empty() {
        (String::new(), String::new())
    } else {
        (format!(" ({})", declared.join(", ")), format!("({})", used.join(", ")))
    };
    let document = format!(
        "{}{declared} {{ {category} {{ {name}{used}{} }} }}",
        command.operation,
        commands.selection(&command.result, 3)
    );
    Ok(serde_json::json!({ "query": document, "variables": variables }))
}

/// Posts `body` to the node and prints the answer.
fn send(target: &Target, body: Value) -> i32 {
    let Some(address) = target.address else {
        eprintln!("The admin port is disabled in the configuration ([listen.admin] enabled = false)");
        return EXIT_UNREACHABLE;
    };
    match post(address, target.credentials.as_ref(), &body.to_string()) {
        Err(error) => {
            eprintln!("Failed to reach the node's admin port at {address}: {error}");
            EXIT_UNREACHABLE
        }
        Ok((status, answer)) => {
            let parsed: Value = serde_json::from_slice(&answer)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&answer).into_owned()));
            println!("{}", serde_json::to_string_pretty(&parsed).unwrap_or_default());
            if status == 200 && parsed.get("errors").is_none() {
                EXIT_OK
            } else {
                EXIT_ERROR
            }
        }
    }
}

/// A minimal HTTP/1.1 POST (the admin port is local; no TLS, no keep-alive).
fn post(address: SocketAddr, credentials: Option<&(String, String)>, body: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(600)))?;
    let authorization = credentials
        .map(|(user, password)| {
            format!(
                "Authorization: Basic {}\r\n",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            )
        })
        .unwrap_or_default();
    write!(
        stream,
        "POST /api/graphql HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{authorization}Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("malformed HTTP response"))?;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = &response[split + 4..];
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked")
    });
    Ok((status, if chunked { dechunk(body) } else { body.to_vec() }))
}

/// Decodes an HTTP/1.1 chunked body (large answers come chunked).
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    while let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        body = &body[line_end + 2..];
        if size == 0 || size > body.len() {
            break;
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or(&[]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commands come from the schema: categories, commands and typed arguments.
    #[test]
    fn builds_commands_from_the_schema() {
        let commands = Commands::from_schema();
        let (_, account) = commands.categories.get("account").unwrap();
        let register = account.get("registerUser").unwrap();
        assert_eq!(register.operation, "mutation");
        let types: Vec<String> =
            register.arguments.iter().map(|a| format!("{} {}", a.name, a.type_ref.notation())).collect();
        assert_eq!(types, vec!["domain DomainName!", "username UserName", "password String!"]);
        assert!(account.contains_key("listUsers"));
        assert!(commands.categories.contains_key("server"));
    }

    /// The request selects every result field and declares every argument.
    #[test]
    fn builds_the_request_document() {
        let commands = Commands::from_schema();
        let command = commands.categories["account"].1.get("registerUser").unwrap();
        let args: Vec<String> =
            ["--username", "alice", "--domain", "localhost", "--password", "secret"].map(String::from).to_vec();
        let body = request(&commands, "account", "registerUser", command, &args).unwrap();
        assert_eq!(
            body["query"],
            "mutation ($domain: DomainName!, $username: UserName, $password: String!) { account { registerUser(domain: $domain, username: $username, password: $password) { jid message } } }"
        );
        assert_eq!(body["variables"]["username"], "alice");
    }

    /// Chunked HTTP bodies are reassembled.
    #[test]
    fn dechunks_bodies() {
        assert_eq!(dechunk(b"4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n"), b"Wikipedia");
    }

    /// Missing, unknown and badly typed arguments are usage errors.
    #[test]
    fn argument_errors() {
        let commands = Commands::from_schema();
        let command = commands.categories["account"].1.get("registerUser").unwrap();
        let missing =
            request(&commands, "account", "registerUser", command, &["--domain".into(), "x".into()]).unwrap_err();
        assert_eq!(missing, "Missing mandatory arguments for command 'registerUser': 'password'");
        let unknown =
            request(&commands, "account", "registerUser", command, &["--nope".into(), "x".into()]).unwrap_err();
        assert!(unknown.starts_with("Unknown argument 'nope'"));
        let odd = request(&commands, "account", "registerUser", command, &["--domain".into()]).unwrap_err();
        assert_eq!(odd, "Could not parse the command arguments");
    }
}
