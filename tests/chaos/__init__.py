"""The fault-injection suite: `make chaos` (see README, "Fault injection")."""
