"""The Ray executor on a local Ray instance: every node a task, the same steps and cache as the local executor."""

from __future__ import annotations

import pytest
from test_study_resume import smaller

from charlab.analysis.results import read_results
from charlab.study.run import run_study, study_status
from fake_openai import FakeOpenAI
from study_fixture import reply, write_study

pytestmark = pytest.mark.timeout(600)


def test_ray_runs_every_node_and_the_local_executor_then_finds_them_done(tmp_path, tiny_model_dir):
    ray = pytest.importorskip("ray")
    with FakeOpenAI(reply=reply) as server:
        study = write_study(tmp_path, tiny_model_dir, server.url, name="on-ray")
        smaller(study)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            done = []
            run = run_study(study, tmp_path / "run", executor="ray", cache_path=tmp_path / "cache.sqlite",
                            on_node=lambda node, ran: done.append(node.id))
        finally:
            ray.shutdown()
        assert sorted(done) == sorted(n.id for n in run.plan.nodes)
        again = []
        run_study(study, tmp_path / "run", cache_path=tmp_path / "cache.sqlite",
                  on_node=lambda node, ran: again.append(ran))
        assert again and not any(again)  # the local executor reuses every step Ray finished
    statuses, _, _ = study_status(tmp_path / "run")
    assert {s.status for s in statuses} == {"done"}
    rows = read_results(tmp_path / "run" / "results.csv")
    assert {r.condition for r in rows if r.eval == "em"} == {"base", "tiny"}
    assert (tmp_path / "run" / "report" / "report.html").is_file()
