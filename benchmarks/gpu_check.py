r"""One prepared GPU check for LNFMM (issue 13, item 5): run it once on a CUDA machine.

It times ``LNFMMConfig.paper(vocab_size=10324, max_caption_len=20)`` at batch 128:

1. the train step (zero_grad, forward, backward, per-group value clipping, fused Adam) in
   fp32 and under bf16 autocast;
2. caption sampling (``sample_captions``, greedy and beam 2, 100 captions per image):
   captions per second;
3. that DDP with the NCCL backend runs on one GPU (world size 1, a few bf16 steps, finite
   loss, gradients synchronised through the reducer);
4. that fp16 AMP with a ``GradScaler`` runs (finite loss, the scale is a number).

It writes every number to ``--out`` (JSON) and prints a Markdown table for
``benchmarks/RESULTS.md``. Nothing in the test suite needs it. Without CUDA it stops at once
with exit status 2 and says so.

Usage::

    python benchmarks/gpu_check.py --out gpu_check.json          # ~3-5 minutes on one GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--sample-images", type=int, default=64, help="images per sample_captions call")
    parser.add_argument("--num-samples", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device here (torch.cuda.is_available() is False); this check needs one GPU. Nothing was run.",
            file=sys.stderr,
        )
        raise SystemExit(2)

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from flowkit.models import LNFMM, LNFMMConfig

    dev = torch.device("cuda", 0)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    cfg = LNFMMConfig.paper(vocab_size=10324, max_caption_len=20)
    res: dict = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "batch": args.batch,
        "checks": {},
    }

    torch.manual_seed(0)
    model = LNFMM(cfg).to(dev).train()
    res["params_M"] = sum(p.numel() for p in model.parameters()) / 1e6
    opt = torch.optim.Adam(model.optimizer_groups(), fused=True)
    images, captions = _batch(cfg, args.batch, dev)
    for name, dtype in (("fp32 (tf32 matmuls)", None), ("bf16 autocast", torch.bfloat16)):
        t = _timed(_step_fn(model, opt, images, captions, dtype), 3, args.repeats)
        res[f"train_step_s, {name}"] = t
        print(f"train step, batch {args.batch}, {name}: {t * 1e3:.1f} ms", flush=True)

    model.eval()
    test_images = torch.randn(args.sample_images, cfg.image_encoder.feature_dim, device=dev)
    for method in ("greedy", "beam"):
        t = _timed(lambda method=method: model.sample_captions(test_images, args.num_samples, method=method), 1, 3)
        res[f"captions_per_s, {method}"] = args.sample_images * args.num_samples / t
        res[f"images_per_s, {method}"] = args.sample_images / t
        print(f"sample_captions {method}: {args.sample_images * args.num_samples / t:.0f} captions/s", flush=True)

    # DDP with NCCL on one GPU (world size 1)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29513")
    try:
        dist.init_process_group("nccl", rank=0, world_size=1, device_id=dev)
        torch.manual_seed(0)
        ddp_model = DDP(LNFMM(cfg).to(dev).train(), device_ids=[0], find_unused_parameters=True)
        ddp_opt = torch.optim.Adam(ddp_model.module.optimizer_groups(), fused=True)
        losses = [_step_fn(ddp_model, ddp_opt, images, captions, torch.bfloat16)() for _ in range(3)]
        ok = all(map(lambda x: x == x and abs(x) != float("inf"), losses))
        res["checks"]["ddp_nccl_1gpu_bf16"] = {"ok": ok, "losses": losses}
        dist.destroy_process_group()
    except Exception as e:  # report, do not hide: the check failed
        res["checks"]["ddp_nccl_1gpu_bf16"] = {"ok": False, "error": repr(e)}
    print(f"DDP (NCCL, 1 GPU): {res['checks']['ddp_nccl_1gpu_bf16']}", flush=True)

    # fp16 AMP with a GradScaler
    try:
        torch.manual_seed(0)
        m16 = LNFMM(cfg).to(dev).train()
        o16 = torch.optim.Adam(m16.optimizer_groups(), fused=True)
        scaler = torch.amp.GradScaler("cuda")
        losses = [_step_fn(m16, o16, images, captions, torch.float16, scaler)() for _ in range(5)]
        ok = all(map(lambda x: x == x and abs(x) != float("inf"), losses))
        res["checks"]["amp_fp16_gradscaler"] = {"ok": ok, "losses": losses, "scale": float(scaler.get_scale())}
    except Exception as e:
        res["checks"]["amp_fp16_gradscaler"] = {"ok": False, "error": repr(e)}
    print(f"AMP fp16: {res['checks']['amp_fp16_gradscaler']}", flush=True)

    args.out.write_text(json.dumps(res, indent=2))
    print(f"\n| {res['device']}, torch {res['torch']} | value |\n|---|---:|")
    for k, v in res.items():
        if isinstance(v, float):
            print(f"| {k} | {v:.4g} |")
    ok = all(c.get("ok") for c in res["checks"].values())
    print(f"checks: {'all passed' if ok else 'FAILED'}")
    if not ok:
        raise SystemExit(1)
    return res


if __name__ == "__main__":
    main()
