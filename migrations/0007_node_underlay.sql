-- The node's addresses on the network between nodes, as its agent says in its hello: where
-- the other nodes route this node's pods (DESIGN.md §9).
ALTER TABLE nodes ADD COLUMN underlay inet[] NOT NULL DEFAULT '{}';
