"""ImageNet-layout folders: ImageNet-1k train/val, ImageNet-V2, -Sketch, -A and -R.

Class folders are named by WordNet id (``n01440764``; ImageNet, -Sketch, -A, -R) or by class
index in the standard ImageNet-1k order (``0`` .. ``999``; ImageNet-V2's layout). Class ids are
always WordNet ids, so splits with different class subsets (ImageNet-A/-R cover 200 classes)
map onto one another by id, and ``hierarchy()`` is None: WordNet applies.

The standard class order, the class names and the ImageNet-A/-R subsets come from the lists
shipped in the ``timm`` package (``timm/data/_info``), read as plain files.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image
from saebench_vision_plugins.datasets.configs import ImageNetFolderConfig
from saebench_vision_plugins.datasets.hierarchy import is_wordnet_id
from saebench_vision_plugins.datasets.views import ViewSettings, make_view

from saebench_vision.errors import DatasetError
from saebench_vision.interfaces import ClassInfo, Dataset, files_fingerprint

CLASS_LISTS = {
    "imagenet-1k": "imagenet_synsets.txt",
    "imagenet-a": "imagenet_a_synsets.txt",
    "imagenet-r": "imagenet_r_synsets.txt",
}


def _info_dir() -> Path:
    try:
        import timm
    except ImportError as exc:  # pragma: no cover - timm comes with open_clip_torch
        raise DatasetError(
            "ImageNet class lists: the `timm` package is missing; pip install timm"
        ) from exc
    return Path(timm.__file__).parent / "data" / "_info"


@cache
def imagenet_class_list(name: str = "imagenet-1k") -> tuple[str, ...]:
    """WordNet ids of ``imagenet-1k`` (standard order), ``imagenet-a`` or ``imagenet-r``."""
    path = _info_dir() / CLASS_LISTS[name]
    if not path.is_file():
        raise DatasetError(
            f"{path}: ImageNet class list missing; reinstall timm (pip install -U timm)"
        )
    return tuple(path.read_text().split())


@lru_cache(maxsize=1)
def imagenet_class_names() -> dict[str, str]:
    """WordNet id -> the first lemma of its ImageNet class name (``n01440764`` -> ``tench``)."""
    path = _info_dir() / "imagenet_synset_to_lemma.txt"
    names = {}
    for line in path.read_text().splitlines():
        wnid, _, lemmas = line.partition("\t")
        names[wnid.strip()] = lemmas.split(",")[0].strip()
    return names


def list_images(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Image files under ``folder`` (recursively, following links), sorted by path.

    Linked folders are followed once: a link back into a folder being walked (a loop) and a
    folder or file reached by two paths raise a DatasetError naming both, since following them
    would repeat (and, across class folders, mislabel) the same images.
    """
    exts = tuple(e.lower() for e in extensions)
    found: list[Path] = []
    seen_dirs: dict[str, Path] = {}
    seen_files: dict[str, Path] = {}

    def walk(here: Path, ancestors: frozenset[str]) -> None:
        real = os.path.realpath(here)
        if real in ancestors:
            raise DatasetError(
                f"{here}: a link back to {real} (a symlink loop) under {folder}; remove the link"
            )
        if real in seen_dirs:
            raise DatasetError(
                f"{here} and {seen_dirs[real]} are the same folder ({real}); its images would be "
                f"listed twice: remove one of the links"
            )
        seen_dirs[real] = here
        try:
            entries = sorted(os.scandir(here), key=lambda e: e.name)
        except OSError as exc:
            raise DatasetError(f"{here}: cannot list folder ({exc.strerror or exc})") from exc
        inside = ancestors | {real}
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=True):
                walk(path, inside)
            elif entry.name.lower().endswith(exts) and entry.is_file(follow_symlinks=True):
                target = os.path.realpath(path)
                if target in seen_files:
                    raise DatasetError(
                        f"{path} and {seen_files[target]} are the same file ({target}); it would "
                        f"be listed twice: remove one of the links"
                    )
                seen_files[target] = path
                found.append(path)

    walk(folder, frozenset())
    return sorted(found)


def check_pixel_limit(name: str, limit: int | None) -> None:
    """A DatasetError for a negative ``max_image_pixels``."""
    if limit is not None and limit < 0:
        raise DatasetError(
            f"{name}: max_image_pixels {limit} is negative; use a pixel count, 0 (no limit) or null"
        )


def check_distinct(files: list[Path]) -> None:
    """Raise a DatasetError when two listed paths are one file (a link in another class)."""
    seen: dict[str, Path] = {}
    for path in files:
        target = os.path.realpath(path)
        if target in seen:
            raise DatasetError(
                f"{path} and {seen[target]} are the same file ({target}); it would be listed "
                f"(and labelled) twice: remove one of the links"
            )
        seen[target] = path


def load_rgb(path: Path, max_pixels: int | None = None, skipping: bool = False) -> Image.Image:
    """The image at ``path`` as RGB; unreadable files raise a one-line DatasetError.

    ``max_pixels`` is PIL's decompression-bomb bound on width x height (it refuses images over
    twice it, by default about 179 megapixels); None keeps PIL's default, 0 lifts the bound.
    ``skipping``: the dataset already skips the files :func:`probe_image` finds unreadable.
    """
    try:
        with _open_image(path, max_pixels) as img:
            return img.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise DatasetError(
            f"{path}: image too large ({exc}); raise the dataset's max_image_pixels (0 lifts "
            f"the limit) if the file is trusted"
        ) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        fix = (
            "it passed the check on_bad_file: skip makes when listing; remove or replace it"
            if skipping
            else "remove or replace the file, or set on_bad_file: skip"
        )
        raise DatasetError(f"{path}: cannot read image ({exc}); {fix}") from exc


_PIXEL_LIMIT_LOCK = threading.Lock()


def _open_image(path: Path, max_pixels: int | None) -> Image.Image:
    """``Image.open`` under a pixel bound (None: PIL's own, 0: none). PIL reads the bound from a
    module global when it opens a file (decoding checks nothing more), so a bound of our own
    is set, under a lock for loader threads, for the open only."""
    if max_pixels is None:
        return Image.open(path)
    with _PIXEL_LIMIT_LOCK:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels or None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def probe_image(path: Path, max_pixels: int | None) -> str | None:
    """Why the image at ``path`` cannot be read (None when it can): opens it and checks its
    structure (``Image.verify``: PNG chunks and checksums, ...) and, for JPEG, whose verify
    checks nothing, the end-of-image marker a truncated file lacks. Pixels are not decoded,
    so listing stays cheap; a file damaged in a way only decoding finds still stops the run."""
    try:
        with _open_image(path, max_pixels) as img:
            jpeg = img.format == "JPEG"
            img.verify()
        if jpeg:
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - 64))
                if b"\xff\xd9" not in f.read():
                    return "truncated: no JPEG end-of-image marker"
    except Image.DecompressionBombError as exc:
        # A large image is not damaged: skipping it would make the data depend on the limit.
        raise DatasetError(
            f"{path}: image too large ({exc}); raise the dataset's max_image_pixels (0 lifts "
            f"the limit) if the file is trusted"
        ) from exc
    except Exception as exc:  # PIL raises many types for damaged files
        return f"{type(exc).__name__}: {exc}"
    return None


def drop_bad_files(
    name: str, files: list[Path], max_pixels: int | None
) -> tuple[list[Path], list[Path]]:
    """(readable files, skipped files) for ``on_bad_file: skip``, with a warning line when any
    are skipped."""
    keep: list[Path] = []
    bad: list[Path] = []
    first = ""
    for path in files:
        problem = probe_image(path, max_pixels)
        if problem is None:
            keep.append(path)
        else:
            bad.append(path)
            first = first or f"{path} ({problem})"
    if bad:
        print(
            f"warning: {name}: skipped {len(bad)} unreadable image(s) of {len(files)} "
            f"(on_bad_file: skip), the first {first}",
            file=sys.stderr,
        )
    return keep, bad


WNID_PREFIX = re.compile(r"^(n\d{8})(?:[_.\-]|$)")


def view_settings(config: object) -> ViewSettings:
    """The test-time views a dataset Config asks for (``views``, ``view_scale``, ...)."""
    return ViewSettings(
        views=int(getattr(config, "views", 1)),
        scale=tuple(getattr(config, "view_scale", (0.35, 1.0))),  # type: ignore[arg-type]
        flip=bool(getattr(config, "view_flip", True)),
        seed=int(getattr(config, "view_seed", 0)),
    )


def _devkit_wnids(meta: Path) -> dict[int, str]:
    """ILSVRC2012_ID -> WordNet id of the 1000 leaf synsets, from the devkit's meta.mat."""
    if not meta.is_file():
        raise DatasetError(
            f"imagenet-folder: devkit_meta {str(meta)!r} does not exist; point it to the "
            f"devkit's data/meta.mat"
        )
    from scipy.io import loadmat

    try:
        synsets = loadmat(str(meta), squeeze_me=True)["synsets"]
        rows = [
            (int(s["ILSVRC2012_ID"]), str(s["WNID"]))
            for s in synsets
            if int(s["num_children"]) == 0
        ]
    except (KeyError, ValueError, TypeError, OSError) as exc:
        raise DatasetError(
            f"{meta}: not an ILSVRC2012 devkit meta.mat ({exc}); point devkit_meta to data/meta.mat"
        ) from exc
    return dict(rows)


def read_ground_truth(path: Path, files: list[Path], meta: Path | None) -> dict[Path, str]:
    """WordNet id of each of ``files`` from a ground-truth file (see ``ground_truth``)."""
    if not path.is_file():
        raise DatasetError(
            f"imagenet-folder: ground_truth {str(path)!r} does not exist; fix args.ground_truth"
        )
    lines = [line.strip() for line in path.read_text().splitlines()]
    by_stem = {f.stem: f for f in files}
    by_name = {f.name: f for f in files}
    labels: dict[Path, str] = {}
    standard = imagenet_class_list("imagenet-1k")
    if lines and lines[0].lower().startswith("imageid"):  # LOC_val_solution.csv
        for number, line in enumerate(lines[1:], 2):
            if not line:
                continue
            image_id, _, prediction = line.partition(",")
            wnid = prediction.split()[0] if prediction.split() else ""
            if not is_wordnet_id(wnid):
                raise DatasetError(f"{path}:{number}: {wnid!r} is not a WordNet id")
            if image_id in by_stem:
                labels[by_stem[image_id]] = wnid
    elif lines and len(lines[0].split()) == 1:  # devkit: one ILSVRC2012_ID per line
        if meta is None:
            raise DatasetError(
                f"imagenet-folder: {path} lists devkit ids (1..1000, not the standard order); "
                f"set devkit_meta to the devkit's data/meta.mat"
            )
        wnids = _devkit_wnids(meta)
        numbered = {int(m.group(1)): f for f in files if (m := re.search(r"(\d+)$", f.stem))}
        for number, line in enumerate(lines, 1):
            if not line:
                continue
            if not line.isdigit() or int(line) not in wnids:
                raise DatasetError(f"{path}:{number}: {line!r} is not a devkit class id")
            if number in numbered:
                labels[numbered[number]] = wnids[int(line)]
    else:  # "<file> <wnid or standard index>"
        for number, line in enumerate(lines, 1):
            if not line:
                continue
            parts = line.split()
            if len(parts) < 2:
                raise DatasetError(f"{path}:{number}: expected '<file> <label>', got {line!r}")
            name, label = Path(parts[0]).name, parts[1]
            if label.isdigit() and int(label) < len(standard):
                label = standard[int(label)]
            elif not is_wordnet_id(label):
                raise DatasetError(
                    f"{path}:{number}: {label!r} is neither a WordNet id nor a class index"
                )
            target = by_name.get(name) or by_stem.get(Path(name).stem)
            if target is not None:
                labels[target] = label
    unlabelled = [f for f in files if f not in labels]
    if unlabelled:
        raise DatasetError(
            f"imagenet-folder: {path} gives no label for {unlabelled[0].name} "
            f"({len(unlabelled)} of {len(files)} images unlabelled); use the split's ground truth"
        )
    return labels


class ImageFiles(Dataset):
    """A split of image files under ``root`` (``files``, read with the config's
    ``max_image_pixels`` and ``on_bad_file``), each giving ``views.views`` items in a row; the
    subclass lists the files (and ``skipped``, the unreadable ones) and labels them."""

    root: Path
    files: list[Path]
    skipped: list[Path]
    views: ViewSettings

    def metadata(self) -> dict[str, Any]:
        """How many listed images were skipped as unreadable (``on_bad_file: skip``)."""
        return {"skipped_files": len(self.skipped)}

    def __len__(self) -> int:
        return len(self.files) * self.views.views

    def __getitem__(self, index: int) -> Image.Image:
        image, view = divmod(index, self.views.views)
        path = self.files[image]
        return make_view(
            load_rgb(path, self.config.max_image_pixels, self.config.on_bad_file == "skip"),
            path.relative_to(self.root).as_posix(),
            view,
            self.views,
        )

    def groups(self) -> np.ndarray:
        """The source image of each item: the views of one image share a group."""
        return np.repeat(np.arange(len(self.files)), self.views.views)


class ImageNetFolderDataset(ImageFiles):
    """One ImageNet-style split; items are PIL RGB images.

    Layouts (``layout: auto`` picks one from what ``root`` holds): class folders named by
    WordNet id or by standard class index; a flat folder whose files start with their WordNet
    id (``n01440764_10026.JPEG``); or a flat folder labelled by a ground-truth file (the
    official ``ILSVRC2012_val_00000001.JPEG`` ... folder with ``LOC_val_solution.csv``, a
    ``val.txt`` list or the devkit's ground truth and ``meta.mat``). With ``views: N`` each
    image gives N items in a row (see :mod:`.views`).
    """

    name: ClassVar[str] = "imagenet-folder"
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = ImageNetFolderConfig

    def __init__(self, config: ImageNetFolderConfig) -> None:
        super().__init__(config)
        root = Path(config.root).expanduser()
        if not root.is_dir():
            raise DatasetError(
                f"imagenet-folder: root {str(root)!r} is not a folder; set args.root to the split's folder"
            )
        check_pixel_limit("imagenet-folder", config.max_image_pixels)
        self.views = view_settings(config)
        by_id = self._classes_in(root, config)
        standard = imagenet_class_list("imagenet-1k")
        if config.classes == "found":
            order = {wnid: i for i, wnid in enumerate(standard)}
            ids = sorted(by_id, key=lambda w: (order.get(w, len(order)), w))
        else:
            ids = list(imagenet_class_list(config.classes))
            missing = [w for w in ids if w not in by_id]
            if missing and not config.allow_missing_classes:
                raise DatasetError(
                    f"imagenet-folder: {root} lacks class {missing[0]} of {config.classes} "
                    f"({len(missing)} missing); add it or set allow_missing_classes: true"
                )
        names = imagenet_class_names()
        self._classes = [ClassInfo(w, names.get(w, w)) for w in ids]
        files: list[Path] = []
        labels: list[int] = []
        for index, wnid in enumerate(ids):
            images = sorted(by_id.get(wnid, []))[: config.max_per_class]
            files.extend(images)
            labels.extend([index] * len(images))
        check_distinct(files)
        self.skipped: list[Path] = []
        if config.on_bad_file == "skip":
            kept, self.skipped = drop_bad_files("imagenet-folder", files, config.max_image_pixels)
            bad = set(self.skipped)
            labels = [label for f, label in zip(files, labels, strict=True) if f not in bad]
            files = kept
        if not files:
            raise DatasetError(
                f"imagenet-folder: no images with suffixes {', '.join(config.extensions)} under {root}"
                + (f" ({len(self.skipped)} unreadable skipped)" if self.skipped else "")
            )
        self.root = root
        self.files = files
        self._labels = np.repeat(np.asarray(labels, dtype=np.int64), self.views.views)

    @staticmethod
    def _classes_in(root: Path, config: ImageNetFolderConfig) -> dict[str, list[Path]]:
        """WordNet id -> image files, for the layout in ``config`` (or the one ``root`` has)."""
        folders = sorted(
            p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        layout = config.layout
        flat: list[Path] = []
        if layout in ("auto", "flat", "ground-truth"):
            exts = tuple(e.lower() for e in config.extensions)
            flat = sorted(
                p
                for p in root.iterdir()
                if p.is_file() and p.name.lower().endswith(exts) and not p.name.startswith(".")
            )
        if layout == "auto":
            if config.ground_truth is not None:
                layout = "ground-truth"
            elif folders and not flat:
                layout = "index" if all(f.isdigit() for f in folders) else "wnid"
            elif flat:
                layout = "flat"
            else:
                raise DatasetError(
                    f"imagenet-folder: {root} has neither class folders (n01440764/... or 0/...) "
                    f"nor images; set args.root to the split's folder"
                )
        if layout == "ground-truth":
            if config.ground_truth is None:
                raise DatasetError(
                    "imagenet-folder: layout ground-truth needs args.ground_truth (the labels file)"
                )
            meta = Path(config.devkit_meta).expanduser() if config.devkit_meta else None
            found = read_ground_truth(Path(config.ground_truth).expanduser(), flat, meta)
            grouped: dict[str, list[Path]] = {}
            for path, wnid in found.items():
                grouped.setdefault(wnid, []).append(path)
            return grouped
        if layout == "flat":
            grouped = {}
            for path in flat:
                match = WNID_PREFIX.match(path.name)
                if match is None:
                    raise DatasetError(
                        f"imagenet-folder: {path} does not start with a WordNet id like "
                        f"n01440764_ (layout: flat); rename it, or set args.ground_truth to the "
                        f"folder's labels file"
                    )
                grouped.setdefault(match.group(1), []).append(path)
            if not grouped:
                raise DatasetError(f"imagenet-folder: no images in {root} (layout: flat)")
            return grouped
        if not folders:
            raise DatasetError(
                f"imagenet-folder: {root} has no class folders; expected n01440764/... or 0/... "
                f"sub-folders (layout: {layout})"
            )
        standard = imagenet_class_list("imagenet-1k")
        if layout == "index":
            bad = [f for f in folders if not f.isdigit() or int(f) >= len(standard)]
            if bad:
                raise DatasetError(
                    f"imagenet-folder: {root / bad[0]} is not a class index 0..{len(standard) - 1} (layout: index)"
                )
            dirs = {standard[int(f)]: root / f for f in folders}
        else:
            bad = [f for f in folders if not is_wordnet_id(f)]
            if bad:
                raise DatasetError(
                    f"imagenet-folder: {root / bad[0]} is not named by a WordNet id like n01440764 (layout: wnid)"
                )
            dirs = {f: root / f for f in folders}
        return {wnid: list_images(folder, config.extensions) for wnid, folder in dirs.items()}

    def fingerprint(self) -> str:
        """The listed files' paths, sizes and mtimes (see ``files_fingerprint``), and those of
        the ground-truth files that label them."""
        given = (self.config.ground_truth, self.config.devkit_meta)
        labels = [Path(p).expanduser() for p in given if p is not None]
        labels = [p for p in labels if p.is_file()]
        return files_fingerprint([*self.files, *labels])

    def labels(self) -> np.ndarray:
        return self._labels

    def classes(self) -> list[ClassInfo]:
        return list(self._classes)
