"""The character-training pipeline, one stage per module."""
