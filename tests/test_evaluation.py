r"""flowkit.evaluation: captioning (Tables 1-3 + exact judges), text-to-image (Table 6), report."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from flowkit.data import load_caption_data
from flowkit.data.judges import ClassifierConfig, train_attribute_classifier
from flowkit.data.shapes import ShapesCaptions, export_coco
from flowkit.evaluation import (
    CaptioningResult,
    CaptionSamples,
    ConsensusResult,
    DiversityResult,
    GroundTruthResult,
    ImageDiversityResult,
    ImageJudgeResult,
    ImageSamples,
    IvomResult,
    OracleResult,
    TextToImageResult,
    consensus_table,
    diversity_table,
    evaluate_captioning,
    evaluate_text_to_image,
    format_captioning_table,
    generate_captions,
    ground_truth_table,
    image_diversity_table,
    image_judge_table,
    ivom_table,
    load_model,
    load_run,
    oracle_table,
    sample_captioning,
    sample_text_to_image,
    scenes_from_export,
    write_report,
)
from flowkit.evaluation.frontier import caption_frontier, lnfmm_settings
from flowkit.evaluation.text_to_image import _ivom, encode_captions_text
from flowkit.models import LNFMM, LNFMMConfig
from flowkit.training import TrainSettings, adapt_config, train

pytestmark = pytest.mark.filterwarnings("ignore:SPICE is left out")
SIZES = {"train": 40, "val": 3, "test": 4}


@pytest.fixture(scope="module")
def data():
    return load_caption_data("shapes", sizes=SIZES, seed=0)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    meta = {"data": {"data": "shapes", "sizes": SIZES, "data_seed": 0}, "preset": "small"}
    trainer = train(
        LNFMMConfig.small(image_encoder_init_steps=10), data, TrainSettings(steps=4, batch_size=8, progress=False), out=out, meta=meta
    )
    return trainer.module.eval(), out


@pytest.fixture(scope="module")
def judge():
    return train_attribute_classifier(ClassifierConfig(train_size=128, test_size=16, epochs=1, batch_size=32))


def test_generate_captions_shapes_and_seed(run, data):
    model, _ = run
    a = generate_captions(model, data.test, data.vocab, num_samples=5, limit=2, progress=False, seed=3)
    b = generate_captions(model, data.test, data.vocab, num_samples=5, limit=2, progress=False, seed=3)
    assert list(a) == data.test.image_ids[:2]
    assert all(len(v) == 5 and all(isinstance(c, str) for c in v) for v in a.values())
    assert a == b  # seeded sampling is reproducible
    one = generate_captions(model, data.test, data.vocab, num_samples=2, image_ids=[data.test.image_ids[3]], progress=False)
    assert list(one) == [data.test.image_ids[3]]
    with pytest.raises(ValueError, match="not in this split"):
        generate_captions(model, data.test, data.vocab, num_samples=1, image_ids=[123], progress=False)
    with pytest.raises(ValueError, match="num_samples"):
        generate_captions(model, data.test, data.vocab, num_samples=0, progress=False)


def test_evaluate_captioning_with_known_candidates(run, data):
    r"""The references themselves plus one false caption per image as candidates pin the judges
    and the oracle: 5 of 6 captions are true, coverage equals the references' own coverage,
    and the oracle BLEU-4 is 1 (a candidate equals a reference)."""
    model, _ = run
    refs = {i: list(data.references["test"][i]) for i in data.test.image_ids}
    false = "a red circle and a red circle and a red circle"
    res = evaluate_captioning(model, data, candidates={i: v + [false] for i, v in refs.items()}, k=5, m=10, progress=False, figure_images=0)
    gt = res["ground_truth"]
    assert gt["accuracy"] == pytest.approx(5 / 6)
    assert gt["coverage"] == pytest.approx(gt["reference_coverage"]) and gt["coverage"] > 0
    assert res["oracle"]["Bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert res["num_samples"] == 6 and res["num_images"] == len(refs)


def test_evaluate_captioning_decodes_each_latent_as_asked(run, data):
    r"""A recipe's beam decoding reaches the sampler and the record: the samples are those of
    generate_captions with the same beams (not greedy ones), and results and report say so."""
    model, _ = run
    how = {"method": "beam", "beam_width": 3}
    res = evaluate_captioning(model, data, num_samples=4, limit=2, k=3, m=4, progress=False, seed=1, figure_images=0, **how)
    beams = generate_captions(model, data.test, data.vocab, num_samples=4, limit=2, progress=False, seed=1, **how)
    assert res.samples.candidates == beams
    assert beams != generate_captions(model, data.test, data.vocab, num_samples=4, limit=2, progress=False, seed=1)  # not greedy
    payload = res.to_json()
    assert (payload["method"], payload["beam_width"]) == ("beam", 3)
    assert "beam-3 decoding" in format_captioning_table(payload)
    greedy = evaluate_captioning(model, data, num_samples=4, limit=2, k=3, m=4, progress=False, seed=1, figure_images=0)
    assert "beam_width" not in greedy.to_json() and "greedy decoding" in format_captioning_table(greedy.to_json())
    points = caption_frontier(model, data, lnfmm_settings([1.0], **how), num_samples=4, limit=2, seed=1)
    assert points[0].accuracy == pytest.approx(res["ground_truth"]["accuracy"])


@pytest.fixture(scope="module")
def captioning(run, data):
    r"""One evaluation of the tiny model, shared by the tests that read it."""
    return evaluate_captioning(run[0], data, num_samples=6, limit=3, k=5, m=10, progress=False, seed=0)


def test_evaluate_captioning_model_and_report(captioning, tmp_path):
    res = captioning
    for table in ("oracle", "consensus"):
        assert {"Bleu_1", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"} <= set(res[table])
        assert all(v >= 0 and math.isfinite(v) for v in res[table].values())
    # the oracle takes the best of all candidates, consensus scores one of them
    for key in ("ROUGE_L", "CIDEr"):
        assert res["oracle"][key] >= res["consensus"][key] - 1e-9
    d = res["diversity"]
    assert 0 < d["unique"] <= 100 and 0 <= d["novel"] <= 15 and 0 <= d["div1"] <= 1
    assert res["rerank_features"] == "shared" and res["num_samples"] == 6
    assert all(0 <= v <= 1 for v in res["ground_truth"].values())
    assert all(len(v) == 5 for v in res["ranked"].values()) and all(len(v) == 6 for v in res["samples"].values())
    assert all(set(res["ranked"][i]) <= set(res["samples"][i]) for i in res["ranked"])

    paths = write_report({"captioning": res, "meta": {"note": "test"}}, tmp_path / "report")
    md = paths["markdown"].read_text()
    assert "Table 1 (oracle)" in md and "Table 3 (diversity)" in md and "6 sampled captions per image" in md
    payload = json.loads(paths["json"].read_text())
    assert payload["captioning"]["oracle"]["CIDEr"] == pytest.approx(res["oracle"]["CIDEr"])
    assert "_figure" not in payload["captioning"] and "samples" not in payload["captioning"]
    assert json.loads(paths["captions"].read_text())["samples"] == res["samples"]
    assert paths["captions_figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_text_to_image(run, data, judge, tmp_path):
    model, _ = run
    res = evaluate_text_to_image(
        model, data, num_captions=2, num_samples=3, classifier=judge, ivom_restarts=1, ivom_steps=2, progress=False
    )
    assert res["num_captions"] == 2 and res["num_samples"] == 3
    assert res["captions"] == [data.references["test"][i][0] for i in data.test.image_ids[:2]]
    assert 1.0 - 1e-9 <= res["inception_score"] <= 48 + 1e-9
    assert 0 <= res["ivom"] <= 1 and "f_v" in res["ivom_variable"]
    assert res["pixel_diversity"] >= 0 and 0 <= res["caption_accuracy"] <= 1 and 0 <= res["reference_accuracy"] <= 1
    if res["lpips"] is None:  # no lpips here: the stand-in is named as such
        assert "not LPIPS" in res["diversity_metric"] and res["diversity"] == res["pixel_diversity"]
    paths = write_report({"text_to_image": res}, tmp_path)
    assert "Table 6" in paths["markdown"].read_text()
    assert json.loads(paths["json"].read_text())["text_to_image"]["num_samples"] == 3
    assert paths["images_figure"].read_bytes()[:4] == b"\x89PNG"


def assert_plain_json(x) -> None:
    r"""``x`` holds only plain JSON types (no tensors, numpy values or NaN) and dumps strictly."""
    json.dumps(x, allow_nan=False)
    if isinstance(x, dict):
        assert all(isinstance(k, str) for k in x)
        for v in x.values():
            assert_plain_json(v)
    elif isinstance(x, list):
        for v in x:
            assert_plain_json(v)
    else:
        assert x is None or type(x) in (str, int, float, bool), type(x)


def test_caption_tables_one_at_a_time(run, data, captioning):
    r"""Each table is a function of one set of samples; together they give what
    evaluate_captioning gives for the same seed, and every result is plain JSON."""
    model, _ = run
    samples = sample_captioning(model, data, num_samples=6, limit=3, seed=0, progress=False)
    assert isinstance(samples, CaptionSamples) and samples.image_ids == data.test.image_ids[:3]
    assert samples.num_samples == 6 and all(len(v) == 6 for v in samples.candidates.values())
    assert samples.references == {i: list(data.references["test"][i]) for i in samples.image_ids}
    assert samples.pixels is not None and samples.pixels(samples.image_ids[0]).shape == (3, 64, 64)

    oracle = oracle_table(samples)
    assert isinstance(oracle, OracleResult) and oracle["CIDEr"] == oracle.scores["CIDEr"] >= 0
    consensus = consensus_table(model, data, samples, k=5, m=10)
    assert isinstance(consensus, ConsensusResult) and (consensus.k, consensus.m, consensus.features) == (5, 10, "shared")
    assert all(sorted(consensus.ranked[i]) == sorted(samples.candidates[i]) for i in samples.image_ids)
    assert consensus.top1 == {i: r[0] for i, r in consensus.ranked.items()}
    diversity = diversity_table(consensus, data.train_captions, best_n=5)
    assert isinstance(diversity, DiversityResult) and diversity.best_n == 5
    assert diversity.ranked == consensus.best(5) and set(diversity) == {"unique", "novel", "mbleu4", "div1", "div2"}
    truth = ground_truth_table(samples, consensus, data.scenes, best_n=5)
    assert isinstance(truth, GroundTruthResult) and all(0 <= v <= 1 for v in truth.to_json().values())
    assert list(truth) == ["accuracy", "coverage", "top1_accuracy", "best_n_accuracy", "best_n_coverage", "reference_coverage"]
    for table in (oracle, consensus, diversity, truth):
        assert_plain_json(table.to_json())
    with pytest.raises(ValueError, match="no scenes"):
        ground_truth_table(samples, consensus, {})
    with pytest.raises(ValueError, match="rerank_features"):
        consensus_table(model, data, samples, features="pixels")

    res = captioning  # evaluate_captioning with the same settings and seed
    assert isinstance(res, CaptioningResult) and res.samples.candidates == samples.candidates
    assert (res["oracle"], res["consensus"], res["diversity"]) == (oracle.to_json(), consensus.to_json(), diversity.to_json())
    assert res["ground_truth"] == truth.to_json() and res["ranked"] == {str(i): v for i, v in diversity.ranked.items()}
    assert_plain_json(res.to_json())
    assert dict(res) == res.to_json() and "ground_truth" in res and res.get("spice_note") is None
    assert res.figure_ids == samples.image_ids  # 3 images < figure_images=6


def test_text_to_image_tables_one_at_a_time(run, data, judge):
    model, _ = run
    samples = sample_text_to_image(model, data, num_captions=2, num_samples=3, progress=False)
    assert isinstance(samples, ImageSamples) and samples.images.shape == (2, 3, 3, 64, 64) and samples.num_samples == 3
    assert samples.source_image_ids == data.test.image_ids[:2] and samples.targets.shape == (2, 3, 64, 64)
    judged = image_judge_table(samples, judge)
    assert isinstance(judged, ImageJudgeResult) and 0 <= judged.caption_accuracy <= 1 and judged.reference_accuracy is not None
    assert len(judged.free_attribute_spread_per_caption) == 2
    ivom = ivom_table(model, samples, restarts=1, steps=2)
    assert isinstance(ivom, IvomResult) and 0 <= ivom["ivom"] <= 1 and (ivom.restarts, ivom.steps) == (1, 2)
    diversity = image_diversity_table(samples, lpips="off")
    assert isinstance(diversity, ImageDiversityResult) and diversity.lpips is None and diversity["diversity"] == diversity.pixel_diversity
    for table in (judged, ivom, diversity):
        assert_plain_json(table.to_json())

    res = evaluate_text_to_image(
        model, data, num_captions=2, num_samples=3, classifier=judge, ivom_restarts=1, ivom_steps=2, lpips="off", progress=False
    )
    assert isinstance(res, TextToImageResult) and torch.equal(res.samples.images, samples.images)  # the same seed, the same samples
    assert res["caption_accuracy"] == judged.caption_accuracy and res["ivom"] == ivom.mse and res["notes"] == []
    assert_plain_json(res.to_json())

    given = sample_text_to_image(model, data, captions=["a red circle", "a zebra"], num_samples=2, progress=False)
    assert given.targets is None and given.split is None and given.source_image_ids == []
    with pytest.raises(ValueError, match="held-out"):
        ivom_table(model, given)
    with pytest.raises(ValueError, match="shapes grammar"):
        image_judge_table(given, judge)
    with pytest.raises(ValueError, match="lpips"):
        image_diversity_table(given, lpips="sometimes")


def test_results_to_json_and_report_of_plain_dicts(captioning, tmp_path):
    r"""NaN becomes None in ``to_json()``; write_report takes results or their JSON (no figures then)."""
    assert OracleResult({"CIDEr": float("nan"), "Bleu_4": 0.5}).to_json() == {"CIDEr": None, "Bleu_4": 0.5}
    assert ImageDiversityResult(0.25, None, "no LPIPS").to_json()["diversity"] == 0.25
    res = captioning
    a = write_report({"captioning": res}, tmp_path / "a")
    b = write_report({"captioning": res.to_json()}, tmp_path / "b")
    assert "captions_figure" in a and "captions_figure" not in b
    strip = lambda p: {k: v for k, v in json.loads(p.read_text())["captioning"].items() if k not in ("timings", "seconds")}  # noqa: E731
    assert strip(a["json"]) == strip(b["json"]) and a["captions"].read_text() == b["captions"].read_text()


def test_ivom_improves_on_its_start_and_handles_ablations(run, data):
    model, _ = run
    ids = encode_captions_text([data.references["test"][i][0] for i in data.test.image_ids[:2]], data.vocab, model.config.max_caption_len)
    targets = torch.stack([data.test[i]["image"] for i in range(2)])
    start = _ivom(model, ids, targets, restarts=1, steps=0, lr=0.05, seed=0, progress=False)
    opt = _ivom(model, ids, targets, restarts=1, steps=5, lr=0.05, seed=0, progress=False)
    assert opt["mse"] <= start["mse"] + 1e-12  # the best over steps includes the start
    cfg = adapt_config(LNFMMConfig.small(), data)
    for variant, word in ((dict(image_specific_dim=0), "none"), (dict(prior="gaussian"), "z'_v")):
        m = LNFMM(cfg.replace(**variant)).eval()
        res = _ivom(m, ids, targets, restarts=2, steps=1, lr=0.05, seed=0, progress=False)
        assert math.isfinite(res["mse"]) and word in res["variable"]


def test_text_to_image_needs_pixels(data):
    cfg = LNFMMConfig.small(vocab_size=len(data.vocab), image_encoder="features", image_feature_dim=8)
    with pytest.raises(ValueError, match="pixels"):
        evaluate_text_to_image(LNFMM(cfg), data, progress=False)


def test_scenes_from_export(tmp_path):
    root = export_coco(tmp_path / "coco", sizes={"train": 3, "val": 2, "test": 2}, seed=5)
    scenes = scenes_from_export(root)
    ds = ShapesCaptions("test", 2, seed=5)
    assert all(scenes[i] == s for i, s in zip(ds.image_ids, ds.scenes)) and len(scenes) == 7
    assert scenes_from_export(tmp_path) is None


def test_load_run_round_trip_and_errors(run, data, tmp_path):
    model, out = run
    loaded, data2, ckpt = load_run(out)
    assert data2.vocab == data.vocab and ckpt["_data_options"]["sizes"] == SIZES
    x = torch.stack([data.test[i]["image"] for i in range(2)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.allclose(loaded.encode_images(x)["shared"], model.encode_images(x)["shared"])
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        load_model(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no checkpoint.pt"):
        load_model(tmp_path)
