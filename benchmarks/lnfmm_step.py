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
    python benchmarks/lnfmm_step.py --sampling --threads 1   # paper-config captions vs matmul rate
    python benchmarks/lnfmm_step.py --profile-train --threads 1   # train step vs its own matmuls
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
        images = torch.rand(b, *cfg.image_shape, generator=g)
    else:
        images = torch.randn(b, cfg.image_encoder.feature_dim, generator=g)
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
            "case": f"train step, {name} ({cfg.image_encoder.kind}), batch {batch}",
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


@__import__("torch").no_grad()
def _legacy_decode(decoder, latent, max_len: int, method: str, beam_width: int = 2):
    r"""The decoding loop before issue 13: an ``nn.LSTM`` call per step on [embedding, latent],
    every row decoded to the end of the batch (kept here as the "before" of the same run)."""
    import torch
    from einops import rearrange, repeat

    from flowkit.models.lnfmm.decoders import END, PAD, START

    if method == "greedy":
        n = latent.shape[0]
        out = torch.full((n, max_len), PAD, dtype=torch.long)
        out[:, 0] = START
        done = torch.zeros(n, dtype=torch.bool)
        state, tokens = None, out[:, 0]
        for t in range(1, max_len):
            logp, state = decoder.step(tokens, latent, state)
            logp[:, PAD] = -torch.inf
            nxt = torch.full_like(tokens, END) if t == max_len - 1 else logp.argmax(dim=-1)
            out[:, t] = torch.where(done, torch.full_like(nxt, PAD), nxt)
            done |= nxt == END
            tokens = nxt
            if bool(done.all()):
                break
        return out
    n, k = latent.shape[0], beam_width
    lat = repeat(latent, "n z -> (n k) z", k=k)
    seqs = torch.full((n, k, max_len), PAD, dtype=torch.long)
    seqs[:, :, 0] = START
    scores = torch.full((n, k), -torch.inf)
    scores[:, 0] = 0.0
    done = torch.zeros(n, k, dtype=torch.bool)
    state, tokens = None, seqs[:, :, 0].reshape(-1)
    for t in range(1, max_len):
        logp, state = decoder.step(tokens, lat, state)
        logp = rearrange(logp, "(n k) v -> n k v", k=k).clone()
        v = logp.shape[-1]
        logp[..., PAD] = -torch.inf
        if t == max_len - 1:
            forced = torch.full_like(logp, -torch.inf)
            forced[..., END] = 0.0
            logp = forced
        finished = torch.full_like(logp, -torch.inf)
        finished[..., PAD] = 0.0
        logp = torch.where(done.unsqueeze(-1), finished, logp)
        scores, idx = rearrange(scores.unsqueeze(-1) + logp, "n k v -> n (k v)").topk(k, dim=-1)
        beam, token = idx // v, idx % v
        seqs = torch.gather(seqs, 1, repeat(beam, "n k -> n k l", l=max_len))
        seqs[:, :, t] = token
        done = torch.gather(done, 1, beam) | (token == END)
        flat = rearrange(beam + torch.arange(n).unsqueeze(1) * k, "n k -> (n k)")
        state = (state[0][:, flat], state[1][:, flat])
        tokens = rearrange(token, "n k -> (n k)")
        if bool(done.all()):
            break
    return seqs[:, 0]


def _paper_sampler(model, images, num_samples: int):
    r"""The latents of ``sample_captions`` for ``images`` (drawn once) and the useful FLOPs of
    one decoded row-step: the gate matmul over [hidden, word embedding] plus the output layer,
    ``2 * 4H * (E + H) + 2 * V * H``."""
    import torch
    from einops import rearrange, repeat

    cfg = model.config
    with torch.no_grad():
        shared = model.encode_images(images)["shared_text"]
        spec = model.f_t.sample(num_samples, context=shared)
        lat = rearrange(torch.cat([repeat(shared, "b d -> b s d", s=num_samples), spec], dim=-1), "b s d -> (b s) d")
    E, H, V = cfg.text_decoder.embedding_dim, cfg.text_decoder.hidden, cfg.vocab_size
    return lat, 2 * 4 * H * (E + H) + 2 * V * H


def _measure_sampling(model, images, num_samples: int, repeats: int, legacy: bool) -> list[dict]:
    r"""Greedy and beam-2 decoding of ``images`` x ``num_samples`` latents: time, useful-work
    rate and its ratio to plain matmuls of the decoder's shapes at the call's full batch.

    The rows counted are those the fast decoder computes (a greedy row runs until its end; a
    beam until it finishes or its sequence is done), so both decoders are credited with the
    same work. The reference is ``torch.mm`` of the same shapes (no bias, preallocated
    outputs), timed in the same process between the repeats.
    """
    import torch

    from flowkit.models.lnfmm.decoders import PAD, DecodingStepper
    from flowkit.models.lnfmm.sampling import beam_search, greedy_decode

    cfg, dec = model.config, model.text_decoder
    lat, flops_row = _paper_sampler(model, images, num_samples)
    E, H, V, L = cfg.text_decoder.embedding_dim, cfg.text_decoder.hidden, cfg.vocab_size, cfg.max_caption_len
    n_rows = lat.shape[0]
    counted = {"rows": 0}
    fast_step = DecodingStepper.__call__

    def counting_step(self, tokens, *a):
        counted["rows"] += tokens.shape[0]
        return fast_step(self, tokens, *a)

    x_g, w_g, o_g = torch.randn(n_rows, E + H), torch.randn(4 * H, E + H), torch.empty(n_rows, 4 * H)
    h_o, w_o, o_o = torch.randn(n_rows, H), torch.randn(V, H), torch.empty(n_rows, V)

    def matmul_rate() -> float:
        t = time.perf_counter()
        for _ in range(3):
            torch.mm(x_g, w_g.t(), out=o_g)
            torch.mm(h_o, w_o.t(), out=o_o)
        return 3 * n_rows * flops_row / (time.perf_counter() - t)

    def decode(method: str):
        return greedy_decode(dec, lat, L) if method == "greedy" else beam_search(dec, lat, L, 2)

    rows = []
    for method in ("greedy", "beam"):
        DecodingStepper.__call__ = counting_step
        ids = decode(method)
        DecodingStepper.__call__ = fast_step
        useful, counted["rows"] = counted["rows"] * flops_row, 0
        mean_len = float((ids != PAD).sum(1).float().mean()) - 1  # tokens after start
        for name in ["fast"] + (["before"] if legacy else []):
            dec_t, total_t, rates = [], [], []
            for _ in range(repeats):
                rates.append(matmul_rate())
                t = time.perf_counter()
                decode(method) if name == "fast" else _legacy_decode(dec, lat, L, method)
                dec_t.append(time.perf_counter() - t)
                if name == "fast":
                    t = time.perf_counter()
                    model.sample_captions(images, num_samples, method=method)
                    total_t.append(time.perf_counter() - t)
            rate, d = statistics.median(rates), statistics.median(dec_t)
            row = {
                "case": f"{method}, {name}",
                "images": len(images),
                "samples": num_samples,
                "mean_tokens": mean_len,
                "decode_s": d,
                "matmul_gflops": rate / 1e9,
                "useful_gflops": useful / d / 1e9,
                "ratio": useful / d / rate,
            }
            if total_t:
                tot = statistics.median(total_t)
                row.update(total_s=tot, images_per_s=len(images) / tot, ratio_total=useful / tot / rate)
            rows.append(row)
            print(f"done: sampling {row['case']}", file=sys.stderr, flush=True)
    return rows


def _sampling_case(threads: int, images_per_call: int, num_samples: int, repeats: int, end_bias: float, legacy: bool, queue) -> None:
    r"""Paper-config caption sampling of an untrained model: see :func:`_measure_sampling`."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    from flowkit.models import LNFMM, LNFMMConfig
    from flowkit.models.lnfmm.decoders import END

    cfg = LNFMMConfig.paper(vocab_size=10324, max_caption_len=20)
    model = LNFMM(cfg).eval()
    if end_bias:
        with torch.no_grad():
            model.text_decoder.out.bias[END] += end_bias  # a stand-in for a trained model's caption lengths
    images = torch.randn(images_per_call, cfg.image_encoder.feature_dim, generator=torch.Generator().manual_seed(0))
    queue.put(_measure_sampling(model, images, num_samples, repeats, legacy))


TRAINED_VOCAB = 10324  # the paper's COCO vocabulary: the shapes words are its first ids


def _trained_paper_model(steps: int, test_images: int):
    r"""``LNFMMConfig.paper()`` (vocabulary 10,324, captions of 20) trained for ``steps`` on the
    embedded data's shapes-trunk features, the main job's route; the run folder is cached
    (``$FLOWKIT_CACHE/bench``), so a second call only loads it. Returns ``(model, data)``."""
    from flowkit.data.features import load_shapes_coco
    from flowkit.data.shapes import DEFAULT_SIZES
    from flowkit.evaluation import load_model
    from flowkit.io import cache_dir
    from flowkit.models import LNFMM, LNFMMConfig
    from flowkit.models.lnfmm import LNFMMStep, adapt_config
    from flowkit.training import Trainer, TrainSettings, seed_everything

    sizes = {**DEFAULT_SIZES, "test": test_images}
    data = load_shapes_coco("features", sizes, seed=0).data
    run = cache_dir() / "bench" / f"paper_trained_{steps}"
    if (run / "checkpoint.pt").exists():
        model, state = load_model(run)
        if int(state["step"]) >= steps:
            return model, data
    # the data's words keep their ids; the other ids up to 10,324 are never seen in training
    config = adapt_config(LNFMMConfig.paper(), data).replace(vocab_size=TRAINED_VOCAB, max_caption_len=20)
    seed_everything(0)
    settings = TrainSettings(steps=steps, batch_size=32, seed=0, checkpoint_every=50, device="cpu", progress=True)
    trainer = Trainer(LNFMM(config), data.train, settings, step=LNFMMStep(), out=run, config=config, vocab=data.vocab.to_dict())
    trainer.run(run if (run / "checkpoint.pt").exists() else None)
    return trainer.module.eval(), data


def _trained_sampling_case(threads: int, steps: int, test_images: int, images_per_call: int, num_samples: int, repeats: int, queue) -> None:
    r"""A trained paper-config model: the ratio of :func:`_measure_sampling` on its first test
    images, then images/s of ``sample_captions`` over ``test_images`` x ``num_samples``."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    from flowkit.models.lnfmm.decoders import PAD

    model, data = _trained_paper_model(steps, test_images)
    images = torch.stack([data.test[i]["image"] for i in range(len(data.test))])
    rows = _measure_sampling(model, images[:images_per_call], num_samples, repeats, legacy=False)
    for method in ("greedy", "beam"):
        t, tokens = time.perf_counter(), 0.0
        with torch.no_grad():
            for b in range(0, len(images), images_per_call):
                ids = model.sample_captions(images[b : b + images_per_call], num_samples, method=method)
                tokens += float((ids != PAD).sum() - ids.shape[0] * ids.shape[1])  # tokens after start
        seconds = time.perf_counter() - t
        rows.append(
            {
                "case": f"{method}, {len(images)} x {num_samples}",
                "images": len(images),
                "samples": num_samples,
                "mean_tokens": tokens / (len(images) * num_samples),
                "total_s": seconds,
                "images_per_s": len(images) / seconds,
            }
        )
        print(f"done: {rows[-1]['case']} in {seconds:.0f}s", file=sys.stderr, flush=True)
    queue.put(rows)


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm", "aten::matmul_backward")


def _replay_matmuls(calls, repeats: int = 3) -> float:
    r"""Seconds that the recorded matmul calls (name, input shapes) take as plain calls on
    random contiguous operands: the time of the step's own matmuls (median of ``repeats``)."""
    import torch

    ops = []
    for name, shapes in calls:
        if name == "aten::mm":
            ops.append((torch.mm, [torch.randn(*shapes[0]), torch.randn(*shapes[1])]))
        elif name == "aten::addmm":
            ops.append((torch.addmm, [torch.randn(*shapes[0]), torch.randn(*shapes[1]), torch.randn(*shapes[2])]))
        elif name == "aten::bmm":
            ops.append((torch.bmm, [torch.randn(*shapes[0]), torch.randn(*shapes[1])]))
        elif name == "aten::baddbmm":
            ops.append((torch.baddbmm, [torch.randn(*shapes[i]) for i in range(3)]))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for fn, args in ops:
            fn(*args)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _train_profile_case(batch: int, threads: int, repeats: int, queue) -> None:
    r"""The paper-config train step (features encoder, vocab 10,324, captions of 20) profiled:
    total time against the self time of its matmuls (``aten::mm/addmm/bmm`` forward and
    backward) and of the LSTM (oneDNN's fused RNN kernels, matmuls inside), and the step
    with Adam's three implementations (for-loop, ``foreach=True``, ``fused=True``)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    from flowkit.models import LNFMM, LNFMMConfig

    cfg = LNFMMConfig.paper(vocab_size=10324, max_caption_len=20)
    model = LNFMM(cfg).train()
    images, captions = _batch(cfg, batch)
    result = {"params_M": sum(p.numel() for p in model.parameters()) / 1e6, "variants": {}}

    def make(kind):
        kw = {"foreach": False} if kind == "for-loop" else {"foreach": True} if kind == "foreach" else {"fused": True}
        return torch.optim.Adam(model.optimizer_groups(), **kw)

    def step(opt, parts=None) -> None:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out = model(images, captions)
        t1 = time.perf_counter()
        out["loss"].backward()
        t2 = time.perf_counter()
        for g in opt.param_groups:
            torch.nn.utils.clip_grad_value_(g["params"], g["clip_value"], foreach=True)
        opt.step()
        t3 = time.perf_counter()
        if parts is not None:
            parts.append((t1 - t0, t2 - t1, t3 - t2))

    for kind in ("for-loop", "foreach", "fused"):
        try:
            opt = make(kind)
            step(opt)  # warm-up (and the optimizer state)
        except (RuntimeError, TypeError) as e:
            result["variants"][kind] = {"error": str(e).splitlines()[0]}
            continue
        parts: list = []
        for _ in range(repeats):
            step(opt, parts)
        med = [statistics.median(p[i] for p in parts) for i in range(3)]
        result["variants"][kind] = {
            "forward_s": med[0],
            "backward_s": med[1],
            "optimizer_s": med[2],
            "total_s": statistics.median(sum(p) for p in parts),
        }
        print(f"done: train step with Adam {kind}", file=sys.stderr, flush=True)
        if kind == "foreach":
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                step(opt)
            # the step's own matmuls, replayed outside the profiler with the recorded shapes
            calls = [(e.name, e.input_shapes) for e in prof.events() if e.name in MATMUL_OPS]
            mm_s = _replay_matmuls(calls)
            total = matmul = rnn = 0.0
            for ev in prof.key_averages():
                if ev.key in MATMUL_OPS:
                    matmul += ev.self_cpu_time_total
                elif "rnn" in ev.key or "lstm" in ev.key.lower():
                    rnn += ev.self_cpu_time_total
                total += ev.self_cpu_time_total
            top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]
            result["profile"] = {
                "total_s": total / 1e6,
                "matmul_s": matmul / 1e6,
                "lstm_s": rnn / 1e6,
                "replayed_matmul_s": mm_s,
                "matmul_calls": len(calls),
                "top": [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in top],
            }
        del opt
    queue.put(result)


def _train_profile_main(args) -> dict:
    import torch

    r = _run(_train_profile_case, args.batch_profile, args.threads, args.paper_repeats)
    print(f"\nMachine: {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}")
    print(
        f"LNFMMConfig.paper(vocab_size=10324, max_caption_len=20), {r['params_M']:.1f} M parameters, batch "
        f"{args.batch_profile}: medians of {args.paper_repeats} steps\n"
    )
    print("| Adam | forward (s) | backward (s) | clip + optimizer (s) | step (s) |")
    print("|---|---:|---:|---:|---:|")
    for kind, v in r["variants"].items():
        if "error" in v:
            print(f"| {kind} | not supported: {v['error']} | | | |")
        else:
            print(f"| {kind} | {v['forward_s']:.3f} | {v['backward_s']:.3f} | {v['optimizer_s']:.3f} | {v['total_s']:.3f} |")
    p = r.get("profile")
    if p:
        mm = p["matmul_s"] + p["lstm_s"]
        for kind, v in r["variants"].items():
            if "total_s" in v:
                print(
                    f"step with Adam {kind} / its own matmuls replayed ({p['matmul_calls']} calls, "
                    f"{p['replayed_matmul_s']:.3f} s) = {v['total_s'] / p['replayed_matmul_s']:.2f}"
                )
        print(
            f"\nprofiled step (Adam foreach): {p['total_s']:.3f} s of op self time; matmuls {p['matmul_s']:.3f} s, "
            f"LSTM kernels {p['lstm_s']:.3f} s; step / (matmuls + LSTM) = {p['total_s'] / mm:.2f}; "
            f"step / matmuls only = {p['total_s'] / p['matmul_s']:.2f}"
        )
        for key, t, n in p["top"]:
            print(f"  {key:40s} {t:8.3f} s  ({n} calls)")
    if args.json is not None:
        args.json.write_text(json.dumps(r, indent=2))
    return r


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
    parser.add_argument("--sampling", action="store_true", help="only the paper-config caption sampling against its own matmul rate")
    parser.add_argument("--sampling-images", type=int, default=4, help="images per sample_captions call")
    parser.add_argument("--sampling-repeats", type=int, default=3)
    parser.add_argument(
        "--end-bias", type=float, default=0.0, help="added to the end token's output bias (a stand-in for a trained model's lengths)"
    )
    parser.add_argument(
        "--profile-train", action="store_true", help="only the paper-config train step against its own matmul time, and Adam variants"
    )
    parser.add_argument("--batch-profile", type=int, default=32)
    parser.add_argument("--no-legacy", action="store_true", help="skip the before-issue-13 decoder")
    parser.add_argument(
        "--trained-steps",
        type=int,
        default=0,
        help="with --sampling: a paper-config model trained this many steps on the embedded features (cached) instead of an untrained one",
    )
    parser.add_argument("--test-images", type=int, default=1000, help="with --trained-steps: test images sampled for images/s")
    args = parser.parse_args(argv)

    import torch

    if args.sampling:
        return _sampling_main(args)
    if args.profile_train:
        return _train_profile_main(args)
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

    print(
        f"\nMachine: {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
        f"python {platform.python_version()}\n"
    )
    print("| case | params (M) | median (s) | min (s) | peak RSS over baseline (MiB) | throughput |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        thr = f"{r['images_per_s']:.1f} images/s" if "images_per_s" in r else f"{1.0 / r['median_s']:.2f} steps/s"
        print(f"| {r['case']} | {r['params_M']:.2f} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['peak_rss_mb']:.0f} | {thr} |")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


def _sampling_main(args) -> list[dict]:
    import torch

    if args.trained_steps:
        rows = _run(
            _trained_sampling_case, args.threads, args.trained_steps, args.test_images, args.sampling_images, args.num_samples,
            args.sampling_repeats,
        )  # fmt: skip
        what = f"trained {args.trained_steps} steps on the embedded features"
    else:
        rows = _run(
            _sampling_case, args.threads, args.sampling_images, args.num_samples, args.sampling_repeats, args.end_bias, not args.no_legacy
        )
        what = f"untrained, end bias {args.end_bias}"
    print(
        f"\nMachine: {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
        f"python {platform.python_version()}"
    )
    print(
        f"LNFMMConfig.paper(vocab_size=10324, max_caption_len=20), {what}, {args.sampling_images} images x "
        f"{args.num_samples} samples per call\n"
    )
    print(
        "| decoder | tokens/caption | decode (s) | useful GFLOP/s | matmul GFLOP/s | ratio (decode) | "
        "sample_captions (s) | ratio (whole call) | images/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        tot = f"{r['total_s']:.2f} | {r.get('ratio_total', float('nan')):.2f} | {r['images_per_s']:.2f}" if "total_s" in r else "- | - | -"
        if "decode_s" in r:
            rate = f"{r['decode_s']:.2f} | {r['useful_gflops']:.1f} | {r['matmul_gflops']:.1f} | {r['ratio']:.2f}"
        else:
            rate = "- | - | - | -"
        print(f"| {r['case']} | {r['mean_tokens']:.1f} | {rate} | {tot} |")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
