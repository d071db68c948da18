-- Per-node blocks of a network split by `node_blocks` (the cluster's pod network, DESIGN.md
-- §9): each block belongs to one node, which gets its ports' addresses from it, so one route
-- per block reaches a node's pods. Claimed when a node needs one, released when the node is
-- deleted and the block holds no address.
CREATE TABLE ip_blocks (
    network_id  uuid NOT NULL REFERENCES objects (id) ON DELETE CASCADE,
    block       cidr NOT NULL,
    node        text NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (network_id, block)
);
CREATE INDEX ip_blocks_node ON ip_blocks (node);
