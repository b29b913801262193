// Package envconf reads typed settings from the environment and reports a bad one by name,
// value and what is accepted: the one configuration error type of Pulse's packages
// (transport, its drivers, feedback) and of the pulse command.
package envconf

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Error is a setting with a value that is not accepted. Var names the environment variable
// (or, for a setting with none, the Go field, such as feedback.Policy.Scales); Flag, when
// set, the command-line flag the value came from. Value is as given, secrets masked.
type Error struct {
	Var      string
	Flag     string
	Value    string
	Accepted string
}

func (e *Error) Error() string {
	if e.Flag != "" {
		return fmt.Sprintf("invalid --%s=%q (%s): accepted: %s", e.Flag, e.Value, e.Var, e.Accepted)
	}
	return fmt.Sprintf("invalid %s=%q: accepted: %s", e.Var, e.Value, e.Accepted)
}

// Reader reads typed variables through Lookup and keeps the first error in Err; once Err is
// set, further reads do nothing. Unset or blank variables leave the destination unchanged.
type Reader struct {
	Lookup func(string) (string, bool)
	Err    error
}

// Map is a Lookup over a fixed map.
func Map(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func (r *Reader) get(name string) (string, bool) {
	if r.Err != nil {
		return "", false
	}
	v, ok := r.Lookup(name)
	v = strings.TrimSpace(v)
	return v, ok && v != ""
}

func (r *Reader) fail(name, value, accepted string) {
	r.Err = &Error{Var: name, Value: value, Accepted: accepted}
}

// String reads a string.
func (r *Reader) String(name string, dst *string) {
	if v, ok := r.get(name); ok {
		*dst = v
	}
}

// OneOf reads a string that must be one of accepted.
func (r *Reader) OneOf(name string, dst *string, accepted ...string) {
	if v, ok := r.get(name); ok {
		for _, a := range accepted {
			if v == a {
				*dst = v
				return
			}
		}
		r.fail(name, v, strings.Join(accepted, ", "))
	}
}

// PositiveInt reads an integer ≥ 1.
func (r *Reader) PositiveInt(name string, dst *int) { r.intFrom(name, dst, 1) }

// NonNegativeInt reads an integer ≥ 0.
func (r *Reader) NonNegativeInt(name string, dst *int) { r.intFrom(name, dst, 0) }

func (r *Reader) intFrom(name string, dst *int, lo int) {
	if v, ok := r.get(name); ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < lo {
			r.fail(name, v, fmt.Sprintf("an integer ≥ %d", lo))
			return
		}
		*dst = n
	}
}

// Int64 reads an integer ≥ 0.
func (r *Reader) Int64(name string, dst *int64) {
	if v, ok := r.get(name); ok {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			r.fail(name, v, "an integer ≥ 0")
			return
		}
		*dst = n
	}
}

// Float reads a float in [lo, hi].
func (r *Reader) Float(name string, dst *float64, lo, hi float64) {
	if v, ok := r.get(name); ok {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f < lo || f > hi || f != f {
			r.fail(name, v, fmt.Sprintf("a number from %g to %g", lo, hi))
			return
		}
		*dst = f
	}
}

// Duration reads a positive Go duration.
func (r *Reader) Duration(name string, dst *time.Duration) {
	if v, ok := r.get(name); ok {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			r.fail(name, v, "a positive duration such as 500ms, 30s or 2m")
			return
		}
		*dst = d
	}
}

// Bool reads true/false (also 1/0, t/f, yes/no, on/off).
func (r *Reader) Bool(name string, dst *bool) {
	if v, ok := r.get(name); ok {
		switch strings.ToLower(v) {
		case "1", "t", "true", "yes", "y", "on":
			*dst = true
		case "0", "f", "false", "no", "n", "off":
			*dst = false
		default:
			r.fail(name, v, "true or false")
		}
	}
}
