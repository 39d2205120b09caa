r"""LNFMM train-step time, peak memory and caption-sampling throughput.

A train step is what the training engine does: ``zero_grad`` -> forward (the loss of Eq. 10)
-> backward -> per-group gradient value clipping -> Adam step. The time is the median of
``--repeats`` steps after ``--warmup`` steps on one fixed random batch.

Memory: every case runs in a fresh subprocess; "peak RSS" is ``resource.getrusage(RUSAGE_SELF)
.ru_maxrss`` at the end of the case minus the RSS after the imports, i.e. the model,
optimizer state and the largest step's activations (tracemalloc does not see torch's
allocator, and the CPU profiler's memory view misses allocations outside ops).

Usage::

    python benchmarks/lnfmm_step.py                     # small b64, paper b8/b32, sampling
    python benchmarks/lnfmm_step.py --cases small --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_mb() -> float:
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _batch(cfg, b: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    if cfg.pixels:
        images = torch.rand(b, 3, cfg.image_size, cfg.image_size, generator=g)
    else:
        images = torch.randn(b, cfg.image_feature_dim, generator=g)
    L = min(cfg.max_caption_len, 20)
    captions = torch.zeros(b, L, dtype=torch.long)
    lengths = torch.randint(3, L - 1, (b,), generator=g)
    for i, n in enumerate(lengths.tolist()):
        captions[i, 0] = 1
        captions[i, 1 : 1 + n] = torch.randint(4, cfg.vocab_size, (n,), generator=g)
        captions[i, 1 + n] = 2
    return images, captions


def _config(name: str):
    from flowkit.models import LNFMMConfig

    if name == "small":
        return LNFMMConfig.small(vocab_size=42, max_caption_len=20)
    if name == "paper":
        return LNFMMConfig.paper()
    raise ValueError(name)


def _train_case(name: str, batch: int, threads: int, warmup: int, repeats: int, queue) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    from flowkit.models import LNFMM

    base = _rss_mb()
    cfg = _config(name)
    model = LNFMM(cfg).train()
    groups = model.optimizer_groups()
    opt = torch.optim.Adam(groups)
    images, captions = _batch(cfg, batch)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = model(images, captions)
        out["loss"].backward()
        for g in opt.param_groups:
            torch.nn.utils.clip_grad_value_(g["params"], g["clip_value"])
        opt.step()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    params = sum(p.numel() for p in model.parameters())
    queue.put(
        {
            "case": f"train step, {name} ({cfg.image_encoder}), batch {batch}",
            "params_M": params / 1e6,
            "median_s": statistics.median(times),
            "min_s": min(times),
            "peak_rss_mb": _rss_mb() - base,
        }
    )


def _sample_case(threads: int, images_per_call: int, num_samples: int, repeats: int, queue) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    from flowkit.models import LNFMM

    base = _rss_mb()
    cfg = _config("small")
    model = LNFMM(cfg).eval()
    images, _ = _batch(cfg, images_per_call)
    model.sample_captions(images[:2], num_samples)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model.sample_captions(images, num_samples, method="greedy")
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    queue.put(
        {
            "case": f"sample_captions, small, greedy, {num_samples} samples/image, {images_per_call} images/call",
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "median_s": med,
            "min_s": min(times),
            "peak_rss_mb": _rss_mb() - base,
            "images_per_s": images_per_call / med,
        }
    )


def _run(target, *args) -> dict:
    ctx = mp.get_context("spawn")  # a fresh process per case: clean RSS peaks, no shared threads
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="small:64,paper:8,paper:32,sample", help="comma list of name:batch and 'sample'")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--paper-repeats", type=int, default=3)
    parser.add_argument("--sample-images", type=int, default=16)
    parser.add_argument("--num-samples", type=int, default=100)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)

    import torch

    rows = []
    for case in args.cases.split(","):
        if case == "sample":
            rows.append(_run(_sample_case, args.threads, args.sample_images, args.num_samples, args.repeats))
        else:
            name, b = case.split(":")
            repeats = args.paper_repeats if name == "paper" else args.repeats
            warmup = 1 if name == "paper" else args.warmup
            rows.append(_run(_train_case, name, int(b), args.threads, warmup, repeats))
        print(f"done: {rows[-1]['case']}", file=sys.stderr, flush=True)

    print(f"\nMachine: {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
          f"python {platform.python_version()}\n")
    print("| case | params (M) | median (s) | min (s) | peak RSS over baseline (MiB) | throughput |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        thr = f"{r['images_per_s']:.1f} images/s" if "images_per_s" in r else f"{1.0 / r['median_s']:.2f} steps/s"
        print(f"| {r['case']} | {r['params_M']:.2f} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['peak_rss_mb']:.0f} | {thr} |")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
