"""Helpers shared by the tests and the benchmarks: test checkpoints, a local Hub, model folders, servers, the browser."""
