package queue

// An operator's signals (consumers/sender.ControlListener, from the admin API):
// they have already changed the destination's row in the store; these make
// the member that owns the destination act on it now instead of at its next
// read of the store. They return at once; a destination this member does not
// own is ignored.

// ResetBackoff wakes dest for a catch-up, which reads its backoff from the
// store (cleared by the operator) and sends what it missed, then what is queued.
func (m *Manager) ResetBackoff(dest string) { m.wakeFromStore(dest) }

// SetPaused stops sending to dest after the transaction in flight (true: what
// is queued is recorded for catch-up or dropped, as while backing off), or
// wakes it to send again (false).
func (m *Manager) SetPaused(dest string, paused bool) {
	if !paused {
		m.wakeFromStore(dest)
		return
	}
	m.mu.Lock()
	d, ok := m.dests[dest]
	m.mu.Unlock()
	if !ok {
		return // nothing in memory: the store's pause is read on first use
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	r := d.retry
	r.Paused = true
	d.setRetry(r)
	d.behind = true
}

// CatchUp makes dest catch up from the store before it sends live again:
// at once when no worker runs, else once the running one is done (dest is
// behind: new PDUs go to the store meanwhile).
func (m *Manager) CatchUp(dest string) {
	m.mu.Lock()
	d, ok := m.dests[dest]
	m.mu.Unlock()
	if ok {
		d.mu.Lock()
		d.behind = true
		d.seen = nil // a resend lowers what it accepted: read again
		d.mu.Unlock()
	}
	m.wakeFromStore(dest)
}

// wakeFromStore starts a catch-up worker for dest if this member owns it and
// none runs (a running one reads the store at its next catch-up).
func (m *Manager) wakeFromStore(dest string) {
	if d, idle := m.claim(dest); d != nil {
		_ = d.launch(idle) // fails only when Run is ending
	}
}
