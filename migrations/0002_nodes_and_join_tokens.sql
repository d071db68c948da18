-- Nodes: each agent's identity (a credential, kept as a SHA-256 digest) and its realization
-- status. Status is not configuration: control processes write it, it has no revision and
-- never enters the change log.
CREATE TABLE nodes (
    name              text PRIMARY KEY,
    digest            bytea NOT NULL UNIQUE,
    created_at        timestamptz NOT NULL DEFAULT now(),
    -- The join token the node registered itself with, when it did.
    joined_with       uuid,
    -- Written by the control process the agent's stream is on.
    controller        text,
    connected         boolean NOT NULL DEFAULT false,
    address           text,
    agent_version     text,
    connected_at      timestamptz,
    -- Refreshed while connected: a controller that died leaves a node that stops being seen.
    last_seen         timestamptz,
    -- The last revision the agent acked, and the revision through which every update meant
    -- for it is in its datapath.
    acked_revision    bigint NOT NULL DEFAULT 0,
    acked_at          timestamptz,
    realized_revision bigint NOT NULL DEFAULT 0,
    last_error        text
);

-- Join tokens (as kubeadm's): an agent presents one with its node name, once, and receives its
-- own node credential. Kept as digests.
CREATE TABLE join_tokens (
    id          uuid PRIMARY KEY,
    digest      bytea NOT NULL UNIQUE,
    description text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
