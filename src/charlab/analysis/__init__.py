"""Statistics for evaluation results and study analysis."""
