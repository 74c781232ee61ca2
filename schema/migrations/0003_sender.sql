-- The sender's durable state: per-destination backoff, and per (destination,
-- room) the latest event a backing-off destination missed, for catch-up.

CREATE TABLE sender_destinations (
    destination              text PRIMARY KEY,
    retry_interval_ms        bigint NOT NULL DEFAULT 0,   -- 0: healthy
    next_attempt_ms          bigint NOT NULL DEFAULT 0,   -- unix ms, jitter included
    failure_ts               bigint,                      -- unix ms the current run of failures began; NULL when healthy
    last_successful_position bigint,                      -- newest stream position in a transaction the destination accepted
    paused                   boolean NOT NULL DEFAULT false, -- set by an operator: nothing is sent, PDUs are recorded for catch-up
    updated_at               timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sender_catchup (
    destination text NOT NULL,
    room_id     text NOT NULL,
    position    bigint NOT NULL,
    event_id    text NOT NULL,
    PRIMARY KEY (destination, room_id)
);
