-- retry_last_ts: when the sender last tried the destination and failed (unix
-- ms), as Synapse's destinations.retry_last_ts; 0 while the destination is
-- healthy. The admin API reports it (Synapse's federation admin API field) and
-- the sender writes it with the backoff. Rows backing off before this column
-- existed take their last backoff update as the best estimate.

ALTER TABLE sender_destinations ADD COLUMN retry_last_ts bigint NOT NULL DEFAULT 0;

UPDATE sender_destinations SET retry_last_ts = (extract(epoch FROM updated_at) * 1000)::bigint
    WHERE retry_interval_ms > 0;
