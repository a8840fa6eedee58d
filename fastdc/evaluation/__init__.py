"""Evaluation of learned features: clustering metrics and linear probes."""
