package relay

// arena hands out the bytes of a round's record values and keys from a few
// allocations: chunks from arenaFirst bytes doubling to arenaMax, so a round
// of one event takes a small one, and a full round wastes at most the end of
// its last chunk and of each chunk a value's bound did not fit. It is used
// for one round only (see roomStream), by one goroutine.
type arena struct {
	buf []byte
	// next is the size of the next chunk.
	next int
	// lastCap is the capacity alloc gave, own whether it came from a chunk
	// of its own.
	lastCap int
	own     bool
}

const (
	arenaFirst = 1 << 10
	arenaMax   = 32 << 10
)

// alloc returns an empty slice with room for n bytes, to append a value of
// at most n bytes to and then pass to keep before the next alloc. A value
// larger than a quarter of the largest chunk gets an allocation of its own.
func (a *arena) alloc(n int) []byte {
	a.lastCap, a.own = n, false
	if cap(a.buf)-len(a.buf) >= n {
		return a.buf[len(a.buf) : len(a.buf) : len(a.buf)+n]
	}
	if n > arenaMax/4 {
		a.own = true
		return make([]byte, 0, n)
	}
	size := max(a.next, arenaFirst)
	for size < n {
		size *= 2
	}
	a.buf, a.next = make([]byte, 0, size), min(2*size, arenaMax)
	return a.buf[0:0:n]
}

// keep takes v, appended to what alloc returned, as used, and returns it
// with its capacity cut to its length, so that nothing appends into the next
// value. A v that outgrew alloc's room was reallocated by append and takes
// nothing of the chunk.
func (a *arena) keep(v []byte) []byte {
	if !a.own && cap(v) == a.lastCap {
		a.buf = a.buf[:len(a.buf)+len(v)]
	}
	return v[:len(v):len(v)]
}
