// Package redis is the Redis Streams backend of Pulse, registered as "redis".
package redis
