"""Orchestration only: each runner composes loading, collection, inference and metrics for one CLI command."""
