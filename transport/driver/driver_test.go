package driver_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pulse-bus/pulse/transport/driver"
)

// TestDeliveryHeaders proves that Header, HasHeaders and HeaderMap read a delivery's headers
// alike in either form a driver may give them, a map or name, value pairs, and that a later
// pair of a name wins, as it would in a map.
func TestDeliveryHeaders(t *testing.T) {
	tests := []struct {
		name string
		d    driver.Delivery
		want map[string]string
	}{
		{name: "none", d: driver.Delivery{}},
		{name: "a map", d: driver.Delivery{Message: driver.Message{Headers: map[string]string{"a": "1", "b": "2"}}}, want: map[string]string{"a": "1", "b": "2"}},
		{name: "pairs", d: driver.Delivery{HeaderFields: []string{"a", "1", "b", "2"}}, want: map[string]string{"a": "1", "b": "2"}},
		{name: "a later pair wins", d: driver.Delivery{HeaderFields: []string{"a", "1", "b", "2", "a", "3"}}, want: map[string]string{"a": "3", "b": "2"}},
		{name: "an empty value", d: driver.Delivery{HeaderFields: []string{"a", ""}}, want: map[string]string{"a": ""}},
		{name: "a map before pairs", d: driver.Delivery{Message: driver.Message{Headers: map[string]string{"a": "1"}}, HeaderFields: []string{"a", "2"}}, want: map[string]string{"a": "1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, len(tc.want) > 0, tc.d.HasHeaders())
			require.Equal(t, tc.want, tc.d.HeaderMap())
			for k, v := range tc.want {
				require.Equal(t, v, tc.d.Header(k), "header %s", k)
			}
			require.Empty(t, tc.d.Header("missing"))
		})
	}
}
