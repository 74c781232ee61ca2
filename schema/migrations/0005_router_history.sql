-- The router's membership history is pruned (consumers/router/history.go): a
-- change stored longer ago than the room topic keeps records, and superseded by
-- a later change also stored that long ago, cannot be needed by a replay. When
-- it was stored tells which changes those are; the index lets a pruning round
-- walk the old changes once, in that order.
ALTER TABLE router_membership_changes ADD COLUMN stored_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX router_membership_changes_stored_at ON router_membership_changes (stored_at, room_id, user_id, position);
