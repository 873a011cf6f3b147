"""The real-data path as docs/RECIPES.md documents it, on a COCO-format fixture: every `clipneg` / `train.py` /
`accelerate launch` line of the GPU sections parses; then the NegCLIP recipe runs end to end through the installed
entry points, its commands taken from the doc's code blocks: `clipneg shard` (val2017 / SugarCrepe images dropped)
-> `clipneg generate --text rules --image mined` -> `accelerate launch train.py` (ViT-B-32-quickgelu from open_clip's
config, random weights, 2 steps) -> `clipneg eval sugarcrepe aro-...` -> `clipneg report`.

What an offline CPU changes in the documented commands (in the fixtures below): no `--ref-pretrained openai` /
`--pretrained openai` (open_clip's config with random weights: nothing downloads), `--device cpu`, a few train.py
overrides (2 steps, batch 2, no loader workers, fp32: bf16 autocast on this CPU made a step ~25x slower), and the
report's baseline label to match.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tests.conftest import read_shard_samples

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "docs" / "RECIPES.md"
README = ROOT / "README.md"
DATA = ROOT / "docs" / "DATA.md"
BIN = Path(sys.executable).parent

# The documented layout (`clipneg data download ... --out data/`, COCO by hand under data/coco).
SUGARCREPE_ID = 724  # in clipneg/resources/sugarcrepe_coco_val2017_ids.txt: dropped by default
VAL2017_ID = 139  # a val2017 id SugarCrepe does not use: dropped only with --exclude-ids captions_val2017.json
N_IMAGES = 20  # training images, the two planted ones among them
SUBSETS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
SC_ITEMS = 2  # items per SugarCrepe subset

COLORS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60), "yellow": (235, 210, 30),
          "black": (15, 15, 15), "white": (245, 245, 245), "orange": (245, 140, 20), "purple": (130, 40, 160)}
OBJECTS = ("dog", "cat", "car", "ball", "chair", "table", "cup", "bird", "horse", "bench")
RELATIONS = ("next to", "on top of", "under", "behind", "in front of")


# ---- the recipe commands, read from the doc -------------------------------------------------------------------


def _section(text: str, start: str, end: str) -> str:
    i = text.index(start)
    return text[i:text.index(end, i)]


def _commands(text: str) -> list[list[str]]:
    """Each shell command of the ```bash blocks: continuation lines joined, comments and a trailing '&' or
    '...' (the README's "more options") dropped."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = [t for t in shlex.split(line, comments=True) if t not in ("&", "...")]
            if argv:
                out.append(argv)
    return out


def gpu_recipe_commands() -> list[list[str]]:
    """docs/RECIPES.md from "GPU recipes (ViT-B/32, real data)" through "From raw data to a results table (GPU)"."""
    return _commands(_section(RECIPES.read_text(), "## GPU recipes (ViT-B/32, real data)",
                              "## Launching, resuming, precision"))


def readme_commands() -> list[list[str]]:
    return _commands(_section(README.read_text(), "## Commands", "## Layout"))


def data_commands() -> list[list[str]]:
    """docs/DATA.md's code blocks and its inline `clipneg ... --option ...` commands (not `clipneg data`)."""
    text = DATA.read_text()
    inline = [shlex.split(c.replace("\n", " ")) for c in re.findall(r"`(clipneg [^`]+ --[^`]+)`", text)]
    return _commands(text) + inline


def _split(argv: list[str]) -> tuple[str, list[str], list[str]] | None:
    """("clipneg", launcher args, clipneg args) or ("train", launcher args, train.py args); None for other tools."""
    if argv[0] == "clipneg":
        return "clipneg", [], argv[1:]
    if argv[0] == "python" and argv[1] == "train.py":
        return "train", [], argv[2:]
    if argv[:2] == ["accelerate", "launch"]:
        rest = argv[2:]
        if "train.py" in rest:
            i = rest.index("train.py")
            return "train", rest[:i], rest[i + 1:]
        i = rest.index("-m")
        assert rest[i + 1] == "clipneg.commands", argv
        return "clipneg", rest[:i], rest[i + 2:]
    return None


def _find(commands: list[list[str]], *words: str) -> list[str]:
    """The one documented command holding every one of ``words`` as an argument."""
    found = [c for c in commands if all(w in c for w in words)]
    assert len(found) == 1, f"expected one documented command with {words}, found {found}"
    return list(found[0])


def _drop(argv: list[str], option: str, value: str | None = None) -> list[str]:
    i = argv.index(option)
    assert value is None or argv[i + 1] == value, (option, argv)
    return argv[:i] + argv[i + 2:]


def _set(argv: list[str], option: str, value: str) -> list[str]:
    if option in argv:
        i = argv.index(option)
        return argv[:i + 1] + [value] + argv[i + 2:]
    return [*argv, option, value]


# ---- parsing every documented command -------------------------------------------------------------------------


def _parse_clipneg(argv: list[str]) -> argparse.Namespace:
    from clipneg.commands import build_parser

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse reports the bad option on stderr
        raise AssertionError(f"`clipneg {shlex.join(argv)}` is refused by its parser") from e
    if args.command == "eval":
        from clipneg.eval import registry

        try:
            registry.expand(args.benchmarks)
        except ValueError as e:
            raise AssertionError(f"`clipneg {shlex.join(argv)}`: {e}") from e
    return args


def _parse_launcher(argv: list[str], script: str = "train.py") -> None:
    from accelerate.commands.launch import launch_command_parser

    try:
        launch_command_parser().parse_args([*argv, script])
    except SystemExit as e:
        raise AssertionError(f"`accelerate launch {shlex.join(argv)}` is refused by accelerate") from e


def test_every_documented_real_data_command_parses() -> None:
    """Every `clipneg`, `train.py` and `accelerate launch` line of the RECIPES GPU sections, the README's Commands
    and docs/DATA.md is accepted by its parser (train.py: options, types and the config file it names), without
    running it."""
    import train

    commands = gpu_recipe_commands() + readme_commands() + data_commands()
    seen: dict[str, int] = {"clipneg": 0, "train": 0}
    subcommands = set()
    for argv in commands:
        split = _split(argv)
        if split is None:
            assert argv[0] in ("vllm", "pip"), f"an unknown tool in the docs: {shlex.join(argv)}"
            continue
        kind, launcher, rest = split
        seen[kind] += 1
        if launcher:
            _parse_launcher(launcher)
        if kind == "clipneg":
            subcommands.add(_parse_clipneg(rest).command)
        else:
            rest = [str(ROOT / t) if t.startswith("configs/") else t for t in rest]
            try:
                train.parse_args(rest)
            except Exception as e:
                raise AssertionError(f"`train.py {shlex.join(rest)}` is refused: {e}") from e
    # the documented path is all there: data, shard, generate, train, eval, report
    assert {"data", "shard", "generate", "eval", "report"} <= subcommands, subcommands
    assert seen["clipneg"] >= 20 and seen["train"] >= 10, seen


def test_documented_recipes_and_switches_exist() -> None:
    """The recipe table's config files exist and load; each "Useful switches" flag (every alternative of a|b|c)
    is a train.py option of the right type on top of a GPU recipe."""
    import train

    section = _section(RECIPES.read_text(), "## GPU recipes (ViT-B/32, real data)", "## From raw data")
    recipes = re.findall(r"^\| `([a-z0-9_]+\.yaml)` \|", section, flags=re.M)
    assert len(recipes) == 5, recipes
    for name in recipes:
        cfg, _ = train.parse_args(["--config", str(ROOT / "configs" / name)])
        assert cfg.model.name == "ViT-B-32-quickgelu" and cfg.model.pretrained == "openai", name
    switches = section[section.index("Useful switches:"):]
    flags = [shlex.split(f) for f in re.findall(r"`(--[a-z_.]+ [^`]+)`", switches)]
    assert len(flags) >= 8, flags
    base = ["--config", str(ROOT / "configs" / "negclip_coco_vitb32.yaml")]
    for flag in flags:
        for i, token in enumerate(flag):
            if "|" in token:  # --run.mixed_precision bf16|fp16|no
                for alt in token.split("|"):
                    train.parse_args([*base, *flag[:i], alt, *flag[i + 1:]])
                break
        else:
            train.parse_args([*base, *flag])


# ---- the fixture: COCO captions + images, SugarCrepe / ARO / Karpathy files -----------------------------------


def _draw(path: Path, c1: str, c2: str, rel: str, k: int) -> None:
    """Two coloured shapes, placed by the relation, on a background that varies per image."""
    im = Image.new("RGB", (64, 64), (180 - 7 * k % 90, 200 - 11 * k % 70, 150 + 13 * k % 100))
    d = ImageDraw.Draw(im)
    a, b = ((6, 22, 28, 44), (36, 20, 60, 46))
    if rel in ("on top of", "behind"):
        a, b = (20, 4, 44, 26), (18, 34, 46, 60)
    elif rel == "under":
        a, b = (18, 34, 46, 60), (20, 4, 44, 26)
    d.rectangle(a, fill=COLORS[c1]) if k % 2 else d.ellipse(a, fill=COLORS[c1])
    d.polygon([(b[0], b[3]), (b[2], b[3]), ((b[0] + b[2]) // 2, b[1])], fill=COLORS[c2])
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, "JPEG", quality=90)


def _captions(n: int) -> list[tuple[str, str, str, str, str]]:
    """n distinct (colour, object, relation, colour, object) scenes."""
    rng = random.Random(0)
    scenes: list[tuple[str, str, str, str, str]] = []
    while len(scenes) < n:
        c1, c2 = rng.sample(sorted(COLORS), 2)
        o1, o2 = rng.sample(OBJECTS, 2)
        s = (c1, o1, rng.choice(RELATIONS), c2, o2)
        if s not in scenes:
            scenes.append(s)
    return scenes


def make_coco(data: Path) -> dict:
    """data/coco/annotations/captions_train2014.json + data/coco/train2014/COCO_train2014_*.jpg, with the SugarCrepe
    id and another val2017 id planted, a truncated image and an annotation naming no image; and
    captions_val2017.json listing the two val2017 ids (what --exclude-ids reads)."""
    coco = data / "coco"
    ids = [SUGARCREPE_ID, VAL2017_ID] + [100000 + 37 * i for i in range(N_IMAGES - 2)]
    images, anns = [], []
    scenes = _captions(N_IMAGES)
    for k, (iid, (c1, o1, rel, c2, o2)) in enumerate(zip(ids, scenes, strict=True)):
        name = f"COCO_train2014_{iid:012d}.jpg"
        _draw(coco / "train2014" / name, c1, c2, rel, k)
        images.append({"id": iid, "file_name": name, "width": 64, "height": 64})
        anns.append({"id": 5000 + 2 * k, "image_id": iid, "caption": f"A {c1} {o1} {rel} a {c2} {o2}."})
        if k < 4:  # COCO has several captions per image; the planted SugarCrepe image has two
            anns.append({"id": 5001 + 2 * k, "image_id": iid, "caption": f"a small {c1} {o1} {rel} the big {c2} {o2}"})
    broken = "COCO_train2014_000000999001.jpg"
    good = (coco / "train2014" / images[-1]["file_name"]).read_bytes()
    (coco / "train2014" / broken).write_bytes(good[: len(good) // 3])
    images.append({"id": 999001, "file_name": broken, "width": 64, "height": 64})
    anns.append({"id": 9001, "image_id": 999001, "caption": "A red dog next to a blue cat."})
    anns.append({"id": 9002, "image_id": 999002, "caption": "A green cup on top of a black table."})  # no such image
    (coco / "annotations").mkdir(parents=True)
    (coco / "annotations" / "captions_train2014.json").write_text(json.dumps({"images": images,
                                                                               "annotations": anns}))
    val = {"images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in (SUGARCREPE_ID, VAL2017_ID)],
           "annotations": []}
    (coco / "annotations" / "captions_val2017.json").write_text(json.dumps(val))
    return {"annotations": len(anns), "per_image": {i: sum(a["image_id"] == i for a in anns) for i in ids},
            "train_images": [coco / "train2014" / im["file_name"] for im in images[:N_IMAGES]], "scenes": scenes}


def make_benchmarks(data: Path, coco: dict) -> dict[str, int]:
    """SugarCrepe (data/sugarcrepe/{subset}.json over data/coco/val2017), ARO VG-Relation and VG-Attribution
    (data/aro/), COCO-Order (data/karpathy/coco_karpathy_test.json over data/coco/val2014), from the same JPEGs."""
    files = coco["train_images"][:4]
    scenes = coco["scenes"][:4]
    val2017 = [f"{i:012d}.jpg" for i in (SUGARCREPE_ID, VAL2017_ID, 285, 632)]
    for src, name in zip(files, val2017, strict=True):
        (data / "coco" / "val2017").mkdir(parents=True, exist_ok=True)
        (data / "coco" / "val2017" / name).write_bytes(src.read_bytes())
        (data / "coco" / "val2014").mkdir(parents=True, exist_ok=True)
        (data / "coco" / "val2014" / f"COCO_val2014_{name}").write_bytes(src.read_bytes())
        (data / "aro" / "images").mkdir(parents=True, exist_ok=True)
        (data / "aro" / "images" / name).write_bytes(src.read_bytes())
    (data / "sugarcrepe").mkdir()
    for subset in SUBSETS:
        items = {}
        for j in range(SC_ITEMS):
            c1, o1, rel, c2, o2 = scenes[j]
            other_obj = next(o for o in OBJECTS if o not in (o1, o2))
            other_rel = next(r for r in RELATIONS if r != rel)
            negative = {"replace_obj": (c1, other_obj, rel, c2, o2), "replace_att": ("purple", o1, rel, c2, o2),
                        "replace_rel": (c1, o1, other_rel, c2, o2), "swap_obj": (c1, o2, rel, c2, o1),
                        "swap_att": (c2, o1, rel, c1, o2)}.get(subset)
            text = (f"A {negative[0]} {negative[1]} {negative[2]} a {negative[3]} {negative[4]}." if negative else
                    f"A {c1} {o1} {rel} a {c2} {o2} and a {other_obj}." if subset == "add_obj" else
                    f"A {c1} {o1} {rel} a wooden {c2} {o2}.")
            items[str(3 * j + 1)] = {"filename": val2017[j], "caption": f"A {c1} {o1} {rel} a {c2} {o2}.",
                                     "negative_caption": text}  # keys skip numbers, as the official files do
        (data / "sugarcrepe" / f"{subset}.json").write_text(json.dumps(items))
    box = {"bbox_x": 0, "bbox_y": 0, "bbox_w": 64, "bbox_h": 64}
    rel = [{"image_path": val2017[j], **box, "relation_name": scenes[j][2],
            "true_caption": f"the {scenes[j][1]} is {scenes[j][2]} the {scenes[j][4]}",
            "false_caption": f"the {scenes[j][4]} is {scenes[j][2]} the {scenes[j][1]}"} for j in range(4)]
    # VG-Attribution's headline counts attribute pairs with 25 items or more: one pair has 25 (one image, encoded once)
    att = [{"image_path": val2017[j], **box, "attributes": [scenes[j][0], scenes[j][3]],
            "true_caption": f"the {scenes[j][0]} {scenes[j][1]} and the {scenes[j][3]} {scenes[j][4]}",
            "false_caption": f"the {scenes[j][3]} {scenes[j][1]} and the {scenes[j][0]} {scenes[j][4]}"}
           for j in [0] * 24 + [0, 1, 2, 3]]
    (data / "aro" / "visual_genome_relation.json").write_text(json.dumps(rel))
    (data / "aro" / "visual_genome_attribution.json").write_text(json.dumps(att))
    karpathy = [{"image": f"val2014/COCO_val2014_{val2017[j]}", "caption": [f"a {c1} {o1} {r} a {c2} {o2}"]}
                for j, (c1, o1, r, c2, o2) in enumerate(scenes[:1])]  # x 5 seeds x 5 options: the slow benchmark
    (data / "karpathy").mkdir()
    (data / "karpathy" / "coco_karpathy_test.json").write_text(json.dumps(karpathy))
    return {"sugarcrepe": SC_ITEMS * len(SUBSETS), "aro-vg-relation": len(rel), "aro-vg-attribution": len(att),
            "aro-coco-order": len(karpathy)}


# ---- running the commands -------------------------------------------------------------------------------------


def _env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "ACCELERATE_"))}
    # no hub, no user-level caches or accelerate config: everything comes from the fixture and open_clip's configs
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(work / "hf"),
               PYTHONPATH=str(ROOT))
    return env


def _localize(argv: list[str]) -> list[str]:
    """The documented command as this machine runs it: the venv's executables, the repository's train.py and
    configs, the doc's relative paths under the work folder (the cwd)."""
    tool, *rest = argv
    exe = {"clipneg": str(BIN / "clipneg"), "accelerate": str(BIN / "accelerate"), "python": sys.executable}[tool]
    rest = [str(ROOT / t) if t == "train.py" or t.startswith("configs/") else t for t in rest]
    return [exe, *rest]


def _run(argv: list[str], work: Path, timeout: float = 240) -> str:
    proc = subprocess.run(_localize(argv), cwd=work, env=_env(work), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{shlex.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def _run_here(argv: list[str], work: Path) -> None:
    """A `clipneg` command in this process (``clipneg.commands.main``, what the entry point calls): the same code
    without a second start of torch and open_clip (about 7 s a process on this machine)."""
    from clipneg.commands import main

    assert argv[0] == "clipneg", argv
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        assert main(argv[1:]) == 0, shlex.join(argv)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("real_path")
    coco = make_coco(work / "data")
    bench = make_benchmarks(work / "data", coco)
    return {"dir": work, "coco": coco, "bench": bench, "docs": gpu_recipe_commands()}


@pytest.fixture(scope="module")
def sharded(work) -> dict:
    """README's `clipneg shard` (SugarCrepe ids dropped by default) and RECIPES's (`--exclude-ids` all val2017)."""
    d = work["dir"]
    readme = _find(readme_commands(), "shard")
    paths = {"captions_train2014.json": "data/coco/annotations/captions_train2014.json",
             "coco/train2014": "data/coco/train2014", "shards/coco": "shards/coco_readme"}
    readme = [paths.get(t, t) for t in readme]
    _run_here(readme, d)
    _run(_find(work["docs"], "shard", "--exclude-ids"), d)
    return {"readme": d / "shards" / "coco_readme", "recipe": d / "shards" / "coco"}


@pytest.fixture(scope="module")
def generated(work, sharded) -> Path:
    """RECIPES's NegCLIP `clipneg generate` (rules + mined) with a random-init reference ViT-B-32-quickgelu."""
    argv = _find(work["docs"], "generate", "--image", "mined")
    argv = _drop(argv, "--ref-pretrained", "openai")  # no weights offline: open_clip's config, random init
    argv = [*_set(argv, "--device", "cpu"), "--no-progress"]
    _run_here(argv, work["dir"])
    return work["dir"] / argv[argv.index("--out") + 1]


@pytest.fixture(scope="module")
def trained(work, generated) -> Path:
    """RECIPES's 1-GPU NegCLIP `accelerate launch train.py` line, 2 steps of batch 2 on the CPU."""
    argv = _find(work["docs"], "train.py", "configs/negclip_coco_vitb32.yaml", "--eval.benchmarks")
    assert argv[argv.index("--data.shards") + 1] == generated.relative_to(work["dir"]).as_posix()
    # `clipneg data download` puts the val2017 images in data/coco/val2017 (the eval commands' --data-root layout)
    assert argv[argv.index("--eval.image_root") + 1] == "data/coco/val2017"
    argv += ["--model.pretrained", "null", "--run.steps", "2", "--data.batch_size", "2", "--data.num_workers", "0",
             "--data.shuffle_buffer", "8", "--optim.warmup_steps", "1", "--run.mixed_precision", "no",
             "--run.save_every", "0", "--run.log_every", "1", "--run.progress", "false"]
    _run(argv, work["dir"], timeout=400)
    return work["dir"] / "runs" / "negclip_coco_vitb32"  # run.out_dir runs, run.name the config's stem


@pytest.fixture(scope="module")
def evaluated(work, trained) -> Path:
    """RECIPES's two `clipneg eval` lines: the export through the entry point, the model it started from (random
    init here) in this process."""
    export, base = [c for c in work["docs"] if c[:2] == ["clipneg", "eval"]]
    assert "local-dir:runs/negclip_coco_vitb32/export" in export, export
    _run([*export, "--device", "cpu", "--no-progress"], work["dir"])
    _run_here([*_drop(base, "--pretrained", "openai"), "--device", "cpu", "--no-progress"], work["dir"])
    return work["dir"] / export[export.index("--out") + 1]


# ---- the assertions -------------------------------------------------------------------------------------------


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


@pytest.mark.slow
def test_shard_drops_the_benchmark_images_and_reconciles(work, sharded) -> None:
    coco = work["coco"]
    per = coco["per_image"]
    for form, dropped_ids in (("readme", [SUGARCREPE_ID]), ("recipe", [SUGARCREPE_ID, VAL2017_ID])):
        m = _manifest(sharded[form])
        leak = m["info"]["source"]["coco_dropped_leakage"]
        assert leak == {"annotations": sum(per[i] for i in dropped_ids), "images": len(dropped_ids)}, form
        # every annotation is an input or a dropped benchmark caption; every input is written or quarantined
        assert m["counts"]["inputs"] + leak["annotations"] == coco["annotations"], form
        assert m["counts"]["inputs"] == m["counts"]["written"] + m["counts"]["quarantined"], form
        assert m["counts"]["quarantined"] == 2, m["quarantine_reasons"]
        quarantine = [json.loads(x) for x in (sharded[form] / "quarantine.jsonl").read_text().splitlines()]
        assert len(quarantine) == 2 and sum(m["quarantine_reasons"].values()) == 2
        assert [q["key"] for q in quarantine] == ["000000999001_9001", "000000999002_9002"], quarantine
        assert quarantine[0]["reason"].startswith("corrupt image") and "not in images[]" in quarantine[1]["reason"]
        samples = read_shard_samples(sharded[form])
        assert len(samples) == m["counts"]["written"]
        kept_ids = {s.meta["coco_image_id"] for s in samples}
        assert not kept_ids & set(dropped_ids), form
        assert len(kept_ids) == N_IMAGES - len(dropped_ids)
        sizes = json.loads((sharded[form] / "sizes.json").read_text())
        assert sum(sizes.values()) == len(samples)
    # the default keeps val2017 images SugarCrepe does not use; --exclude-ids drops them too
    assert VAL2017_ID in {s.meta["coco_image_id"] for s in read_shard_samples(sharded["readme"])}


@pytest.mark.slow
def test_generate_adds_rule_and_mined_negatives_with_provenance(work, sharded, generated) -> None:
    argv = _find(work["docs"], "generate", "--image", "mined")
    kinds = set(argv[argv.index("--kinds") + 1: argv.index("--k-text")])
    m, src = _manifest(generated), _manifest(sharded["recipe"])
    assert m["counts"] == {"inputs": src["counts"]["written"], "written": src["counts"]["written"], "quarantined": 0}
    samples = read_shard_samples(generated)
    assert len(samples) == m["counts"]["written"]
    rules = [t for s in samples for t in s.neg_texts if t.gen == "rules"]
    made = {t.kind for t in rules}
    assert made <= kinds and len(made) >= 4, made  # swap_phrases needs two noun phrases with modifiers to swap
    assert all(len([t for t in s.neg_texts if t.gen == "rules" and t.kind == k]) <= 1 for s in samples for k in kinds)
    assert all(t.text != s.caption for s in samples for t in s.neg_texts)
    # mined: a neighbour's own image and caption, from this dataset, one per sample (--k-image 1)
    captions = {s.caption for s in samples}
    images = {s.image for s in samples}
    for s in samples:
        mined = [im for im in s.neg_images if im.gen == "mined"]
        assert len(mined) == 1 and mined[0].kind == "mined", s.key
        text = s.neg_texts[mined[0].text]
        assert text.kind == "mined" and text.gen == "mined" and text.text in captions and text.text != s.caption
        assert mined[0].data in images and mined[0].data != s.image
    # the manifest counts what the shards hold, per kind, and records the generators' configs
    texts = {}
    for s in samples:
        for t in s.neg_texts:
            texts[t.kind] = texts.get(t.kind, 0) + 1
    assert m["neg_text_kinds"] == texts
    assert m["neg_image_kinds"] == {"mined": len(samples)}
    assert sum(m["stage_stats"]["rules"]["kept"].values()) == len(rules)
    gens = {g["name"] for g in m["info"]["generators"]}
    assert {"rules", "mined"} <= gens, gens
    assert "ViT-B-32-quickgelu" in json.dumps(m["info"]["generators"])


@pytest.mark.slow
def test_negclip_recipe_trains_vitb32_and_exports(work, generated, trained) -> None:
    from clipneg.train.config import load_yaml

    run_dir = trained
    resolved = load_yaml(run_dir / "config.yaml")
    recipe = load_yaml(ROOT / "configs" / "negclip_coco_vitb32.yaml")
    # the recipe's model, loss and optimiser, on the generated shards
    assert resolved["model"]["name"] == "ViT-B-32-quickgelu" and resolved["model"]["pretrained"] is None
    assert all(resolved["loss"][k] == v for k, v in recipe["loss"].items()), resolved["loss"]
    assert all(resolved["optim"][k] == v for k, v in recipe["optim"].items() if k != "warmup_steps")
    assert resolved["data"]["k_text"] == 1 and resolved["data"]["shards"] == "shards/coco_negclip"
    steps = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    train_steps = [s for s in steps if "train/loss" in s]
    assert [s["step"] for s in train_steps] == [1, 2] and train_steps[-1]["train/samples_seen"] == 4
    assert all(s["train/contrastive_loss"] > 0 for s in train_steps)
    export = run_dir / "export"
    cfg = json.loads((export / "open_clip_config.json").read_text())
    assert cfg["model_cfg"]["quick_gelu"] is True and cfg["clipneg"]["activation"] == "quick_gelu"
    assert cfg["clipneg"]["data"] == "shards/coco_negclip" and cfg["clipneg"]["step"] == 2
    assert (export / "open_clip_model.safetensors").stat().st_size > 500e6  # ViT-B/32: 151M fp32 parameters
    # the final evaluation (eval.benchmarks) on the fixture's SugarCrepe
    final = json.loads((run_dir / "eval.json").read_text())
    for s in SUBSETS:
        assert 0 <= final[f"sugarcrepe/{s}"] <= 100


EXPORT_LABEL = "local-dir__runs__negclip_coco_vitb32__export"  # the label `clipneg eval` gives the export
BASE_LABEL = "ViT-B-32-quickgelu"  # the start model's label without --pretrained openai


@pytest.mark.slow
def test_eval_scores_every_benchmark_item(work, trained, evaluated) -> None:
    docs = {}
    for bench, n in work["bench"].items():
        docs[bench] = {p.stem: json.loads(p.read_text()) for p in (evaluated / bench).glob("*.json")}
        assert set(docs[bench]) == {EXPORT_LABEL, BASE_LABEL}, (bench, sorted(docs[bench]))
        for doc in docs[bench].values():
            metrics, counts = doc["metrics"], doc["counts"]
            assert metrics and all(isinstance(v, float | int) and 0 <= v <= 100 for v in metrics.values()), metrics
            if bench == "sugarcrepe":
                assert {s: counts[s]["total"] for s in SUBSETS} == dict.fromkeys(SUBSETS, SC_ITEMS)
                assert counts["micro"]["total"] == n
                assert metrics["macro"] == pytest.approx(sum(metrics[s] for s in SUBSETS) / len(SUBSETS))
            elif bench == "aro-coco-order":
                seeds = [k for k in counts if k.startswith("seed_")]
                assert len(seeds) == 5 and all(counts[k]["total"] == n for k in seeds), counts
            else:
                assert counts["micro"]["total"] == n, counts
            for c in counts.values():
                assert 0 <= c["correct"] <= c["total"]
            assert doc["protocol"]["precision"] == "fp32"
    # the export scores as the trained weights did at the end of training (same data, same fp32 protocol)
    final = json.loads((trained / "eval.json").read_text())
    exported = docs["sugarcrepe"][EXPORT_LABEL]
    for s in SUBSETS:
        assert final[f"sugarcrepe/{s}"] == pytest.approx(exported["metrics"][s]), s
    # the export knows its training data through the shard -> generate -> train chain: COCO, with the SugarCrepe
    # and val2017 images dropped, so no leakage warning
    checks = exported["model"]["training_data_checks"]
    assert checks["uses_coco"] and checks["dropped"] == 2, checks
    assert not [w for w in exported["warnings"] if "PROTOCOLS.md §4" in w], exported["warnings"]


@pytest.mark.slow
def test_leakage_check_follows_the_chain_to_shards_that_kept_val2017(work, sharded, generated, monkeypatch) -> None:
    """The control: the same chain, its first shards written with --keep-val2017, warns on SugarCrepe."""
    from clipneg.eval.model_checks import find_manifests, leakage_findings, leakage_warnings

    from clipneg.commands import main

    d = work["dir"]
    monkeypatch.chdir(d)  # manifests and export records name folders relative to where the commands ran
    argv = _find(work["docs"], "shard", "--exclude-ids")
    argv = _set(_drop(argv, "--exclude-ids"), "--out", "shards/coco_keep")
    assert main([*argv[1:], "--keep-val2017"]) == 0
    chained = json.loads((generated / "manifest.json").read_text())
    chained["info"]["source"]["path"] = "shards/coco_keep"
    (d / "shards" / "neg_keep").mkdir()
    (d / "shards" / "neg_keep" / "manifest.json").write_text(json.dumps(chained))
    findings = leakage_findings(find_manifests("local-dir:runs/x/export", None,
                                               {"export": {"data": "shards/neg_keep"}}))
    assert findings["uses_coco"] and not findings["dropped"], findings
    assert leakage_warnings(findings, "sugarcrepe") and not leakage_warnings(findings, "aro-vg-relation")


@pytest.mark.slow
def test_report_tabulates_the_results(work, evaluated) -> None:
    import csv

    argv = _find(work["docs"], "report")
    argv = _set(argv, "--baseline", BASE_LABEL)  # the documented baseline label needs --pretrained openai
    _run(argv, work["dir"])
    out = work["dir"] / argv[argv.index("--out") + 1]
    summary = (out / "summary.md").read_text()
    assert EXPORT_LABEL in summary and BASE_LABEL in summary and f"Deltas against `{BASE_LABEL}`" in summary
    rows = {r["model"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert set(rows) == {EXPORT_LABEL, BASE_LABEL}
    result = {label: {b: json.loads((evaluated / b / f"{label}.json").read_text())["metrics"]
                      for b in work["bench"]} for label in rows}
    for label, row in rows.items():
        m = result[label]
        assert float(row["SugarCrepe: macro-7"]) == pytest.approx(m["sugarcrepe"]["macro"], abs=1e-4)
        assert float(row["SugarCrepe: replace-obj"]) == pytest.approx(m["sugarcrepe"]["replace_obj"], abs=1e-4)
        assert float(row["ARO: VG-Relation"]) == pytest.approx(m["aro-vg-relation"]["macro"], abs=1e-4)
        assert float(row["ARO: VG-Attribution"]) == pytest.approx(m["aro-vg-attribution"]["macro"], abs=1e-4)
        assert float(row["ARO: COCO-Order"]) == pytest.approx(m["aro-coco-order"]["mean"], abs=1e-4)
    deltas = {r["model"]: r for r in csv.DictReader((out / "summary_delta.csv").open())}
    delta = float(deltas[EXPORT_LABEL]["SugarCrepe: macro-7"])
    assert delta == pytest.approx(result[EXPORT_LABEL]["sugarcrepe"]["macro"] -
                                  result[BASE_LABEL]["sugarcrepe"]["macro"], abs=1e-4)
    assert {p.name for p in (out / "plots").glob("*.png")} == {"sugarcrepe.png", "aro.png"}
