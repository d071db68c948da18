-- What decided each rollup row, by name as it was when the controller rolled the node's window
-- up (DESIGN.md §10): the graph of a past minute names the group and rule of then (or the
-- groups that isolated the port then), also after the policy is deleted or changed. Rows
-- written before this have none, and the graph asks the policy in force for them.
ALTER TABLE flow_minutes
    ADD COLUMN group_name text,
    -- The rule's origin, as `weft flows` writes it: `NetworkPolicy default/yelb-db-in [0]`.
    ADD COLUMN origin text,
    -- A denied row's isolating groups, names joined by ", " (a group's name has no comma).
    ADD COLUMN isolated_by text;
