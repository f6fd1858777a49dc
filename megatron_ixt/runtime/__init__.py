"""Distributed initialisation, the parallel layout, and the CPU compatibility layer."""
