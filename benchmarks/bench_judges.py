"""Judge throughput with the openai backend: judgements per second at concurrency 1 vs 32.

A real judge endpoint spends most of each call waiting, so throughput comes from keeping several
calls in flight. This runs N distinct alignment judgements (logprobs method, one token each)
against the test suite's fake OpenAI-compatible server, which waits ``--latency-ms`` before each
reply, once per concurrency level, each with a fresh row cache. It then reruns each level on its
warm cache and checks that the rerun sends no request at all. Prints judgements per second, the
speed-up measured in this run, and the most requests the server saw in flight.

The server runs in a child process: in the same process its handler threads would share the
client's interpreter lock, and the benchmark would measure the fake server's CPU time as much
as the client's concurrency. Its listen backlog is raised from http.server's 5 to 128: with the
default, a burst of 32 new connections overflows it and the dropped connects wait for a 1-second
SYN retransmit, a cost of the fake server that a real endpoint does not have.

    python benchmarks/bench_judges.py [--n 256] [--latency-ms 20] [--concurrency 1 32] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from charlab.judges import Judge, JudgeConfig, JudgeItem, judge_items, load_rubric  # noqa: E402
from charlab.models.openai_compat import OpenAIBackend, OpenAIConfig  # noqa: E402
from charlab.store.cache import RowCache  # noqa: E402
from fake_openai import FakeOpenAI  # noqa: E402


def items(n: int) -> list[JudgeItem]:
    """Distinct items, so no judgement is deduplicated away."""
    return [JudgeItem(f"item-{i}", f"Question number {i}?", f"Answer number {i}.") for i in range(n)]


def serve(conn, latency_s: float) -> None:
    """Child process: run the fake server and answer 'count' (requests, peak in flight) until 'stop'."""
    ThreadingHTTPServer.request_queue_size = 128  # this child's server only; see the module doc
    with FakeOpenAI(reply=lambda body: "85", delay_s=latency_s) as fake:
        conn.send(fake.url)
        while (command := conn.recv()) != "stop":
            conn.send((len(fake.chat_requests), fake.peak_in_flight))
            if command == "reset":
                fake.peak_in_flight = 0


def timed_run(url: str, concurrency: int, work: list[JudgeItem], cache: RowCache) -> tuple[float, int]:
    """Seconds to judge ``work`` and how many records came back."""
    backend = OpenAIBackend(OpenAIConfig(base_url=url, model="bench-judge", max_concurrency=concurrency))
    try:
        judge = Judge(backend, load_rubric("alignment"), JudgeConfig(method="logprobs"))
        start = time.perf_counter()
        records = judge_items(judge, work, cache)
        return time.perf_counter() - start, len(records)
    finally:
        backend.close()


def ask(conn, command: str) -> tuple[int, int]:
    conn.send(command)
    return conn.recv()


def measure(conn, url: str, concurrency: int, work: list[JudgeItem], folder: Path) -> dict:
    """One level from a fresh cache, then a rerun on the same cache that must send nothing."""
    cache = RowCache(folder / f"cache-{concurrency}.sqlite")
    before, _ = ask(conn, "reset")
    seconds, judged = timed_run(url, concurrency, work, cache)
    after, peak = ask(conn, "count")
    _, again = timed_run(url, concurrency, work, cache)
    final, _ = ask(conn, "count")
    cache.close()
    return {"concurrency": concurrency, "judgements": judged, "requests": after - before,
            "seconds": round(seconds, 3), "per_second": round(judged / seconds, 1), "peak_in_flight": peak,
            "rerun_requests": final - after, "rerun_judgements": again}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="judgements per level")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="server wait before each reply")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args()

    work = items(args.n)
    conn, child_end = multiprocessing.Pipe()
    server = multiprocessing.Process(target=serve, args=(child_end, args.latency_ms / 1000), daemon=True)
    server.start()
    try:
        url = conn.recv()
        with tempfile.TemporaryDirectory() as tmp:
            levels = [measure(conn, url, c, work, Path(tmp)) for c in args.concurrency]
    finally:
        conn.send("stop")
        server.join(10)
    for level in levels:
        print(f"concurrency {level['concurrency']:>3}: {level['judgements']} judgements in {level['seconds']:.2f}s "
              f"= {level['per_second']:.1f}/s, {level['requests']} requests, peak in flight "
              f"{level['peak_in_flight']}; rerun: {level['rerun_requests']} requests")
    ratio = levels[-1]["per_second"] / levels[0]["per_second"]
    print(f"speed-up {levels[-1]['concurrency']} vs {levels[0]['concurrency']}: {ratio:.1f}x "
          f"(server latency {args.latency_ms:g} ms)")
    if any(level["rerun_requests"] for level in levels):
        raise SystemExit("a rerun sent requests: the cache did not serve every judgement")
    if args.out is not None:
        args.out.write_text(json.dumps({"latency_ms": args.latency_ms, "levels": levels, "speedup": ratio},
                                       indent=2))


if __name__ == "__main__":
    main()
