"""DistributedDataParallel under torchrun: two CPU processes (gloo) train the tiny LNFMM for a
few steps; both replicas must end with exactly the same parameters, different from the start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is not available"
)

TINY = dict(
    shared_dim=8,
    image_specific_dim=4,
    text_specific_dim=4,
    image_encoder_hidden=16,
    conv_encoder_channels=4,
    word_embedding_dim=8,
    text_encoder_hidden=8,
    text_encoder_layers=1,
    decoder_hidden=16,
    decoder_embedding_dim=8,
    generator_channels=4,
    discriminator_channels=4,
    fs_layers=2,
    fs_hidden=16,
    fv_layers=2,
    fv_hidden=16,
    ft_layers=2,
    ft_hidden=16,
    image_encoder_init_steps=10,
)

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    from flowkit.data import load_caption_data
    from flowkit.models import LNFMMConfig
    from flowkit.training import TrainSettings, train

    out = sys.argv[1]
    data = load_caption_data("shapes", sizes={"train": 4, "val": 1, "test": 1}, max_len=12)
    config = LNFMMConfig.small(**json.loads(sys.argv[2]))
    settings = TrainSettings(steps=3, batch_size=2, seed=0, device="cpu", progress=False, log="csv")
    trainer = train(config, data, settings, out=os.path.join(out, "run"))
    rank = int(os.environ["RANK"])
    seen = [i for b in range(3) for i in trainer._epoch_batches(0)[b % trainer.batches_per_epoch()]]
    torch.save({"state": trainer.module.state_dict(), "world": trainer.ctx.world_size, "seen": seen},
               os.path.join(out, f"rank{rank}.pt"))
    """
)


def test_ddp_replicas_agree_after_training(tmp_path):
    from flowkit.data import load_caption_data
    from flowkit.models import LNFMM, LNFMMConfig
    from flowkit.training import adapt_config, load_checkpoint, read_csv_log, seed_everything

    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FLOWKIT_TEST_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        str(tmp_path),
        json.dumps(TINY),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world"] == r1["world"] == 2
    # each rank trained on its own half of the data
    assert not set(r0["seen"]) & set(r1["seen"])
    assert r0["state"].keys() == r1["state"].keys()
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k

    # the same seed in one process gives the initial weights: training moved them
    data = load_caption_data("shapes", sizes={"train": 4, "val": 1, "test": 1}, max_len=12)
    seed_everything(0)
    initial = LNFMM(adapt_config(LNFMMConfig.small(**TINY), data)).state_dict()
    moved = [k for k in initial if initial[k].is_floating_point() and not torch.equal(initial[k], r0["state"][k])]
    assert len(moved) > len(initial) // 2

    # rank 0 alone wrote the run folder; the checkpoint holds both ranks' RNG states
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["step"] == 3 and ckpt["training"]["world_size"] == 2 and len(ckpt["rng"]) == 2
    for k in r0["state"]:
        assert torch.equal(ckpt["model"][k], r0["state"][k]), k
    assert [r["step"] for r in read_csv_log(tmp_path / "run")] == [1, 2, 3]
