"""The benchmark adapter table behind `clipneg eval`: flags, names, and specs built from a downloaded data root."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest
from clipneg.eval import registry
from clipneg.eval.download import DATASETS

from clipneg.commands.eval import add_arguments

# benchmark family -> its protocol module and runner (what the spec's run closure must call)
MODULES = {
    "sugarcrepe": ("sugarcrepe", "evaluate_sugarcrepe"),
    "aro-vg-relation": ("aro", "evaluate_aro"),
    "aro-vg-attribution": ("aro", "evaluate_aro"),
    "aro-coco-order": ("order", "evaluate_order"),
    "aro-flickr30k-order": ("order", "evaluate_order"),
    "sugarcrepe-pp": ("sugarcrepe_pp", "evaluate_sugarcrepe_pp"),
    "winoground": ("winoground", "evaluate_winoground"),
    "valse": ("valse", "evaluate_valse"),
    "zeroshot": ("zeroshot", "evaluate_zeroshot"),
    "retrieval-coco": ("retrieval", "evaluate_retrieval"),
    "retrieval-flickr30k": ("retrieval", "evaluate_retrieval"),
    "retrieval": ("retrieval", "evaluate_retrieval"),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clipneg eval")
    add_arguments(p)
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    return parser().parse_args(["x", "--model", "m", *argv])


def flags_of(adapter: registry.Adapter) -> list[str]:
    p = argparse.ArgumentParser(add_help=False)
    adapter.add_options(p.add_argument_group(adapter.title))
    return [o for a in p._actions for o in a.option_strings]


@pytest.fixture
def data_root(tmp_path) -> Path:
    """A folder as `clipneg data download all-public --out` leaves it (zips extracted), plus the two manual ones."""
    root = tmp_path / "data"
    for _, files in DATASETS.values():
        for rf in files:
            if rf.extract_to:
                (root / rf.expect).mkdir(parents=True, exist_ok=True)
            else:
                (root / rf.dest).parent.mkdir(parents=True, exist_ok=True)
                (root / rf.dest).write_text("[]")
    (root / "flickr30k" / "flickr30k-images").mkdir(parents=True)  # download.MANUAL's layouts
    (root / "winoground" / "images").mkdir(parents=True)
    (root / "winoground" / "examples.jsonl").write_text("")
    return root


def test_every_adapter_flag_is_in_the_parser_in_its_own_group():
    p = parser()
    groups = {g.title: {o for a in g._group_actions for o in a.option_strings} for g in p._action_groups}
    seen: set[str] = set()
    for adapter in registry.ADAPTERS:
        flags = flags_of(adapter)
        assert set(flags) <= groups[adapter.title], adapter.title
        assert not seen & set(flags), "a flag declared by two adapters"
        seen |= set(flags)
        # the shared flags an adapter says it reads are declared once, by the command
        assert all(f in p._option_string_actions and f not in seen for f in adapter.shared), adapter.title
    assert {"--data-root", "--coco-val2017", "--karpathy", "--coco-images", "--flickr-images"} <= groups["data"]


def test_table_names_groups_and_official_tie_policies():
    assert registry.BENCHMARKS == ("sugarcrepe", "aro-vg-relation", "aro-vg-attribution", "aro-coco-order",
                                   "aro-flickr30k-order", "sugarcrepe-pp", "winoground", "valse", "zeroshot",
                                   "retrieval-coco", "retrieval-flickr30k", "retrieval")
    assert registry.GROUPS == {"aro": ("aro-vg-relation", "aro-vg-attribution", "aro-coco-order",
                                       "aro-flickr30k-order")}
    assert registry.expand(["sugarcrepe", "aro", "aro-coco-order"]) == ["sugarcrepe", *registry.GROUPS["aro"]]
    for name in registry.BENCHMARKS:
        module = importlib.import_module(f"clipneg.eval.{MODULES[name][0]}")
        assert registry.adapter_for(name).official_tie_policy == module.OFFICIAL_TIE_POLICY, name
    assert registry.adapter_for("aro-flickr30k-order").official_tie_policy == "first"


@pytest.mark.parametrize("call", [lambda: registry.expand(["sugarcrepe", "nope"]),
                                  lambda: registry.build_spec("nope", parse([]))])
def test_unknown_benchmark_lists_the_known_ones(call):
    with pytest.raises(ValueError, match="unknown benchmark 'nope'") as e:
        call()
    assert all(name in str(e.value) for name in (*registry.BENCHMARKS, *registry.GROUPS))


# What each benchmark builds from a downloaded data root (paths relative to it), or the flag its error asks for.
FROM_DATA_ROOT = {
    "sugarcrepe": {"json_dir": "sugarcrepe", "image_dir": "coco/val2017"},
    "aro-vg-relation": {"json_path": "aro/visual_genome_relation.json", "image_dir": "aro/images"},
    "aro-vg-attribution": {"json_path": "aro/visual_genome_attribution.json", "image_dir": "aro/images"},
    "aro-coco-order": {"json_path": "karpathy/coco_karpathy_test.json", "image_root": "coco"},
    "aro-flickr30k-order": {"json_path": "karpathy/flickr30k_test.json", "image_root": "flickr30k"},
    "sugarcrepe-pp": "--sugarcrepe-pp DIR",
    "winoground": {"root": "winoground"},
    "valse": "--valse DIR",
    "zeroshot": "--zeroshot-root DIR",
    "retrieval-coco": {"json_path": "karpathy/coco_karpathy_test.json", "image_root": "coco"},
    "retrieval-flickr30k": {"json_path": "karpathy/flickr30k_test.json", "image_root": "flickr30k"},
    "retrieval": "--retrieval-json FILE",
}


@pytest.mark.parametrize("name", registry.BENCHMARKS)
def test_each_adapter_builds_from_a_downloaded_data_root(name, data_root, monkeypatch):
    expected = FROM_DATA_ROOT[name]
    args = parse(["--data-root", str(data_root)])
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=re.escape(expected)):
            registry.build_spec(name, args)
        return
    module_name, runner = MODULES[name]
    module = importlib.import_module(f"clipneg.eval.{module_name}")
    calls = []
    monkeypatch.setattr(module, runner, lambda *a: calls.append(a) or "result")
    spec = registry.build_spec(name, args)
    assert spec.name == name and spec.official_tie_policy == module.OFFICIAL_TIE_POLICY
    assert {k: getattr(spec.config, k) for k in expected} == {k: str(data_root / v) for k, v in expected.items()}
    assert spec.run("scorer", "strict", 7) == "result"
    # Order averages over its own perturbation seeds, so the tie seed is not passed on
    assert calls == [("scorer", spec.config, "strict") if module_name == "order" else
                     ("scorer", spec.config, "strict", 7)]


@pytest.mark.parametrize("name", registry.BENCHMARKS)
def test_missing_data_names_flags_the_parser_knows(name, tmp_path):
    with pytest.raises(ValueError, match=f"^{re.escape(name)}: pass --") as e:
        registry.build_spec(name, parse(["--data-root", str(tmp_path)]))  # an empty data root
    named = re.findall(r"--[a-z0-9-]+", str(e.value))
    assert named and all(f in parser()._option_string_actions for f in named)


def test_flags_the_errors_ask_for_complete_the_data_root(data_root, tmp_path):
    for d in ("scpp", "valse", "valse_images", "zs/a", "ret_images"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "ret.json").write_text("[]")
    base = ["--data-root", str(data_root), "--name-suffix", "s", "--limit", "3"]
    cases = {
        "sugarcrepe-pp": (["--sugarcrepe-pp", str(tmp_path / "scpp")],
                          {"json_dir": str(tmp_path / "scpp"), "image_dir": str(data_root / "coco" / "val2017")}),
        "valse": (["--valse", str(tmp_path / "valse"), "--valse-images", str(tmp_path / "valse_images"),
                   "--valse-all"], {"json_dir": str(tmp_path / "valse"), "valid_only": False}),
        "zeroshot": (["--zeroshot-root", str(tmp_path / "zs"), "--zeroshot-name", "imagenet", "--templates", "simple"],
                     {"root": str(tmp_path / "zs"), "templates": "simple", "limit_per_class": 3}),
        "retrieval": (["--retrieval-json", str(tmp_path / "ret.json"), "--retrieval-images",
                       str(tmp_path / "ret_images"), "--retrieval-pre-caption"],
                      {"json_path": str(tmp_path / "ret.json"), "pre_caption": True}),
    }
    for name, (argv, fields) in cases.items():
        spec = registry.build_spec(name, parse([*base, *argv]))
        assert spec.name == ("imagenet-s" if name == "zeroshot" else f"{name}-s")
        assert {k: getattr(spec.config, k) for k in fields} == fields
    order = registry.build_spec("aro-coco-order", parse([*base, "--order-seeds", "3", "1", "--order-mask-identical"]))
    assert (order.name, order.config.seeds, order.config.mask_identical, order.config.limit) == \
        ("aro-coco-order-s", (3, 1), True, 3)
