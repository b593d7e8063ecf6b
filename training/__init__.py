"""Time-based split, model fitting, evaluation and the MLflow registry (promotion gate)."""
