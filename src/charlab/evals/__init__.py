"""Behavioural evaluations of a model under test: answers, judgements, tidy results with intervals."""
