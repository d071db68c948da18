-- A node's block may be the cluster's assignment (Kubernetes' Node.spec.podCIDRs, which
-- kube-manager passes on) rather than one weft claimed: a node with an assigned block of a
-- family gets that family's addresses only from its assigned blocks, and never claims one.
-- Assigned blocks stay when the weft node is deleted (the assignment is the cluster's, and
-- kube-manager withdraws it when the Kubernetes Node goes).
ALTER TABLE ip_blocks ADD COLUMN assigned boolean NOT NULL DEFAULT false;
