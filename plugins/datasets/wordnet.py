"""WordNet 3.0 for nltk, fetched once into a private cache folder.

:func:`ensure_wordnet` makes ``nltk.corpus.wordnet`` usable. It looks, in order, for a WordNet
nltk can already read, for one this function set up earlier under ``cache_dir``, for the
Debian ``wordnet-base`` + ``wordnet-sense-index`` files installed on the system; then fetches: ``nltk.download("wordnet")``
(any machine with internet access), else Debian's ``wordnet-base`` and ``wordnet-sense-index`` packages through
``apt-get download`` + ``dpkg -x`` (no root needed; machines that reach only a Debian mirror).

The Debian packages hold Princeton's WordNet 3.0 dict files (the noun synsets ImageNet ids
refer to) but omits ``lexnames``, which nltk's reader needs; it is a fixed 45-line table from
the lexnames(5WN) manual page, written here. nltk reads corpora only from folders that are
private to their owner, so the cache is created with mode 0700 and files are copied, not linked.

WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved (WordNet 3.0 licence:
use, copy, modify and distribute with the notice kept).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Literal

from saebench_vision.cache import default_cache_dir
from saebench_vision.errors import DatasetError

DEBIAN_PACKAGES = ("wordnet-base", "wordnet-sense-index")
SYSTEM_DICT_DIRS = (Path("/usr/share/wordnet"), Path("/usr/local/WordNet-3.0/dict"))

# lexnames(5WN): file number, lexicographer file, syntactic category (1 noun, 2 verb, 3 adj, 4 adv).
_LEXNAMES = (
    "adj.all 3",
    "adj.pert 3",
    "adv.all 4",
    "noun.Tops 1",
    "noun.act 1",
    "noun.animal 1",
    "noun.artifact 1",
    "noun.attribute 1",
    "noun.body 1",
    "noun.cognition 1",
    "noun.communication 1",
    "noun.event 1",
    "noun.feeling 1",
    "noun.food 1",
    "noun.group 1",
    "noun.location 1",
    "noun.motive 1",
    "noun.object 1",
    "noun.person 1",
    "noun.phenomenon 1",
    "noun.plant 1",
    "noun.possession 1",
    "noun.process 1",
    "noun.quantity 1",
    "noun.relation 1",
    "noun.shape 1",
    "noun.state 1",
    "noun.substance 1",
    "noun.time 1",
    "verb.body 2",
    "verb.change 2",
    "verb.cognition 2",
    "verb.communication 2",
    "verb.competition 2",
    "verb.consumption 2",
    "verb.contact 2",
    "verb.creation 2",
    "verb.emotion 2",
    "verb.motion 2",
    "verb.perception 2",
    "verb.possession 2",
    "verb.social 2",
    "verb.stative 2",
    "verb.weather 2",
    "adj.ppl 3",
)
_DICT_FILES = (
    "data.noun",
    "data.verb",
    "data.adj",
    "data.adv",
    "index.noun",
    "index.verb",
    "index.adj",
    "index.adv",
    "noun.exc",
    "verb.exc",
    "adj.exc",
    "adv.exc",
    "index.sense",
)


def lexnames_text() -> str:
    """The ``lexnames`` file nltk expects: ``NN<TAB>name<TAB>category`` per line."""
    lines = []
    for number, entry in enumerate(_LEXNAMES):
        name, category = entry.split()
        lines.append(f"{number:02d}\t{name}\t{category}")
    return "\n".join(lines) + "\n"


def default_wordnet_dir() -> Path:
    """``<saebench cache>/wordnet``: the nltk data root this module manages."""
    return default_cache_dir() / "wordnet"


def _add_to_nltk_path(root: Path) -> None:
    import nltk

    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))


def _readable_wordnet() -> bool:
    import nltk

    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        return False
    return True


def install_dict_files(dict_dir: Path, root: Path) -> Path:
    """Copy WordNet dict files from ``dict_dir`` into ``<root>/corpora/wordnet`` (+ lexnames)."""
    missing = [f for f in _DICT_FILES if not (dict_dir / f).is_file()]
    if missing:
        raise DatasetError(f"{dict_dir}: not a WordNet 3.0 dict folder ({missing[0]} is missing)")
    target = root / "corpora" / "wordnet"
    staging = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=_private_dir(root / "corpora")))
    try:
        for entry in sorted(dict_dir.iterdir()):
            if entry.is_file():
                shutil.copyfile(entry, staging / entry.name)
        if not (staging / "lexnames").exists():
            (staging / "lexnames").write_text(lexnames_text())
        os.chmod(staging, 0o700)
        if target.exists():
            shutil.rmtree(target)
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _debian_fetch(root: Path) -> None:
    """``apt-get download wordnet-base`` and ``dpkg -x`` it; no root privileges needed."""
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise DatasetError(
            "WordNet: cannot fetch it (nltk.download failed and apt-get/dpkg are absent); run "
            "python -c \"import nltk; nltk.download('wordnet')\" on a machine with internet access"
        )
    work = Path(tempfile.mkdtemp(prefix="debian-", dir=_private_dir(root / "downloads")))
    try:
        for pkg in DEBIAN_PACKAGES:
            done = subprocess.run(
                ["apt-get", "download", pkg], cwd=work, capture_output=True, text=True
            )
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise DatasetError(
                    f"WordNet: `apt-get download {pkg}` failed ({last}); run `apt-get update` or "
                    f"use nltk.download('wordnet')"
                )
        for deb in sorted(work.glob("*.deb")):
            subprocess.run(
                ["dpkg", "-x", str(deb), str(work / "x")], check=True, capture_output=True
            )
        install_dict_files(work / "x" / "usr" / "share" / "wordnet", root)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _nltk_fetch(root: Path) -> bool:
    import nltk

    # The downloader prints its failures even when quiet; a failure here is not final.
    sink = io.StringIO()
    kwargs: dict[str, Any] = {"quiet": True, "raise_on_error": True}
    if "print_error_to" in inspect.signature(nltk.download).parameters:
        kwargs["print_error_to"] = sink
    try:
        with contextlib.redirect_stdout(sink):
            return bool(nltk.download("wordnet", download_dir=str(root), **kwargs))
    except (ValueError, OSError):
        return False


def ensure_wordnet(
    cache_dir: str | os.PathLike[str] | None = None,
    method: Literal["auto", "nltk", "debian"] = "auto",
) -> Path:
    """Make WordNet 3.0 readable by ``nltk.corpus.wordnet``; return the nltk data root used.

    ``cache_dir`` defaults to :func:`default_wordnet_dir`. ``method`` ``auto`` tries what is
    already there, then ``nltk.download``, then Debian's package; ``nltk`` or ``debian`` force
    one route. Raises :class:`DatasetError` with a one-line fix when every route fails.
    """
    root = Path(cache_dir) if cache_dir is not None else default_wordnet_dir()
    if method == "auto" and _readable_wordnet():
        import nltk

        return Path(str(nltk.data.find("corpora/wordnet"))).parent.parent
    _private_dir(root)
    _add_to_nltk_path(root)
    if (root / "corpora" / "wordnet" / "index.sense").is_file() or (
        root / "corpora" / "wordnet.zip"
    ).is_file():
        return root
    if method == "auto":
        for system_dir in SYSTEM_DICT_DIRS:
            if all((system_dir / f).is_file() for f in _DICT_FILES):
                install_dict_files(system_dir, root)
                return root
    if method in ("auto", "nltk") and _nltk_fetch(root):
        return root
    if method == "nltk":
        raise DatasetError(
            f"WordNet: nltk.download('wordnet') into {root} failed; check the network"
        )
    _debian_fetch(root)
    return root


def wordnet_reader(cache_dir: str | os.PathLike[str] | None = None) -> Any:
    """``nltk.corpus.wordnet`` after :func:`ensure_wordnet`."""
    ensure_wordnet(cache_dir)
    from nltk.corpus import wordnet

    wordnet.ensure_loaded()
    return wordnet
