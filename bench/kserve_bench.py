#!/usr/bin/env python3
"""KServe v2 throughput of ovms against Triton and MLServer, same models, same run, alternating servers.

Starts ovms (the project's .venv), Triton 2.51 (the ``tritonserver`` binary in the nvidia-pytriton wheel, python
backend identity models) and MLServer 1.7.1 (a plain Python identity runtime) on 127.0.0.1, one after the other,
each with two models: ``identity16`` FP32 [1,16] and ``image`` FP32 [1,3,224,224], INPUT0 -> OUTPUT0.
Then for every point (workload, protocol, concurrency) it drives each server in turn, waiting for every server to
go idle first, and prints a markdown table with the ratio ovms/Triton (also saved under bench/results/).

Clients, none written here:
  pa      perf_analyzer from the tritonclient 2.51.0 wheel (-s 50 --max-trials 3 -x 1, binary tensors over HTTP).
          It asks the server for Triton's ModelConfig, which MLServer does not have ("Method not found"), so
          MLServer gets no pa number; over HTTP it also needs GET /v2/models/<m>/stats.
  h2load  (gRPC) replays one pre-encoded ModelInferRequest frame, -m 1 per connection: all three servers.
  wrk     (HTTP) posts one pre-encoded KServe JSON body: all three servers; (httpbin) the same tensor with the
          binary-data extension in and out: ovms and Triton (MLServer has no binary extension).

Peers come from bench/.venv-peers (run bench/setup_peers.sh once). Every process started here is stopped on exit,
Ctrl+C or error; every wait is bounded.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import pathlib
import platform
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time

from bench_clients import (Result, binary_body, check_grpc_frame, json_body, model_infer_frame,
                           perf_analyzer_binary, run_h2load, run_perf_analyzer, run_wrk, sample)
from bench_servers import PEERS_PYTHON, SERVER_CLASSES, WORKLOADS, Server, Triton, http_status, wait_all_idle

BENCH = pathlib.Path(__file__).resolve().parent
PROTOCOLS = ("grpc", "http", "httpbin")
CONCURRENCY = (1, 8, 32)
SERVERS = ("ovms", "triton", "mlserver")

# -------------------------------------------------------------------------------------------------------- table

def fmt(r: Result | None) -> str:
    if r is None:
        return "-"
    if r.value is None:
        return f"n/a ({r.note})" if r.note else "n/a"
    text = f"{r.value:,.0f}"
    return f"{text} ({r.note})" if r.note else text


def ratio(a: Result | None, b: Result | None) -> str:
    if not a or not b or not a.value or not b.value:
        return "-"
    return f"{a.value / b.value:.2f}x"


def table(points, results, servers, clients) -> str:
    """results[(model, protocol, concurrency, client, server)] -> Result (median over passes)."""
    load = {"grpc": "h2load", "http": "wrk JSON", "httpbin": "wrk binary"}
    both = {"ovms", "triton"} <= set(servers)
    columns = []  # (header, cell(model, protocol, c))
    for client in clients:
        get = lambda m, p, c, s, client=client: results.get((m, p, c, client, s))  # noqa: E731
        for s in servers:
            if client == "pa" and s == "mlserver":
                continue  # no ModelConfig RPC: perf_analyzer cannot drive MLServer
            columns.append((f"{s} ({client})", lambda m, p, c, s=s, get=get: fmt(get(m, p, c, s))))
        if both:
            columns.append((f"ovms/Triton ({client})",
                            lambda m, p, c, get=get: ratio(get(m, p, c, "ovms"), get(m, p, c, "triton"))))
    head = ["workload", "protocol" + (" (load)" if "load" in clients else ""), "c"] + [h for h, _ in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, protocol, c in points:
        if not any(k[:3] == (model, protocol, c) for k in results):
            continue  # not reached (interrupted)
        shape = "[" + ",".join(map(str, WORKLOADS[model])) + "] FP32"
        proto = f"{protocol} ({load[protocol]})" if "load" in clients else protocol
        lines.append("| " + " | ".join([shape, proto, str(c)] + [cell(model, protocol, c) for _, cell in columns])
                     + " |")
    return "\n".join(lines)


def machine() -> str:
    cpu = ""
    with contextlib.suppress(OSError):
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "")
    return f"{os.cpu_count()} cores ({cpu or platform.processor()}), {platform.system()} {platform.release()}"


# --------------------------------------------------------------------------------------------------------- main

def parse_only(tokens: list[str]):
    """`--only grpc,c8,identity16,pa`: protocol, concurrency (cN), workload, client (pa|load); OR within a kind,
    AND across kinds."""
    kinds: dict[str, set] = {}
    for tok in (t.strip() for t in ",".join(tokens).split(",") if t.strip()):
        if tok in PROTOCOLS:
            kinds.setdefault("protocol", set()).add(tok)
        elif re.fullmatch(r"c\d+", tok):
            kinds.setdefault("c", set()).add(int(tok[1:]))
        elif tok in WORKLOADS:
            kinds.setdefault("model", set()).add(tok)
        elif tok in ("pa", "load"):
            kinds.setdefault("client", set()).add(tok)
        else:
            raise SystemExit(f"--only: unknown token {tok!r} (use grpc|http|httpbin, c1|c8|c32, "
                             f"{'|'.join(WORKLOADS)}, pa|load)")
    return kinds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: one short point per server ([1,16] gRPC c=8, 2 s windows)")
    ap.add_argument("--servers", default=",".join(SERVERS), help="comma list of ovms,ovms-aio,triton,mlserver")
    ap.add_argument("--only", action="append", default=[], metavar="TOKENS",
                    help="restrict points, e.g. grpc,c8,identity16,pa (OR within a kind, AND across kinds)")
    ap.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)), help="comma list (default 1,8,32)")
    ap.add_argument("--interval-ms", type=int, default=5000, help="perf_analyzer measurement window (-p)")
    ap.add_argument("--seconds", type=int, default=5, help="h2load / wrk duration per point")
    ap.add_argument("--passes", type=int, default=1, help="alternating passes per point; the median is reported")
    ap.add_argument("--triton-instances", type=int, default=2, help="instance_group count of the Triton models")
    ap.add_argument("--ovms-grpc-workers", type=int, default=None,
                    help="ovms --grpc_workers (server processes sharing the gRPC port); default: 1 for ovms "
                         "(--grpc_server native: one process was faster than two on 2 cores) and 2 for ovms-aio")
    ap.add_argument("--ready-timeout", type=float, default=180)
    ap.add_argument("--idle-timeout", type=float, default=30)
    ap.add_argument("--keep", action="store_true", help="keep the work dir (server logs, client logs)")
    args = ap.parse_args(argv)

    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for s in servers:
        if s not in SERVER_CLASSES:
            raise SystemExit(f"--servers: unknown server {s!r} (use {','.join(SERVER_CLASSES)})")
    only = parse_only(args.only)
    conc = [int(c) for c in args.concurrency.split(",")]
    if args.quick:
        points = [("identity16", "grpc", 8)]
        args.interval_ms, args.seconds = min(args.interval_ms, 2000), min(args.seconds, 3)
    else:
        points = [(m, p, c) for m in WORKLOADS for p in PROTOCOLS for c in conc]
    points = [(m, p, c) for m, p, c in points if m in only.get("model", {m}) and p in only.get("protocol", {p})
              and c in only.get("c", {c})]
    clients = [c for c in ("pa", "load") if c in only.get("client", {c})]
    if "triton" in servers or "mlserver" in servers or "pa" in clients:
        if not PEERS_PYTHON.exists():
            raise SystemExit(f"{PEERS_PYTHON} missing: run bench/setup_peers.sh first")
    for tool in (["h2load"] if "load" in clients and any(p == "grpc" for _, p, _ in points) else []) + \
            (["wrk"] if "load" in clients and any(p == "http" for _, p, _ in points) else []):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} missing: run bench/setup_peers.sh first")

    # SIGTERM / SIGHUP behave like Ctrl+C: unwind through the finally that stops the servers. SIGINT is set too:
    # a background job of a non-interactive shell inherits it ignored, and Python would keep it ignored.
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="kserve_bench-"))
    started: list[Server] = []
    results: dict = {}
    samples: dict = {}
    try:
        pa = perf_analyzer_binary() if "pa" in clients else None
        payloads = {}
        for model, shape in WORKLOADS.items():
            data = sample(shape)
            frame = workdir / f"{model}.grpc"
            frame.write_bytes(model_infer_frame(model, data))
            body = workdir / f"{model}.json"
            body.write_bytes(json_body(data))
            binary, header_length = binary_body(data)
            (workdir / f"{model}.bin").write_bytes(binary)
            payloads[model] = (frame, body, data.nbytes, workdir / f"{model}.bin", header_length)
        by_name = {}
        for name in servers:
            server = Triton(workdir, instances=args.triton_instances) if name == "triton" \
                else SERVER_CLASSES[name](workdir)
            if name.startswith("ovms") and args.ovms_grpc_workers is not None:
                server.grpc_workers = args.ovms_grpc_workers
            started.append(server)
            t0 = time.monotonic()
            print(f"starting {name} (gRPC {server.grpc_port}, HTTP {server.http_port}) ...", file=sys.stderr)
            server.start(ready_timeout=args.ready_timeout)
            print(f"  {name} ready in {time.monotonic() - t0:.1f}s", file=sys.stderr)
            by_name[name] = server
        for name, server in by_name.items():
            for model, (frame, body, nbytes, _, _) in payloads.items():
                check_grpc_frame(server.grpc_port, frame.read_bytes(), nbytes)
                status = http_status(f"{server.http_url}/v2/models/{model}/infer", body=body.read_bytes(),
                                     headers={"Content-Type": "application/json"}, timeout=30)
                if status != 200:
                    raise RuntimeError(f"{name}: JSON infer on {model} answered HTTP {status}")

        for pass_no in range(args.passes):
            for model, protocol, c in points:
                frame, body, _, binary, header_length = payloads[model]
                for client in clients:
                    # Alternate the server order each pass so no server always runs right after another.
                    order = servers if pass_no % 2 == 0 else servers[::-1]
                    for name in order:
                        if name == "mlserver" and (client == "pa" or protocol == "httpbin"):
                            continue  # no ModelConfig RPC (perf_analyzer), no binary extension
                        if client == "pa" and protocol == "httpbin":
                            continue  # perf_analyzer's HTTP already sends binary tensors: the http row
                        server = by_name[name]
                        waited = wait_all_idle(by_name.values(), timeout=args.idle_timeout)
                        cpu0, t0 = server.cpu_seconds(), time.monotonic()
                        label = f"{model} {protocol} c={c} {client} {name}"
                        if client == "pa":
                            r = run_perf_analyzer(pa, server, model, protocol, c, interval_ms=args.interval_ms,
                                                  workdir=workdir)
                        elif protocol == "grpc":
                            r = run_h2load(server, model, frame, c, seconds=args.seconds, workdir=workdir)
                        elif protocol == "httpbin":
                            r = run_wrk(server, model, binary, c, seconds=args.seconds, workdir=workdir,
                                        header_length=header_length)
                        else:
                            r = run_wrk(server, model, body, c, seconds=args.seconds, workdir=workdir)
                        if server.proc.poll() is not None:
                            r = Result(None, f"server died (exit {server.proc.returncode})")
                            print(f"{name} died; log tail:\n{server.log_tail()}", file=sys.stderr)
                        # Server CPU over the whole client run (incl. perf_analyzer's warm-up): where the cores went.
                        r.server_cpu = (server.cpu_seconds() - cpu0) / (time.monotonic() - t0)
                        print(f"  {label}: {fmt(r)} infer/s, server CPU {r.server_cpu:.0%} of a core "
                              f"(idle wait {waited:.1f}s)", file=sys.stderr)
                        samples.setdefault((model, protocol, c, client, name), []).append(r)
    except KeyboardInterrupt:
        print("interrupted: stopping servers", file=sys.stderr)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second Ctrl+C must not skip the cleanup
            signal.signal(sig, signal.SIG_IGN)
        for server in reversed(started):
            server.stop()

    for key, rs in samples.items():
        values = [r.value for r in rs if r.value is not None]
        notes = sorted({r.note for r in rs if r.note})
        results[key] = Result(statistics.median(values) if values else None, "; ".join(notes))
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"KServe v2 infer/s, {stamp}, {machine()}"
           + (" -- SMOKE RUN (--quick)" if args.quick else "")
           + f"; pa windows {args.interval_ms} ms, h2load/wrk {args.seconds} s, {args.passes} pass(es)", "",
           table(points, results, servers, clients)]
    text = "\n".join(out)
    print(text)
    results_dir = BENCH / "results"
    results_dir.mkdir(exist_ok=True)
    name = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    (results_dir / f"{name}.md").write_text(text + "\n")
    (results_dir / f"{name}.json").write_text(json.dumps(
        [{"model": k[0], "protocol": k[1], "concurrency": k[2], "client": k[3], "server": k[4],
          "samples": [r.value for r in v], "notes": [r.note for r in v],
          "server_cpu_cores": [round(r.server_cpu, 3) for r in v]} for k, v in samples.items()], indent=1))
    if args.keep:
        print(f"work dir kept: {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if samples else 1


if __name__ == "__main__":
    sys.exit(main())
