"""The `search` stage: Optuna samplers driven by Ray Tune, the candidate archive, the Pareto front."""
