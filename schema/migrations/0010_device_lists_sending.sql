-- A device-list update in a transaction being sent. The sender marks the
-- updates of a transaction before sending it and clears the marks when the
-- destination does not accept it; on acceptance the updates are deleted.
-- A mark left behind (the sender was killed mid-send, or between the
-- destination's answer and the deletion) means the destination may hold the
-- update: the user's next update names the newest such one below it as its
-- prev_id, instead of restarting the chain (prev_id []). A receiver that
-- never got it resyncs the user's devices, as the specification asks.
ALTER TABLE sender_device_lists ADD COLUMN sending boolean NOT NULL DEFAULT false;
