"""Analyses of a finished run directory (`raynas analyze ...`); no Ray needed."""
