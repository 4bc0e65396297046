"""Run folders, manifests and the row-level SQLite cache."""
