"""Code that runs inside Ray workers: data, train loops, evaluators."""
