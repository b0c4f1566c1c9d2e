-- Starling schema for PostgreSQL. Applied on start when missing; every statement is
-- idempotent. Same tables as sqlite.sql.

CREATE TABLE IF NOT EXISTS users (
    server            TEXT    NOT NULL,
    username          TEXT    NOT NULL,
    iterations        INTEGER NOT NULL,
    sha1_salt         BYTEA   NOT NULL,
    sha1_stored_key   BYTEA   NOT NULL,
    sha1_server_key   BYTEA   NOT NULL,
    sha256_salt       BYTEA   NOT NULL,
    sha256_stored_key BYTEA   NOT NULL,
    sha256_server_key BYTEA   NOT NULL,
    created_at        BIGINT  NOT NULL,
    PRIMARY KEY (server, username)
);

CREATE TABLE IF NOT EXISTS secrets (
    name  TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);

-- Cluster discovery: MongooseIM's table, unchanged.
CREATE TABLE IF NOT EXISTS discovery_nodes (
    node_name         VARCHAR(250),
    cluster_name      VARCHAR(250),
    updated_timestamp BIGINT NOT NULL,
    node_num          INT NOT NULL,
    address           VARCHAR(250) NOT NULL DEFAULT '',
    PRIMARY KEY (node_name)
);
CREATE UNIQUE INDEX IF NOT EXISTS i_discovery_nodes_node_num ON discovery_nodes USING BTREE(cluster_name, node_num);

-- Rosters (RFC 6121 section 2); groups joined with U+001F.
CREATE TABLE IF NOT EXISTS rosterusers (
    server       TEXT    NOT NULL,
    username     TEXT    NOT NULL,
    jid          TEXT    NOT NULL,
    name         TEXT    NOT NULL DEFAULT '',
    subscription TEXT    NOT NULL DEFAULT 'none',
    ask          BOOLEAN NOT NULL DEFAULT FALSE,
    pending_in   BOOLEAN NOT NULL DEFAULT FALSE,
    approved     BOOLEAN NOT NULL DEFAULT FALSE,
    visible      BOOLEAN NOT NULL DEFAULT TRUE,
    groups       TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (server, username, jid)
);

CREATE TABLE IF NOT EXISTS roster_version (
    server   TEXT   NOT NULL,
    username TEXT   NOT NULL,
    version  BIGINT NOT NULL,
    PRIMARY KEY (server, username)
);

CREATE TABLE IF NOT EXISTS blocking (
    server   TEXT   NOT NULL,
    username TEXT   NOT NULL,
    jid      TEXT   NOT NULL,
    added_at BIGINT NOT NULL,
    PRIMARY KEY (server, username, jid)
);

CREATE TABLE IF NOT EXISTS offline_message (
    id         BIGSERIAL PRIMARY KEY,
    server     TEXT   NOT NULL,
    username   TEXT   NOT NULL,
    stanza     BYTEA  NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS i_offline_message_user ON offline_message (server, username, id);

CREATE TABLE IF NOT EXISTS account_data (
    server   TEXT  NOT NULL,
    username TEXT  NOT NULL,
    kind     TEXT  NOT NULL,
    key      TEXT  NOT NULL,
    value    BYTEA NOT NULL,
    PRIMARY KEY (server, username, kind, key)
);

CREATE TABLE IF NOT EXISTS mam_message (
    server       TEXT   NOT NULL,
    username     TEXT   NOT NULL,
    id           BIGINT NOT NULL,
    timestamp_us BIGINT NOT NULL,
    remote_bare  TEXT   NOT NULL,
    stanza       BYTEA  NOT NULL,
    PRIMARY KEY (server, username, id)
);
CREATE INDEX IF NOT EXISTS i_mam_message_with ON mam_message (server, username, remote_bare, id);

CREATE TABLE IF NOT EXISTS pep_node (
    server       TEXT NOT NULL,
    username     TEXT NOT NULL,
    node         TEXT NOT NULL,
    access_model TEXT NOT NULL,
    PRIMARY KEY (server, username, node)
);
CREATE TABLE IF NOT EXISTS pep_item (
    server       TEXT   NOT NULL,
    username     TEXT   NOT NULL,
    node         TEXT   NOT NULL,
    item_id      TEXT   NOT NULL,
    payload      BYTEA  NOT NULL,
    published_us BIGINT NOT NULL,
    PRIMARY KEY (server, username, node, item_id)
);

CREATE TABLE IF NOT EXISTS registration_address (
    address       TEXT   PRIMARY KEY,
    registered_at BIGINT NOT NULL
);

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
