-- Tiered cluster policies (DESIGN.md §11): a fifth kind of object, cluster-scoped as projects
-- are (no owning project, the nil scope), so that its name is unique across the cluster.
ALTER TABLE objects DROP CONSTRAINT objects_kind_check;
ALTER TABLE objects ADD CONSTRAINT objects_kind_check
    CHECK (kind IN ('project', 'virtual-network', 'security-group', 'port', 'cluster-policy'));
ALTER TABLE objects DROP CONSTRAINT objects_check;
ALTER TABLE objects ADD CONSTRAINT objects_check
    CHECK ((kind IN ('project', 'cluster-policy')) = (project_id IS NULL));
