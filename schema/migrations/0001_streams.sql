-- The stream tables a homeserver writes (the outbox), and the relay's position.

CREATE SEQUENCE events_stream_seq;

-- Takes the transaction's xid BEFORE the stream position. The relay relies on
-- it: a position it has seen allocated belongs to a transaction that already has
-- an xid, so waiting for the in-progress xids of a snapshot covers every position
-- allocated before that snapshot.
CREATE FUNCTION fedpipe_next_stream_ordering() RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_current_xact_id();
    RETURN nextval('events_stream_seq');
END;
$$;

CREATE TABLE events (
    stream_ordering bigint PRIMARY KEY DEFAULT fedpipe_next_stream_ordering(),
    event_id        text NOT NULL UNIQUE,
    room_id         text NOT NULL,
    room_version    text NOT NULL,
    sender          text NOT NULL,
    origin          text NOT NULL,
    type            text NOT NULL,
    state_key       text,
    -- The PDU exactly as persisted: text, not jsonb, so the bytes are never re-encoded.
    json            text NOT NULL,
    inserted_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_room_stream ON events (room_id, stream_ordering);

CREATE TABLE current_state_delta_stream (
    stream_id       bigint NOT NULL,   -- the stream_ordering of the event causing it
    idx             int NOT NULL,      -- order among the deltas of one event
    room_id         text NOT NULL,
    type            text NOT NULL,
    state_key       text NOT NULL,
    event_id        text NOT NULL,     -- '' when the state entry was removed
    prev_event_id   text,
    membership      text,
    prev_membership text,
    PRIMARY KEY (stream_id, idx)
);

CREATE TABLE relay_positions (
    stream   text PRIMARY KEY,
    position bigint NOT NULL
);
