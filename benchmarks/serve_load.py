"""Load test of ``contralign serve`` against a naive FastAPI server (and infinity, where it runs).

Each server runs as a subprocess on a free loopback port, on the same model:

- **ours**: ``contralign serve MODEL`` (the CLI as users start it): requests share encoder
  batches through the dynamic batcher;
- **naive**: ``benchmarks/naive_server.py``, the app a user would write themselves: a plain
  ``def`` endpoint calling ``model.encode`` per request (FastAPI runs it in its thread pool), same
  tower, same request/response bodies, same uvicorn settings;
- **infinity** (``--infinity VENV``): ``infinity_emb v2`` from a separate virtual environment on
  the same model folder, its OpenAI-style ``/embeddings``.

All servers are started first; then ``--clients`` concurrent clients (``load_clients.py``:
asyncio, one keep-alive connection each) send ``--warmup`` untimed and then ``--requests`` timed
requests each, one short text per request, to ``POST /embed`` (ours also on ``POST
/v1/embeddings``; infinity on its ``/embeddings``). The servers take turns, their order reversed
on every one of ``--repeats`` passes, so a drift in the machine's load hits them alike. A pass
stops sending after ``--time-limit`` seconds. Reported per pass: requests/s, p50/p95/p99
latency, errors (a failed request, a non-200 answer or a body without exactly one vector of the
model's width), ours' mean encoder batch (from its ``/metrics``), the CPU seconds of the server
and of the clients; then the median of the passes and ours' throughput over the others'.
``--sweep 16:0,64:5`` runs ours alone at those ``max_batch:max_wait_ms`` points (through
``create_app`` with the CLI's uvicorn settings, since the CLI has no wait option).

Texts: the distinct sentences of STS-B dev (``../shared/data``), or ``--texts titles`` for the
titles of the bundled paper corpus (no shared data needed).

Run: ``python benchmarks/serve_load.py [--clients 64] [--requests 20] [--warmup 2]
[--repeats 2] [--model NAME] [--texts sts|titles] [--servers naive,ours] [--max-batch N]
[--sweep 16:0,64:5] [--infinity /tmp/venv-inf] [--time-limit 300] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import REPO, SHARED_DATA, print_json, ratio, read_tsv  # noqa: E402
from load_clients import run_load  # noqa: E402

HERE = Path(__file__).resolve().parent
START_TIMEOUT_S = 300  # loading a model on a busy 2-core machine


class ServerFailed(RuntimeError):
    """A server that did not start."""


@dataclass
class Server:
    """How to start one server and talk to it."""

    name: str
    argv: list[str]  # "{port}" is replaced by the port
    endpoints: list[str]  # "/embed" and/or an OpenAI-style embeddings path
    model_field: str = ""  # the "model" of OpenAI-style bodies
    env: dict[str, str] = field(default_factory=dict)  # added to the server's environment
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None


@dataclass
class PassResult:
    server: str
    endpoint: str
    repeat: int
    clients: int
    requests: int  # sent (timed)
    ok: int
    errors: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    stopped_at_time_limit: bool
    mean_batch: float | None = None  # ours: items per encoder batch during the pass
    client_cpu_s: float = 0.0  # CPU time of this process (the clients) during the pass
    server_cpu_s: float = 0.0  # CPU time of the server process during the pass
    error_examples: list[str] = field(default_factory=list)


# --- texts --------------------------------------------------------------------------------


def load_texts(kind: str) -> list[str]:
    """Short real texts: STS-B dev sentences (distinct, file order) or the bundled titles."""
    if kind == "titles":
        text = (resources.files("contralign") / "resources" / "papers.jsonl").read_text("utf-8")
        return [json.loads(line)["title"] for line in text.splitlines() if line.strip()]
    if not SHARED_DATA.is_dir():
        sys.exit(f"benchmark: real data folder {SHARED_DATA} is absent; use --texts titles")
    import csv

    rows = read_tsv(SHARED_DATA / "sts" / "stsb-en-dev.tsv", quoting=csv.QUOTE_NONE)
    return list(dict.fromkeys(s for row in rows for s in (row["sentence1"], row["sentence2"])))


# --- servers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(server: Server, workdir: Path) -> None:
    """Start ``server`` on a free port and wait until ``GET /health`` answers 200.

    Raises:
        ServerFailed: the server died or did not answer in time (with its log's tail).
    """
    import httpx

    server.port = free_port()
    server.log = workdir / f"{server.name.replace(' ', '_').replace(':', '-')}.log"
    argv = [a.replace("{port}", str(server.port)) for a in server.argv]
    with open(server.log, "wb") as log:
        server.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                          cwd=REPO, start_new_session=True,
                                          env={**os.environ, **server.env})
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            if httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    stop(server)
    tail = server.log.read_text(errors="replace").splitlines()[-15:]
    raise ServerFailed(f"server {server.name} did not start ({' '.join(argv)}):\n"
                       + "\n".join(tail))


def stop(server: Server) -> None:
    """Stop the server as Ctrl-C would (uvicorn shuts down gracefully), killing it after 30 s."""
    process = server.process
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def process_cpu(server: Server) -> float:
    """CPU seconds (user + system) the server process has used so far (0 where unknown)."""
    assert server.process is not None
    try:
        fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def batch_totals(server: Server) -> tuple[float, float] | None:
    """``(items, batches)`` so far from ours' ``/metrics`` (None for other servers)."""
    import httpx

    if server.name.startswith("naive") or server.name.startswith("infinity"):
        return None
    text = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("contralign_batch_size_sum", "contralign_batch_size_count"):
            values[name] = float(value)
    if len(values) != 2:
        return None
    return values["contralign_batch_size_sum"], values["contralign_batch_size_count"]


# --- load ---------------------------------------------------------------------------------


def probe(server: Server) -> tuple[float, float, tuple[float, float] | None]:
    """``(client CPU s, server CPU s, ours' batch totals)`` now."""
    return time.process_time(), process_cpu(server), batch_totals(server)


def measure_pass(server: Server, endpoint: str, texts: list[str], args: argparse.Namespace,
                 repeat: int) -> PassResult:
    """One timed pass of ``args.clients`` x ``args.requests`` against a running server."""
    import numpy as np

    load = asyncio.run(run_load(server.port, endpoint, server.model_field, texts, args.clients,
                                args.requests, args.warmup, args.time_limit,
                                probe=lambda: probe(server)))
    (cli0, srv0, batch0), (cli1, srv1, batch1) = load.probes
    mean_batch = None
    if batch0 is not None and batch1 is not None and batch1[1] > batch0[1]:
        mean_batch = (batch1[0] - batch0[0]) / (batch1[1] - batch0[1])
    p50, p95, p99 = (np.percentile(load.latencies, [50, 95, 99]) * 1000).tolist()
    ok = len(load.latencies) - len(load.errors)
    return PassResult(
        server=server.name, endpoint=endpoint, repeat=repeat, clients=args.clients,
        requests=len(load.latencies), ok=ok, errors=len(load.errors), seconds=load.seconds,
        requests_per_s=ok / load.seconds, p50_ms=p50, p95_ms=p95, p99_ms=p99,
        stopped_at_time_limit=load.stopped_at_time_limit, mean_batch=mean_batch,
        client_cpu_s=cli1 - cli0, server_cpu_s=srv1 - srv0,
        error_examples=sorted(set(load.errors))[:3])


# --- the servers of one run ---------------------------------------------------------------


def ours(model: str, max_batch: int | None, env: dict[str, str]) -> Server:
    argv = [sys.executable, "-m", "contralign", "serve", model, "--port", "{port}"]
    if max_batch is not None:
        argv += ["--max-batch", str(max_batch)]
    return Server("ours", argv, ["/embed", "/v1/embeddings"], model_field=model, env=env)


def ours_at(model: str, max_batch: int, max_wait_ms: float, env: dict[str, str]) -> Server:
    """Ours through ``create_app`` at a batching setting the CLI does not expose."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve-app", model,
            "--port", "{port}", "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)]
    return Server(f"ours {max_batch}:{max_wait_ms:g}ms", argv, ["/embed"], model_field=model,
                  env=env)


def naive(model: str, passive: bool = False) -> Server:
    """The naive server; ``passive``: with the OpenMP wait policy ``contralign serve`` sets, so
    the comparison also holds against a naive server given the same setting."""
    argv = [sys.executable, str(HERE / "naive_server.py"), model, "--port", "{port}"]
    env = {"OMP_WAIT_POLICY": "PASSIVE"} if passive else {}
    return Server("naive (passive)" if passive else "naive", argv, ["/embed"], model_field=model,
                  env=env)


def infinity(venv: Path, folder: str, max_batch: int) -> Server:
    argv = [str(venv / "bin" / "infinity_emb"), "v2", "--model-id", folder, "--port", "{port}",
            "--host", "127.0.0.1", "--engine", "torch", "--device", "cpu",
            "--batch-size", str(max_batch), "--log-level", "warning"]
    return Server("infinity", argv, ["/embeddings"], model_field=folder)


def serve_app(args: argparse.Namespace) -> None:
    """``--serve-app``: ours through ``create_app`` with the CLI's uvicorn settings (and its
    OpenMP wait policy, set before torch loads)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import uvicorn

    from contralign.serving.app import create_app
    from contralign.serving.service import ServeSettings

    settings = ServeSettings(max_batch=args.max_batch or 64, max_wait_s=args.max_wait_ms / 1000)
    uvicorn.run(create_app(args.serve_app, None, settings), host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False)


# --- report -------------------------------------------------------------------------------


def print_table(results: list[PassResult]) -> None:
    print(f"{'server':<18} {'endpoint':<15} {'pass':>4} {'requests':>8} {'errors':>6} {'req/s':>8} "
          f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'batch':>6} {'CPU s srv/cli':>14}")
    for r in results:
        batch = f"{r.mean_batch:.1f}" if r.mean_batch is not None else "-"
        limit = "  (stopped at --time-limit)" if r.stopped_at_time_limit else ""
        print(f"{r.server:<18} {r.endpoint:<15} {r.repeat:>4} {r.requests:>8} {r.errors:>6} "
              f"{r.requests_per_s:>8.1f} {r.p50_ms:>8.1f} {r.p95_ms:>8.1f} {r.p99_ms:>8.1f} "
              f"{batch:>6} {r.server_cpu_s:>6.1f}/{r.client_cpu_s:<6.1f}{limit}")
        for example in r.error_examples:
            print(f"    error: {example}")


def summary(results: list[PassResult]) -> list[dict[str, Any]]:
    """Per server and endpoint: the median of its passes (req/s, latencies), errors summed."""
    import statistics

    groups: dict[tuple[str, str], list[PassResult]] = {}
    for r in results:
        groups.setdefault((r.server, r.endpoint), []).append(r)
    return [{"server": server, "endpoint": endpoint, "passes": len(rs),
             "requests": sum(r.requests for r in rs), "errors": sum(r.errors for r in rs),
             **{key: statistics.median(getattr(r, key) for r in rs)
                for key in ("requests_per_s", "p50_ms", "p95_ms", "p99_ms")}}
            for (server, endpoint), rs in groups.items()]


def ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Median throughput of ours (each endpoint) over naive's and infinity's."""
    by = {(row["server"], row["endpoint"]): row["requests_per_s"] for row in rows}
    out = {}
    for (name, endpoint), rps in by.items():
        if name != "ours":
            continue
        for other, path in (("naive", "/embed"), ("infinity", "/embeddings")):
            if (other, path) in by:
                out[f"ours {endpoint} / {other} {path}"] = ratio(rps, by[other, path])
    return out


def parse_sweep(text: str) -> list[tuple[int, float]]:
    points = []
    for part in filter(None, text.split(",")):
        batch, _, wait = part.partition(":")
        points.append((int(batch), float(wait or 0)))
    return points


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=20, help="timed requests per client")
    parser.add_argument("--warmup", type=int, default=2, help="untimed requests per client")
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed passes per server and endpoint (the servers alternate)")
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--texts", choices=["sts", "titles"], default="sts")
    parser.add_argument("--servers", default="naive,naive-passive,ours",
                        help="comma-separated: ours, naive, naive-passive")
    parser.add_argument("--max-batch", type=int, default=None,
                        help="ours' --max-batch (default: the CLI's)")
    parser.add_argument("--sweep", default="",
                        help="max_batch:max_wait_ms points, each a server of ours on its own")
    parser.add_argument("--infinity", type=Path, default=None,
                        help="a virtual environment where infinity-emb[server,torch] is installed")
    parser.add_argument("--time-limit", type=float, default=300,
                        help="seconds per pass after which clients stop sending")
    parser.add_argument("--ours-env", action="append", default=[], metavar="KEY=VALUE",
                        help="set in ours' environment only (e.g. OMP_WAIT_POLICY=PASSIVE)")
    parser.add_argument("--json", action="store_true")
    # Internal: ours through create_app at one setting (a subprocess of the sweep).
    parser.add_argument("--serve-app", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help=argparse.SUPPRESS)
    return parser.parse_args()


def ours_env(args: argparse.Namespace) -> dict[str, str]:
    pairs = [item.partition("=") for item in args.ours_env]
    if any(not key or not sep for key, sep, _ in pairs):
        sys.exit(f"benchmark: --ours-env: expected KEY=VALUE, got {args.ours_env}")
    return {key: value for key, _, value in pairs}


def servers_of(args: argparse.Namespace) -> tuple[list[Server], list[str]]:
    """The servers compared side by side, and notes on those that cannot run."""
    servers, notes = [], []
    for name in filter(None, args.servers.split(",")):
        match name:
            case "ours":
                servers.append(ours(args.model, args.max_batch, ours_env(args)))
            case "naive":
                servers.append(naive(args.model))
            case "naive-passive":
                servers.append(naive(args.model, passive=True))
            case _:
                sys.exit(f"benchmark: --servers: unknown server {name!r} (ours, naive, "
                         "naive-passive)")
    if args.infinity is None:
        notes.append("infinity: not run (no --infinity VENV): infinity-emb pins numpy<2, so it "
                     "does not install beside contralign; install it in a venv of its own: "
                     "pip install torch==2.13.0 'infinity-emb[server,torch]'")
    else:
        from contralign.encoders.resolve import resolve_model

        executable = args.infinity / "bin" / "infinity_emb"
        if executable.is_file():
            servers.append(infinity(args.infinity, str(resolve_model(args.model)),
                                    args.max_batch or 64))
        else:
            notes.append(f"infinity: not run: {executable} does not exist (install "
                         "infinity-emb[server,torch] in a virtual environment of its own)")
    return servers, notes


def header(args: argparse.Namespace, texts: list[str]) -> dict[str, Any]:
    import platform

    from common import cpu_model

    import contralign

    info = {"cpu": cpu_model(), "cores": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 2), "python": platform.python_version(),
            "contralign": contralign.__version__, "model": args.model,
            "clients": args.clients, "requests_per_client": args.requests,
            "ours_env": ours_env(args),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "texts": f"{len(texts)} {args.texts}"}
    print(f"machine: {info['cpu']}; {info['cores']} cores; load average (1 min) "
          f"{info['load_average_1m']}; python {info['python']}, contralign "
          f"{info['contralign']}; servers and clients share the machine")
    print(f"load: {args.clients} clients x {args.requests} requests, one text each "
          f"({info['texts']}), model {args.model}; OMP_WAIT_POLICY "
          f"{info['omp_wait_policy'] or 'unset'}; ours' extra environment {info['ours_env']}")
    return info


def side_by_side(servers: list[Server], texts: list[str], args: argparse.Namespace,
                 workdir: Path, notes: list[str]) -> list[PassResult]:
    """Start every server, then run the passes, alternating the servers' order each repeat
    (a drift in the machine's load hits all of them alike); stop them all."""
    running = []
    try:
        for server in servers:
            try:
                start(server, workdir)
                running.append(server)
            except ServerFailed as error:
                if not server.name.startswith("infinity"):
                    sys.exit(f"benchmark: {error}")
                notes.append(f"infinity: not run: {error}")
        results = []
        for repeat in range(args.repeats):
            for server in running if repeat % 2 == 0 else running[::-1]:
                results += [measure_pass(server, endpoint, texts, args, repeat)
                            for endpoint in server.endpoints]
        return results
    finally:
        for server in running:
            stop(server)


def sweep(texts: list[str], args: argparse.Namespace, workdir: Path) -> list[PassResult]:
    """Ours at each ``max_batch:max_wait_ms`` point, one server at a time."""
    results = []
    for max_batch, max_wait_ms in parse_sweep(args.sweep):
        server = ours_at(args.model, max_batch, max_wait_ms, ours_env(args))
        start(server, workdir)
        try:
            results += [measure_pass(server, "/embed", texts, args, repeat)
                        for repeat in range(args.repeats)]
        finally:
            stop(server)
    return results


def main() -> None:
    args = parse_args()
    if args.serve_app is not None:
        serve_app(args)
        return
    texts = load_texts(args.texts)
    info = header(args, texts)
    servers, notes = servers_of(args)
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        results = side_by_side(servers, texts, args, Path(tmp), notes)
        try:
            results += sweep(texts, args, Path(tmp))
        except ServerFailed as error:
            sys.exit(f"benchmark: {error}")
    print_table(results)
    rows = summary(results)
    print("median of the passes:")
    for row in rows:
        print(f"  {row['server']:<18} {row['endpoint']:<15} {row['requests_per_s']:>7.1f} req/s, "
              f"p50 {row['p50_ms']:.0f} ms, p95 {row['p95_ms']:.0f} ms, p99 {row['p99_ms']:.0f} "
              f"ms, {row['errors']} errors in {row['requests']} requests")
    for name, value in ratios(rows).items():
        print(f"throughput {name}: {value:.2f}x")
    for note in notes:
        print(note)
    if args.json:
        print_json({**info, "passes": [asdict(r) for r in results], "summary": rows,
                    "ratios": ratios(rows), "notes": notes})


if __name__ == "__main__":
    main()
