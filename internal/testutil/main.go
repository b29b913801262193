package testutil

import (
	"fmt"
	"os"
)

// Runner is what goleak.VerifyTestMain runs (*testing.M satisfies it).
type Runner interface{ Run() int }

// AfterRun wraps m so that stop runs right after the tests, before a leak check looks at what
// is left: goleak.VerifyTestMain(testutil.AfterRun(m, "stopping the server", srv.Stop)). A
// failure of stop is reported on stderr, prefixed with what.
func AfterRun(m Runner, what string, stop func() error) Runner {
	return afterRun{m: m, what: what, stop: stop}
}

type afterRun struct {
	m    Runner
	what string
	stop func() error
}

func (r afterRun) Run() int {
	code := r.m.Run()
	if err := r.stop(); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", r.what, err)
	}
	return code
}
