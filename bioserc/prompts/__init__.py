"""Prompt builders, one module per task, each with its own version string (part of every cache key)."""
