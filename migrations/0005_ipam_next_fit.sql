-- IPAM at cluster scale (issue 20). An allocation reads a page of a subnet's index from a
-- cursor that moves on past each address it hands out (next fit), never the network's whole
-- allocation: its cost does not grow with the addresses held. And an address released is not
-- handed out again for a grace period: conntrack and neighbour entries on other nodes may
-- still point at it.

-- Where each subnet's next allocation starts looking.
CREATE TABLE ipam_cursors (
    network_id  uuid NOT NULL REFERENCES objects (id) ON DELETE CASCADE,
    subnet      cidr NOT NULL,
    next        inet NOT NULL,
    PRIMARY KEY (network_id, subnet)
);

-- When each address of a network was last released. A row outlives its grace period
-- harmlessly (allocation skips only recent ones); there is at most one per address.
CREATE TABLE ip_released (
    network_id  uuid NOT NULL REFERENCES objects (id) ON DELETE CASCADE,
    address     inet NOT NULL,
    released_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (network_id, address)
);

-- Every way an allocation goes (a port deleted, a port that changes its addresses, a cascade)
-- records its release: one trigger, rather than each path remembering to.
CREATE FUNCTION ip_allocation_released() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ip_released (network_id, address) VALUES (OLD.network_id, OLD.address)
    ON CONFLICT (network_id, address) DO UPDATE SET released_at = now();
    RETURN NULL;
END
$$;

CREATE TRIGGER ip_allocations_released AFTER DELETE ON ip_allocations
    FOR EACH ROW EXECUTE FUNCTION ip_allocation_released();
