package envelope

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestPyFloatFastPath proves that appendPyFloat's positional fast path (strconv 'f' plus ".0"
// for integral values, 1e-4 <= |v| < 1e16) writes exactly what the general digits-and-exponent
// layout writes, over the range's edges, powers of ten, integers, timestamps, and 800,000
// values random in bits, in magnitude and as integers; and that Python's known reprs come out.
func TestPyFloatFastPath(t *testing.T) {
	vals := []float64{1e-4, 1e16, 0.1, 0.5, 1, 2, 10, 100, 123456789, 1e15, 9999999999999998,
		1760812345.712345, 1729263600.1, 0.3, 1.0 / 3, 2.0 / 3, math.Pi, 5e-324, math.MaxFloat64}
	for _, edge := range []float64{1e-4, 1e16} {
		v := edge
		for range 50 {
			vals = append(vals, v, math.Nextafter(edge, 0))
			v = math.Nextafter(v, math.Inf(1))
		}
		v = edge
		for range 50 {
			v = math.Nextafter(v, 0)
			vals = append(vals, v)
		}
	}
	for p := -6; p <= 17; p++ {
		vals = append(vals, math.Pow10(p), 3*math.Pow10(p), 0.5*math.Pow10(p))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200_000 {
		switch v := math.Float64frombits(rng.Uint64()); {
		case !math.IsNaN(v) && !math.IsInf(v, 0):
			vals = append(vals, v)
		}
		vals = append(vals, math.Pow(10, -5+22*rng.Float64()), float64(rng.Int64N(1<<53)), float64(rng.Int64N(1e6))/1e3)
	}
	var got []byte
	inRange := 0
	for _, v := range vals {
		for _, v := range []float64{v, -v} {
			if v == 0 {
				continue
			}
			var err error
			got, err = appendPyFloat(got[:0], v)
			require.NoError(t, err)
			if want := appendPyFloatGeneral(nil, v); string(got) != string(want) {
				require.Equal(t, string(want), string(got), "%b", v)
			}
			if a := math.Abs(v); a >= 1e-4 && a < 1e16 {
				inRange++
			}
		}
	}
	require.Greater(t, inRange, 1_000_000)
	for v, want := range map[float64]string{1e-4: "0.0001", 1e16: "1e+16", 1e15: "1000000000000000.0",
		0.1: "0.1", -2: "-2.0", 1760812345.712345: "1760812345.712345", 9.99e-5: "9.99e-05", 1.5e16: "1.5e+16"} {
		got, err := appendPyFloat(nil, v)
		require.NoError(t, err)
		require.Equal(t, want, string(got))
	}
}

// BenchmarkPyFloat writes an envelope timestamp the way Encode does (the fast path), and
// BenchmarkPyFloatGeneral the same value through the digits-and-exponent layout.
func BenchmarkPyFloat(b *testing.B) {
	buf := make([]byte, 0, 32)
	for b.Loop() {
		buf, _ = appendPyFloat(buf[:0], 1760812345.712345)
	}
}

func BenchmarkPyFloatGeneral(b *testing.B) {
	buf := make([]byte, 0, 32)
	for b.Loop() {
		buf = appendPyFloatGeneral(buf[:0], 1760812345.712345)
	}
}
