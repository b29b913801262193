package bench

// The Pulse drivers measured here register themselves on import, as in an application. A
// driver not imported (not written yet) leaves its contender "unavailable" in the report.
import ()
