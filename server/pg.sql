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
