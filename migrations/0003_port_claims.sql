-- What a port claims on the datapath, each claim unique (issue 17). The agent identifies peers
-- by address and dispatches by it on a node, and binds a port's anti-spoofing to its host-side
-- interface: a port that could take another's address or interface could take its traffic or
-- cut it off. `ip_allocations` stays what IPAM hands out per network; these are global.

-- An address belongs to at most one port, whatever network (or none) it is on.
CREATE TABLE port_addresses (
    address     inet PRIMARY KEY,
    port_id     uuid NOT NULL REFERENCES objects (id) ON DELETE CASCADE
);
CREATE INDEX port_addresses_port ON port_addresses (port_id);

-- Ports written before this migration claim their addresses, the oldest first; a later port
-- that shares one keeps its row, the compiler refuses to dispatch the address and says so,
-- and the port's next write must give it up.
INSERT INTO port_addresses (address, port_id)
SELECT DISTINCT ON (a.address) a.address, o.id
FROM objects o, LATERAL (SELECT json_array_elements_text(o.body -> 'ips')::inet AS address) a
WHERE o.kind = 'port'
ORDER BY a.address, o.created_at, o.id;

-- A host-side interface belongs to at most one port of a node. The name is the port's own or
-- the one derived from its identity (a hash weft computes), so rows of ports written before
-- this migration are added by `weft server` at start (Store::claim_interfaces).
CREATE TABLE port_interfaces (
    node        text NOT NULL,
    interface   text NOT NULL,
    port_id     uuid NOT NULL REFERENCES objects (id) ON DELETE CASCADE,
    PRIMARY KEY (node, interface)
);
CREATE INDEX port_interfaces_port ON port_interfaces (port_id);

-- What each agent refuses to enforce as asked (a port's interface it will not bind), as it
-- said with its last good ack: shown by `weft node list` and `weft wait`.
ALTER TABLE nodes ADD COLUMN problems jsonb NOT NULL DEFAULT '[]';
