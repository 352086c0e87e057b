"""Retrieval experiments: M-BEIR and MMEB harnesses, metrics and reports."""
