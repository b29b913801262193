"""Writes the wire fixtures the way the Python market-data-core's JsonCodec writes a message.

The message is json.dumps of the envelope (", " and ": " separators, ASCII-only strings);
meta.hash is the SHA-256 of the payload's pydantic compact dump (no spaces, UTF-8), which
for these payloads is json.dumps with separators=(",", ":") and ensure_ascii=False. Only the
standard library is used, so any python3 reproduces the bytes: the tests compare them with
the fixtures in this directory (pyfixtures_test.go), and CI, which has no ../shared beside
the repository, gets its copy from here.

Usage: python3 generate.py DIR
"""

import hashlib
import json
import os
import sys


def compact_hash(payload):
    dump = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(dump.encode("utf-8")).hexdigest()


def message(ts, key, schema_id, payload):
    return {
        "ts": ts,
        "key": key,
        "meta": {"schema_id": schema_id, "track": "v1", "headers": {}, "hash": compact_hash(payload)},
        "payload": payload,
    }


def feedback(queue_size, level, ts):
    return {"coordinator_id": "bars_1", "queue_size": queue_size, "capacity": 100,
            "level": level, "source": "store", "ts": ts}


# The Python Store hands a finished envelope to bus.publish, which wraps it again.
inner = {
    "id": "",
    "key": "bars_1",
    "ts": 1760812500.1,
    "meta": {"schema_id": "telemetry.FeedbackEvent", "track": "v1",
             "headers": {"reason": "high_watermark", "utilization": "0.850000"}, "hash": None},
    "payload": feedback(85, "soft", 1760812500.05),
}

FIXTURES = {
    "v1-feedback-hard.json": message(1760812345.712345, "bars_1", "telemetry.FeedbackEvent",
                                     feedback(85, "hard", 1760812345.6789)),
    "v1-feedback-ok-null-key.json": message(1760812399.3, None, "telemetry.FeedbackEvent",
                                            feedback(40, "ok", 1760812399.25)),
    "v1-rate-adjustment.json": message(1760812346.51, "ibkr", "telemetry.RateAdjustment",
                                       {"provider": "ibkr", "scale": 0.5, "reason": "soft", "ts": 1760812346.5}),
    "v1-store-double-wrapped.json": message(1760812500.11, "bars_1", "events.envelope.EventEnvelope", inner),
}


def main(out):
    os.makedirs(out, exist_ok=True)
    for name, msg in FIXTURES.items():
        with open(os.path.join(out, name), "w", encoding="ascii", newline="\n") as f:
            f.write(json.dumps(msg) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
