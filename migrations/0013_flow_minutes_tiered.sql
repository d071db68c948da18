-- Rollup rows a tiered cluster policy's rule decided (DESIGN.md §10, §11): the policy and the
-- rule's place among its rules of the row's direction, and what the node enforced, named as it
-- was when the controller rolled the window up (tier, action, policy and rule names, as JSON:
-- weft_model::flow::FlowTieredRule). Rows a security group decided have none.
ALTER TABLE flow_minutes
    ADD COLUMN policy uuid,
    ADD COLUMN policy_rule integer,
    ADD COLUMN tiered jsonb;
