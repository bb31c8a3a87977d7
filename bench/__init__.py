"""The load-testing kit: `python -m bench` seeds a fresh database, serves it, loads it with wrk,
measures the SQL ceiling with pgbench, and prints one table (see bench/README.md)."""
