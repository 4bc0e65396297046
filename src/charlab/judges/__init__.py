"""Judges: numeric and categorical LLM judges over versioned rubrics, plus an explicit heuristic.

- ``rubrics``: rubric files (project YAML, upstream ``judge_prompts`` YAML), ``name@hash`` ids
- ``scoring``: pure parsing: logprob-weighted means, sampled numbers, labels
- ``protocol``: ``JudgeItem`` and ``ItemJudge``, what every kind of judge offers its callers
- ``judge``: ``Judge`` (backend + rubric), ``judge_items`` through the row cache
- ``records``: the judge record contract and the ``ParseReport`` of failures by reason
- ``heuristic``: ``KeywordRefusalJudge``, a cheap refusal detector chosen explicitly
- ``agreement``: accuracy, Cohen's kappa and confusion matrix between two record files
"""

from charlab.judges.agreement import Agreement, cohen_kappa, compare_files
from charlab.judges.heuristic import KeywordRefusalJudge
from charlab.judges.judge import Judge, JudgeConfig, JudgeSpec, judge_items, load_items
from charlab.judges.protocol import ItemJudge, JudgeItem
from charlab.judges.records import JudgeRecord, JudgeRecords, ParseReport, read_judge_records, write_judge_records
from charlab.judges.rubrics import Rubric, load_rubric, load_upstream_rubrics, shipped_rubrics

__all__ = [
    "Agreement", "ItemJudge", "Judge", "JudgeConfig", "JudgeItem", "JudgeRecord", "JudgeRecords", "JudgeSpec",
    "KeywordRefusalJudge", "ParseReport", "Rubric", "cohen_kappa", "compare_files", "judge_items", "load_items",
    "load_rubric", "load_upstream_rubrics", "read_judge_records", "shipped_rubrics", "write_judge_records",
]
