"""Many cameras, one Triton server -> benchmarks/results/serving.{md,json}.

``make results-serving`` runs it. Two ``prn-serve`` servers of the same exported model run side by
side on loopback, one with dynamic batching and one without (``--no-dynamic-batching``: each request
runs as it came). N camera clients (threads of this process, each a ``prn-inspect --server`` camera
loop: its own gRPC connection, :class:`~prn_edge.runtime.pipeline.Pipeline` over a
:class:`~prn_edge.runtime.backends.triton.TritonEngine`, one frame at a time, the next sent when the
last is decided) send a bounded number of real frames. Rounds interleave every client count, both
servers (in alternating order) and one local camera loop (the same Pipeline over the local ONNX
Runtime engine: what one ``prn-inspect`` process runs per frame), so drift of a noisy machine falls
on all of them alike. Reported per setting: throughput (median over rounds), latency p50/p99 (every
request of every round), and the batches Triton formed (from its statistics endpoint, per run).

    python benchmarks/serving.py --model runs/serving/model --frames ../shared/data/mvtec_ad/bottle/test \
        [--clients 1,2,4,8,16] [--requests 96] [--rounds 3] [--threads 2] [--max-batch 8]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
NONE = "none"   # the server without dynamic batching; the others are "dynamic@<queue delay>us"


def mode_key(queue_delay_us: int) -> str:
    return f"dynamic@{queue_delay_us}us"


def mode_label(key: str) -> str:
    if key == NONE:
        return "no dynamic batching"
    return f"dynamic batching, {int(key[len('dynamic@'):-2]) / 1000:g} ms queue delay"
# The goal of issue 15 on a 2-core machine, at 8 clients.
GOAL_CLIENTS, GOAL_RATIO, GOAL_P99_FACTOR = 8, 1.3, 4.0
CAMERA_FPS = 30


def _relative(path) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(path)


def _counts(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected client counts like 1,2,4,8, got {text!r}")
    return sorted(set(values))


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (linear interpolation), as numpy's default."""
    import numpy as np

    return float(np.percentile(np.asarray(values, float), q))


def batch_counts(before: dict, after: dict) -> dict[int, int]:
    """Executions per batch size between two of Triton's model statistics."""
    def table(stats):
        return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}
    old, new = table(before), table(after)
    return {size: new[size] - old.get(size, 0) for size in sorted(new) if new[size] - old.get(size, 0) > 0}


def run_clients(url: str, frames: list, clients: int, requests: int) -> dict:
    """``clients`` camera loops against ``url``, ``requests`` frames in all; wall time and latencies."""
    from prn_edge.runtime.backends.triton import TritonEngine
    from prn_edge.runtime.pipeline import Pipeline

    pipelines = [Pipeline(TritonEngine(url)) for _ in range(clients)]
    share = [requests // clients + (i < requests % clients) for i in range(clients)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    decisions: list[list[bool]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    start = threading.Barrier(clients + 1)

    def camera(i: int) -> None:
        try:
            start.wait()
            for k in range(share[i]):
                t = time.perf_counter()
                detection = pipelines[i](frames[(i * 7 + k) % len(frames)])
                latencies[i].append(time.perf_counter() - t)
                decisions[i].append(bool(detection.anomalous))
        except BaseException as exc:   # reported below, after every thread has ended
            errors.append(exc)

    threads = [threading.Thread(target=camera, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for p in pipelines:
        p.engine.close()
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]!r}")
    flat = [x for xs in latencies for x in xs]
    return {"seconds": wall, "requests": len(flat), "latencies": flat, "anomalous": sum(map(sum, decisions))}


def run_local(pipeline, frames: list, requests: int) -> dict:
    """One local camera loop (what one prn-inspect process runs per frame)."""
    latencies = []
    t0 = time.perf_counter()
    for k in range(requests):
        t = time.perf_counter()
        pipeline(frames[k % len(frames)])
        latencies.append(time.perf_counter() - t)
    return {"seconds": time.perf_counter() - t0, "requests": requests, "latencies": latencies}


def time_engine(pipeline, images, batch: int, requests: int) -> float:
    """Milliseconds per image of ``pipeline.judge`` on prepared images in batches of ``batch``."""
    done, t0 = 0, time.perf_counter()
    while done < requests:
        pipeline.judge(images[:batch])
        done += batch
    return 1e3 * (time.perf_counter() - t0) / done


def summarise(runs: list[dict]) -> dict:
    """Median throughput over rounds; latency percentiles over every request; batches summed."""
    lat = [x for r in runs for x in r["latencies"]]
    out = {"rounds": len(runs), "requests": sum(r["requests"] for r in runs),
           "img_per_s": statistics.median(r["requests"] / r["seconds"] for r in runs),
           "img_per_s_rounds": [round(r["requests"] / r["seconds"], 3) for r in runs],
           "latency_ms": {"p50": 1e3 * percentile(lat, 50), "p90": 1e3 * percentile(lat, 90),
                          "p99": 1e3 * percentile(lat, 99), "max": 1e3 * max(lat)}}
    if "batches" in runs[0]:
        batches: dict[int, int] = {}
        for r in runs:
            for size, n in r["batches"].items():
                batches[size] = batches.get(size, 0) + n
        executions = sum(batches.values())
        out["batches"] = {str(k): v for k, v in sorted(batches.items())}
        out["mean_batch"] = sum(k * v for k, v in batches.items()) / executions if executions else 0.0
    return out


def gpu_on_paper(path: Path) -> list[dict]:
    """Cameras at 30 FPS per GPU server from the committed H200 measurement (compute only, batch 8)."""
    if not path.is_file():
        return []
    gpu = json.loads(path.read_text())
    rows = []
    for key, ms in sorted(gpu.get("predict_ms", {}).items()):
        engine, _, batch = key.partition("@b")
        per_image = ms / int(batch)
        rows.append({"gpu": gpu.get("gpu"), "engine": engine, "batch": int(batch), "ms_per_batch": round(ms, 3),
                     "img_per_s": round(1e3 / per_image, 1), "cameras": int(1e3 / per_image // CAMERA_FPS)})
    return rows


def verdict(summary: dict, clients: list[int]) -> dict:
    """The goal at 8 clients (or the most measured), for each dynamic-batching server."""
    n = GOAL_CLIENTS if GOAL_CLIENTS in clients else max(clients)
    none = summary[NONE][str(n)]
    single = min(summary[m][str(min(clients))]["latency_ms"]["p50"] for m in summary)
    out = {"clients": n, "single_client_p50_ms": single, "servers": {}}
    for m, by_clients in summary.items():
        if m == NONE:
            continue
        dyn = by_clients[str(n)]
        ratio = dyn["img_per_s"] / none["img_per_s"]
        out["servers"][m] = {"throughput_ratio": ratio, "p99_ms": dyn["latency_ms"]["p99"],
                             "p99_over_single": dyn["latency_ms"]["p99"] / single,
                             "met": ratio >= GOAL_RATIO and dyn["latency_ms"]["p99"] < GOAL_P99_FACTOR * single}
    return out


def render(result: dict) -> str:
    from prn_edge.provenance import provenance_line

    s, a, v, local = result["summary"], result["settings"], result["verdict"], result["local"]
    lines = [
        "<!-- written by benchmarks/serving.py; do not edit by hand -->",
        "# Many cameras, one Triton server",
        "",
        f"Reproduce: `make results-serving` (this run: `{result['command']}`). Model: `{result['model']}` "
        f"({result['image_size']}px input, checkpoint sha256 `{result['checkpoint_sha256'][:12]}`), served by "
        f"`prn-serve` (PyTriton {result['pytriton']}'s tritonserver, ONNX Runtime FP32 on the CPU with "
        f"{a['threads']} thread(s) that do not spin between ops, one instance, batches up to {a['max_batch']}) "
        f"{len(s)} times, side by side on loopback: with dynamic batching (preferred batch sizes {a['preferred']}) "
        f"at queue delays of {', '.join(f'{d / 1000:g} ms' for d in a['queue_delays_us'])} (prn-serve's default: "
        f"{a['default_queue_delay_us'] / 1000:g} ms), and without (`--no-dynamic-batching`). Each client is a `prn-inspect --server grpc://` camera loop (a thread "
        "of one process: its own gRPC connection, the frame prepared, sent, decided, then the next) on real "
        f"frames ({result['frames']} images of `{result['frames_dir']}`, {result['frame_shape']}). "
        f"{a['requests']} requests per run, {a['rounds']} interleaved rounds (every client count, every server "
        "in rotating order, and the local loop each round). Throughput: median over rounds; latency: every "
        "request of every round, frame in to decision out. Clients and server share this machine's "
        f"{result['cores']} cores.",
        "",
        provenance_line(result["provenance"]),
        "",
        "## Throughput and latency",
        "",
        f"Local: one camera loop with the model in-process (ONNX Runtime, {a['threads']} threads), what one "
        f"`prn-inspect` process runs per frame: **{local['img_per_s']:.1f} img/s**, p50 "
        f"{local['latency_ms']['p50']:.1f} ms, p99 {local['latency_ms']['p99']:.1f} ms. x local: throughput "
        "over that. The engine as prn-serve builds it (threads that do not spin), alone on prepared images, median "
        "over rounds: " + ", ".join(f"batch {b} **{ms:.1f} ms** per image"
                                    for b, ms in local["served_engine_ms_per_image"].items()) + ".",
        "",
        "| clients | server | img/s | x local | p50 ms | p90 ms | p99 ms | mean batch | batches Triton formed (size: count) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for n in a["clients"]:
        for m in s:
            r = s[m][str(n)]
            formed = ", ".join(f"{k}: {c}" for k, c in r["batches"].items())
            lines.append(f"| {n} | {mode_label(m)} | {r['img_per_s']:.1f} | {r['img_per_s'] / local['img_per_s']:.2f} | "
                         f"{r['latency_ms']['p50']:.1f} | {r['latency_ms']['p90']:.1f} | {r['latency_ms']['p99']:.1f} | "
                         f"{r['mean_batch']:.2f} | {formed} |")
    lines += ["", "Dynamic batching over none, same client count (ratio of the median throughputs):", "",
              "| server | " + " | ".join(f"{n} client(s)" for n in a["clients"]) + " |",
              "|---|" + "---:|" * len(a["clients"])]
    for m in s:
        if m != NONE:
            lines.append(f"| {mode_label(m)} | " + " | ".join(
                f"{s[m][str(n)]['img_per_s'] / s[NONE][str(n)]['img_per_s']:.2f}" for n in a["clients"]) + " |")
    lines += ["", "## The goal", "",
              f"With {v['clients']} clients, dynamic batching at least {GOAL_RATIO}x the throughput of no batching "
              f"at a p99 below {GOAL_P99_FACTOR:g}x the single-client latency (the lowest single-client p50 of the "
              f"servers, {v['single_client_p50_ms']:.1f} ms):", ""]
    for m, g in v["servers"].items():
        lines.append(f"- {mode_label(m)}: **{g['throughput_ratio']:.2f}x** at a p99 of {g['p99_ms']:.1f} ms = "
                     f"{g['p99_over_single']:.1f}x: **{'met' if g['met'] else 'not met'}**.")
    n, single = v["clients"], v["single_client_p50_ms"]
    needed = n / (GOAL_P99_FACTOR * single / 1e3)
    lines += ["", f"Why the latency half cannot hold here: each client sends its next frame when the last is decided "
              f"(a camera loop), so with the server busy a request waits for the other {n - 1} clients' frames "
              f"(Little's law: latency = clients / throughput). A p99 below {GOAL_P99_FACTOR:g}x {single:.1f} ms at "
              f"{n} clients needs at least {needed:.1f} img/s through the server; one local loop, which has both "
              f"cores to itself and nothing else to do, computes {local['img_per_s']:.1f} img/s.", ""]
    lines += result["reading"] + [""]
    if result["gpu"]:
        lines += ["## A GPU server, on paper", "",
                  f"Cameras at {CAMERA_FPS} FPS one GPU serves if the server adds nothing to the model's own time: "
                  "the measured predict time of the same edge model on an NVIDIA H200 "
                  "(`benchmarks/results/runtime_gpu.json`, `make results-runtime-gpu`; FP32, no TensorRT), per "
                  "image at the batch it was measured with. Not measured: Triton on a GPU (no GPU here this "
                  "session), TensorRT FP16/INT8 (which would only add cameras), a Jetson Orin.", "",
                  "| GPU | engine | batch | ms per batch | img/s | cameras at 30 FPS |",
                  "|---|---|---:|---:|---:|---:|"]
        for g in result["gpu"]:
            lines.append(f"| {g['gpu']} | {g['engine']} | {g['batch']} | {g['ms_per_batch']:.2f} | {g['img_per_s']:.0f} "
                         f"| {g['cameras']} |")
        lines += [""] + result["orin"] + [""]
    return "\n".join(lines)


def reading(summary: dict, clients: list[int], local: dict, gpu: list[dict]) -> list[str]:
    """What the tables say, computed from them (no hand-written numbers)."""
    by_batch = {g["batch"]: g["ms_per_batch"] for g in gpu if g["engine"] == gpu[0]["engine"]} if gpu else {}
    gpu_batch = (max(by_batch), by_batch[max(by_batch)] / by_batch[1]) if 1 in by_batch and len(by_batch) > 1 else None
    one = summary[NONE][str(min(clients))]
    alone = {int(b): ms for b, ms in local["served_engine_ms_per_image"].items()}
    small, large = min(alone), max(alone)
    n = GOAL_CLIENTS if GOAL_CLIENTS in clients else max(clients)
    none = summary[NONE][str(n)]["img_per_s"]
    best = max((summary[m][str(n)]["img_per_s"], m, n) for m in summary for n in clients)
    return [f"One client through Triton: {one['img_per_s']:.1f} img/s against {local['img_per_s']:.1f} locally "
            f"({one['img_per_s'] / local['img_per_s']:.2f}x): what the network hop, the server's Python backend and "
            f"the client's share of the cores cost one camera. The most any setting served: {best[0]:.1f} img/s "
            f"({mode_label(best[1])}, {best[2]} clients), {best[0] / local['img_per_s']:.2f}x one local loop.",
            "",
            f"Why the throughput half falls short: the served engine alone (ONNX Runtime, threads that do not spin, no "
            f"server) takes {alone[small]:.1f} ms per image at batch {small} and {alone[large]:.1f} at batch {large} "
            f"({alone[small] / alone[large]:.2f}x), and the clients, tritonserver and its Python backend take their "
            f"share of the same two cores. Without batching, {n} clients got "
            f"{none:.1f} img/s, {none / local['img_per_s']:.2f}x the local loop; even a server as fast as the local "
            f"loop, with the clients' work free, would be {local['img_per_s'] / none:.2f}x that. The ratio grows with "
            "per-request overhead and with what a batch saves on the device, which is why it matters on a GPU"
            + (f" (the H200 below: {gpu_batch[0]} images in {gpu_batch[1]:.2f}x the time of one)." if gpu_batch else ".")]


def orin_model(gpu_rows: list[dict], gflops: float | None) -> list[str]:
    """A Jetson AGX Orin modelled from the H200's measured efficiency (stated assumptions, no measurement)."""
    if not gpu_rows or not gflops:
        return []
    best = max(gpu_rows, key=lambda g: g["img_per_s"])
    achieved = gflops * best["img_per_s"] / 1e3   # TFLOP/s the H200 reached on this model
    h200_fp32, orin_fp32 = 67.0, 5.3                # FP32 CUDA-core peaks, TFLOP/s (NVIDIA data sheets)
    orin_img_s = best["img_per_s"] * orin_fp32 / h200_fp32
    return [f"Jetson AGX Orin 64GB, modelled: the H200 reached {achieved:.2f} TFLOP/s on this "
            f"{gflops:.2f}-GFLOP model ({best['engine']}, batch {best['batch']}), "
            f"{100 * achieved / h200_fp32:.1f}% of its {h200_fp32:g} TFLOP/s FP32 peak; at the same fraction of "
            f"Orin's {orin_fp32:g} TFLOP/s (2048 CUDA cores at 1.3 GHz) that is {orin_img_s:.0f} img/s, "
            f"{int(orin_img_s // CAMERA_FPS)} camera(s) at {CAMERA_FPS} FPS in FP32. A model, not a measurement: the "
            "H200 at batch 8 is bound by launches more than by arithmetic, which makes this estimate pessimistic "
            "for Orin; TensorRT FP16/INT8 there is the deployment and was not run."]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="an exported model folder (prn-export)")
    parser.add_argument("--frames", type=Path, default=REPO.parent / "shared" / "data" / "mvtec_ad" / "bottle" / "test",
                        help="a folder of images (searched recursively) sent as camera frames")
    parser.add_argument("--max-frames", type=int, default=32, help="frames read into memory (default 32)")
    parser.add_argument("--clients", type=_counts, default=[1, 2, 4, 8, 16], help="client counts (default 1,2,4,8,16)")
    parser.add_argument("--requests", type=int, default=96, help="requests per run, over all clients (default 96)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads, server and local (default 2)")
    parser.add_argument("--max-batch", type=int, default=8, help="the servers' largest batch (default 8)")
    parser.add_argument("--queue-delays-us", type=_counts, default=[2000, 20000], metavar="US,US",
                        help="one dynamic-batching server per queue delay (default 2000,20000)")
    parser.add_argument("--serve-python", type=Path, default=REPO / ".venv-serve" / "bin" / "python",
                        help="the serving environment's interpreter (make serve-env)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    if not args.serve_python.is_file():
        parser.error(f"no serving environment at {args.serve_python}: run `make serve-env`")
    if args.requests < max(args.clients) or args.rounds < 1:
        parser.error("--requests must be at least the largest client count, --rounds at least 1")

    import os

    from prn_edge.contract.model_folder import find_model_files
    from prn_edge.imaging.read import list_images, read_image
    from prn_edge.io import write_json_atomic, write_text_atomic
    from prn_edge.provenance import provenance
    from prn_edge.runtime.loader import load_engine
    from prn_edge.runtime.pipeline import Pipeline
    from prn_edge.serve.process import ServeProcess
    from prn_edge.serve.repository import DEFAULT_QUEUE_DELAY_US, default_preferred

    def say(line: str) -> None:
        print(f"serving: {line}", file=sys.stderr, flush=True)

    find_model_files(args.model)
    found = list_images(args.frames, recursive=True)
    paths = found[:: max(1, len(found) // args.max_frames)][: args.max_frames]   # spread over the folder
    if not paths:
        parser.error(f"no images in {args.frames}")
    frames = [read_image(p, order="BGR") for p in paths]
    origin = provenance()
    command = " ".join(["python benchmarks/serving.py", "--model", _relative(args.model), "--frames",
                        _relative(args.frames), "--clients", ",".join(map(str, args.clients)), "--requests",
                        str(args.requests), "--rounds", str(args.rounds), "--threads", str(args.threads),
                        "--max-batch", str(args.max_batch), "--queue-delays-us",
                        ",".join(map(str, args.queue_delays_us))])
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(args.threads))
    common = ["--threads", str(args.threads), "--max-batch", str(args.max_batch)]
    flags = {mode_key(d): ["--queue-delay-us", str(d)] for d in args.queue_delays_us}
    flags[NONE] = ["--no-dynamic-batching"]
    modes = list(flags)
    say(f"starting {len(modes)} prn-serve servers: {', '.join(mode_label(m) for m in modes)}")
    servers: dict = {}
    try:
        for m in modes:
            servers[m] = ServeProcess(args.model, *common, *flags[m], python=args.serve_python, env=env,
                                      ready_timeout=180)
        local_engine = load_engine(args.model, "onnxruntime", threads=args.threads)
        local = Pipeline(local_engine)
        # The engine as prn-serve builds it, alone: what a batch saves in compute, without any server.
        served_engine = load_engine(args.model, "onnxruntime", threads=args.threads, spinning=False)
        served = Pipeline(served_engine)
        prepared = served.prepare([frames[k % len(frames)] for k in range(args.max_batch)])[0]
        engine_ms: dict[str, list[float]] = {"1": [], str(args.max_batch): []}
        for b in engine_ms:
            time_engine(served, prepared, int(b), int(b))
        say(f"warming up ({len(frames)} frames, {frames[0].shape})")
        run_local(local, frames, 8)
        for m in modes:
            run_clients(servers[m].url("grpc"), frames, min(8, args.requests), args.requests // 2)
        runs: dict[str, dict[int, list]] = {m: {n: [] for n in args.clients} for m in modes}
        local_runs = []
        for r in range(args.rounds):
            local_runs.append(run_local(local, frames, args.requests))
            for b in engine_ms:
                engine_ms[b].append(time_engine(served, prepared, int(b), args.requests // 2))
            say(f"round {r + 1}/{args.rounds}: local {args.requests / local_runs[-1]['seconds']:.1f} img/s; served "
                "engine alone, ms/img: " + ", ".join(f"batch {b} {v[-1]:.1f}" for b, v in engine_ms.items()))
            for n in args.clients:
                shift = (r + n) % len(modes)   # each server goes first as often as the others
                for m in modes[shift:] + modes[:shift]:
                    before = servers[m].statistics()
                    run = run_clients(servers[m].url("grpc"), frames, n, args.requests)
                    run["batches"] = batch_counts(before, servers[m].statistics())
                    runs[m][n].append(run)
                    say(f"round {r + 1}/{args.rounds}: {n} client(s), {mode_label(m)}: "
                        f"{run['requests'] / run['seconds']:.1f} img/s, batches {run['batches']}")
        metadata = dict(local_engine.metadata)
        image_size = local.size
        local_engine.close()
        served_engine.close()
    finally:
        for server in servers.values():
            server.stop()

    summary = {m: {str(n): summarise(runs[m][n]) for n in args.clients} for m in modes}
    local_summary = summarise(local_runs)
    local_summary["served_engine_ms_per_image"] = {b: statistics.median(v) for b, v in engine_ms.items()}
    gflops = None
    sizes = REPO / "benchmarks" / "results" / "model_size.json"
    if sizes.is_file():
        rows = json.loads(sizes.read_text()).get("rows", [])
        edge = [r for r in rows if r.get("config") == "edge" and r.get("backbone") == "efficientnet_lite0"]
        gflops = edge[0].get("gflops_total") if edge else None
    gpu = gpu_on_paper(REPO / "benchmarks" / "results" / "runtime_gpu.json")
    from importlib import metadata as importlib_metadata

    result = {
        "command": command, "model": _relative(args.model), "image_size": image_size,
        "checkpoint_sha256": str(metadata.get("checkpoint_sha256", "")),
        "frames_dir": _relative(args.frames), "frames": len(frames), "frame_shape": "x".join(map(str, frames[0].shape)),
        "cores": os.cpu_count(), "pytriton": _serve_version(args.serve_python),
        "settings": {"clients": args.clients, "requests": args.requests, "rounds": args.rounds,
                     "threads": args.threads, "max_batch": args.max_batch, "queue_delays_us": args.queue_delays_us,
                     "default_queue_delay_us": DEFAULT_QUEUE_DELAY_US,
                     "preferred": list(default_preferred(args.max_batch))},
        "local": local_summary, "summary": summary, "verdict": verdict(summary, args.clients),
        "reading": reading(summary, args.clients, local_summary, gpu), "gpu": gpu, "orin": orin_model(gpu, gflops),
        "onnxruntime": importlib_metadata.version("onnxruntime"), "provenance": origin,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "serving.md", render(result))
    write_json_atomic(args.out / "serving.json", result)
    print(f"wrote {args.out / 'serving.md'}")
    return 0


def _serve_version(python: Path) -> str:
    import subprocess

    proc = subprocess.run([str(python), "-c", "from importlib import metadata; print(metadata.version('nvidia-pytriton'))"],
                          capture_output=True, text=True, timeout=60)
    return proc.stdout.strip() or "?"


if __name__ == "__main__":
    sys.exit(main())
