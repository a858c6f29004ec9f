"""Benchmarks of jaxguides against NumPyro's SVI and a hand-written JAX floor (not a test)."""
