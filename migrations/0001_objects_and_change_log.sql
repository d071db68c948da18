-- weft's configuration: one table for the four resources, the references between them, the
-- change log, IPAM allocations and API tokens. crates/weft-store/src/lib.rs explains how
-- revisions are assigned and how followers read the change log without ever skipping one.

-- Revision numbers: one per write transaction, taken as its last step. Rolled-back
-- transactions leave gaps.
CREATE SEQUENCE revisions AS bigint MINVALUE 1;

CREATE TABLE revision_state (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- Entries with revision <= compacted are gone from `changes`.
    compacted   bigint NOT NULL
);
INSERT INTO revision_state (singleton, compacted) VALUES (true, 0);

CREATE TABLE objects (
    id          uuid PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('project', 'virtual-network', 'security-group', 'port')),
    -- The owning project; NULL for projects themselves.
    project_id  uuid REFERENCES objects (id),
    -- project_id, or the nil UUID for projects: the uniqueness and paging scope of `name`.
    scope       uuid NOT NULL,
    name        text NOT NULL,
    labels      jsonb NOT NULL DEFAULT '{}',
    -- The resource as served, without id, revision and timestamps (kept in columns). `json`,
    -- not `jsonb`: it keeps the field order and is returned without re-encoding.
    body        json NOT NULL,
    revision    bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'project') = (project_id IS NULL))
);
CREATE UNIQUE INDEX objects_name ON objects (kind, scope, name);
CREATE INDEX objects_project ON objects (project_id);
CREATE INDEX objects_labels ON objects USING gin (labels jsonb_path_ops);

-- References that must stay valid: port -> network, port -> security group, security group
-- (rule remote) -> security group. Deleting a referenced object fails; deleting the referrer
-- removes its references.
CREATE TABLE refs (
    from_id     uuid NOT NULL REFERENCES objects (id) ON DELETE CASCADE,
    to_id       uuid NOT NULL REFERENCES objects (id),
    PRIMARY KEY (from_id, to_id)
);
CREATE INDEX refs_to ON refs (to_id);

-- Addresses held by ports on virtual networks. The primary key makes a double allocation
-- impossible; deleting the port releases its addresses.
CREATE TABLE ip_allocations (
    network_id  uuid NOT NULL REFERENCES objects (id),
    address     inet NOT NULL,
    port_id     uuid NOT NULL REFERENCES objects (id) ON DELETE CASCADE,
    PRIMARY KEY (network_id, address)
);
CREATE INDEX ip_allocations_port ON ip_allocations (port_id);

-- The change log: one revision per transaction, one row per object it wrote.
CREATE TABLE changes (
    revision     bigint NOT NULL,
    seq          integer NOT NULL,
    kind         text NOT NULL,
    id           uuid NOT NULL,
    op           text NOT NULL CHECK (op IN ('put', 'delete')),
    -- The object's body (as in `objects`) after a put; its last state for a delete.
    body         json NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (revision, seq)
);

-- API bearer tokens, kept only as SHA-256 digests.
CREATE TABLE tokens (
    id          uuid PRIMARY KEY,
    digest      bytea NOT NULL UNIQUE,
    role        text NOT NULL CHECK (role IN ('admin', 'reader', 'writer')),
    project     text,
    description text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz,
    CHECK ((role = 'admin') = (project IS NULL))
);
