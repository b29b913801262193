package bench

import (
	"math"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestProcCPUReadsAProcess proves the server's CPU is read from /proc: this process's own
// figure grows while it works, and agrees with getrusage to within the ticks' resolution.
func TestProcCPUReadsAProcess(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("/proc/<pid>/stat is Linux's")
	}
	before, ok := procCPU(os.Getpid())
	require.True(t, ok)
	deadline := time.Now().Add(10 * time.Second)
	x := 1
	for now, _ := procCPU(os.Getpid()); now < before+50*time.Millisecond; now, _ = procCPU(os.Getpid()) {
		require.True(t, time.Now().Before(deadline), "the process's CPU time never grew")
		for i := range 1_000_000 {
			x = x*31 + i
		}
	}
	_ = x
	got, _ := procCPU(os.Getpid())
	require.InDelta(t, float64(selfCPU()), float64(got), float64(100*time.Millisecond), "getrusage and /proc agree")
	_, ok = procCPU(-1)
	require.False(t, ok, "no such process")
}

// TestCPUCostPerMessage proves the per-message arithmetic, and that a server not read on
// either side reads as unknown rather than as zero.
func TestCPUCostPerMessage(t *testing.T) {
	from := cpuSample{client: time.Second, server: 2 * time.Second, serverOK: true}
	to := cpuSample{client: 3 * time.Second, server: 7 * time.Second, serverOK: true}
	require.Equal(t, CPUCost{Client: 2, Server: 5}, to.costSince(from, 1_000_000))
	to.serverOK = false
	c := to.costSince(from, 1_000_000)
	require.Equal(t, 2.0, c.Client)
	require.True(t, math.IsNaN(c.Server))
}

// TestReportShowsCPU proves the report's CPU block: medians per phase, "-" for a server that
// was not read, and no block for a section that measured none.
func TestReportShowsCPU(t *testing.T) {
	sec := &Section{Name: "x", Title: "t", N: 10, Rows: []*Row{
		{Name: "pulse", Pulse: true, Publish: Rate{1, 2, 3}, Consume: Rate{1, 2, 3},
			PublishCPU: []CPUCost{{1, 4}, {2, 5}, {9, 6}}, ConsumeCPU: []CPUCost{{3, math.NaN()}}},
	}}
	var b strings.Builder
	writeSection(&b, sec)
	require.Contains(t, b.String(), "CPU per message")
	require.Regexp(t, `pulse\s+2\.00 / 5\.00\s+3\.00 / -`, b.String())
	sec.Rows[0].PublishCPU, sec.Rows[0].ConsumeCPU = nil, nil
	b.Reset()
	writeSection(&b, sec)
	require.NotContains(t, b.String(), "CPU per message")
}
