-- Per-minute rollups of the nodes' flow windows (DESIGN.md §10): what each node's ports did
-- in a minute, summed per key without source ports, kept for the flow retention (--flow-
-- retention, 7 days by default). A controller writes a node's minute whole, replacing what
-- was there (a window an agent sent again is counted once). `project` is the local port's,
-- `remote_project` the remote end's when it is a port: a project reader sees rows naming its
-- project. The graph and the per-rule hit counts read these.
CREATE TABLE flow_minutes (
    minute timestamptz NOT NULL,
    node text NOT NULL,
    port uuid NOT NULL,
    project text NOT NULL,
    ingress boolean NOT NULL,
    remote inet,
    remote_port uuid,
    remote_project text,
    protocol integer NOT NULL,
    service integer,
    denied boolean NOT NULL,
    grp uuid,
    rule uuid,
    isolated boolean NOT NULL,
    started bigint NOT NULL,
    ended bigint NOT NULL,
    packets_sent bigint NOT NULL,
    bytes_sent bigint NOT NULL,
    packets_received bigint NOT NULL,
    bytes_received bigint NOT NULL,
    sampled bigint NOT NULL,
    -- A port chain's drops in the minute (its counter), on the row with no remote.
    dropped bigint NOT NULL DEFAULT 0
);
CREATE INDEX flow_minutes_node ON flow_minutes (minute, node);
CREATE INDEX flow_minutes_project ON flow_minutes (project, minute);
CREATE INDEX flow_minutes_remote_project ON flow_minutes (remote_project, minute);
CREATE INDEX flow_minutes_rule ON flow_minutes (grp, minute);
