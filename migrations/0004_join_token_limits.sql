-- Join tokens (issue 17): single use unless made for more, optionally for one node name only,
-- and revocable. A token made before this keeps the unlimited uses it was made with (NULL).
ALTER TABLE join_tokens ADD COLUMN uses integer;
ALTER TABLE join_tokens ALTER COLUMN uses SET DEFAULT 1;
ALTER TABLE join_tokens ADD COLUMN used integer NOT NULL DEFAULT 0;
ALTER TABLE join_tokens ADD COLUMN node text;
ALTER TABLE join_tokens ADD COLUMN revoked_at timestamptz;
UPDATE join_tokens t SET used = (SELECT count(*) FROM nodes n WHERE n.joined_with = t.id);
