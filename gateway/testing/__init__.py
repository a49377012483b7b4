"""
Real servers on loopback (Prosody, ejabberd, PostgreSQL) for the demo, the
tests and the benchmarks. Configs and pitfalls follow the project's verified
notes on each server; every process starts in its own session so it can be
stopped with its children, and readiness is read from logs where a server
would otherwise keep running on a port it failed to bind.
"""
