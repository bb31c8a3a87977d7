"""The example deployment: HAProxy, two instances, PgBouncer (see stack.py and README.md)."""
