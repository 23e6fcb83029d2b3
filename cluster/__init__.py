"""Cluster definitions, placement policy and job submission."""
