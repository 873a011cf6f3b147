"""`clipneg data download`: benchmark data from the official URLs, resumable, checked against pinned hashes.

Standard library only (urllib), so `clipneg --help` stays fast. A download goes to `<dest>.part`; a rerun resumes it
with an HTTP Range request (a server that answers 200 instead of 206 restarts it). After the transfer the file is
checked against its pinned sha256/md5 and renamed; a mismatch keeps the bytes as `<dest>.bad` and says what to do.
Files with no published hash get their sha256 written beside them (`<dest>.sha256`) so later runs can be compared.

Layout under --out (what `clipneg eval --data-root` reads):
  sugarcrepe/{subset}.json   coco/val2017/*.jpg   coco/val2014/*.jpg
  karpathy/{coco_karpathy_test,flickr30k_test}.json
  aro/visual_genome_relation.json   aro/visual_genome_attribution.json   aro/images/*.jpg
"""

from __future__ import annotations

import hashlib
import logging
import sys
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
SUGARCREPE_URL = "https://raw.githubusercontent.com/RAIVNLab/sugar-crepe/main/data/{subset}.json"
# sha256 of RAIVNLab/sugar-crepe@0047054:data/{subset}.json (shared data MANIFEST.md); clipneg.eval.sugarcrepe
# checks evaluated files against the same table.
SUGARCREPE_SHA256 = {
    "add_att": "012d88d729693d193760e6f3393b06a1cf874380a9db0062e937201199fe044d",
    "add_obj": "1b9d76b93139a937b8dc1ada92a4f05ecc821bb3c291d752428bafadd4bb0682",
    "replace_att": "9fe55fd4c0a9ad1f85d486d9f6d0215b41f867eb025026e7f7b5ce44352545ee",
    "replace_obj": "9d299600639947e9d15281a9ded1382b376cf4ea088a8d08a1314bfe76e81898",
    "replace_rel": "356bcc2fc4c6aed3f4d9fd50acc58489bb1fe70c28791f9368d4cbf9ea39cdc9",
    "swap_att": "7a7ce04e5c4c80412b48c6f0c1347fb1a2f5d54c0be6aa429b64d390e442f8d0",
    "swap_obj": "073cdb8e253d053614e80710834d9773b09dbc1dd0a412f6f9492262caa1dcad",
}
# Google Drive ids from the ARO repository (mertyg/vision-language-models-are-bows, dataset_zoo/aro_datasets.py).
GDRIVE = "https://drive.usercontent.google.com/download?id={id}&export=download&confirm=t"
BLIP_BUCKET = "https://storage.googleapis.com/sfr-vision-language-research/datasets/{name}"


@dataclass(frozen=True)
class RemoteFile:
    """One file: where from, where to (relative to --out), its pinned hash if one is published, unzip or not."""

    url: str
    dest: str
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    extract_to: str | None = None  # unzip into this folder (relative to --out) after the hash check
    expect: str | None = None  # a path (relative to --out) whose presence means the extraction is done


DATASETS: dict[str, tuple[str, list[RemoteFile]]] = {
    "sugarcrepe": ("SugarCrepe: 7 JSONs (RAIVNLab/sugar-crepe, MIT), sha256 pinned",
                   [RemoteFile(SUGARCREPE_URL.format(subset=s), f"sugarcrepe/{s}.json", sha256=h)
                    for s, h in SUGARCREPE_SHA256.items()]),
    "coco-val2017": ("COCO val2017 images (SugarCrepe, SugarCrepe++), 778 MB zip, md5 pinned",
                     [RemoteFile("http://images.cocodataset.org/zips/val2017.zip", "coco/val2017.zip",
                                 md5="442b8da7639aecaf257c1dceb8ba8c80", size=815585330, extract_to="coco",
                                 expect="coco/val2017")]),
    "coco-val2014": ("COCO val2014 images (COCO-Order, COCO retrieval: Karpathy test), 6.2 GB zip, md5 pinned",
                     [RemoteFile("http://images.cocodataset.org/zips/val2014.zip", "coco/val2014.zip",
                                 md5="a3d79f5ed8d289b7a7554ce06a5782b3", extract_to="coco", expect="coco/val2014")]),
    "karpathy-test": ("Karpathy test splits (BLIP's bucket): coco_karpathy_test.json, flickr30k_test.json; no "
                      "published hash (sha256 recorded)",
                      [RemoteFile(BLIP_BUCKET.format(name=n), f"karpathy/{n}")
                       for n in ("coco_karpathy_test.json", "flickr30k_test.json")]),
    "aro-vg-relation": ("ARO VG-Relation JSON (Google Drive); no published hash (sha256 recorded)",
                        [RemoteFile(GDRIVE.format(id="1kX2iCHEv0CADL8dSO1nMdW-V0NqIAiP3"),
                                    "aro/visual_genome_relation.json")]),
    "aro-vg-attribution": ("ARO VG-Attribution JSON (Google Drive); no published hash (sha256 recorded)",
                           [RemoteFile(GDRIVE.format(id="13tWvOrNOLHxl3Rm9cR3geAdHx2qR3-Tw"),
                                       "aro/visual_genome_attribution.json")]),
    "aro-images": ("ARO VG-Relation/VG-Attribution images zip (Google Drive); no published hash (sha256 recorded)",
                   [RemoteFile(GDRIVE.format(id="1qaPlrwhGNMrR3a11iopZUT_GPP_LrgP9"), "aro/vgr_vga_images.zip",
                               extract_to="aro", expect="aro/images")]),
}
GROUPS = {"aro": ("aro-vg-relation", "aro-vg-attribution", "aro-images"),
          "all-public": ("sugarcrepe", "coco-val2017", "aro-vg-relation", "aro-vg-attribution", "aro-images",
                         "karpathy-test", "coco-val2014")}
MANUAL = {
    "flickr30k": "Flickr30k images need a sign-up: https://forms.illinois.edu/sec/229675 ; unpack so that "
                 "DATA/flickr30k/flickr30k-images/*.jpg exists",
    "winoground": "Winoground: accept the licence at https://huggingface.co/datasets/facebook/winoground and put "
                  "data/examples.jsonl + data/images/ under DATA/winoground/",
}


class DownloadError(RuntimeError):
    pass


def describe() -> str:
    lines = [f"  {name:20s} {desc}" for name, (desc, _) in DATASETS.items()]
    lines += [f"  {name:20s} = {' '.join(members)}" for name, members in GROUPS.items()]
    lines += [f"  {name:20s} (manual) {how}" for name, how in MANUAL.items()]
    return "datasets:\n" + "\n".join(lines)


def expand_names(names: list[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        if n in MANUAL:
            raise DownloadError(MANUAL[n])
        members = GROUPS.get(n, (n,))
        for m in members:
            if m not in DATASETS:
                raise DownloadError(f"unknown dataset {m!r}; `clipneg data list` shows the choices")
            if m not in out:
                out.append(m)
    return out


def file_digest(path: str | Path, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def check_hash(path: Path, rf: RemoteFile) -> str | None:
    """None when the file matches its pinned hash (or none is pinned); else a description of the mismatch."""
    if rf.sha256:
        got = file_digest(path, "sha256")
        return None if got == rf.sha256 else f"sha256 {got} != pinned {rf.sha256}"
    if rf.md5:
        got = file_digest(path, "md5")
        return None if got == rf.md5 else f"md5 {got} != pinned {rf.md5}"
    return None


def fetch(url: str, dest: str | Path, *, timeout: float = 60.0, progress: Callable[[int, int | None], None] | None
          = None, opener: Callable[..., object] = urllib.request.urlopen) -> Path:
    """Download url to dest via dest.part, resuming a partial .part with an HTTP Range request."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "clipneg-data/1"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = opener(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the .part is complete
            part.replace(dest)
            return dest
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}; check the URL or your network and rerun "
                            "(a partial download resumes)") from e
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise DownloadError(f"{url}: {e}; check your network (or proxy) and rerun: the download resumes") from e
    with resp:  # type: ignore[attr-defined]
        status = getattr(resp, "status", 200)
        if have and status != 206:
            logger.info("%s: server ignored the Range request; restarting", url)
            have = 0
        length = resp.headers.get("Content-Length")  # type: ignore[attr-defined]
        total = (have + int(length)) if length is not None else None
        done = have
        try:
            with open(part, "ab" if have else "wb") as f:
                while True:
                    block = resp.read(CHUNK)  # type: ignore[attr-defined]
                    if not block:
                        break
                    f.write(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise DownloadError(f"{url}: interrupted after {done} bytes ({e}); rerun to resume") from e
    if total is not None and done < total:
        raise DownloadError(f"{url}: got {done} of {total} bytes; rerun to resume")
    part.replace(dest)
    return dest


def _bar(desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None, (lambda done, total: None)
    bar = tqdm(desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, dynamic_ncols=True)

    def update(done: int, total: int | None) -> None:
        if total and bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update


def safe_extract(zip_path: Path, out_dir: Path) -> None:
    """Unzip refusing members that would land outside out_dir."""
    out_dir = out_dir.resolve()
    with zipfile.ZipFile(zip_path) as zf:
        for member in zf.infolist():
            target = (out_dir / member.filename).resolve()
            if out_dir != target and out_dir not in target.parents:
                raise DownloadError(f"{zip_path}: member {member.filename!r} escapes {out_dir}; not extracting")
        zf.extractall(out_dir)


def download_file(rf: RemoteFile, root: str | Path, *, extract: bool = True, timeout: float = 60.0,
                  opener: Callable[..., object] = urllib.request.urlopen, progress: bool = True) -> Path:
    root = Path(root)
    dest = root / rf.dest
    if rf.expect and (root / rf.expect).exists():
        logger.info("%s already extracted", root / rf.expect)
        return dest
    if dest.exists() and check_hash(dest, rf) is None:
        logger.info("%s present and verified", dest)
    else:
        if dest.exists():
            dest.replace(dest.with_name(dest.name + ".bad"))
        bar, update = _bar(dest.name) if progress else (None, None)
        try:
            fetch(rf.url, dest, timeout=timeout, progress=update, opener=opener)
        finally:
            if bar is not None:
                bar.close()
        problem = check_hash(dest, rf)
        if problem:
            bad = dest.with_name(dest.name + ".bad")
            dest.replace(bad)
            raise DownloadError(f"{rf.url}: {problem}. The file was kept as {bad}; the source may have changed. "
                                "Delete it and rerun, or report it if it persists")
    if not rf.sha256 and not rf.md5:
        digest = file_digest(dest)
        dest.with_name(dest.name + ".sha256").write_text(f"{digest}  {dest.name}\n")
        logger.warning("%s has no published hash; recorded sha256 %s", dest, digest)
    if extract and rf.extract_to:
        logger.info("extracting %s", dest)
        safe_extract(dest, root / rf.extract_to)
    return dest


def download_dataset(name: str, root: str | Path, *, extract: bool = True, timeout: float = 60.0,
                     opener: Callable[..., object] = urllib.request.urlopen, progress: bool = True) -> list[Path]:
    _, files = DATASETS[name]
    return [download_file(rf, root, extract=extract, timeout=timeout, opener=opener, progress=progress)
            for rf in files]


def verify_dataset(name: str, root: str | Path) -> list[str]:
    """Problems with a downloaded dataset (missing files, hash mismatches); empty when all is well."""
    root = Path(root)
    problems = []
    for rf in DATASETS[name][1]:
        dest = root / rf.dest
        if not dest.exists():
            if rf.expect and (root / rf.expect).exists():
                continue  # extracted, zip removed
            problems.append(f"missing {dest}")
            continue
        p = check_hash(dest, rf)
        if p:
            problems.append(f"{dest}: {p}")
        elif not rf.sha256 and not rf.md5:
            rec = dest.with_name(dest.name + ".sha256")
            if rec.exists() and rec.read_text().split()[0] != file_digest(dest):
                problems.append(f"{dest}: sha256 differs from the one recorded at download ({rec})")
    return problems

