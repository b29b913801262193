package app

// The drivers pulse can use, registered with transport by importing them (database/sql
// style). The names they register are EVENT_BUS_BACKEND's accepted values.
import (
	_ "github.com/pulse-bus/pulse/transport/inmem"
	_ "github.com/pulse-bus/pulse/transport/jetstream"
	_ "github.com/pulse-bus/pulse/transport/redis"
)
