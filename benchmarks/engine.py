"""Engine benchmark: local-training time per round of the batched vs the sequential engine.

For each case, measured in the same process with the rounds of the two engines interleaved (so a
busy machine slows both alike): the median seconds per round of each engine and their ratio, in wall
time and in CPU time of the process (on a machine shared with other work, CPU time is the steadier
measure of what a round costs); the achieved GFLOP/s (useful forward+backward FLOPs of the round,
counted by torch's FlopCounterMode) against a float32 matmul peak this script measures itself with the
same thread count, both per wall second and per CPU second; and the peak resident memory of the
process while the batched engine trains (each case runs in its own process).

    python benchmarks/engine.py                  # all cases, 5 timed rounds (femnist: 3; C=100 sequential: 1)
    python benchmarks/engine.py --quick          # 2 timed rounds (femnist: 1)
    python benchmarks/engine.py --threads 2 --cases mlp_digits_c50
    python benchmarks/engine.py --profile femnist_c20   # torch.profiler table of one batched round
    python benchmarks/engine.py --cases mlp_digits_c50_adam mlp_digits_c50_fedprox   # local-training options
    python benchmarks/engine.py --device cuda --quick     # on a GPU: GPU time, GPU matmul peak, GPU memory
    python benchmarks/engine.py --device cuda --largest-cohort femnist_c20   # biggest single-chunk cohort

On CUDA the timed regions end with ``torch.cuda.synchronize()``, the peak is a float32 ``torch.mm`` on the
GPU (TF32 off, as in the engines' default fp32 matmuls) and memory is ``torch.cuda.max_memory_allocated``
instead of the process RSS; CPU time is then not a measure of the work and is reported as measured.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

CASES = {
    # name: dataset, model, clients, batch size, local-training options beyond the defaults (SGD, lr LR);
    # femnist_* use synthetic 28x28 images, 60-140 per client
    "mlp_digits_c50": dict(dataset="digits", model="mlp", clients=50, batch_size=10),
    "cnn1d_mnist1d_c50": dict(dataset="mnist1d", model="cnn1d", clients=50, batch_size=10),
    "cnn1d_mnist1d_c50_b32": dict(dataset="mnist1d", model="cnn1d", clients=50, batch_size=32),
    "femnist_c20": dict(dataset="synthetic28", model="femnist_cnn", clients=20, batch_size=10),
    "femnist_c100": dict(dataset="synthetic28", model="femnist_cnn", clients=100, batch_size=10),
    # the local-training spec's other steps (qsfl.engine.local): Adam, FedProx's proximal term
    "mlp_digits_c50_adam": dict(dataset="digits", model="mlp", clients=50, batch_size=10,
                                local=dict(optimizer="adam", lr=0.001)),
    "mlp_digits_c50_fedprox": dict(dataset="digits", model="mlp", clients=50, batch_size=10,
                                   local=dict(momentum=0.9, prox_mu=0.01)),
    "cnn1d_mnist1d_c50_adam_fedprox": dict(dataset="mnist1d", model="cnn1d", clients=50, batch_size=10,
                                           local=dict(optimizer="adam", lr=0.001, prox_mu=0.01)),
    # non-IID sizes (Dirichlet 0.5: clients of 10-300+ samples): most clients finish long before the largest
    "mlp_digits_c20_dirichlet": dict(dataset="digits", model="mlp", clients=20, batch_size=10, partition="dirichlet"),
    "cnn1d_mnist1d_c20_b32_dirichlet": dict(dataset="mnist1d", model="cnn1d", clients=20, batch_size=32,
                                            partition="dirichlet"),
}
LR, EPOCHS, SEED = 0.05, 1, 0


def local_spec(name: str):
    """The case's LocalTraining (1 epoch, its batch size, lr LR unless the case sets it)."""
    from qsfl.engine.local import LocalTraining

    spec = CASES[name]
    options = {"lr": LR, **spec.get("local", {})}
    return LocalTraining(epochs=EPOCHS, batch_size=spec["batch_size"], **options)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a timed region ends when its work does."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_gflops(threads: int, seconds: float = 1.0, device: str = "cpu") -> tuple[float, float]:
    """Best float32 torch.mm rate over a few square sizes with ``threads`` threads (on ``device``): (GFLOP per
    wall second, GFLOP per CPU second of this process)."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    best_wall = best_cpu = 0.0
    for n in ((1024, 2048) if dev.type == "cpu" else (4096, 8192)):
        a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
        out = torch.empty(n, n, device=dev)
        for _ in range(2):
            torch.mm(a, b, out=out)
        sync(dev)
        for _ in range(3):
            reps, start, cpu = 0, time.perf_counter(), time.process_time()
            while time.perf_counter() - start < seconds / 3:
                torch.mm(a, b, out=out)
                reps += 1
                if dev.type == "cuda" and reps % 8 == 0:
                    sync(dev)
            sync(dev)
            flops = 2 * n**3 * reps / 1e9
            best_wall = max(best_wall, flops / (time.perf_counter() - start))
            best_cpu = max(best_cpu, flops / max(time.process_time() - cpu, 1e-9))
    return best_wall, best_cpu


def build_case(name: str, device: str = "cpu"):
    """(model, client_data) of a case, on ``device``."""
    model, data = _build_case_cpu(name)
    dev = torch.device(device)
    return model.to(dev), [(x.to(dev), y.to(dev)) for x, y in data]


def _build_case_cpu(name: str):
    from qsfl.data.datasets import load_dataset
    from qsfl.data.partition import partition
    from qsfl.models import build_model

    spec = CASES[name]
    clients = spec["clients"]
    if spec["dataset"] == "synthetic28":
        rng = np.random.default_rng(SEED)
        gen = torch.Generator().manual_seed(SEED)
        data = []
        for n in rng.integers(60, 141, size=clients):
            data.append((torch.rand(int(n), 28, 28, generator=gen), torch.randint(0, 62, (int(n),), generator=gen)))
        return build_model("femnist_cnn", (28, 28), 62, seed=SEED), data
    ds = load_dataset(spec["dataset"], seed=SEED)
    kind = spec.get("partition", "iid")
    parts = partition(kind, ds.y_train.numpy(), clients, SEED, **({"alpha": 0.5} if kind == "dirichlet" else {}))
    data = [(ds.x_train[torch.as_tensor(p)], ds.y_train[torch.as_tensor(p)]) for p in parts]
    return build_model(spec["model"], ds.input_shape, ds.num_classes, seed=SEED), data


def round_flops(model, data, batch_size: int) -> float:
    """Forward+backward FLOPs of one round (every client's real samples, EPOCHS epochs)."""
    from torch.utils.flop_counter import FlopCounterMode

    x, y = data[0]
    n = min(batch_size, len(y))
    params = [p for p in model.parameters()]
    with FlopCounterMode(display=False) as counter:
        loss = torch.nn.functional.cross_entropy(model(x[:n]), y[:n])
        torch.autograd.grad(loss, params)
    per_sample = counter.get_total_flops() / n
    return per_sample * EPOCHS * sum(len(yy) for _, yy in data)


def maxrss_mb() -> float:
    """Peak resident memory of this process so far (MiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_mb(device: torch.device) -> float:
    """Peak memory so far: GPU memory allocated by torch on CUDA, else the process's peak RSS (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return maxrss_mb()


def worker(name: str, threads: int, rounds: int, seq_rounds: int, max_chunk_mb: float, device: str = "cpu") -> dict:
    """Run one case in this process; return its measurements."""
    from qsfl.engine.batched import BatchedEngine
    from qsfl.engine.common import flat_weights
    from qsfl.engine.sequential import SequentialEngine
    from qsfl.engine.threads import configure_threads

    configure_threads(threads)
    dev = torch.device(device)
    spec = CASES[name]
    model, data = build_case(name, device)
    local = local_spec(name)
    ids = list(range(len(data)))
    w0 = flat_weights(model)
    base_mb = peak_mb(dev)
    batched = BatchedEngine(model, data, local=local, seed=SEED, max_chunk_mb=max_chunk_mb)
    batched.train(w0, ids, 0)                       # warm-up: kernel JIT, buffers, dry run
    sequential = SequentialEngine(model, data, local=local, seed=SEED)
    sequential.train(w0.clone(), ids[:1], 0)        # warm-up of the reference's kernels
    sync(dev)
    t_b, t_s, c_b, c_s, top_mb = [], [], [], [], 0.0
    for r in range(rounds):                         # interleaved: a busy machine slows both alike
        start, cpu = time.perf_counter(), time.process_time()
        batched.train(w0, ids, 10 + r)
        sync(dev)
        t_b.append(time.perf_counter() - start)
        c_b.append(time.process_time() - cpu)
        if r == 0:                                  # before any sequential round: the batched peak
            top_mb = peak_mb(dev)
        if r < seq_rounds:
            start, cpu = time.perf_counter(), time.process_time()
            sequential.train(w0.clone(), ids, 10 + r)
            sync(dev)
            t_s.append(time.perf_counter() - start)
            c_s.append(time.process_time() - cpu)
    flops = round_flops(model, data, spec["batch_size"]) / 1e9
    steps = EPOCHS * int(-(-np.max(batched.sizes) // spec["batch_size"]))
    tb, ts = statistics.median(t_b), statistics.median(t_s)
    cb, cs = statistics.median(c_b), statistics.median(c_s)
    return {"case": name, "device": str(dev), "method": batched.method, "clients": len(ids), "threads": threads,
            "optimizer": local.optimizer, "prox_mu": local.prox_mu,
            "chunk": min(len(ids), batched.chunk_size(steps)),
            "memory_chunk": min(len(ids), batched.memory_chunk_size(steps)),
            "batched_s": tb, "sequential_s": ts, "speedup": ts / tb,
            "batched_cpu_s": cb, "sequential_cpu_s": cs, "cpu_speedup": cs / cb, "gflop_round": flops,
            "batched_gflops": flops / tb, "sequential_gflops": flops / ts,
            "batched_gflops_cpu": flops / cb, "sequential_gflops_cpu": flops / cs,
            "base_rss_mb": base_mb, "peak_rss_mb": top_mb, "batched_extra_mb": top_mb - base_mb}


def largest_cohort(name: str, device: str, limit: int, threads: int) -> dict:
    """The largest cohort of this case's clients (repeated) that trains as ONE chunk on ``device``: doubles C
    until the device runs out of memory (or ``limit``), with the memory budget lifted; reports the engine's
    own estimate for comparison."""
    from qsfl.engine.batched import BatchedEngine
    from qsfl.engine.common import flat_weights
    from qsfl.engine.threads import configure_threads

    configure_threads(threads)
    dev = torch.device(device)
    model, data = build_case(name, device)
    local = local_spec(name)
    w0 = flat_weights(model)
    free = torch.cuda.mem_get_info(dev)[0] / 2**20 if dev.type == "cuda" else None   # CPU: no fixed limit
    best, clients, tried = 0, len(data), []
    while clients <= limit:
        cohort = [data[i % len(data)] for i in range(clients)]
        engine = BatchedEngine(model, cohort, local=local, seed=SEED, max_chunk_mb=1e9)
        steps = EPOCHS * int(-(-np.max(engine.sizes) // CASES[name]["batch_size"]))
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        try:
            start = time.perf_counter()
            engine.train(w0, list(range(clients)), 0)
            sync(dev)
            tried.append({"clients": clients, "ok": True, "s": time.perf_counter() - start,
                          "peak_mb": peak_mb(dev), "estimate_mb": clients * engine.per_client_bytes(steps) / 2**20})
            best = clients
        except torch.cuda.OutOfMemoryError:
            tried.append({"clients": clients, "ok": False})
            break
        finally:
            del engine
        clients *= 2
    per_client = BatchedEngine(model, data, local=local, seed=SEED).per_client_bytes(
        EPOCHS * int(-(-max(len(y) for _, y in data) // CASES[name]["batch_size"])))
    return {"case": name, "device": str(dev), "largest_ok": best, "free_mb_at_start": free,
            "engine_estimate_clients_in_free_memory": None if free is None else int(free * 2**20 // per_client),
            "tries": tried}


def profile_case(name: str, threads: int) -> None:
    """Print torch.profiler's top ops of one warmed-up batched round."""
    from torch.profiler import ProfilerActivity, profile

    from qsfl.engine.batched import BatchedEngine
    from qsfl.engine.common import flat_weights
    from qsfl.engine.threads import configure_threads

    configure_threads(threads)
    model, data = build_case(name)
    engine = BatchedEngine(model, data, local=local_spec(name), seed=SEED)
    w0 = flat_weights(model)
    engine.train(w0, list(range(len(data))), 0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.train(w0, list(range(len(data))), 1)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 timed rounds (femnist: 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the engines run")
    parser.add_argument("--max-chunk-mb", type=float, default=1024.0)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--profile", choices=list(CASES), help="profile one batched round of this case")
    parser.add_argument("--largest-cohort", choices=list(CASES), metavar="CASE",
                        help="find the largest single-chunk cohort of CASE that fits the device")
    parser.add_argument("--limit", type=int, default=1 << 14, help="--largest-cohort: stop at this many clients")
    parser.add_argument("--worker", choices=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seq-rounds", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.profile:
        profile_case(args.profile, args.threads)
        return
    if args.largest_cohort:
        print(json.dumps(largest_cohort(args.largest_cohort, args.device, args.limit, args.threads), indent=1))
        return
    if args.worker:
        print(json.dumps(worker(args.worker, args.threads, args.rounds, args.seq_rounds, args.max_chunk_mb,
                                args.device)))
        return
    peak, peak_cpu = matmul_peak_gflops(args.threads, device=args.device)
    where = f"{args.threads} thread(s)" if args.device == "cpu" else torch.cuda.get_device_name()
    print(f"float32 matmul peak on {args.device} ({where}): {peak:.1f} GFLOP/s wall, "
          f"{peak_cpu:.1f} GFLOP per CPU-second", flush=True)
    rows = []
    for name in args.cases:
        big = CASES[name]["model"] == "femnist_cnn"
        rounds = (1 if big else 2) if args.quick else (3 if big else 5)
        seq_rounds = 1 if (big and CASES[name]["clients"] >= 100) else rounds
        cmd = [sys.executable, __file__, "--worker", name, "--threads", str(args.threads), "--rounds", str(rounds),
               "--seq-rounds", str(seq_rounds), "--max-chunk-mb", str(args.max_chunk_mb), "--device", args.device]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["pct_peak"] = 100 * row["batched_gflops"] / peak
        row["pct_peak_cpu"] = 100 * row["batched_gflops_cpu"] / peak_cpu
        rows.append(row)
        print(f"{name}: batched {row['batched_s']*1e3:.1f} ms ({row['batched_cpu_s']*1e3:.1f} ms CPU), "
              f"sequential {row['sequential_s']*1e3:.1f} ms ({row['sequential_cpu_s']*1e3:.1f} ms CPU)", flush=True)
    print()
    memory = "peak GPU MiB (batched extra)" if args.device == "cuda" else "peak RSS MiB (batched extra)"
    print(f"device={args.device}; threads={args.threads}; matmul peak {peak:.0f} GFLOP/s wall, "
          f"{peak_cpu:.0f} per CPU-second")
    print("| case | method (chunk; memory-budget chunk) | C | batched s/round | sequential s/round | speedup wall | "
          "speedup CPU | GFLOP/round | batched GFLOP/s wall (% peak) | batched GFLOP/CPU-s (% peak) | "
          f"sequential GFLOP/CPU-s | {memory} |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['method']} ({r['chunk']}; {r['memory_chunk']}) | {r['clients']} | {r['batched_s']:.4f} | "
              f"{r['sequential_s']:.4f} | {r['speedup']:.1f}x | {r['cpu_speedup']:.1f}x | {r['gflop_round']:.2f} | "
              f"{r['batched_gflops']:.1f} ({r['pct_peak']:.0f}%) | {r['batched_gflops_cpu']:.1f} "
              f"({r['pct_peak_cpu']:.0f}%) | {r['sequential_gflops_cpu']:.1f} | "
              f"{r['peak_rss_mb']:.0f} (+{r['batched_extra_mb']:.0f}) |")
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "matmul_peak_gflops": peak,
                                         "matmul_peak_gflops_cpu": peak_cpu, "threads": args.threads,
                                         "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
