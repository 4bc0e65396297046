"""Which study steps are done, running, failed or pending, read from the run folder alone.

*Done* is a node step whose manifest verifies (``store.artifacts``). While a node runs it has a
state file ``RUN/study/state/<node>.json`` naming the process and host; a failure rewrites it
with the error. A state file that says running for a process that no longer exists on this host
means the run was killed there: the node is reported as *interrupted*, and a rerun redoes it.
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from charlab.costs import Cost
from charlab.io import atomic_write_json
from charlab.store import layout
from charlab.study.plan import Node


def state_file(out: Path, node: Node) -> Path:
    return layout.node_state_file(out, node.id)


def mark_running(out: Path, node: Node) -> None:
    atomic_write_json(state_file(out, node), {"id": node.id, "status": "running", "pid": os.getpid(),
                                               "host": socket.gethostname(), "started": time.time()})


def mark_failed(out: Path, node: Node, error: BaseException) -> None:
    previous = _read(state_file(out, node)) or {}
    atomic_write_json(state_file(out, node), {**previous, "id": node.id, "status": "failed", "finished": time.time(),
                                               "error": f"{type(error).__name__}: {error}",
                                               "traceback": traceback.format_exc(limit=8)})


def clear(out: Path, node: Node) -> None:
    state_file(out, node).unlink(missing_ok=True)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class NodeStatus:
    node: Node
    status: str  # done | running | interrupted | failed | pending
    detail: str  # the error, or who runs it, or when it finished


def node_status(out: Path, node: Node, done: bool, finished_at: str = "") -> NodeStatus:
    if done:
        return NodeStatus(node, "done", finished_at)
    state = _read(state_file(out, node))
    if state is None:
        return NodeStatus(node, "pending", "")
    if state.get("status") == "failed":
        return NodeStatus(node, "failed", state.get("error", ""))
    here = state.get("host") == socket.gethostname()
    if here and not _alive(int(state.get("pid", 0))):
        return NodeStatus(node, "interrupted", f"process {state.get('pid')} is gone; a rerun redoes this step")
    return NodeStatus(node, "running", f"pid {state.get('pid')} on {state.get('host')}")


def status_lines(statuses: list[NodeStatus], spent: Cost, planned: Cost) -> list[str]:
    """A Markdown table of every step, then the counts and the work done so far."""
    lines = ["| step | status | detail |", "|---|---|---|"]
    lines += [f"| {s.node.id} | {s.status} | {s.detail} |" for s in statuses]
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s.status] = counts.get(s.status, 0) + 1
    lines += ["", ", ".join(f"{n} {status}" for status, n in counts.items()),
              f"work done (planned upper bounds of finished steps): {spent.generated_tokens:,} of "
              f"{planned.generated_tokens:,} generated tokens, {spent.trained_tokens:,} of {planned.trained_tokens:,} "
              f"trained tokens, {spent.judge_calls:,} of {planned.judge_calls:,} judge calls"]
    return lines
