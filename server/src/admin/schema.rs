//! The admin GraphQL schema: MongooseIM 6.2's category, field and type names, and its
//! result and error shapes (`extensions.code`), so scripts written for
//! `mongooseimctl` and its HTTP API work unchanged.
//!
//! Resolvers run on the admin thread. They may block (storage, PBKDF2): the admin
//! thread is not a core.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use async_graphql::{
    Context, EmptySubscription, Enum, Error, ErrorExtensions, InputValueError, InputValueResult, Object, Result,
    Scalar, ScalarType, Schema, SimpleObject, Value,
};
use starling_shard::Node;
use starling_wire::error::StreamErrorCondition;
use starling_wire::jid::{self, BareJid};

use crate::store::{AccountKeys, Storage};

pub type AdminSchema = Schema<AdminQuery, AdminMutation, EmptySubscription>;

/// What resolvers reach through the context.
pub struct Admin {
    pub storage: Mutex<Box<dyn Storage>>,
    /// `None` when the schema only serves introspection (the CLI).
    pub node: Option<Arc<Node>>,
    pub node_name: String,
    pub hosts: Vec<String>,
    pub scram_iterations: NonZeroU32,
}

impl Admin {
    fn storage(&self) -> std::sync::MutexGuard<'_, Box<dyn Storage>> {
        self.storage.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn serves(&self, domain: &str) -> bool {
        self.hosts.iter().any(|host| host == domain)
    }
}

/// Fields one request may select (each alias counts): the CLI's introspection
/// selects about 40. Regression (second breaker): 11,494 aliased introspections in
/// one 1 MB request took 36 s and 2.1 GB; four at once, 6.7 GB.
pub const QUERY_COMPLEXITY_MAX: usize = 1000;

/// Nesting of one request (the CLI's introspection reaches about 10).
pub const QUERY_DEPTH_MAX: usize = 16;

pub fn build(admin: Option<Admin>) -> AdminSchema {
    let builder = Schema::build(AdminQuery, AdminMutation, EmptySubscription)
        .limit_complexity(QUERY_COMPLEXITY_MAX)
        .limit_depth(QUERY_DEPTH_MAX);
    match admin {
        Some(admin) => builder.data(admin).finish(),
        None => builder.finish(),
    }
}

fn error(code: &'static str, message: String, extra: Option<(&'static str, String)>) -> Error {
    Error::new(message).extend_with(move |_, extensions| {
        if let Some((key, value)) = &extra {
            extensions.set(*key, value.clone());
        }
        extensions.set("code", code);
    })
}

/// Settles a resolver's outcome the MongooseIM way: an error nulls only this field
/// (the error goes to the response's `errors` with this field's path).
fn settle<T>(context: &Context<'_>, outcome: Result<T>) -> Option<T> {
    match outcome {
        Ok(value) => Some(value),
        Err(error) => {
            context.add_error(context.set_error_path(error.into_server_error(context.item.pos)));
            None
        }
    }
}

fn internal(error: impl std::fmt::Display) -> Error {
    self::error("internal_server_error", format!("Internal error: {error}"), None)
}

/// A JID (`user@domain`, normalised).
pub struct Jid(pub BareJid);

#[Scalar(name = "JID")]
impl ScalarType for Jid {
    fn parse(value: Value) -> InputValueResult<Self> {
        let Value::String(text) = &value else { return Err(InputValueError::expected_type(value)) };
        let jid: BareJid = text.parse().map_err(|_| InputValueError::custom("failed_to_parse_jid"))?;
        if jid.local().is_none() {
            return Err(InputValueError::custom("jid_without_local_part"));
        }
        Ok(Jid(jid))
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.to_string())
    }
}

/// A domain name, normalised.
pub struct DomainName(pub String);

#[Scalar(name = "DomainName")]
impl ScalarType for DomainName {
    fn parse(value: Value) -> InputValueResult<Self> {
        let Value::String(text) = &value else { return Err(InputValueError::expected_type(value)) };
        if text.is_empty() {
            return Err(InputValueError::custom("empty_domain_name"));
        }
        jid::normalise_domain(text)
            .map(|d| DomainName(d.into_owned()))
            .map_err(|_| InputValueError::custom("failed_to_parse_domain_name"))
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.clone())
    }
}

/// A user name (the part before `@`), normalised.
pub struct UserName(pub String);

#[Scalar(name = "UserName")]
impl ScalarType for UserName {
    fn parse(value: Value) -> InputValueResult<Self> {
        let Value::String(text) = &value else { return Err(InputValueError::expected_type(value)) };
        if text.is_empty() {
            return Err(InputValueError::custom("empty_user_name"));
        }
        jid::normalise_local(text)
            .map(|l| UserName(l.into_owned()))
            .map_err(|_| InputValueError::custom("failed_to_parse_user_name"))
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.clone())
    }
}

/// A string that is not empty.
pub struct NonEmptyString(pub String);

#[Scalar(name = "NonEmptyString")]
impl ScalarType for NonEmptyString {
    fn parse(value: Value) -> InputValueResult<Self> {
        match value {
            Value::String(text) if !text.is_empty() => Ok(NonEmptyString(text)),
            Value::String(_) => Err(InputValueError::custom("Given string is empty")),
            other => Err(InputValueError::expected_type(other)),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.clone())
    }
}

pub struct AdminQuery;

#[Object]
impl AdminQuery {
    /// Account management
    async fn account(&self) -> AccountAdminQuery {
        AccountAdminQuery
    }

    /// Server info and management
    async fn server(&self) -> ServerAdminQuery {
        ServerAdminQuery
    }

    /// CETS internal database management
    async fn cets(&self) -> CetsAdminQuery {
        CetsAdminQuery
    }
}

/// Allow admin to get information about CETS status
pub struct CetsAdminQuery;

#[Object(name = "CETSAdminQuery")]
impl CetsAdminQuery {
    /// Get a list of tables from the local node
    async fn table_info(&self, context: &Context<'_>) -> Option<Vec<Option<CetsTableInfo>>> {
        let admin = context.data::<Admin>().ok()?;
        let node = admin.node.as_ref()?;
        let nodes: Vec<Option<String>> =
            node.cluster_status(&admin.node_name).joined_nodes.into_iter().map(Some).collect();
        Some(
            node.table_info()
                .into_iter()
                .map(|(table, size, bytes)| {
                    Some(CetsTableInfo {
                        table_name: Some(table.name().to_owned()),
                        // MongooseIM reports ETS memory in words.
                        memory: Some((bytes / 8) as i64),
                        size: Some(size as i64),
                        nodes: Some(nodes.clone()),
                    })
                })
                .collect(),
        )
    }

    /// Get status of CETS
    async fn system_info(&self, context: &Context<'_>) -> Option<CetsSystemInfo> {
        let admin = context.data::<Admin>().ok()?;
        let info = admin.node.as_ref()?.cluster_status(&admin.node_name);
        let list = |names: Vec<String>| Some(names.into_iter().map(Some).collect::<Vec<_>>());
        Some(CetsSystemInfo {
            available_nodes: list(info.available_nodes),
            unavailable_nodes: list(info.unavailable_nodes),
            joined_nodes: list(info.joined_nodes),
            discovered_nodes: list(info.discovered_nodes),
            remote_nodes_without_disco: list(info.remote_nodes_without_disco),
            remote_nodes_with_unknown_tables: list(info.remote_nodes_with_unknown_tables),
            remote_unknown_tables: list(info.remote_unknown_tables),
            remote_nodes_with_missing_tables: list(info.remote_nodes_with_missing_tables),
            remote_missing_tables: list(info.remote_missing_tables),
            conflict_nodes: list(info.conflict_nodes),
            conflict_tables: list(info.conflict_tables),
            discovery_works: Some(info.discovery_works),
        })
    }
}

#[derive(SimpleObject)]
#[graphql(name = "CETSTableInfo")]
pub struct CetsTableInfo {
    /// ETS table name
    table_name: Option<String>,
    /// Memory (in words)
    memory: Option<i64>,
    /// Size (in records)
    size: Option<i64>,
    /// A list of clustered nodes
    nodes: Option<Vec<Option<String>>>,
}

#[derive(SimpleObject)]
#[graphql(name = "CETSSystemInfo")]
pub struct CetsSystemInfo {
    /// Available nodes (nodes that are connected to us and have the CETS disco process started)
    available_nodes: Option<Vec<Option<String>>>,
    /// Unavailable nodes (nodes that do not respond to our pings)
    unavailable_nodes: Option<Vec<Option<String>>>,
    /// Joined nodes (nodes that have our local tables running)
    joined_nodes: Option<Vec<Option<String>>>,
    /// Discovered nodes (nodes that are extracted from the discovery backend)
    discovered_nodes: Option<Vec<Option<String>>>,
    /// Nodes with stopped CETS discovery
    remote_nodes_without_disco: Option<Vec<Option<String>>>,
    /// Nodes that have more tables registered than the local node
    remote_nodes_with_unknown_tables: Option<Vec<Option<String>>>,
    /// Unknown remote tables
    remote_unknown_tables: Option<Vec<Option<String>>>,
    /// Nodes that are available, but do not host some of our local tables
    remote_nodes_with_missing_tables: Option<Vec<Option<String>>>,
    /// Missing remote tables
    remote_missing_tables: Option<Vec<Option<String>>>,
    /// Nodes that replicate at least one of our local tables to a different list of nodes
    conflict_nodes: Option<Vec<Option<String>>>,
    /// Tables that have conflicting replication destinations
    conflict_tables: Option<Vec<Option<String>>>,
    /// Returns true if the last discovery attempt is successful
    discovery_works: Option<bool>,
}

pub struct AdminMutation;

#[Object]
impl AdminMutation {
    /// Account management
    async fn account(&self) -> AccountAdminMutation {
        AccountAdminMutation
    }
}

/// Modify user payload
#[derive(SimpleObject)]
pub struct UserPayload {
    /// User JID
    jid: Jid,
    /// Result message
    message: String,
}

/// Check password correctness payload
#[derive(SimpleObject)]
pub struct CheckPasswordPayload {
    /// Status of the password correctness
    correct: bool,
    /// Result message
    message: String,
}

/// Check user existence payload
#[derive(SimpleObject)]
pub struct CheckUserPayload {
    /// Status of the user existence
    exist: bool,
    /// Result message
    message: String,
}

/// Import users payload
#[derive(SimpleObject, Default)]
#[graphql(name = "ImportPayload")]
pub struct ImportPayload {
    /// Status
    status: String,
    /// Users created
    created: Option<Vec<String>>,
    /// Users that were already existing
    existing: Option<Vec<String>>,
    /// Users there were not allowed to be created
    not_allowed: Option<Vec<String>>,
    /// Users with invalid JIDs
    #[graphql(name = "invalidJID")]
    invalid_jid: Option<Vec<String>>,
    /// Users with empty passwords
    empty_password: Option<Vec<String>>,
    /// Invalid records
    invalid_record: Option<Vec<String>>,
}

/// Allow admin to get information about accounts.
pub struct AccountAdminQuery;

#[Object]
impl AccountAdminQuery {
    /// List users per domain
    async fn list_users(&self, context: &Context<'_>, domain: DomainName) -> Option<Vec<String>> {
        settle(context, list_users_impl(context, domain))
    }

    /// Get number of users per domain
    async fn count_users(&self, context: &Context<'_>, domain: DomainName) -> Option<i64> {
        settle(context, count_users_impl(context, domain))
    }

    /// Check if a password is correct
    async fn check_password(&self, context: &Context<'_>, user: Jid, password: String) -> Option<CheckPasswordPayload> {
        settle(context, check_password_impl(context, user, password))
    }

    /// Check if a user exists
    async fn check_user(&self, context: &Context<'_>, user: Jid) -> Option<CheckUserPayload> {
        settle(context, check_user_impl(context, user))
    }
}

/// Allow admin to manage user accounts.
pub struct AccountAdminMutation;

#[Object]
impl AccountAdminMutation {
    /// Register a user. Username will be generated when skipped
    async fn register_user(
        &self,
        context: &Context<'_>,
        domain: DomainName,
        username: Option<UserName>,
        password: String,
    ) -> Option<UserPayload> {
        settle(context, register_user_impl(context, domain, username, password))
    }

    /// Remove the user's account along with all the associated personal data
    async fn remove_user(&self, context: &Context<'_>, user: Jid) -> Option<UserPayload> {
        settle(context, remove_user_impl(context, user))
    }

    /// Ban an account: kick sessions and set a random password
    async fn ban_user(&self, context: &Context<'_>, user: Jid, reason: String) -> Option<UserPayload> {
        settle(context, ban_user_impl(context, user, reason))
    }

    /// Change the password of a user
    async fn change_user_password(
        &self,
        context: &Context<'_>,
        user: Jid,
        new_password: String,
    ) -> Option<UserPayload> {
        settle(context, change_user_password_impl(context, user, new_password))
    }

    /// Import users from a CSV file
    async fn import_users(&self, context: &Context<'_>, filename: NonEmptyString) -> Option<ImportPayload> {
        settle(context, import_users_impl(context, filename))
    }
}

fn not_allowed(user: &BareJid) -> Error {
    error(
        "not_allowed",
        "User does not exist or you are not authorized properly".into(),
        Some(("jid", user.to_string())),
    )
}

/// MongooseIM's generated user names: timestamp and random parts.
fn generated_username() -> String {
    use ring::rand::SecureRandom;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut random = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut random);
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{hex}", now.as_secs(), now.subsec_micros())
}

/// Specifies status of the server
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(rename_items = "SCREAMING_SNAKE_CASE")]
pub enum StatusCode {
    /// Server is running
    Running,
    /// Server is not running
    NotRunning,
}

/// Status of the server
#[derive(SimpleObject)]
pub struct Status {
    /// Code of the status
    status_code: Option<StatusCode>,
    /// Message about the status
    message: Option<String>,
    /// Starling version
    version: Option<String>,
    /// Health of each core (Starling addition): RUNNING needs every core to answer
    /// within a second
    cores: Option<Vec<Option<CoreStatus>>>,
}

/// How one core of the node answered a health check (Starling addition)
#[derive(SimpleObject)]
pub struct CoreStatus {
    /// The core's index
    core: i32,
    /// It answered within the deadline
    healthy: bool,
    /// How long it took to answer, in microseconds (null: no answer)
    answer_microseconds: Option<i64>,
}

/// Allow admin to acquire data about the node
pub struct ServerAdminQuery;

#[Object]
impl ServerAdminQuery {
    /// Get the status of the server
    async fn status(&self, context: &Context<'_>) -> Option<Status> {
        settle(context, status_impl(context))
    }
}

// Keep the type names MongooseIM uses.
impl ImportPayload {
    pub(crate) fn completed() -> ImportPayload {
        ImportPayload { status: "Completed".into(), ..Default::default() }
    }

    pub(crate) fn record(&mut self, outcome: super::import::Outcome, text: String) {
        use super::import::Outcome;
        let list = match outcome {
            Outcome::Created => &mut self.created,
            Outcome::Existing => &mut self.existing,
            Outcome::NotAllowed => &mut self.not_allowed,
            Outcome::InvalidJid => &mut self.invalid_jid,
            Outcome::EmptyPassword => &mut self.empty_password,
            Outcome::InvalidRecord => &mut self.invalid_record,
        };
        list.get_or_insert_with(Vec::new).push(text);
    }
}

// The resolvers' bodies, returning errors for `settle`.

fn list_users_impl(context: &Context<'_>, domain: DomainName) -> Result<Vec<String>> {
    let admin = context.data::<Admin>()?;
    if !admin.serves(&domain.0) {
        return Err(error("domain_not_found", "Domain does not exist".into(), Some(("domain", domain.0))));
    }
    admin.storage().list(&domain.0).map_err(internal)
}

fn count_users_impl(context: &Context<'_>, domain: DomainName) -> Result<i64> {
    let admin = context.data::<Admin>()?;
    if !admin.serves(&domain.0) {
        return Err(error("domain_not_found", "Domain does not exist".into(), Some(("domain", domain.0))));
    }
    Ok(admin.storage().count(&domain.0).map_err(internal)? as i64)
}

fn check_password_impl(context: &Context<'_>, user: Jid, password: String) -> Result<CheckPasswordPayload> {
    let admin = context.data::<Admin>()?;
    let user = user.0;
    let stored = admin.storage().credentials(&user, starling_wire::sasl::scram::Hash::Sha256).map_err(internal)?;
    let Some(stored) = stored else {
        return Err(error(
            "user_does_not_exist",
            format!("Password {password} for user {user} is incorrect because this user does not exist"),
            Some(("jid", user.to_string())),
        ));
    };
    let correct = stored.verify_password(&password);
    let verdict = if correct { "correct" } else { "incorrect" };
    Ok(CheckPasswordPayload { correct, message: format!("Password '{password}' for user {user} is {verdict}") })
}

fn check_user_impl(context: &Context<'_>, user: Jid) -> Result<CheckUserPayload> {
    let admin = context.data::<Admin>()?;
    let exist = admin.storage().exists(&user.0).map_err(internal)?;
    let message = if exist { format!("User {} exists", user.0) } else { format!("User {} does not exist", user.0) };
    Ok(CheckUserPayload { exist, message })
}

fn remove_user_impl(context: &Context<'_>, user: Jid) -> Result<UserPayload> {
    let admin = context.data::<Admin>()?;
    let user = user.0;
    if !admin.storage().remove(&user).map_err(internal)? {
        return Err(not_allowed(&user));
    }
    if let Some(node) = &admin.node {
        node.kick(&user, StreamErrorCondition::NotAuthorized);
    }
    Ok(UserPayload { message: format!("User {user} successfully unregistered"), jid: Jid(user) })
}

fn ban_user_impl(context: &Context<'_>, user: Jid, reason: String) -> Result<UserPayload> {
    let admin = context.data::<Admin>()?;
    let user = user.0;
    let random = generated_username();
    let keys = AccountKeys::from_password(&random, admin.scram_iterations);
    if !admin.storage().set_keys(&user, &keys).map_err(internal)? {
        return Err(error(
            "user_does_not_exist",
            format!("User {user} does not exist"),
            Some(("jid", user.to_string())),
        ));
    }
    if let Some(node) = &admin.node {
        node.kick(&user, StreamErrorCondition::NotAuthorized);
    }
    Ok(UserPayload { message: format!("User {user} successfully banned with reason: {reason}"), jid: Jid(user) })
}

fn change_user_password_impl(context: &Context<'_>, user: Jid, new_password: String) -> Result<UserPayload> {
    let admin = context.data::<Admin>()?;
    let user = user.0;
    if new_password.is_empty() {
        return Err(error("empty_password", "Empty password".into(), Some(("jid", user.to_string()))));
    }
    let keys = AccountKeys::from_password(&new_password, admin.scram_iterations);
    if !admin.storage().set_keys(&user, &keys).map_err(internal)? {
        return Err(not_allowed(&user));
    }
    Ok(UserPayload { message: "Password changed".into(), jid: Jid(user) })
}

fn import_users_impl(context: &Context<'_>, filename: NonEmptyString) -> Result<ImportPayload> {
    let admin = context.data::<Admin>()?;
    let text = std::fs::read_to_string(&filename.0)
        .map_err(|_| error("file_not_found", "File not found".into(), Some(("filename", filename.0.clone()))))?;
    super::import::import(admin, &text).map_err(internal)
}

fn status_impl(context: &Context<'_>) -> Result<Status> {
    let admin = context.data::<Admin>()?;
    let version = env!("CARGO_PKG_VERSION");
    let health = admin.node.as_ref().map(|node| node.health(std::time::Duration::from_secs(1))).unwrap_or_default();
    let stuck: Vec<String> = health.iter().filter(|h| h.answered_in.is_none()).map(|h| h.core.to_string()).collect();
    let (status_code, message) = if stuck.is_empty() {
        let message = format!(
            "The node {} is started. Status: started. Starling {version} is running in that node.",
            admin.node_name
        );
        (StatusCode::Running, message)
    } else {
        let message = format!("The node {} is started, but cores {} do not answer.", admin.node_name, stuck.join(", "));
        (StatusCode::NotRunning, message)
    };
    let cores = health
        .iter()
        .map(|h| {
            Some(CoreStatus {
                core: h.core as i32,
                healthy: h.answered_in.is_some(),
                answer_microseconds: h.answered_in.map(|d| d.as_micros() as i64),
            })
        })
        .collect();
    Ok(Status {
        status_code: Some(status_code),
        message: Some(message),
        version: Some(version.to_owned()),
        cores: Some(cores),
    })
}

fn register_user_impl(
    context: &Context<'_>,
    domain: DomainName,
    username: Option<UserName>,
    password: String,
) -> Result<UserPayload> {
    let admin = context.data::<Admin>()?;
    let local = username.map(|u| u.0).unwrap_or_else(generated_username);
    let user = BareJid::new(Some(&local), &domain.0).map_err(|_| {
        error(
            "invalid_jid",
            format!("Invalid JID {local}@{}", domain.0),
            Some(("jid", format!("{local}@{}", domain.0))),
        )
    })?;
    let refuse = |reason: &str| {
        error(
            "cannot_register",
            format!("Can't register user {user} at node {}: {reason}", admin.node_name),
            Some(("jid", user.to_string())),
        )
    };
    if !admin.serves(user.domain()) {
        return Err(refuse("not_allowed"));
    }
    if password.is_empty() {
        return Err(refuse("null_password"));
    }
    let keys = AccountKeys::from_password(&password, admin.scram_iterations);
    if !admin.storage().register(&user, &keys).map_err(internal)? {
        return Err(error(
            "exists",
            format!("User {user} already registered at node {}", admin.node_name),
            Some(("jid", user.to_string())),
        ));
    }
    Ok(UserPayload { message: format!("User {user} successfully registered"), jid: Jid(user) })
}
