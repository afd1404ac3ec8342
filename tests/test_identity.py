"""Identity is one mechanism: every field of every built-in Config, changed in turn, reruns
exactly what it should (cells, SAEs, activation cache entries), and nothing else; component
versions and what a dataset reads enter the keys."""

from __future__ import annotations

import copy
import dataclasses
import os
import textwrap
import typing
from pathlib import Path
from typing import Any, Literal

from saebench_vision.config import TrainingConfig, build_config, field_types, identity_dict
from saebench_vision.plan import plan_suite
from saebench_vision.suite import parse_suite

# Written by hand from what each option does (its help text), not read from the declarations:
# the fields that change no number. Every other field must change the keys.
RUNTIME = {
    ("model", "*"): {"device", "batch_size", "num_workers"},
    ("dataset", "quickdraw-emoji"): {"cache_dir"},
    ("dataset", "imagenet-folder"): {"max_image_pixels"},
    ("dataset", "image-folder"): {"max_image_pixels"},
    ("dataset", "hf-text"): {"cache_dir"},
    ("evaluator", "diffusion-steering"): {"cache_dir"},
    ("evaluator", "reconstruction"): {"batch_size", "device"},
    ("evaluator", "ood-accuracy"): {"device", "memory_budget_gb"},
    ("evaluator", "ontology"): {"batch_size", "device"},
    ("evaluator", "layer-sweep"): {"batch_size", "device"},
    ("evaluator", "modality-overlap"): {"batch_size", "device"},
    ("evaluator", "persistence"): {"device"},
    ("evaluator", "head-accuracy"): {"batch_size"},
    ("training", ""): {"device", "checkpoint_every", "fuse", "parallel_saes"},
}


def _runtime(kind: str, name: str) -> set[str]:
    return RUNTIME.get((kind, name), set()) | RUNTIME.get((kind, "*"), set())


def _candidates(value: Any, tp: Any) -> list[Any]:
    """Other valid-looking values of a field's type, the most plausible first."""
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin is Literal:
        return [a for a in typing.get_args(tp) if a != value]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        out = [] if value is None else [None]
        for a in args:
            out += _candidates(value if value is not None else _zero(a), a)
            if value is None:
                out.append(_zero(a))
        return [v for v in out if v != value]
    if tp is bool:
        return [not value]
    if tp is int:
        return [value + 1, value * 2 + 1, 8, 64]
    if tp is float:
        return [v for v in (value / 2, value * 2, value + 0.25, 0.5, 0.9) if v != value]
    if tp is str:
        return [f"{value}x" if value else "cuda" if False else "other", "cuda", "auto"]
    if origin in (tuple, list):
        items = list(value or [])
        out = [items[:-1]] if len(items) > 1 else []
        out += [items + items[-1:]] if items else []
        return [tuple(v) if origin is tuple else v for v in out]
    return []


def _zero(tp: Any) -> Any:
    return {int: 8, float: 0.5, str: "other", bool: True}.get(tp, None)


# Fields whose valid values the generic candidates miss (fixed-length or ordered tuples).
SPECIAL = {
    "adam_betas": [[0.8, 0.99]],
    "scale": [[0.3, 0.6]],
    "classes": [["circle", "square"]],
    "prefix_fractions": [[0.25, 0.5, 1.0]],
    "features": [[3, 5]],
    "attributes": [{"3": "red"}],
    "labeller_args": [{"top_k": 2}],
    "dataset": [{"plugin": "shapes", "args": {"split": "val"}}],
    "templates": [["What is {article} {name}?"]],
    "shared_range": [[0.25, 0.75]],
    "view_scale": [[0.5, 1.0]],
}


def _variants(config_cls: type, base: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """For every field, args that differ from ``base`` in that field only and still build."""
    types = field_types(config_cls)
    built = build_config(config_cls, base)
    out = {}
    for f in dataclasses.fields(config_cls):
        current = getattr(built, f.name)
        for candidate in SPECIAL.get(f.name, []) + _candidates(current, types[f.name]):
            args = base | {f.name: list(candidate) if isinstance(candidate, tuple) else candidate}
            try:
                build_config(config_cls, args)
            except Exception:
                continue
            out[f.name] = args
            break
    return out


REQUIRED = {
    ("dataset", "imagenet-folder"): {"root": "."},
    ("dataset", "image-folder"): {"root": "."},
    ("dataset", "prompt-file"): {"path": "prompts.txt"},
    ("dataset", "coco-captions"): {"path": "captions.json"},
    ("dataset", "hf-text"): {"dataset": "prompts"},
    ("evaluator", "diffusion-steering"): {"prompt_split": "val"},
    ("dataset", "image-captions"): {"dataset": {"plugin": "shapes", "args": {"split": "train"}}},
    ("dataset", "class-questions"): {"dataset": {"plugin": "shapes", "args": {"split": "train"}}},
}


def _doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "output": "out",
        "models": [{"plugin": "efficientnet-lite", "layers": ["final"]}],
        "datasets": {
            "train": {"plugin": "shapes", "args": {"split": "train"}},
            "val": {"plugin": "shapes", "args": {"split": "val"}, "role": "eval"},
        },
        "saes": [{"plugin": "topk"}, {"plugin": "relu"}],
        "evaluators": [{"plugin": "reconstruction"}, {"plugin": "ontology"}],
    }
    doc.update(copy.deepcopy(over))
    return doc


def _ids(doc: dict[str, Any], manager: Any) -> tuple[dict[str, str], set[str]]:
    """{(layer, sae label, evaluator): cell id} and the SAE ids of a suite document."""
    suite = parse_suite(copy.deepcopy(doc), Path("s.yaml"), manager.registry())
    plan = plan_suite(suite, manager)
    cells = {
        f"{c.sae_label if c.sae_label == 'baseline' else c.sae_plugin}/{c.evaluator}": c.cell_id
        for c in plan.cells
    }
    return cells, {p.sae_id for g in plan.groups for p in g.saes}


def _changed(a: dict[str, str], b: dict[str, str]) -> set[str]:
    assert a.keys() == b.keys()
    return {k for k in a if a[k] != b[k]}


ALL = {
    "baseline/reconstruction",
    "baseline/ontology",
    "topk/reconstruction",
    "topk/ontology",
    "relu/reconstruction",
    "relu/ontology",
}


def test_every_field_of_every_builtin_config_reruns_exactly_what_it_should(
    manager, monkeypatch, tmp_path
):
    monkeypatch.chdir(tmp_path)
    registry = manager.registry()
    base_cells, base_saes = _ids(_doc(), manager)
    assert len(base_cells) == 6 and len(base_saes) == 2
    checked = 0
    for kind in ("model", "dataset", "sae", "evaluator", "training"):
        names = [""] if kind == "training" else registry.names(kind)
        for name in names:
            config_cls = (
                TrainingConfig if kind == "training" else registry.get(kind, name).config_class()
            )
            required = REQUIRED.get((kind, name), {})
            for field, args in _variants(config_cls, dict(required)).items():
                if kind == "model":
                    before = _doc(models=[{"plugin": name, "args": required, "layers": ["final"]}])
                    after = _doc(models=[{"plugin": name, "args": args, "layers": ["final"]}])
                    expect_cells, expect_saes = ALL, True
                elif kind == "dataset":
                    train = {"plugin": name, "args": required}
                    before = _doc()
                    before["datasets"]["train"] = train
                    after = copy.deepcopy(before)
                    after["datasets"]["train"] = {"plugin": name, "args": args}
                    expect_cells, expect_saes = ALL, True
                elif kind == "sae":
                    other = {"plugin": "topk" if name != "topk" else "relu"}
                    before = _doc(saes=[{"plugin": name, "args": required}, other])
                    after = _doc(saes=[{"plugin": name, "args": args}, other])
                    expect_cells, expect_saes = {f"{name}/reconstruction", f"{name}/ontology"}, True
                elif kind == "evaluator":
                    other = "reconstruction" if name != "reconstruction" else "ontology"
                    before = _doc(
                        evaluators=[{"plugin": name, "args": required}, {"plugin": other}]
                    )
                    after = _doc(evaluators=[{"plugin": name, "args": args}, {"plugin": other}])
                    expect_cells = {f"{x}/{name}" for x in ("baseline", "topk", "relu")}
                    expect_saes = False
                else:
                    before, after = _doc(), _doc(training=args)
                    expect_cells = ALL - {"baseline/reconstruction", "baseline/ontology"}
                    expect_saes = True
                try:
                    cells0, saes0 = _ids(before, manager)
                    cells1, saes1 = _ids(after, manager)
                except Exception as exc:  # a value the suite loader refuses is not a variant
                    if "not a" in str(exc) or "must" in str(exc):
                        continue
                    raise
                what = f"{kind} {name} field {field}"
                if field in _runtime(kind, name):
                    assert _changed(cells0, cells1) == set(), what
                    assert saes0 == saes1, what
                else:
                    if kind == "sae":
                        expect_cells = {k for k in cells0 if k.startswith(f"{name}/")}
                    assert _changed(cells0, cells1) == expect_cells, what
                    assert (saes0 != saes1) is expect_saes, what
                checked += 1
    assert checked == sum(
        len(
            dataclasses.fields(
                TrainingConfig if k == "training" else registry.get(k, n).config_class()
            )
        )
        for k in ("model", "dataset", "sae", "evaluator", "training")
        for n in ([""] if k == "training" else registry.names(k))
    )  # every field of every built-in Config was changed once


def test_adapter_cache_identity_follows_the_declarations():
    """The activation cache key hashes ``adapter.identity()``: runtime fields leave it alone."""
    from saebench_vision_plugins.models.dinov2 import DINOv2Adapter
    from saebench_vision_plugins.models.efficientnet import EfficientNetLiteAdapter

    for cls in (EfficientNetLiteAdapter, DINOv2Adapter):
        base = cls(build_config(cls.Config, {})).identity()
        for field, args in _variants(cls.Config, {}).items():
            other = cls(build_config(cls.Config, args)).identity()
            assert (other == base) is (field in _runtime("model", "*")), (cls.name, field)


def test_component_version_bump_changes_every_key(manager, tmp_path, monkeypatch):
    """A plugin with a light Config (read without importing its class) and one loaded from a
    module (``SAEBENCH_VISION_PLUGINS``, no distribution version): bumping either's version
    changes the SAE ids and their cells."""
    import toyplugin

    pkg = tmp_path / "bumpplugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text(
        "from dataclasses import dataclass\nfrom saebench_vision.config import SAEConfig\n"
        "@dataclass(frozen=True)\nclass C(SAEConfig):\n    pass\n"
    )
    impl = pkg / "impl.py"
    source = textwrap.dedent(
        """
        from toyplugin import ToySAE
        from bumpplugin.config import C
        class BumpSAE(ToySAE):
            name, Config = "bump", C
            version = "1"
        """
    )
    impl.write_text(source)
    (pkg / "hooks.py").write_text(
        "from saebench_vision import hookimpl\nfrom saebench_vision.registry import ComponentRef\n"
        "@hookimpl\ndef register_saes():\n"
        "    return {'bump': ComponentRef('bumpplugin.impl:BumpSAE', config='bumpplugin.config:C')}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import bumpplugin.hooks

    manager.register(toyplugin, "toy", ("", ""))
    manager.register(bumpplugin.hooks, "bump", ("", ""))
    doc = _doc(saes=[{"plugin": "bump"}, {"plugin": "toy-sae"}])
    cells0, saes0 = _ids(doc, manager)
    assert "bumpplugin.impl" not in __import__("sys").modules  # read without importing it
    impl.write_text(source.replace('version = "1"', 'version = "2"'))
    cells1, saes1 = _ids(doc, manager)
    assert _changed(cells0, cells1) == {"bump/reconstruction", "bump/ontology"}
    monkeypatch.setattr(toyplugin.ToySAE, "version", "7")
    cells2, _ = _ids(doc, manager)
    assert _changed(cells1, cells2) == {"toy-sae/reconstruction", "toy-sae/ontology"}
    assert len(saes0 | saes1) == 3


def test_relative_roots_are_resolved_and_folder_contents_fingerprinted(tmp_path, monkeypatch):
    from PIL import Image
    from saebench_vision_plugins.datasets.folders import ImageFolderDataset

    for run in ("a", "b"):
        (tmp_path / run / "data").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / run / "data" / "x.png")
    cfg = build_config(ImageFolderDataset.Config, {"root": "data"})
    monkeypatch.chdir(tmp_path / "a")
    in_a = identity_dict(cfg)
    first = ImageFolderDataset(cfg).fingerprint()
    monkeypatch.chdir(tmp_path / "b")
    assert identity_dict(cfg) != in_a and in_a["root"] == os.path.realpath(tmp_path / "a" / "data")
    monkeypatch.chdir(tmp_path / "a")
    assert ImageFolderDataset(cfg).fingerprint() == first
    Image.new("RGB", (9, 9)).save(tmp_path / "a" / "data" / "x.png")  # same name, new content
    assert ImageFolderDataset(cfg).fingerprint() != first
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "data" / "y.png")
    assert len({first, ImageFolderDataset(cfg).fingerprint()}) == 2


def test_changed_folder_contents_give_new_cells(manager, tmp_path, monkeypatch):
    """Planning notices new or edited files under a dataset's root (a stat walk, no reads), so
    cells computed from the old contents are not reused."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.png").write_bytes(b"1")
    doc = _doc()
    doc["datasets"]["far"] = {"plugin": "image-folder", "args": {"root": "data"}, "role": "far-ood"}
    cells0, saes0 = _ids(doc, manager)
    assert _ids(doc, manager)[0] == cells0
    (tmp_path / "data" / "b.png").write_bytes(b"22")
    cells1, saes1 = _ids(doc, manager)
    assert _changed(cells0, cells1) == ALL and saes0 == saes1  # SAEs train on `train` only
    os.utime(tmp_path / "data" / "a.png", ns=(1, 1))
    assert _changed(cells1, _ids(doc, manager)[0]) == ALL


def test_training_batch_size_reruns_and_parallel_saes_does_not(manager, tmp_path, monkeypatch):
    """The two cases the stale-results report named, end to end through the plan."""
    monkeypatch.chdir(tmp_path)
    cells0, saes0 = _ids(_doc(), manager)
    cells1, saes1 = _ids(_doc(training={"batch_size": 128}), manager)
    cells2, saes2 = _ids(_doc(training={"parallel_saes": 1}), manager)
    assert saes0.isdisjoint(saes1) and _changed(cells0, cells1) == ALL - {
        "baseline/reconstruction",
        "baseline/ontology",
    }
    assert saes2 == saes0 and _changed(cells0, cells2) == set()
    ood0, _ = _ids(_doc(evaluators=[{"plugin": "ood-accuracy"}]), manager)
    ood1, _ = _ids(
        _doc(evaluators=[{"plugin": "ood-accuracy", "args": {"batch_size": 256}}]), manager
    )
    assert len(_changed(ood0, ood1)) == 3


def test_executor_settings_change_no_id(manager, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cells0, saes0 = _ids(_doc(), manager)
    ray = {
        "name": "ray",
        "address": "auto",
        "max_retries": 1,
        "resources": {"train": {"num_gpus": 1}},
    }
    assert _ids(_doc(executor=ray), manager) == (cells0, saes0)
    suite = parse_suite(_doc(executor=ray), Path("s.yaml"), manager.registry())
    assert suite.hash == parse_suite(_doc(), Path("s.yaml"), manager.registry()).hash


def test_planning_and_executors_import_neither_torch_nor_ray():
    import subprocess
    import sys

    from conftest import builtins_only_env

    code = (
        "import sys; import saebench_vision.runner, saebench_vision.executors, saebench_vision.plan; "
        "print('torch' in sys.modules, 'ray' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=builtins_only_env(),
        timeout=120,
    )
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_model_files_replaced_in_place_give_new_cells_and_activation_keys(
    manager, tmp_path, monkeypatch
):
    """Model path options (``weights_path``, ``model_id`` as a local folder) are fingerprinted
    like dataset roots: new cells and new cache keys when the weights change on disk; hub ids
    and tags add nothing to the keys."""
    from saebench_vision.plan import path_digests
    from saebench_vision.steps import Workspace

    monkeypatch.chdir(tmp_path)
    weights = tmp_path / "lite0.pth"
    weights.write_bytes(b"1")
    model = {"plugin": "efficientnet-lite", "args": {"weights_path": "lite0.pth"}}
    doc = _doc(models=[model | {"layers": ["final"]}])

    def keys() -> tuple[dict[str, str], str]:
        suite = parse_suite(copy.deepcopy(doc), Path("s.yaml"), manager.registry())
        ws = Workspace(suite, manager, cache_dir=tmp_path / "cache")
        return _ids(doc, manager)[0], ws.activation_key(suite.models[0], "final", "train")

    cells0, key0 = keys()
    os.utime(weights, ns=(1, 1))
    cells1, key1 = keys()
    assert _changed(cells0, cells1) == ALL and key0 != key1
    hub = build_config(manager.registry().get("model", "dinov2").config_class(), {})
    assert path_digests(hub) == {}


# --------------------------------------------------------------------------------------------
# Fields at their declared `absent` value keep the ids the Config had before the field existed


# Fields added together, as one setting (the Config before them had neither): TopK's k ramp
# is its length and its starting k, and k_start is only read when k_ramp is above 0.
TOGETHER = [frozenset({"k_ramp", "k_start"})]


def _group(field: str) -> frozenset[str]:
    return next((g for g in TOGETHER if field in g), frozenset({field}))


def _without(config_cls: type, *names: str) -> type:
    """``config_cls`` as it was before fields ``names`` were added: a flat copy of its other
    fields, each keeping its default and its identity declaration (read along the bases by
    hand)."""

    def declared(field_name: str) -> bool:
        for klass in config_cls.__mro__:
            f = getattr(klass, "__dataclass_fields__", {}).get(field_name)
            if f is not None and "identity" in f.metadata:
                return bool(f.metadata["identity"])
        return True

    types = field_types(config_cls)
    fields = []
    for f in dataclasses.fields(config_cls):
        if f.name in names:
            continue
        metadata = {k: v for k, v in f.metadata.items() if k != "absent"}
        metadata["identity"] = declared(f.name)
        default = (
            {"default_factory": f.default_factory}
            if f.default_factory is not dataclasses.MISSING
            else {"default": f.default}
        )
        fields.append((f.name, types[f.name], dataclasses.field(metadata=metadata, **default)))
    return dataclasses.make_dataclass(config_cls.__name__, fields, frozen=True)


def _absent_fields(manager: Any) -> list[tuple[str, str, type, str, Any]]:
    """(kind, name, Config, field, absent) for every built-in field that declares `absent`."""
    registry = manager.registry()
    out = []
    for kind in ("model", "dataset", "sae", "evaluator", "training"):
        for name in [""] if kind == "training" else registry.names(kind):
            cls = TrainingConfig if kind == "training" else registry.get(kind, name).config_class()
            for f in dataclasses.fields(cls):
                if "absent" in f.metadata:
                    out.append((kind, name, cls, f.name, f.metadata["absent"]))
    return out


def test_a_field_at_its_absent_value_hashes_as_if_the_class_had_no_such_field(manager):
    from saebench_vision.cache import content_key

    found = _absent_fields(manager)
    # The three the SAEs declare today (Matryoshka inherits BatchTopK's `topk_warmup`).
    assert {(n, f) for _, n, _, f, _ in found} >= {
        ("batch-topk", "topk_warmup"),
        ("matryoshka", "topk_warmup"),
        ("matryoshka", "nesting"),
        ("gated", "l1_convention"),
    }
    assert {(n, f) for _, n, _, f, _ in found} >= {
        (n, f) for n in ("topk", "batch-topk", "matryoshka") for f in ("k_ramp", "k_start")
    }
    absents = {(name, field): absent for _, name, _, field, absent in found}
    for kind, name, cls, field, absent in found:
        required = REQUIRED.get((kind, name), {})
        group = _group(field)
        at_absent = build_config(cls, required | {g: absents[name, g] for g in group})
        before = build_config(_without(cls, *group), required)
        default = build_config(cls, required)
        assert getattr(default, field) != absent  # else `absent` would add nothing
        assert not group & set(identity_dict(at_absent))
        assert content_key(identity_dict(at_absent)) == content_key(identity_dict(before))
        assert content_key(identity_dict(default)) != content_key(identity_dict(before))
        assert identity_dict(default)[field] == getattr(default, field)
        # Records that say what an SAE was trained as keep the field.
        assert identity_dict(at_absent, keep_absent=True)[field] == absent


def test_sae_ids_at_absent_are_the_ids_before_the_field_existed(manager, monkeypatch, tmp_path):
    """Through the plan: `nesting: latents` (absent) has the SAE and cell ids the Matryoshka
    entry had when its Config had no `nesting`; `both` (the default) and `rank` have others."""
    from saebench_vision.registry import Entry

    monkeypatch.chdir(tmp_path)
    real = Entry.config_class
    for _, name, cls, field, absent in _absent_fields(manager):
        if name not in ("matryoshka", "gated", "batch-topk", "topk") or field == "k_start":
            continue  # k_start: with k_ramp, whose absent value turns it off
        ids = {}
        for value in [absent, *_candidates(absent, field_types(cls)[field])][:3]:
            doc = _doc(saes=[{"plugin": name, "args": {field: value}}, {"plugin": "relu"}])
            ids[value] = _ids(doc, manager)
        default = _ids(_doc(saes=[{"plugin": name}, {"plugin": "relu"}]), manager)
        old = _without(cls, *_group(field))

        def config_class(entry: Any, old: type = old, name: str = name) -> Any:
            return old if entry.name == name else real(entry)

        monkeypatch.setattr(Entry, "config_class", config_class)
        before = _ids(_doc(saes=[{"plugin": name}, {"plugin": "relu"}]), manager)
        monkeypatch.setattr(Entry, "config_class", real)
        assert ids[absent] == before, (name, field)
        others = [v for k, v in ids.items() if k != absent] + [default]
        assert all(o[1] != before[1] and _changed(o[0], before[0]) for o in others), name
        assert len({frozenset(v[1]) for v in ids.values()}) == len(ids), name


def test_absent_and_default_entries_are_two_saes_and_spelled_out_absent_is_a_duplicate(
    manager, monkeypatch, tmp_path
):
    from saebench_vision.errors import SuiteError

    monkeypatch.chdir(tmp_path)
    latents = {"plugin": "matryoshka", "args": {"nesting": "latents"}}
    doc = _doc(saes=[latents, {"plugin": "matryoshka", "label": "m2"}])
    assert len(_ids(doc, manager)[1]) == 2
    doc = _doc(saes=[latents, {**latents, "label": "m2"}])
    suite = parse_suite(copy.deepcopy(doc), Path("s.yaml"), manager.registry())
    try:
        plan_suite(suite, manager)
    except SuiteError as exc:
        assert "same SAE as saes[0]" in str(exc)
    else:
        raise AssertionError("two entries training the same SAE were not refused")


def test_a_store_made_before_a_field_existed_is_reused_at_its_absent_value(
    tmp_path, toy_manager, monkeypatch
):
    """End to end: a run, then the toy SAE's Config gains a field (default `new`, absent
    `old`). The suite spelling out `mode: old` reruns nothing and loads the old checkpoint as
    `old`; the default trains a new SAE."""
    import toyplugin
    from test_runner import run, write_suite
    from test_runner_features import SMALL

    from saebench_vision.checkpoint import load_sae
    from saebench_vision.config import option

    suite, runner, first = run(write_suite(tmp_path, SMALL), toy_manager)
    assert first.computed_cells == 2  # the SAE's reconstruction cell and the baseline's

    @dataclasses.dataclass(frozen=True)
    class Later(toyplugin.ToySAEConfig):
        mode: Literal["old", "new"] = option("new", "a later option", absent="old")

    monkeypatch.setattr(toyplugin.ToySAE, "Config", Later)
    old = copy.deepcopy(SMALL)
    old["saes"][0]["args"]["mode"] = "old"
    suite, runner, second = run(write_suite(tmp_path, old), toy_manager)
    assert second.computed_cells == 0
    (planned,) = [p for g in plan_suite(suite, toy_manager).groups for p in g.saes]
    assert planned.config_identity["mode"] == "old"  # recorded, though left out of the id
    resolve = lambda name: toy_manager.registry().get("sae", name).load()  # noqa: E731
    sae, meta = load_sae(runner.store.sae_path(planned.sae_id), resolve)
    assert sae.config.mode == "old" and meta["sae_id"] == planned.sae_id
    _, _, third = run(write_suite(tmp_path, SMALL), toy_manager)
    assert third.computed_cells == 1  # the default is a new SAE; the baseline is reused


def test_a_training_state_fingerprint_at_absent_is_the_one_before_the_field_existed(manager):
    # A run interrupted before a field was added must resume after it when the field states
    # what the run trained: the training-state fingerprint hashes the SAEs' settings with
    # the fields at their `absent` value left out (runtime fields kept).
    from types import SimpleNamespace

    from saebench_vision.config import config_as_dict
    from saebench_vision.training import _fingerprint

    rows = SimpleNamespace(n=10, n_total=10, d=6, data=SimpleNamespace(key="k"))
    config = build_config(TrainingConfig, {})
    absents = {(n, f): a for _, n, _, f, a in _absent_fields(manager)}
    checked = 0
    for kind, name, cls, field, _ in _absent_fields(manager):
        if kind != "sae":
            continue
        group = _group(field)
        sae_cls = manager.registry().get("sae", name).load()
        sae = sae_cls(6, build_config(cls, {g: absents[name, g] for g in group}))
        now = _fingerprint([sae], rows, config, 0)
        before = build_config(_without(cls, *group), {})
        assert sae.identity()["config"] == config_as_dict(before)
        sae.config = before  # the same SAE as the version without the field stated it
        assert _fingerprint([sae], rows, config, 0) == now
        checked += 1
    assert checked >= 5


def test_a_sweep_whose_points_normalise_alike_is_refused_naming_what_differs(
    manager, monkeypatch, tmp_path
):
    # A start of 0.99 k rounds to k = 32: no ramp, as a start of 1 is; both are recorded as
    # k_ramp 0, k_start 1, one SAE whose id two leaderboard rows would share.
    from saebench_vision.errors import SuiteError

    monkeypatch.chdir(tmp_path)
    sweep = {
        "plugin": "topk",
        "args": {"k": 32, "k_ramp": 0.25},
        "sweep": {"k_start": [1.0, 0.99]},
    }
    suite = parse_suite(copy.deepcopy(_doc(saes=[sweep])), Path("s.yaml"), manager.registry())
    try:
        plan_suite(suite, manager)
    except SuiteError as exc:
        message = str(exc)
    else:
        raise AssertionError("two sweep points training the same SAE were not refused")
    assert "same SAE as" in message and "\n" not in message
    assert "they differ only in `k_start` 0.99 against 1.0" in message
    sweep["sweep"] = {"k_start": [1.0, 0.9]}  # 0.9 k rounds to 29: a ramp, so two SAEs
    assert len(_ids(_doc(saes=[sweep]), manager)[1]) == 2
