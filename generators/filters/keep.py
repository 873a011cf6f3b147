"""Removing negative captions from a sample without breaking ``NegImage.text`` (the TripletCLIP pairing).

A negative image that depicts a removed caption goes with it (it would depict a caption the sample no longer has);
every other image keeps its place and has its ``text`` index remapped to the caption's new position. Images that
depict no caption (``text=None``) always stay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from clipneg.schema import Sample

from ..base import StageStats

# stats.extra key for images removed because the caption they depict was removed
IMAGES_DROPPED = "neg_images dropped with their caption"


def drop_negatives(sample: Sample, keep: Sequence[bool]) -> int:
    """Keep ``sample.neg_texts[i]`` where ``keep[i]``, in place; returns how many negative images were dropped."""
    if len(keep) != len(sample.neg_texts):
        raise ValueError(f"{sample.key}: keep mask has {len(keep)} entries for {len(sample.neg_texts)} captions")
    new_index: dict[int, int] = {}
    texts = []
    for i, (t, k) in enumerate(zip(sample.neg_texts, keep, strict=True)):
        if k:
            new_index[i] = len(texts)
            texts.append(t)
    images, dropped = [], 0
    for im in sample.neg_images:
        if im.text is None:
            images.append(im)
        elif im.text in new_index:
            images.append(im if new_index[im.text] == im.text else replace(im, text=new_index[im.text]))
        else:
            dropped += 1
    sample.neg_texts = texts
    sample.neg_images = images
    return dropped


def keep_and_count(sample: Sample, keep: Sequence[bool], stats: StageStats) -> None:
    """:func:`drop_negatives`, counting the images dropped and a sample left without any negative caption."""
    had = bool(sample.neg_texts)
    dropped = drop_negatives(sample, keep)
    if dropped:
        stats.extra[IMAGES_DROPPED] += dropped
    if had and not sample.neg_texts:
        stats.samples_without += 1
