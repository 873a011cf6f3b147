"""``clipneg inspect`` reads shards through the one tar reader: counts, invalid samples with their reasons, gallery."""

from __future__ import annotations

import json

from clipneg.commands import main
from clipneg.commands.inspect import summarize, write_gallery
from clipneg.shards import write_shards
from tests.test_sources import _rich_samples, _shard


def test_summary_counts_negatives_and_reports_invalid_samples(tmp_path, capsys):
    """Given clipneg shards and a damaged shard beside them, when inspected, then the valid samples are counted by
    kind and generator, and the schema break and the truncation are listed as invalid with their keys and reasons."""
    write_shards(_rich_samples(4), tmp_path, shard_size=2, progress=False)
    s0 = next(_rich_samples(1))
    _shard(tmp_path / "train-000002.tar", [("k1.png", s0.image), ("k1.neg.json", b"{}")])
    cut = tmp_path / "train-000003.tar"
    cut.write_bytes((tmp_path / "train-000000.tar").read_bytes()[:1600])
    sizes = json.loads((tmp_path / "sizes.json").read_text())
    (tmp_path / "sizes.json").write_text(json.dumps({**sizes, "train-000002.tar": 1, "train-000003.tar": 2}))

    summary = summarize(str(tmp_path))
    assert summary["samples"] == 4 and summary["samples_with_negatives"] == 2 and summary["paraphrases"] == 2
    assert summary["neg_text_kinds"] == {"replace_att": 2, "replace_obj": 2}
    assert summary["neg_image_kinds"] == {"mined": 1, "replace_att": 1}
    assert summary["generators"] == {"llm": 2, "mined": 1, "render": 1, "rules": 2}
    assert [(e["key"], e["error"].split(":")[0]) for e in summary["invalid"]] == [
        ("k1", "schema error"), ("s000", "unreadable shard member")]
    assert "k1: no txt member" in summary["invalid"][0]["error"]

    page = write_gallery(str(tmp_path), tmp_path / "g.html", limit=3, summary=summary).read_text()
    assert page.count('class="card"') == 3 and "a red cube 1" in page and "2 invalid" in page
    assert main(["inspect", str(tmp_path)]) == 1
    assert "4 samples (2 with negatives), 2 invalid" in capsys.readouterr().out
