"""Hooks for tests/schemathesis.sh.

FleetLM's integers are JSON integers: `1000.0` is not an integer (docs/api.md). JSON
Schema cannot say so (it counts 1000.0 as an integer), so schemathesis would send
integral floats as valid integers; these hooks send them as integers instead.
"""
import schemathesis


def _ints(value):
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**64:
        return int(value)
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    return value


@schemathesis.hook
def map_body(context, body):
    return _ints(body)


@schemathesis.hook
def map_query(context, query):
    return _ints(query)
