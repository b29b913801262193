package envconf

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestReaderParsesAndReportsTheFirstBadValue proves each typed reader accepts its valid forms,
// leaves the destination alone when the variable is unset or blank, and reports a bad value as
// an *Error naming the variable, the value and what is accepted — only the first one.
func TestReaderParsesAndReportsTheFirstBadValue(t *testing.T) {
	r := Reader{Lookup: Map(map[string]string{
		"S": "x", "ONE": "b", "N": "3", "I": "0", "F": "0.5", "D": "2s", "B": "on", "BLANK": "  ",
	})}
	s, one, n, i, f, d, b, blank := "", "a", 0, int64(7), 0.0, time.Duration(0), false, "keep"
	r.String("S", &s)
	r.OneOf("ONE", &one, "a", "b")
	r.PositiveInt("N", &n)
	r.Int64("I", &i)
	r.Float("F", &f, 0, 1)
	r.Duration("D", &d)
	r.Bool("B", &b)
	r.String("BLANK", &blank)
	r.String("UNSET", &blank)
	require.NoError(t, r.Err)
	require.Equal(t, []any{"x", "b", 3, int64(0), 0.5, 2 * time.Second, true, "keep"}, []any{s, one, n, i, f, d, b, blank})

	for _, tc := range []struct {
		name, value, accepted string
		read                  func(*Reader)
	}{
		{"ONE", "c", "a, b", func(r *Reader) { var v string; r.OneOf("ONE", &v, "a", "b") }},
		{"N", "0", "an integer ≥ 1", func(r *Reader) { var v int; r.PositiveInt("N", &v) }},
		{"I", "-1", "an integer ≥ 0", func(r *Reader) { var v int64; r.Int64("I", &v) }},
		{"F", "1.5", "a number from 0 to 1", func(r *Reader) { var v float64; r.Float("F", &v, 0, 1) }},
		{"F", "NaN", "a number from 0 to 1", func(r *Reader) { var v float64; r.Float("F", &v, 0, 1) }},
		{"D", "-2s", "a positive duration such as 500ms, 30s or 2m", func(r *Reader) { var v time.Duration; r.Duration("D", &v) }},
		{"B", "maybe", "true or false", func(r *Reader) { var v bool; r.Bool("B", &v) }},
	} {
		t.Run(tc.name+"="+tc.value, func(t *testing.T) {
			r := Reader{Lookup: Map(map[string]string{tc.name: tc.value, "LATER": "0"})}
			tc.read(&r)
			later := 5
			r.PositiveInt("LATER", &later) // ignored: the first error stands
			var e *Error
			require.True(t, errors.As(r.Err, &e), "got %v", r.Err)
			require.Equal(t, Error{Var: tc.name, Value: tc.value, Accepted: tc.accepted}, *e)
			require.Equal(t, 5, later)
			require.Contains(t, e.Error(), tc.name)
		})
	}
}
