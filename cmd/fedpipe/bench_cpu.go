package main

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cpuSample is where the machine's CPU time had gone at one moment: this
// process's, the local PostgreSQL server processes', and the machine's busy
// and total time (/proc/stat). Figures /proc does not give are 0.
type cpuSample struct {
	process, postgres, busy, total time.Duration
}

// clockTick is the kernel's USER_HZ, the unit of /proc's CPU times: 100 on
// every Linux architecture Go runs on.
const clockTick = time.Second / 100

func sampleCPU() cpuSample {
	var s cpuSample
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		s.process = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	s.postgres = postgresCPU()
	if f, err := os.Open("/proc/stat"); err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		if sc.Scan() {
			fields := strings.Fields(sc.Text()) // cpu user nice system idle iowait irq softirq steal …
			for i, v := range fields[1:] {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil || i >= 8 {
					break
				}
				s.total += time.Duration(n) * clockTick
				if i != 3 && i != 4 { // idle, iowait
					s.busy += time.Duration(n) * clockTick
				}
			}
		}
	}
	return s
}

// postgresCPU is the CPU time of the processes named postgres on this
// machine: every local server's backends and workers, whoever they serve
// (so run nothing else beside a measurement); those that ended within the
// measurement are not counted.
func postgresCPU() time.Duration {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var sum time.Duration
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// pid (comm) state ppid … utime(14) stime(15): comm may hold spaces.
		open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
		if open < 0 || end < open || string(b[open+1:end]) != "postgres" {
			continue
		}
		f := strings.Fields(string(b[end+1:]))
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		sum += time.Duration(u+st) * clockTick
	}
	return sum
}

// cpuUse is what a measurement cost in CPU, from two samples.
type cpuUse struct {
	// Process and Postgres are CPU time spent by this process (stages,
	// broker and receivers when in process) and by local PostgreSQL
	// processes; Busy is the machine's busy share of its CPU time (1: every
	// core busy all along).
	Process, Postgres time.Duration
	Busy              float64
}

func (a cpuSample) until(b cpuSample) cpuUse {
	u := cpuUse{Process: b.process - a.process, Postgres: max(0, b.postgres-a.postgres)}
	if t := b.total - a.total; t > 0 {
		u.Busy = float64(b.busy-a.busy) / float64(t)
	}
	return u
}
