-- Per (destination, room): the greatest stream position of our PDUs of the
-- room the destination accepted (Synapse's destination_rooms). The sender
-- does not send a PDU at or below it again: a replay of the room or outbound
-- topic, or the records a crash left uncommitted, re-send nothing the
-- destination has. Written with each accepted transaction; lowered by
-- `fedpipe resend` (the remote lost data). One row per room a destination
-- shares with us; a row not updated for longer than the topics' retention
-- can be deleted (no replay reaches back that far).
CREATE TABLE sender_destination_rooms (
    destination    text NOT NULL,
    room_id        text NOT NULL,
    acked_position bigint NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (destination, room_id)
);
