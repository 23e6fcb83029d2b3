"""Supernet training on Ray Train workers: subnet sampling, schedule, checkpoints, the loop."""
