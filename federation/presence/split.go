package presence

import "encoding/json"

// MaxStatesPerRecord and MaxRecordBytes bound one record that carries many
// states (an outbound presence record): at most this many states and, unless
// one state alone is larger, this many bytes of encoded states, half a Kafka
// topic's default 1 MiB message limit. Splitting by count alone let a few
// large status messages make a record the writer could never write.
const (
	MaxStatesPerRecord = 200
	MaxRecordBytes     = 512 << 10
)

// Split cuts states into the runs of one record each (see MaxRecordBytes), in
// order. A state larger than the bound is a run of its own: the writer
// dead-letters it if the topic cannot take it.
func Split(states []State) [][]State {
	var runs [][]State
	start, size := 0, 0
	for i, st := range states {
		n := encodedBytes(st)
		if i > start && (i-start == MaxStatesPerRecord || size+n > MaxRecordBytes) {
			runs = append(runs, states[start:i])
			start, size = i, 0
		}
		size += n
	}
	if start < len(states) {
		runs = append(runs, states[start:])
	}
	return runs
}

// encodedBytes is an upper bound of a state's size in a record (json.Marshal
// escapes more than the records' encoder does).
func encodedBytes(st State) int {
	b, err := json.Marshal(st)
	if err != nil {
		return MaxRecordBytes
	}
	return len(b) + 1
}
