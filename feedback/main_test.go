package feedback_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any test leaves a goroutine behind (Watermarks' publisher,
// a Consumer's subscription, a Bus).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func nan() float64 { var zero float64; return zero / zero }
