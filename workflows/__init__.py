"""Deterministic Temporal workflows, one module per process."""
