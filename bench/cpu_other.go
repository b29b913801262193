//go:build !unix

package bench

import "time"

// selfCPU is not measured here: every cost reads 0.
func selfCPU() time.Duration { return 0 }
