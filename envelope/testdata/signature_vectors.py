#!/usr/bin/env python3
"""Computes the publisher-signature test vectors of sign_test.go from the canonical form
documented in envelope/sign.go, with nothing but the Python standard library. Run it by hand
(python3 envelope/testdata/signature_vectors.py); the tests hold its output as constants and
never call Python.

Canonical text: six lines joined by "\n", no trailing newline:
    pulse-hmac-sha256-v1, schema_id, track, id (v2; empty on v1), key (empty when null),
    the payload's JSON text exactly as it is in the message with the whitespace outside
    strings removed (do not re-serialise the payload: escapes and number text stay as sent).
Signature: lower-case hex HMAC-SHA256 keyed with the token's UTF-8 bytes, in
meta.headers["signature"].
"""
import hashlib
import hmac


def strip_ws(text: str) -> str:
    """Removes JSON whitespace outside strings, leaving everything else byte for byte."""
    out, in_str, esc = [], False, False
    for ch in text:
        if in_str:
            out.append(ch)
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch in " \t\n\r":
            continue
        else:
            out.append(ch)
            if ch == '"':
                in_str = True
    return "".join(out)


def sign(token, schema_id, track, id_, key, payload_text):
    canonical = "\n".join(
        ["pulse-hmac-sha256-v1", schema_id, track, id_, key or "", strip_ws(payload_text)]
    )
    return hmac.new(token.encode("utf-8"), canonical.encode("utf-8"), hashlib.sha256).hexdigest()


TOKEN = "s3cret-publisher-token"

# v2: compact payload on the wire, non-ASCII sent as raw UTF-8.
V2_PAYLOAD = '{"coordinator_id":"café-1","queue_size":82,"capacity":100,"level":"hard","source":"store","ts":1729263600.1}'
print("v2", sign(TOKEN, "telemetry.FeedbackEvent", "v2", "01JAB0000000000000000000V2", "café-1", V2_PAYLOAD))

# v1: Python json.dumps spacing on the wire, non-ASCII escaped (ensure_ascii), key null.
V1_PAYLOAD = '{"coordinator_id": "caf\\u00e9-1", "queue_size": 82, "capacity": 100, "level": "hard", "source": "store", "ts": 1729263600.1}'
print("v1", sign(TOKEN, "telemetry.FeedbackEvent", "v1", "", None, V1_PAYLOAD))
