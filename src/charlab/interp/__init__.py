"""Interpretability instruments: role sets and activation directions such as the assistant axis."""
