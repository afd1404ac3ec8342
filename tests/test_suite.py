"""Suite validation: a valid suite parses; each malformed one fails with one precise line."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from saebench_vision.errors import SuiteError
from saebench_vision.suite import load_suite

VALID: dict[str, Any] = {
    "name": "toy",
    "seeds": [0, 1],
    "models": [
        {
            "plugin": "toy-model",
            "args": {"width": 24},
            "layers": ["layer.0", "final"],
            "tokens": "cls",
        }
    ],
    "datasets": {
        "train": {"plugin": "toy-clusters", "args": {"split": "train"}},
        "val": {"plugin": "toy-clusters", "args": {"split": "val"}, "role": "eval"},
        "far": {"plugin": "toy-clusters", "args": {"split": "ood"}, "role": "far-ood"},
    },
    "saes": [
        {"plugin": "toy-sae", "args": {"expansion": 2}, "sweep": {"l1_coefficient": [0.1, 1]}}
    ],
    "training": {"epochs": 2, "lr": 0.001},
    "evaluators": [{"plugin": "toy-slow"}],
}


def write(tmp_path: Path, doc: Any, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


def test_valid_suite_parses(tmp_path, toy_manager):
    suite = load_suite(write(tmp_path, VALID), toy_manager.registry())
    assert suite.name == "toy" and suite.seeds == (0, 1)
    assert [s.name for s in suite.datasets] == ["train", "val", "far"]
    assert suite.train_split.name == "train"
    variants = suite.sae_variants()
    assert [v.label for v in variants] == [
        "toy-sae[expansion=2,l1_coefficient=0.1]",
        "toy-sae[expansion=2,l1_coefficient=1]",
    ]
    assert variants[1].args == {"expansion": 2, "l1_coefficient": 1.0}  # YAML int coerced to float
    assert suite.training_config().lr == 0.001 and suite.training_config().batch_size == 64
    assert suite.output == Path("saebench-results/toy")


def test_hash_is_stable_and_sensitive(tmp_path, toy_manager):
    reg = toy_manager.registry()
    a = load_suite(write(tmp_path, VALID, "a.yaml"), reg)
    b = load_suite(write(tmp_path, copy.deepcopy(VALID), "b.yaml"), reg)
    changed = copy.deepcopy(VALID)
    changed["training"]["lr"] = 0.002
    c = load_suite(write(tmp_path, changed, "c.yaml"), reg)
    assert a.hash == b.hash != c.hash


def _set(path: str, value: Any):
    def mutate(doc: dict[str, Any]) -> dict[str, Any]:
        keys = path.split(".")
        node: Any = doc
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        last = keys[-1]
        if value is DELETE:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
        return doc

    return mutate


DELETE = object()

# (mutation, expected message after "<file>: ")
MALFORMED = [
    (
        _set("modelz", []),
        "(top level): unknown key `modelz`. Did you mean: models? (expected: name, description",
    ),
    (_set("models", DELETE), "(top level): missing `models`"),
    (_set("models", []), "models: must be a non-empty list of entries like"),
    (
        _set("models.0", ["toy-model"]),
        "models[0]: must be a mapping with keys plugin, args, layers, tokens, label, not list",
    ),
    (
        _set("models.0.plugin", "toy-modle"),
        "models[0].plugin: Unknown model 'toy-modle'. Did you mean: toy-model? Available:",
    ),
    (
        _set("models.0.args", {"widht": 3}),
        "models[0].args: unknown key `widht` for model `toy-model`. Did you mean: width?",
    ),
    (
        _set("models.0.args", {"width": "wide"}),
        "models[0].args.width: 'wide' is not an integer; fix the value (hidden width)",
    ),
    (_set("models.0.layers", []), "models[0].layers: [] is not a non-empty list of layer names"),
    (
        _set("models.0.layers", ["final", "final"]),
        "models[0].layers: ['final', 'final'] names a layer twice",
    ),
    (
        _set("models.0.tokens", "clss"),
        "models[0].tokens: 'clss' is not a token selection. Did you mean: cls?",
    ),
    (_set("models.0.argz", {}), "models[0]: unknown key `argz`. Did you mean: args?"),
    (_set("datasets.val.role", "evaluation"), "datasets.val.role: 'evaluation' is not a role."),
    (
        _set("datasets.val.role", DELETE),
        "datasets.val: missing `role` (one of: train, eval, shifted, near-ood, far-ood)",
    ),
    (
        _set("datasets.val.role", "train"),
        "datasets: exactly one split needs `role: train` (found: train, val)",
    ),
    (_set("datasets", ["train"]), "datasets: must be a mapping of split names to entries"),
    (
        _set("datasets.train.args", {"split": "test"}),
        "datasets.train.args.split: 'test' is not one of train, val, shifted, ood",
    ),
    (
        _set("saes.0.sweep", {"l1": [0.1]}),
        "saes[0].sweep: unknown key `l1` for SAE `toy-sae`. Did you mean: l1_coefficient?",
    ),
    (
        _set("saes.0.sweep", {"l1_coefficient": 0.1}),
        "saes[0].sweep.l1_coefficient: 0.1 is not a non-empty list of values",
    ),
    (
        _set("saes.0.sweep", {"l1_coefficient": [0.1, "big"]}),
        "saes[0].sweep.l1_coefficient[1]: 'big' is not a finite number",
    ),
    (
        _set("saes.0.sweep", {"expansion": [2, 4]}),
        "saes[0].sweep.expansion: `expansion` is also set in args; keep it in one place",
    ),
    (
        _set("saes.0.sweep", {"l1_coefficient": [0.1, 0.1]}),
        "saes[0].sweep.l1_coefficient: [0.1, 0.1] repeats a value",
    ),
    (_set("saes.0.args", {"tags": "a"}), "saes[0].args.tags: 'a' is not a list of a string"),
    (_set("training", {"lr": "fast"}), "training.lr: 'fast' is not a finite number"),
    (
        _set("training", {"epoch": 3}),
        "training: unknown key `epoch` for the training recipe. Did you mean: epochs?",
    ),
    (
        _set("evaluators", [{"plugin": "toy-slow"}, {"plugin": "toy-slow"}]),
        "evaluators[1]: evaluator `toy-slow` is listed twice",
    ),
    (
        _set("evaluators", [{"plugin": "reconstructoin"}]),
        "evaluators[0].plugin: Unknown evaluator 'reconstructoin'. Did you mean: reconstruction?",
    ),
    (
        _set("seeds", [0, 0]),
        "seeds: [0, 0] is not a non-empty list of distinct non-negative integers",
    ),
    (_set("seeds", ["zero"]), "seeds: ['zero'] is not a non-empty list"),
    (_set("cache_verify", "sha"), "cache_verify: 'sha' is not one of: sample, full, size"),
    (
        _set(
            "evaluators",
            [{"plugin": "toy-slow", "label": "a"}, {"plugin": "reconstruction", "label": "a"}],
        ),
        "evaluators[1].label: evaluator `a` is listed twice (also evaluators[0]); give each entry a distinct `label`",
    ),
    (
        _set("evaluators", [{"plugin": "toy-slow", "label": "two words"}]),
        "evaluators[0].label: 'two words' is not a label",
    ),
    (
        _set("saes.0.training", {"epoch": 2}),
        "saes[0].training: unknown key `epoch` for the training recipe. Did you mean: epochs?",
    ),
    (
        _set("saes.0.training", {"warmup_fraction": 0.9}),
        "saes[0].training.warmup_fraction: 0.9 must be at most 1 - decay_fraction (0.2)",
    ),
    (_set("saes.0.training", [1]), "saes[0].training: must map training options to values"),
    (
        _set("training", {"batch_size": -4}),
        "training.batch_size: -4 must be at least 1 (activations per optimiser step)",
    ),
    (
        _set("saes.0.training", {"batch_size": 0}),
        "saes[0].training.batch_size: 0 must be at least 1 (activations per optimiser step)",
    ),
    (
        _set("saes.0.sweep", {"l1_coefficient": []}),
        "saes[0].sweep.l1_coefficient: [] is not a non-empty list of values; write the values "
        "to train one SAE each with, e.g. `sweep: {l1_coefficient: [",
    ),
    (_set("executor", {"name": "dask"}), "executor.name: 'dask' is not an executor"),
    (
        _set("executor", {"resources": {"training": {"num_gpus": 1}}}),
        "executor.resources: unknown key `training`. Did you mean: train?",
    ),
    (
        _set("executor", {"resources": {"train": {"num_gpus": -1}}}),
        "executor.resources.train.num_gpus: -1 is not a non-negative amount",
    ),
]


@pytest.mark.parametrize(
    "mutate,expected",
    MALFORMED,
    ids=[m[1].split(":")[0] + f"-{i}" for i, m in enumerate(MALFORMED)],
)
def test_malformed_suite_one_line(tmp_path, toy_manager, mutate, expected):
    path = write(tmp_path, mutate(copy.deepcopy(VALID)))
    with pytest.raises(SuiteError) as info:
        load_suite(path, toy_manager.registry())
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: "), message
    assert expected in message, message


@pytest.mark.parametrize(
    "text,expected",
    [
        ("", "the file is empty"),
        (
            "models: [\n  - oops\n",
            "line 2, column 3: invalid YAML (expected the node content, but found '-')",
        ),
        ("- just\n- a list\n", "(top level): must be a mapping"),
        ("models: !!python/object/apply:os.system ['echo hi']\n", "invalid YAML"),
    ],
)
def test_unparseable_files(tmp_path, toy_manager, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(SuiteError) as info:
        load_suite(path, toy_manager.registry())
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_missing_file(tmp_path, toy_manager):
    with pytest.raises(SuiteError, match="no such suite file"):
        load_suite(tmp_path / "nope.yaml", toy_manager.registry())


def test_bundled_suites_validate(manager):
    """Every suite shipped in suites/ validates against the built-in plugins."""
    root = Path(__file__).parent.parent / "suites"
    paths = sorted(root.rglob("*.yaml"))
    assert any(p.name == "quickstart.yaml" for p in paths)
    for path in paths:
        load_suite(path, manager.registry())


def test_exponent_floats_parse_as_numbers(tmp_path, toy_manager):
    doc = copy.deepcopy(VALID)
    text = yaml.safe_dump(doc, sort_keys=False).replace("lr: 0.001", "lr: 1e-3")
    assert "lr: 1e-3" in text
    suite = load_suite(write(tmp_path, text), toy_manager.registry())
    assert suite.training_config().lr == 0.001


QUICK = """
models: [{{plugin: efficientnet-lite, layers: [final], args: {{device: {device}}}}}]
datasets: {{train: {{plugin: shapes}}}}
saes: [{{plugin: topk, sweep: {{k: [{k}, 8]}}}}]
training: {{lr: {lr}}}
evaluators: [reconstruction]
"""


@pytest.mark.parametrize(
    "device,k,lr,expected",
    [
        (
            "gpu",
            4,
            "1e-3",
            "models[0].args.device: 'gpu' is not a device; use cpu, cuda, cuda:N, mps or auto",
        ),
        ("cpu", 0, "1e-3", "saes[0].sweep.k[0]: 0 must be at least 1 (latents kept per sample)"),
        (
            "cpu",
            4,
            "-1e-3",
            "training.lr: -0.001 must be more than 0 (Adam learning rate)",
        ),
    ],
)
def test_component_checks_carry_the_yaml_path(tmp_path, manager, device, k, lr, expected):
    path = write(tmp_path, QUICK.format(device=device, k=k, lr=lr))
    with pytest.raises(SuiteError) as info:
        load_suite(path, manager.registry())
    assert str(info.value) == f"{path}: {expected}"
