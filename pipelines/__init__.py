"""Runnable end-to-end pipelines built on posctx's public API: ``python -m pipelines.NAME``."""
