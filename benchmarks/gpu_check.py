r"""One prepared GPU check for LNFMM (issue 13, item 5): run it once on a CUDA machine.

It times ``LNFMMConfig.paper(vocab_size=10324, max_caption_len=20)`` at batch 128:

1. the train step (zero_grad, forward, backward, per-group value clipping, fused Adam) in
   fp32 and under bf16 autocast;
2. caption sampling (``sample_captions``, greedy and beam 2, 100 captions per image):
   captions per second;
3. that DDP with the NCCL backend runs on one GPU (world size 1, a few bf16 steps, finite
   loss, gradients synchronised through the reducer);
4. that fp16 AMP with a ``GradScaler`` runs (finite loss, the scale is a number);
5. every registered flow layer and base distribution on the GPU in float64: it runs
   ``tests/test_cuda.py`` (the test kit's ``check_transform`` / ``check_base``, and each
   layer's outputs and log-det against the same layer's on the CPU);
6. the library's own CUDA paths through the CLI: ``flowkit train --device cuda`` with bf16 and
   fp16 AMP, a resumed run against a straight one, ``torchrun`` (NCCL, one process) and
   ``flowkit caption --device cuda``, then the GPU-trained run loaded on the CPU.

It writes every number to ``--out`` (JSON) and prints a Markdown table for
``benchmarks/RESULTS.md``. Nothing in the test suite needs it. Without CUDA it stops at once
with exit status 2 and says so.

Usage::

    python benchmarks/gpu_check.py --out gpu_check.json          # ~3-5 minutes on one GPU
    python benchmarks/gpu_check.py --dry-run                      # sections 5-6 on the CPU, tiny
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _batch(cfg, b: int, device):
    import torch

    g = torch.Generator().manual_seed(0)
    images = torch.randn(b, cfg.image_encoder.feature_dim, generator=g)
    L = cfg.max_caption_len
    captions = torch.zeros(b, L, dtype=torch.long)
    lengths = torch.randint(3, L - 1, (b,), generator=g)
    for i, n in enumerate(lengths.tolist()):
        captions[i, 0] = 1
        captions[i, 1 : 1 + n] = torch.randint(4, cfg.vocab_size, (n,), generator=g)
        captions[i, 1 + n] = 2
    return images.to(device), captions.to(device)


def _timed(fn, warmup: int, repeats: int) -> float:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _step_fn(model, opt, images, captions, amp_dtype=None, scaler=None):
    import torch

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = model(images, captions)["loss"]
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        for g in opt.param_groups:
            if g.get("clip_value") is not None:
                torch.nn.utils.clip_grad_value_(g["params"], g["clip_value"])
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        return float(loss.detach())

    return step


def _finite(xs: list[float]) -> bool:
    return all(x == x and abs(x) != float("inf") for x in xs)


def _paper_timings(cfg, args, dev, res: dict) -> None:
    import torch

    from flowkit.models import LNFMM

    torch.manual_seed(0)
    model = LNFMM(cfg).to(dev).train()
    res["params_M"] = sum(p.numel() for p in model.parameters()) / 1e6
    opt = torch.optim.Adam(model.optimizer_groups(), fused=True)
    images, captions = _batch(cfg, args.batch, dev)
    for name, dtype in (("fp32 (tf32 matmuls)", None), ("bf16 autocast", torch.bfloat16)):
        t = _timed(_step_fn(model, opt, images, captions, dtype), 3, args.repeats)
        res[f"train_step_s, {name}"] = t
        res[f"pairs_per_s, {name}"] = args.batch / t
        print(f"train step, batch {args.batch}, {name}: {t * 1e3:.1f} ms", flush=True)
    res["peak_memory_GiB, train"] = torch.cuda.max_memory_allocated() / 2**30
    for tag, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        _profile_step(_step_fn(model, opt, images, captions, dtype), tag, args.out.parent, res)
    model.eval()
    test_images = torch.randn(args.sample_images, cfg.image_encoder.feature_dim, device=dev)
    for method in ("greedy", "beam"):
        t = _timed(lambda method=method: model.sample_captions(test_images, args.num_samples, method=method), 1, 3)
        res[f"captions_per_s, {method}"] = args.sample_images * args.num_samples / t
        res[f"images_per_s, {method}"] = args.sample_images / t
        print(f"sample_captions {method}: {args.sample_images * args.num_samples / t:.0f} captions/s", flush=True)


def _profile_step(step, tag: str, folder: Path, res: dict) -> None:
    """One profiled train step: kernel launches, the GPU's busy time against the wall time,
    and the top kernels (``profile_<tag>.txt`` beside ``--out``)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        step()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t
    averages = prof.key_averages()
    on_gpu = [e for e in prof.events() if str(e.device_type).endswith("CUDA")]  # kernels and copies
    busy_us = sum(e.time_range.elapsed_us() for e in on_gpu)
    kernels = len(on_gpu)
    res[f"profiled_step_kernels, {tag}"] = float(kernels)
    res[f"profiled_step_gpu_busy_fraction, {tag}"] = busy_us / 1e6 / wall
    (folder / f"profile_{tag}.txt").write_text(averages.table(sort_by="self_device_time_total", row_limit=25))
    print(f"profiled {tag} step: {kernels} kernels, GPU busy {busy_us / 1e6 / wall:.0%} of {wall * 1e3:.0f} ms", flush=True)


def _raw_ddp_and_amp(cfg, args, dev, res: dict) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from flowkit.models import LNFMM

    images, captions = _batch(cfg, args.batch, dev)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29513")
    try:
        dist.init_process_group("nccl", rank=0, world_size=1, device_id=dev)
        torch.manual_seed(0)
        ddp_model = DDP(LNFMM(cfg).to(dev).train(), device_ids=[0], find_unused_parameters=True)
        ddp_opt = torch.optim.Adam(ddp_model.module.optimizer_groups(), fused=True)
        losses = [_step_fn(ddp_model, ddp_opt, images, captions, torch.bfloat16)() for _ in range(3)]
        res["checks"]["ddp_nccl_1gpu_bf16"] = {"ok": _finite(losses), "losses": losses}
        dist.destroy_process_group()
    except Exception as e:  # report, do not hide: the check failed
        res["checks"]["ddp_nccl_1gpu_bf16"] = {"ok": False, "error": repr(e)}
    print(f"DDP (NCCL, 1 GPU): {res['checks']['ddp_nccl_1gpu_bf16']}", flush=True)
    try:
        torch.manual_seed(0)
        m16 = LNFMM(cfg).to(dev).train()
        o16 = torch.optim.Adam(m16.optimizer_groups(), fused=True)
        scaler = torch.amp.GradScaler("cuda")
        losses = [_step_fn(m16, o16, images, captions, torch.float16, scaler)() for _ in range(5)]
        res["checks"]["amp_fp16_gradscaler"] = {"ok": _finite(losses), "losses": losses, "scale": float(scaler.get_scale())}
    except Exception as e:
        res["checks"]["amp_fp16_gradscaler"] = {"ok": False, "error": repr(e)}
    print(f"AMP fp16: {res['checks']['amp_fp16_gradscaler']}", flush=True)


def _flow_layers(res: dict, dry_run: bool) -> None:
    """Every registered layer and base distribution on the GPU: ``tests/test_cuda.py`` (the test
    kit on CUDA in float64, outputs and log-dets against the CPU's), run once here."""
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests" / "test_cuda.py")]
    proc = subprocess.run(command, cwd=root, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    summary = lines[-1] if lines else proc.stderr[-500:]
    ran = "passed" in summary and "skipped" not in summary  # on the CPU (dry run) every test skips
    res["checks"]["flow_layers_float64"] = {"ok": proc.returncode == 0 and (ran or dry_run), "pytest": summary}
    print(f"flow layers and bases (tests/test_cuda.py): {summary}", flush=True)


def _flowkit(args: list[str], cwd: Path, torchrun: bool = False) -> subprocess.CompletedProcess:
    pre = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"] if torchrun else [sys.executable]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.run([*pre, "-m", "flowkit", *args], cwd=cwd, env=env, capture_output=True, text=True)


def _cli_check(res: dict, key: str, proc: subprocess.CompletedProcess, **extra) -> bool:
    ok = proc.returncode == 0 and extra.pop("ok", True)
    res["checks"][key] = {"ok": ok, **extra} if ok else {"ok": False, "rc": proc.returncode, "stderr": proc.stderr[-1500:], **extra}
    print(f"{key}: {res['checks'][key]}", flush=True)
    return ok


def _weights_diff(a: Path, b: Path) -> float:
    import torch

    sa = torch.load(a / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    sb = torch.load(b / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].is_floating_point())


def _library_cli(device: str, steps: int, res: dict) -> None:
    """The CLI's CUDA paths on the embedded shapes data (small preset)."""
    work = Path(tempfile.mkdtemp(prefix="flowkit_gpu_"))
    common = ["train", "--data", "shapes", "--device", device, "--no-progress", "--checkpoint-every", str(steps // 2)]
    half = steps // 2
    for amp in ("bf16", "fp16"):
        p = _flowkit([*common, "--amp", amp, "--steps", str(steps), "--out", f"straight_{amp}"], work)
        if _cli_check(res, f"cli_train_{amp}", p):
            log = (work / f"straight_{amp}" / "log.csv").read_text().splitlines()
            res["checks"][f"cli_train_{amp}"]["last_log"] = log[-1]
    p = _flowkit([*common, "--amp", "bf16", "--steps", str(half), "--out", "resumed"], work)
    if _cli_check(res, "cli_train_half", p) and "ok" in res["checks"].get("cli_train_bf16", {}):
        p = _flowkit(["train", "--resume", "resumed", "--steps", str(steps), "--no-progress"], work)
        diff = _weights_diff(work / "straight_bf16", work / "resumed") if p.returncode == 0 else float("nan")
        _cli_check(res, "cli_resume_vs_straight", p, max_weight_diff=diff, bit_exact=diff == 0.0)
    p = _flowkit([*common[:-2], "--amp", "bf16", "--steps", str(half), "--out", "ddp"], work, torchrun=True)
    _cli_check(res, "cli_torchrun_1proc", p)
    for key, where in (("cli_caption_on_device", device), ("cli_caption_cpu", "cpu")):
        out = work / f"{key}.json"
        p = _flowkit(
            [
                "caption",
                "--checkpoint",
                "straight_bf16",
                "--device",
                where,
                "--limit",
                "8",
                "--num-samples",
                "10",
                "--show",
                "0",
                "--no-progress",
                "--out",
                str(out),
            ],
            work,
        )
        n = len(json.loads(out.read_text())) if out.exists() else 0
        _cli_check(res, key, p, images=n, ok=n == 8)


def _section(name: str, run, res: dict) -> None:
    """Runs one section; a crash is recorded as a failed check and the next section still runs."""
    t = time.perf_counter()
    try:
        run()
    except Exception as e:
        res["checks"][f"{name}_crashed"] = {"ok": False, "error": repr(e)[:1500]}
        print(f"{name} crashed: {e!r}", flush=True)
    res[f"section_s, {name}"] = time.perf_counter() - t


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--sample-images", type=int, default=64, help="images per sample_captions call")
    parser.add_argument("--num-samples", type=int, default=100)
    parser.add_argument("--cli-steps", type=int, default=200, help="steps of each CLI training run (section 6)")
    parser.add_argument("--sections", default="paper,layers,cli", help="which to run: paper (timings, raw DDP and AMP), layers, cli")
    parser.add_argument("--dry-run", action="store_true", help="run sections 5-6 on the CPU (tiny) to check this script")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    args = parser.parse_args(argv)

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device here (torch.cuda.is_available() is False); this check needs one GPU. Nothing was run.",
            file=sys.stderr,
        )
        raise SystemExit(2)

    from flowkit.models import LNFMMConfig

    dev = torch.device("cpu") if args.dry_run else torch.device("cuda", 0)
    res: dict = {
        "device": "cpu (dry run)" if args.dry_run else torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "batch": args.batch,
        "checks": {},
    }
    if not args.dry_run:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        cfg = LNFMMConfig.paper(vocab_size=10324, max_caption_len=20)
        if "paper" in args.sections:
            _section("paper_timings", lambda: _paper_timings(cfg, args, dev, res), res)
            _section("raw_ddp_and_amp", lambda: _raw_ddp_and_amp(cfg, args, dev, res), res)
    if "layers" in args.sections:
        _section("flow_layers", lambda: _flow_layers(res, args.dry_run), res)
    if "cli" in args.sections:
        cli_device, cli_steps = ("cpu", 20) if args.dry_run else ("cuda", args.cli_steps)
        _section("library_cli", lambda: _library_cli(cli_device, cli_steps, res), res)

    args.out.write_text(json.dumps(res, indent=2))
    print(f"\n| {res['device']}, torch {res['torch']} | value |\n|---|---:|")
    for k, v in res.items():
        if isinstance(v, float):
            print(f"| {k} | {v:.4g} |")
    ok = all(c.get("ok") for c in res["checks"].values())
    print(f"checks: {'all passed' if ok else 'FAILED: ' + ', '.join(k for k, c in res['checks'].items() if not c.get('ok'))}")
    if not ok:
        raise SystemExit(1)
    return res


if __name__ == "__main__":
    main()
