"""Baseline pipelines the end-to-end model is compared against (the cascade)."""
