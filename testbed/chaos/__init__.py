"""The fault-injection suite: `make chaos` (see docs/testing.md, "Fault injection")."""
