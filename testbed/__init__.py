"""The real services on real or private stacks, driven by the tests, `make chaos` and `make bench`."""
