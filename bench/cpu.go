package bench

import (
	"math"
	"os"
	"strconv"
	"strings"
	"time"
)

// CPUCost is what one phase cost in CPU time per message, in microseconds: Client is this
// process's, with the child programs it waited for in the phase (nats bench, whose figure so
// includes its start, a few milliseconds), and Server the broker's processes' (NaN when they
// cannot be read, or the broker runs inside this process, where Client holds it). On this
// 2-core machine throughput swings ±10–20% from run to run while CPU per message barely moves,
// so it tells which side a change saved work on: the pull size of the JetStream driver was
// found with it.
type CPUCost struct{ Client, Server float64 }

// cpuSample is the CPU time used so far by this process (and its waited-for children) and by
// the server processes.
type cpuSample struct {
	client, server time.Duration
	serverOK       bool
}

// sampleCPU reads the CPU time of this process and of the server processes pids.
func sampleCPU(pids []int) cpuSample {
	s := cpuSample{client: selfCPU(), serverOK: len(pids) > 0}
	for _, pid := range pids {
		d, ok := procCPU(pid)
		s.server += d
		s.serverOK = s.serverOK && ok
	}
	return s
}

// costSince is the CPU per message of n messages between from and s.
func (s cpuSample) costSince(from cpuSample, n int) CPUCost {
	per := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) / float64(max(n, 1)) }
	c := CPUCost{Client: per(s.client - from.client), Server: math.NaN()}
	if s.serverOK && from.serverOK {
		c.Server = per(s.server - from.server)
	}
	return c
}

// procCPU reads a process's user and system time from /proc/<pid>/stat (Linux), in clock
// ticks of 1/100 s (USER_HZ, 100 on every Linux architecture Go runs on).
func procCPU(pid int) (time.Duration, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	// The fields after the command name, which is in parentheses and may hold spaces: state
	// is the first, utime and stime the 12th and 13th.
	stat := string(b)
	end := strings.LastIndexByte(stat, ')')
	if end < 0 {
		return 0, false
	}
	f := strings.Fields(stat[end+1:])
	if len(f) < 13 {
		return 0, false
	}
	user, err1 := strconv.ParseInt(f[11], 10, 64)
	sys, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(user+sys) * 10 * time.Millisecond, true
}
