from __future__ import annotations

import json

from clipneg.commands import main
from clipneg.shards import write_shards
from clipneg.sources import CocoStats, iter_coco, iter_table, record_to_sample, sugarcrepe_image_ids
from tests.conftest import image_bytes


def _coco(tmp_path, image_ids):
    images = tmp_path / "train2014"
    images.mkdir()
    data = {"images": [], "annotations": []}
    for n, image_id in enumerate(image_ids):
        name = f"COCO_train2014_{image_id:012d}.jpg"
        (images / name).write_bytes(image_bytes((n, n, n), fmt="JPEG"))
        data["images"].append({"id": image_id, "file_name": name})
        for a in range(2):
            data["annotations"].append({"id": 1000 * n + a, "image_id": image_id, "caption": f"caption {n} {a}"})
    data["annotations"].append({"id": 99999, "image_id": 424242, "caption": "orphan annotation"})
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(data))
    return path, images


def test_sugarcrepe_ids_are_shipped():
    ids = sugarcrepe_image_ids()
    assert len(ids) == 1560
    assert 85329 in ids  # 000000085329.jpg, the first image in SugarCrepe's add_att.json


def test_coco_source_drops_sugarcrepe_images_and_counts_them(tmp_path):
    leak = sorted(sugarcrepe_image_ids())[:2]
    path, images = _coco(tmp_path, [9, 25, *leak])
    stats = CocoStats()
    records = list(iter_coco(path, images, stats=stats))
    assert stats.annotations == 9 and stats.dropped_leakage == 4 and stats.dropped_images == set(leak)
    keys = [r.key for r in records]
    assert keys[:4] == ["000000000009_0", "000000000009_1", "000000000025_1000", "000000000025_1001"]
    assert records[-1].reason.startswith("annotation names image id 424242")
    kept = list(iter_coco(path, images, drop_ids=set()))
    assert len(kept) == 9


def test_shard_command_on_coco_reports_leakage_in_manifest(tmp_path, capsys):
    leak = sorted(sugarcrepe_image_ids())[:1]
    path, images = _coco(tmp_path, [9, *leak])
    out = tmp_path / "shards"
    assert main(["shard", str(path), "--image-dir", str(images), "--out", str(out), "--shard-size", "2"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"inputs": 3, "written": 2, "quarantined": 1}
    assert manifest["info"]["source"]["coco_dropped_leakage"] == {"annotations": 2, "images": 1}
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == manifest["counts"]


def test_table_source_defaults_follow_negclip_tsv_columns(tmp_path):
    (tmp_path / "im.jpg").write_bytes(image_bytes((3, 3, 3), fmt="JPEG"))
    tsv = tmp_path / "valid_neg_clip.tsv"
    tsv.write_text("\ttitle\tfilepath\tneg_caption\n0\ta dog on a bed\tim.jpg\ta bed on a dog\n")
    (record,) = list(iter_table(tsv))
    assert record.key == "000000002" and record.caption == "a dog on a bed"
    assert record.meta["neg_caption"] == "a bed on a dog"
    sample = record_to_sample(record)
    assert sample.image_ext == "jpg" and sample.image == (tmp_path / "im.jpg").read_bytes()  # bytes unchanged
    manifest = write_shards([record], tmp_path / "out", process=record_to_sample, progress=False)
    assert manifest["counts"]["written"] == 1
