"""The study: one config, a DAG of resumable steps, local or Ray execution, and the report."""
