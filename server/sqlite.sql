-- Starling schema for SQLite (the embedded default). Applied on start when missing;
-- every statement is idempotent.

-- Accounts. Passwords are never stored: only SCRAM keys (RFC 5802) for SHA-1 and
-- SHA-256, each with its own salt, and one PBKDF2 iteration count.
CREATE TABLE IF NOT EXISTS users (
    server            TEXT    NOT NULL,
    username          TEXT    NOT NULL,
    iterations        INTEGER NOT NULL,
    sha1_salt         BLOB    NOT NULL,
    sha1_stored_key   BLOB    NOT NULL,
    sha1_server_key   BLOB    NOT NULL,
    sha256_salt       BLOB    NOT NULL,
    sha256_stored_key BLOB    NOT NULL,
    sha256_server_key BLOB    NOT NULL,
    created_at        INTEGER NOT NULL,
    PRIMARY KEY (server, username)
) WITHOUT ROWID;

-- Node-wide secrets that must survive restarts (the decoy-credentials key).
CREATE TABLE IF NOT EXISTS secrets (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;

-- Cluster discovery (MongooseIM's table, unchanged): one row per live node.
CREATE TABLE IF NOT EXISTS discovery_nodes (
    node_name         VARCHAR(250) NOT NULL,
    cluster_name      VARCHAR(250) NOT NULL,
    updated_timestamp BIGINT       NOT NULL,
    node_num          INT          NOT NULL,
    address           VARCHAR(250) NOT NULL DEFAULT '',
    PRIMARY KEY (node_name)
);
CREATE UNIQUE INDEX IF NOT EXISTS i_discovery_nodes_node_num ON discovery_nodes (cluster_name, node_num);

-- Rosters (RFC 6121 section 2). One row per contact; `visible` is 0 for a contact known
-- only by a pending inbound subscription request. Groups are joined with U+001F, a
-- character XML cannot carry.
CREATE TABLE IF NOT EXISTS rosterusers (
    server       TEXT    NOT NULL,
    username     TEXT    NOT NULL,
    jid          TEXT    NOT NULL,
    name         TEXT    NOT NULL DEFAULT '',
    subscription TEXT    NOT NULL DEFAULT 'none',
    ask          INTEGER NOT NULL DEFAULT 0,
    pending_in   INTEGER NOT NULL DEFAULT 0,
    approved     INTEGER NOT NULL DEFAULT 0,
    visible      INTEGER NOT NULL DEFAULT 1,
    groups       TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (server, username, jid)
) WITHOUT ROWID;

-- Roster versions (XEP-0237): a counter per account.
CREATE TABLE IF NOT EXISTS roster_version (
    server   TEXT    NOT NULL,
    username TEXT    NOT NULL,
    version  INTEGER NOT NULL,
    PRIMARY KEY (server, username)
) WITHOUT ROWID;

-- Block lists (XEP-0191).
CREATE TABLE IF NOT EXISTS blocking (
    server   TEXT    NOT NULL,
    username TEXT    NOT NULL,
    jid      TEXT    NOT NULL,
    added_at INTEGER NOT NULL,
    PRIMARY KEY (server, username, jid)
) WITHOUT ROWID;

-- Offline messages (XEP-0160), delivered and deleted at the next available presence.
CREATE TABLE IF NOT EXISTS offline_message (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    server     TEXT    NOT NULL,
    username   TEXT    NOT NULL,
    stanza     BLOB    NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS i_offline_message_user ON offline_message (server, username, id);

-- Per-account XML documents: vCard (XEP-0054), private XML (XEP-0049), last activity
-- (XEP-0012), archive preferences (XEP-0313).
CREATE TABLE IF NOT EXISTS account_data (
    server   TEXT NOT NULL,
    username TEXT NOT NULL,
    kind     TEXT NOT NULL,
    key      TEXT NOT NULL,
    value    BLOB NOT NULL,
    PRIMARY KEY (server, username, kind, key)
) WITHOUT ROWID;

-- Message archive (XEP-0313). `id` embeds the node number, so ids from every node of
-- a cluster are unique in one archive and grow with time.
CREATE TABLE IF NOT EXISTS mam_message (
    server       TEXT    NOT NULL,
    username     TEXT    NOT NULL,
    id           INTEGER NOT NULL,
    timestamp_us INTEGER NOT NULL,
    remote_bare  TEXT    NOT NULL,
    stanza       BLOB    NOT NULL,
    PRIMARY KEY (server, username, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS i_mam_message_with ON mam_message (server, username, remote_bare, id);

-- Personal eventing (XEP-0163): nodes with their access model, and their items.
CREATE TABLE IF NOT EXISTS pep_node (
    server       TEXT NOT NULL,
    username     TEXT NOT NULL,
    node         TEXT NOT NULL,
    access_model TEXT NOT NULL,
    PRIMARY KEY (server, username, node)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pep_item (
    server       TEXT    NOT NULL,
    username     TEXT    NOT NULL,
    node         TEXT    NOT NULL,
    item_id      TEXT    NOT NULL,
    payload      BLOB    NOT NULL,
    published_us INTEGER NOT NULL,
    PRIMARY KEY (server, username, node, item_id)
) WITHOUT ROWID;

-- In-band registrations (XEP-0077) per client address, for the rate limit.
CREATE TABLE IF NOT EXISTS registration_address (
    address       TEXT    PRIMARY KEY,
    registered_at INTEGER NOT NULL
) WITHOUT ROWID;

-- XEP-0484 FAST tokens, MongooseIM's mod_fast_auth_token table. The token columns
-- hold token ids, not tokens: a token is derived from its id with the node's secret
-- (`secrets`, name 'fast'), so this table alone logs nobody in. `new_*` is the last
-- token issued, `current_*` the one before it (accepted until the client uses the
-- new one or it expires). Expiry in seconds since the UNIX epoch.
CREATE TABLE IF NOT EXISTS fast_auth_token (
    server         TEXT   NOT NULL,
    username       TEXT   NOT NULL,
    user_agent_id  TEXT   NOT NULL,
    current_token  TEXT,
    current_expire BIGINT,
    new_token      TEXT,
    new_expire     BIGINT,
    PRIMARY KEY (server, username, user_agent_id)
);
