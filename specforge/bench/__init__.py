"""Benchmarks: acceptance and speed measured on real engines, written as JSON."""
