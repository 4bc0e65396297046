"""The groups conditions are compared in, named once for the study file, the analysis and the report.

``value``, ``neutral`` and ``control`` are what the hypotheses compare; ``base`` is the reference
inertia is measured against, and ``other`` holds conditions a study runs but leaves out of the
comparison (adapter stacks, shuffled traits, question diversity). Each condition kind says which
group its conditions fall in (``charlab.conditions.registry``); a study may override it.
"""

from __future__ import annotations

from typing import Literal, get_args

HypothesisGroup = Literal["value", "neutral", "control"]
Group = Literal[HypothesisGroup, "base", "other"]

GROUPS: tuple[Group, ...] = get_args(Group)
HYPOTHESIS_GROUPS: tuple[HypothesisGroup, ...] = get_args(HypothesisGroup)
