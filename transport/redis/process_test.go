package redis

const childEnv = "PULSE_REDIS_TEST_CHILD"

func runChild() int { return 2 }
