"""Shared fixtures: offline, CPU, tiny models built from configs, data the tests make themselves."""

from __future__ import annotations

import copy
import io
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
from PIL import Image  # noqa: E402


def image_bytes(color: tuple[int, int, int], size: int = 32, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="session")
def _tiny_bundle():
    from clipneg.models import load_clip

    return load_clip("clipneg-tiny", seed=0)


@pytest.fixture
def tiny_bundle(_tiny_bundle):
    """A fresh copy of the tiny CLIP (32 px, width 64, 2 layers) with its transforms and tokenizer."""
    return copy.deepcopy(_tiny_bundle)


@pytest.fixture(scope="session")
def two_rank_world(tmp_path_factory):
    """World shards for train.py on two processes (tests.two_ranks)."""
    from tests.two_ranks import make_world

    return make_world(tmp_path_factory.mktemp("two_rank_world"))


@pytest.fixture(scope="session")
def hot_start(tmp_path_factory):
    """The tiny model exported with its logit scale above CLIP's clamp (tests.two_ranks)."""
    from tests.two_ranks import make_hot_start

    return make_hot_start(tmp_path_factory.mktemp("hot_start"))


@pytest.fixture(scope="session")
def nlp():
    """spaCy's English parser, once per session (the rule engine's tests); skipped where no model is installed."""
    pytest.importorskip("spacy")
    from clipneg.text.nlp import PARSER_PIPES, load_spacy

    try:
        return load_spacy(pipes=PARSER_PIPES)
    except RuntimeError:
        pytest.skip("no spaCy English model installed")


def read_shard_samples(folder) -> list:
    """Every sample of the clipneg shards in ``folder``, read with Python's tarfile rather than clipneg's reader, so
    tests see what is on disk independently of the code under test."""
    import tarfile
    from pathlib import Path

    from clipneg.schema import members_to_sample

    samples = []
    for tar_path in sorted(Path(folder).glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            groups: dict = {}
            for info in tar:
                key, _, ext = info.name.partition(".")
                groups.setdefault(key, {"__key__": key})[ext] = tar.extractfile(info).read()
        samples += [members_to_sample(g) for g in groups.values()]
    return samples
