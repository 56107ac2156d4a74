"""Helpers shared by the tests and the benchmarks: real files, real models, no fakes."""
