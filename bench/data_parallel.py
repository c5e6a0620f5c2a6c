"""What data-parallel training costs per step: ``pipeline.distributed.train_data_parallel`` at 1
and N processes, side by side in one run, on GPT-J (random weights) and a Zarr store of CLIP
RN50x16 features.

    python bench/data_parallel.py [--device cpu|cuda] [--size small|paper] [--processes 1 2 ...]
                                  [--batch B] [--micro M] [--warmup W] [--steps S] [--repeats R]
                                  [--strong] [--json out.json]

Weak scaling (always): every rank trains the same micro-batches as the single process (``--batch``
rows per rank in micro-batches of ``--micro``), so N processes train a global batch N x larger.
Key ``overhead_ratio`` = step time at the largest N / step time at 1 process: 1.0 means the
gradient all-reduce and the ranks' synchronisation cost nothing; ``efficiency`` = its inverse.
Each of ``--repeats`` repetitions runs every N (in alternating order) and takes its own ratio;
the median ratio is reported with their range (as ``bench/extraction.py`` pairs its timings).
Strong scaling (``--strong``, on by default on CUDA): the global batch of the largest N, split
over N processes; ``speedup`` = step time at 1 / at N, ``efficiency`` = speedup / N, and the
losses, the same batches' at every N, are compared with the single process's.

The timed code is the pipeline's own: ``train_data_parallel`` with a ``TrainingJob`` whose
``load_lm`` builds each spawned rank's GPT-J on its device; rank 0 keeps the LM built here. A step
is timed from rank 0's ``on_step`` calls (the median after ``--warmup`` steps; rank 0 waits at each
all-reduce for the slowest rank). Each rank reads only the Zarr chunk that holds its rows.

- CPU (gloo, default ``--size small``, processes 1 and 2, 3 repetitions): ``join_group`` gives each of N ranks
  ``os.cpu_count() // N`` threads, so the single process is given the same threads per rank as the
  largest N (1 on two cores): the same work on the same threads, one process or two.
- CUDA (nccl, default ``--size paper``, the 6B GPT-J in bfloat16, processes 1, 2, 4, 8 up to
  ``torch.cuda.device_count()``): rank r on ``cuda:r``. Sized to finish within 10 minutes on 8
  GPUs; each measurement is printed (and written to ``--json``) as soon as it is taken.
"""

import argparse
import datetime
import functools
import importlib.util
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.config import TrainConfig
from pipeline.distributed import TrainingJob, train_data_parallel
from pipeline.encoders import backbone_spec
from pipeline.language_models import fuse_activations
from pipeline.linear_map import LinearMap

# bench/ is scripts, not a package. Loaded again in each spawned rank, which imports this script
# anew (as ``__mp_main__``): everything else that runs is under ``if __name__ == "__main__"``.
_spec = importlib.util.spec_from_file_location("benchmark", Path(__file__).with_name("benchmark.py"))
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)

DEFAULTS = {  # per-rank batch and micro-batch (benchmark.py's), untimed and timed steps per run, runs per N
    "paper": dict(batch=32, micro=16, warmup=2, steps=4, repeats=1),
    "small": dict(batch=4, micro=2, warmup=2, steps=6, repeats=3),
}


def load_lm(size: str, caption_len: int, device: str) -> tuple:
    """A rank's frozen LM and stand-in tokenizer, as ``TrainingJob.load_lm`` returns them: GPT-J with
    random weights built on ``device`` and its activations fused, as the pipeline loads an LM.
    Module-level, so that ``functools.partial`` of it pickles for the spawned ranks. Seeded: every
    rank gets the same weights, so that a global batch's loss does not depend on the process count."""
    torch.manual_seed(0)
    lm = fuse_activations(benchmark.build_lm(size, device))
    return lm, benchmark.FixedCaptions(caption_len - 1)  # caption_tokens appends the EOS


def devices_for(device: str, processes: int) -> list[str]:
    """The ranks' devices, as ``Runtime.torch_devices`` gives them: the CPU N times, or GPUs 0 .. N-1."""
    if torch.device(device).type == "cuda":
        return [f"cuda:{index}" for index in range(processes)]
    return [device] * processes


def timed_run(
    lm, tokenizer, store, folder: str, *, devices: list[str], batch: int, micro: int, buffer_chunks: int, args
) -> dict:
    """``train_data_parallel`` on ``len(devices)`` processes for ``warmup + steps`` steps of a global
    ``batch``, timed from rank 0's ``on_step`` stamps: the median step after the warm-up."""
    spec = backbone_spec(benchmark.BACKBONE)
    torch.manual_seed(0)
    linear_map = LinearMap(spec.feature_dim, lm.config.n_embd, spec.layout)
    rows = len(store.ids)
    total = args.warmup + args.steps
    job = TrainingJob(
        linear_map,
        functools.partial(load_lm, args.size, args.caption),
        store.features,
        ["a caption"] * rows,
        np.arange(rows),
        TrainConfig(  # benchmark.timed_training's
            steps=total,
            batch_size=batch,
            micro_batch_size=micro,
            lr=8e-4,
            warmup_steps=1,
            max_caption_tokens=args.caption,
            buffer_chunks=buffer_chunks,
            checkpoint_every=total,
            processes=len(devices),
            collective_timeout_s=int(args.timeout),
        ),
        seed=0,
        checkpoint_dir=Path(folder) / f"run-{len(os.listdir(folder))}",  # fresh: nothing to resume
    )
    stamps, threads = [], []

    def on_step(step: int, loss: float) -> None:  # loss.item() has synchronised rank 0's device
        stamps.append(time.perf_counter())
        threads.append(torch.get_num_threads())  # after join_group: what this rank was given

    started = time.perf_counter()
    result = train_data_parallel(job, devices, lm, tokenizer, timeout_s=args.timeout, on_step=on_step)
    wall = time.perf_counter() - started
    # stamps[i] ends step i + 1, so diff[j] is step j + 2: the steps after the warm-up are diff[warmup - 1:].
    steps = np.diff(stamps)[args.warmup - 1 :].tolist()
    step_s = statistics.median(steps)
    seq_len = spec.layout.num_tokens + args.caption
    tokens_per_s = batch * seq_len / step_s
    # MFU per device (None on CPU and on GPUs without a known peak): benchmark.py's FLOPs per token.
    map_params = sum(p.numel() for p in linear_map.parameters())
    flops = benchmark.train_flops_per_token(lm.config, seq_len, map_params, spec.layout.num_tokens, args.caption)
    peak = benchmark.peak_bf16_flops(devices[0])
    return {
        "processes": len(devices),
        "devices": devices,
        "global_batch": batch,
        "rank_batch": batch // len(devices),
        "micro_batch": micro,
        "threads_per_rank": threads[0] if torch.device(devices[0]).type == "cpu" else None,
        "step_s": step_s,
        "steps_s": steps,
        "samples_per_s": batch / step_s,
        "tokens_per_s": tokens_per_s,
        "mfu": flops * tokens_per_s / (peak * len(devices)) if peak else None,
        "recompute": result.recompute,
        "final_loss": result.losses[-1],
        "losses": result.losses,
        "wall_s": wall,  # the whole run: spawning, each rank's LM, the process group, every step
    }


def summary(runs: list[dict], kind: str) -> list[dict]:
    """One row per process count from the repetitions' runs of one kind: the median step time, and
    the median over repetitions of its ratio to the single process's step in the same repetition
    (measured minutes apart at most, so a neighbour's load shifts both), with their range. Weak
    scaling (the same work per rank): efficiency t1 / tN. Strong scaling (the same global batch):
    speedup t1 / tN, efficiency speedup / N, and how far the losses are from the single process's."""
    by_n: dict[int, list[dict]] = {}
    for run in runs:
        by_n.setdefault(run["processes"], []).append(run)
    ones = by_n[1]
    rows = []
    for n, repeats in sorted(by_n.items()):
        ratios = [run["step_s"] / one["step_s"] for run, one in zip(repeats, ones, strict=True)]
        first = repeats[0]
        step_s = statistics.median(run["step_s"] for run in repeats)
        mfus = [run["mfu"] for run in repeats if run["mfu"] is not None]
        row = {
            **{key: first[key] for key in ("processes", "devices", "global_batch", "rank_batch", "micro_batch")},
            "threads_per_rank": first["threads_per_rank"],
            "step_s": step_s,
            "repeat_step_s": [run["step_s"] for run in repeats],
            "ratio_to_1": statistics.median(ratios),
            "ratio_range": [min(ratios), max(ratios)],
            "samples_per_s": first["global_batch"] / step_s,
            "tokens_per_s": first["tokens_per_s"] * first["step_s"] / step_s,
            "mfu": statistics.median(mfus) if mfus else None,
            "recompute": any(run["recompute"] for run in repeats),
            "final_loss": first["final_loss"],
        }
        if kind == "weak":
            row["efficiency"] = 1 / row["ratio_to_1"]
        else:
            row["speedup"] = 1 / row["ratio_to_1"]
            row["efficiency"] = row["speedup"] / n
            # The same batches at every N: the losses agree up to the order of the summed gradients.
            row["max_loss_difference"] = max(
                abs(a - b) for run in repeats for a, b in zip(run["losses"], ones[0]["losses"], strict=True)
            )
        rows.append(row)
    return rows


def options(argv: list[str] | None = None, device_count: int | None = None) -> argparse.Namespace:
    """The arguments with their defaults resolved for the device (``device_count``: the GPUs
    there are, ``torch.cuda.device_count()`` unless given)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument(
        "--size", choices=sorted(benchmark.LM_SIZES), help="GPT-J's size (default: paper on CUDA, small on CPU)"
    )
    parser.add_argument(
        "--processes", type=int, nargs="+", help="process counts (default: 1 2 on CPU; 1 2 4 8 up to the GPUs)"
    )
    parser.add_argument("--batch", type=int, help="rows per rank and step (default 32 paper, 4 small)")
    parser.add_argument("--micro", type=int, help="micro-batch (default 16 paper, 2 small)")
    parser.add_argument("--caption", type=int, default=32, help="caption tokens, EOS included")
    parser.add_argument("--warmup", type=int, help="untimed steps per run, at least 1 (default 2)")
    parser.add_argument("--steps", type=int, help="timed steps per run, the median reported (default 4 paper, 6 small)")
    parser.add_argument(
        "--repeats", type=int, help="runs per process count, alternating their order (default 3 small, 1 paper)"
    )
    parser.add_argument(
        "--strong",
        action=argparse.BooleanOptionalAction,
        help="also strong scaling: the largest N's global batch at every N (default: on CUDA only)",
    )
    parser.add_argument("--timeout", type=int, default=600, help="collective timeout per run, seconds")
    parser.add_argument("--json", type=Path, help="write the numbers here (rewritten after each run)")
    args = parser.parse_args(argv)
    cuda = torch.device(args.device).type == "cuda"
    gpus = (torch.cuda.device_count() if cuda else 0) if device_count is None else device_count
    if cuda and gpus < 1:
        parser.error("--device cuda: no GPU is visible")
    args.size = args.size or ("paper" if cuda else "small")
    d = DEFAULTS[args.size]
    args.batch, args.micro = args.batch or d["batch"], args.micro or d["micro"]
    args.warmup = d["warmup"] if args.warmup is None else args.warmup
    args.steps = args.steps or d["steps"]
    args.repeats = args.repeats or d["repeats"]
    args.strong = cuda if args.strong is None else args.strong
    default_processes = [n for n in (1, 2, 4, 8) if n <= gpus] if cuda else [1, 2]
    args.processes = sorted({1, *(args.processes or default_processes)})  # 1: what the others are against
    if args.warmup < 1:
        parser.error("--warmup must be at least 1: the first step of a run also waits for the spawned ranks")
    if args.repeats < 1 or args.steps < 1 or args.batch < 1 or args.micro < 1 or args.batch % args.micro:
        parser.error(
            f"--batch ({args.batch}) must be a positive multiple of --micro ({args.micro}), --steps, --repeats >= 1"
        )
    if min(args.processes) < 1 or (cuda and max(args.processes) > gpus):
        parser.error(f"--processes {args.processes}: from 1 up to the {gpus} GPU(s) on CUDA")
    return args


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}"
    return f"{benchmark.cpu_name()}, {os.cpu_count()} cores"


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def table(result: dict) -> str:
    """The runs as a markdown table, the device named beside the times."""
    lines = [
        f"{result['device_name']} ({result['backend']}), GPT-J {result['size']} "
        f"({result['lm_params'] / 1e9:.3f} B params, {result['dtype']}), "
        f"{result['image_tokens']} image + {result['caption_tokens']} caption tokens, "
        f"median of {result['steps']} steps after {result['warmup']}, {result['repeats']} run(s) per N; "
        f"load average {result['load_average'][0]:.2f} at the start, {result['load_average_end'][0]:.2f} at the end",
        "",
        "| scaling | processes | global batch (per rank, micro) | threads/rank | step ms | time vs 1 process | "
        "efficiency | samples/s | MFU | final loss |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in ("weak", "strong"):
        for run in result[kind] or []:
            low, high = run["ratio_range"]
            vs = f"x{run['ratio_to_1']:.3f}" + (f" [{low:.3f}, {high:.3f}]" if result["repeats"] > 1 else "")
            if kind == "strong":
                vs += f", {run['speedup']:.2f}x faster, losses within {run['max_loss_difference']:.1e}"
            lines.append(
                f"| {kind} | {run['processes']} | {run['global_batch']} ({run['rank_batch']}, {run['micro_batch']}) "
                f"| {run['threads_per_rank'] or 'n/a'} | {1000 * run['step_s']:.1f} | {vs} "
                f"| {percent(run['efficiency'])} | {run['samples_per_s']:.2f} | {percent(run['mfu'])} "
                f"| {run['final_loss']:.4f} |"
            )
    low, high = result["overhead_ratio_range"]
    lines += [
        "",
        f"overhead_ratio (weak, {max(result['processes'])} / 1 processes): {result['overhead_ratio']:.3f}"
        + (f" [{low:.3f}, {high:.3f}] over {result['repeats']} repetitions" if result["repeats"] > 1 else ""),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = options(argv)
    cuda = torch.device(args.device).type == "cuda"
    largest = max(args.processes)
    if not cuda:
        # The same threads per rank at every N: join_group gives each of N ranks cpu_count // N.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // largest))
    spec = backbone_spec(benchmark.BACKBONE)
    result = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": args.device,
        "device_name": device_name(args.device),
        "backend": "nccl" if cuda else "gloo",
        "torch": torch.__version__,
        "size": args.size,
        "warmup": args.warmup,
        "steps": args.steps,
        "processes": args.processes,
        "image_tokens": spec.layout.num_tokens,
        "caption_tokens": args.caption,
        "load_average": os.getloadavg(),  # at the start: above 0 means other jobs shared the CPUs
        "repeats": args.repeats,
        "runs": [],  # every run, as it is measured
    }
    lm, tokenizer = load_lm(args.size, args.caption, devices_for(args.device, 1)[0])  # rank 0's, reused
    result["lm_params"] = sum(p.numel() for p in lm.parameters())
    result["dtype"] = str(next(lm.parameters()).dtype)
    print(f"{result['device_name']}: GPT-J {args.size} on processes {args.processes}", flush=True)

    def record(kind: str, repeat: int, run: dict) -> None:
        result["runs"].append({"kind": kind, "repeat": repeat, **run})
        print(
            f"{kind} {run['processes']} process(es), global batch {run['global_batch']}: "
            f"{1000 * run['step_s']:.1f} ms/step, recompute {'on' if run['recompute'] else 'off'}, "
            f"MFU {percent(run['mfu'])} (run {run['wall_s']:.0f} s)",
            flush=True,
        )
        if args.json:  # so that a run cut short still leaves what it measured
            args.json.write_text(json.dumps(result, indent=2))

    with tempfile.TemporaryDirectory(prefix="data-parallel-") as folder:
        # One chunk per rank and step: a buffer of N chunks is one global batch of N x --batch rows,
        # so each rank reads exactly one chunk of its own (weak scaling) or largest / N (strong).
        store = benchmark.feature_store(folder, 2 * largest * args.batch, chunk_rows=args.batch)

        def run(n: int, batch: int, buffer_chunks: int) -> dict:
            devices = devices_for(args.device, n)
            return timed_run(
                lm,
                tokenizer,
                store,
                folder,
                devices=devices,
                batch=batch,
                micro=args.micro,
                buffer_chunks=buffer_chunks,
                args=args,
            )

        for repeat in range(args.repeats):
            # Alternating the order, so that a drift in the machine's speed favours no process count.
            order = args.processes if repeat % 2 == 0 else args.processes[::-1]
            for n in order:
                weak = run(n, batch=n * args.batch, buffer_chunks=n)
                record("weak", repeat, weak)
                if args.strong:  # the largest N's global batch, split n ways (the weak run itself at n = largest)
                    strong = weak if n == largest else run(n, batch=largest * args.batch, buffer_chunks=largest)
                    record("strong", repeat, strong)
    runs = lambda kind: [run for run in result["runs"] if run["kind"] == kind]  # noqa: E731
    result["weak"] = summary(runs("weak"), "weak")
    result["strong"] = summary(runs("strong"), "strong") if args.strong else None
    result["overhead_ratio"] = result["weak"][-1]["ratio_to_1"]
    result["overhead_ratio_range"] = result["weak"][-1]["ratio_range"]
    result["load_average_end"] = os.getloadavg()
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
