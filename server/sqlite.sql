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
