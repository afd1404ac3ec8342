"""Component Config dataclasses and their validation. Light: imports no torch.

Every component declares a ``Config`` dataclass; each field carries a help text through
:func:`option`. Suites are checked against it before anything heavy is imported.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from typing import Any, Literal, Union

from saebench_vision.errors import ConfigError

_MISSING = dataclasses.MISSING


def option(
    default: Any = _MISSING,
    help: str = "",
    *,
    factory: Any = _MISSING,
    identity: bool | None = None,
    path: bool = False,
    exists: bool = False,
    absent: Any = _MISSING,
) -> Any:
    """A Config field with a help text: ``k: int = option(32, "latents kept per sample")``.

    ``identity`` declares, once and next to the field, whether its value changes the numbers
    the component produces. Identity fields (the default) enter every key derived from the
    Config: activation cache keys, SAE ids and evaluation-cell ids, so changing one recomputes
    what depends on it. ``identity=False`` marks a runtime setting (device, batch of a forward
    pass, worker count) that is left out of every key, so changing it reruns nothing. A
    subclass that redefines a field without saying inherits its base class's declaration.

    ``path=True`` marks a file or folder option: its identity is the resolved absolute path
    when the path exists, so ``root: data/train`` read from two working directories is two
    different datasets. ``exists=True`` (implies ``path``) says the path must exist on this
    machine whenever it is set: ``saebench validate`` checks it without opening anything.

    ``absent`` is what a stored Config written before the field existed meant: a field added
    with a new default (``topk_warmup: 0.5``) to a behaviour that was fixed before (0)
    declares ``absent=0``, so an older checkpoint, whose saved config lacks the field, loads
    as what it was trained as rather than as the new default (:func:`stored_args`). A field at
    its ``absent`` value is left out of every key (:func:`identity_dict`): it trains what the
    Config trained before the field existed, so it keeps the ids it had then (a suite that
    spells out ``topk_warmup: 0`` reuses SAEs trained before the field), while any other value,
    the default included, enters the keys. A subclass that redefines the field without saying
    inherits its base class's ``absent``, as it does ``identity``.
    """
    metadata: dict[str, Any] = {"help": help}
    if absent is not _MISSING:
        metadata["absent"] = absent
    if exists:
        path = True
        metadata["exists"] = True
    if identity is not None:
        metadata["identity"] = bool(identity)
    if path:
        metadata["path"] = True
    if factory is not _MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Fields every model adapter has. ``device`` and ``dtype`` are never hard-coded."""

    device: str = option(
        "cpu", "torch device: cpu, cuda, cuda:1, mps, or auto (cuda when available)", identity=False
    )
    dtype: Literal["float32", "float16", "bfloat16"] = option(
        "float32", "dtype of the model's forward pass; activations are stored as float32"
    )
    batch_size: int = option(32, "inputs per forward pass", identity=False)
    num_workers: int = option(
        0, "DataLoader worker processes for decoding and preprocessing", identity=False
    )


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    """Fields every SAE has."""

    expansion: int = option(8, "latents = expansion x input width")
    b_dec_init: Literal["zeros", "mean", "geometric-median"] = option(
        "zeros", "initial decoder bias, computed from the first training batch when not zeros"
    )


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """The training recipe shared by every SAE of a suite. Defaults are the paper's (section 3.3)."""

    epochs: float = option(3, "passes over the training activations")
    batch_size: int = option(64, "activations per optimiser step")
    lr: float = option(1e-4, "Adam learning rate")
    adam_betas: tuple[float, float] = option((0.9, 0.999), "Adam betas")
    max_grad_norm: float = option(
        1.0,
        "clip each SAE's gradient to this global norm before the Adam step (SAELens always "
        "clips at 1, so the paper's SAEs were trained with it); 0 turns clipping off",
    )
    warmup_fraction: float = option(0.05, "fraction of steps with linear learning-rate warm-up")
    decay_fraction: float = option(0.2, "fraction of final steps with linear decay to zero")
    sparsity_warmup_fraction: float = option(
        0.05, "fraction of steps over which the sparsity coefficient ramps up from zero"
    )
    normalize: Literal["none", "sqrt-d"] = option(
        "sqrt-d",
        "scale inputs so their mean norm is sqrt(d) (SAELens 'expected_average_only_in'), making "
        "sparsity coefficients comparable across models; the SAE undoes it on output",
    )
    max_samples: int | None = option(None, "use at most this many training activations")
    device: str = option("cpu", "torch device for training: cpu, cuda, auto", identity=False)
    checkpoint_every: int = option(
        0,
        "steps between resumable training-state checkpoints (0: none); the state is removed "
        "once training completes",
        identity=False,
    )
    fuse: Literal["auto", "on", "off"] = option(
        "auto",
        "stack same-shape SAEs of one architecture and train them with batched matmuls: on, "
        "off, or auto (on CUDA, where many small steps are launch-bound; off on the CPU, where "
        "batched products are no faster than one after another); numbers match separate "
        "training up to float rounding",
        identity=False,
    )
    parallel_saes: int = option(
        0,
        "on the CPU, train this many SAEs (or fused groups) side by side, one thread each "
        "(0: as many as torch's intra-op threads; 1: one after another)",
        identity=False,
    )
    in_memory_limit_gb: float = option(
        8.0,
        "read a training set of at most this size into memory (full shuffle per epoch); larger "
        "sets stream from the memory-mapped cache with a block-wise shuffle",
    )

    def __post_init__(self) -> None:
        checks = [
            (self.epochs > 0, "epochs", self.epochs, "more than 0"),
            (self.batch_size >= 1, "batch_size", self.batch_size, "at least 1"),
            (self.lr > 0, "lr", self.lr, "more than 0"),
            (all(0 <= b < 1 for b in self.adam_betas), "adam_betas", self.adam_betas, "in [0, 1)"),
            (self.max_grad_norm >= 0, "max_grad_norm", self.max_grad_norm, "0 or more"),
            (
                self.max_samples is None or self.max_samples >= 1,
                "max_samples",
                self.max_samples,
                "at least 1",
            ),
            (self.checkpoint_every >= 0, "checkpoint_every", self.checkpoint_every, "0 or more"),
            (self.parallel_saes >= 0, "parallel_saes", self.parallel_saes, "0 or more"),
            (
                self.in_memory_limit_gb >= 0,
                "in_memory_limit_gb",
                self.in_memory_limit_gb,
                "0 or more",
            ),
        ]
        for name in ("warmup_fraction", "decay_fraction", "sparsity_warmup_fraction"):
            value = getattr(self, name)
            checks.append((0 <= value <= 1, name, value, "between 0 and 1"))
        for ok, name, value, expected in checks:
            if not ok:
                raise FieldValueError(name, value, expected)
        if self.warmup_fraction + self.decay_fraction > 1:
            raise FieldValueError(
                "warmup_fraction",
                self.warmup_fraction,
                f"at most 1 - decay_fraction ({self.decay_fraction:g}): warm-up and decay "
                "together fit in the run",
            )


class FieldValueError(ValueError):
    """A Config field's value outside its range, raised by a Config's ``__post_init__``.

    It names the field, so that whoever built the Config from a suite can name the YAML path
    of the value (``suite.yaml: saes[2].args.k: 0 must be at least 1 (latents kept per
    sample)``) instead of the whole entry. ``expected`` completes "must be ...": it says the
    fix. A check of two fields together names the first as ``name`` and the other inside
    ``expected`` (``"at most 1 - decay_fraction (0.5)"``). Any plugin's Config may raise it;
    a plain ``ValueError`` still works and is reported at the entry's ``args``.
    """

    def __init__(self, name: str, value: Any, expected: str) -> None:
        super().__init__(f"`{name}` must be {expected}, got {_shown(value)}")
        self.name, self.value, self.expected = name, value, expected

    def problem(self, config_cls: type) -> str:
        """``"-4 must be at least 1 (<the field's help>)"``."""
        f = config_fields(config_cls).get(self.name)
        help_text = f.metadata.get("help", "") if f is not None else ""
        return f"{_shown(self.value)} must be {self.expected}" + (
            f" ({help_text})" if help_text else ""
        )

    def at(self, where: str, config_cls: type) -> str:
        """``"<where>.batch_size: -4 must be at least 1 (<the field's help>)"``."""
        return f"{where}.{self.name}: {self.problem(config_cls)}"


def _shown(value: Any) -> str:
    # As the suite writes it: a tuple field read from a YAML list shows as that list.
    return repr(_plain(value))


DEVICE_PATTERN = re.compile(r"^(cpu|auto|mps|cuda(:[0-9]+)?)$")
"""Device strings accepted by every ``device`` option (checked before torch is imported)."""

_SCALARS = {
    int: "an integer",
    float: "a finite number",
    str: "a string",
    bool: "true or false",
}


def describe_type(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp in _SCALARS:
        return _SCALARS[tp]
    if tp is Any:
        return "any value"
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = " or ".join(describe_type(a) for a in members)
        return f"{inner} or null" if len(members) < len(typing.get_args(tp)) else inner
    if origin in (list, tuple, typing.Sequence):
        args = typing.get_args(tp)
        return f"a list of {describe_type(args[0])}" if args else "a list"
    if origin is dict:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def check_type(value: Any, tp: Any) -> tuple[bool, Any]:
    """Whether ``value`` fits ``tp``; returns ``(ok, coerced value)``. YAML ints pass as floats."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        # Beyond int64 no tensor, seed or size can hold it.
        ok = isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
        return ok, value
    if tp is float:
        # inf and nan pass YAML but no recipe trains with them; a float past 1.8e308 is inf.
        ok = (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and abs(value) < 2**1023
            and math.isfinite(value)
        )
        return ok, float(value) if ok else value
    if tp is str:
        # A NUL byte cannot be part of a path, a name or a prompt that reaches the OS.
        return isinstance(value, str) and "\x00" not in value, value
    if origin is Literal:
        return value in typing.get_args(tp), value
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None):
                if value is None:
                    return True, None
                continue
            ok, coerced = check_type(value, arg)
            if ok:
                return True, coerced
        return False, value
    if origin in (list, tuple, typing.Sequence):
        if not isinstance(value, (list, tuple)):
            return False, value
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                return False, value
            pairs: list[tuple[Any, Any]] = list(zip(value, args))
        else:
            pairs = [(v, args[0] if args else Any) for v in value]
        out = []
        for item, item_tp in pairs:
            ok, coerced = check_type(item, item_tp)
            if not ok:
                return False, value
            out.append(coerced)
        return True, tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        return isinstance(value, dict), value
    if isinstance(tp, type):
        return isinstance(value, tp), value
    return True, value


def config_fields(config_cls: type) -> dict[str, dataclasses.Field]:
    if not dataclasses.is_dataclass(config_cls):
        raise ConfigError(f"{config_cls!r} is not a dataclass; a component's Config must be one")
    return {f.name: f for f in dataclasses.fields(config_cls) if f.init}


def field_types(config_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(config_cls)


def validate_args(config_cls: type, args: Any, *, where: str, what: str) -> dict[str, Any]:
    """Check ``args`` against ``config_cls``; return them coerced. ``where`` prefixes errors.

    ``what`` names the component, e.g. "SAE `topk`".
    """
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ConfigError(
            f"{where}: must be a mapping of {what}'s options, not {type(args).__name__} {args!r}"
        )
    fields = config_fields(config_cls)
    types_ = field_types(config_cls)
    out: dict[str, Any] = {}
    for key, value in args.items():
        if key not in fields:
            expected = ", ".join(fields) or "no options"
            from saebench_vision.registry import did_you_mean

            hint = did_you_mean(str(key), fields)
            raise ConfigError(
                f"{where}: unknown key `{key}` for {what}.{hint} (expected: {expected})"
            )
        ok, coerced = check_type(value, types_[key])
        if ok and key == "device" and not DEVICE_PATTERN.match(str(value)):
            raise ConfigError(
                f"{where}.{key}: {value!r} is not a device; use cpu, cuda, cuda:N, mps or auto"
            )
        if not ok:
            raise ConfigError(
                f"{where}.{key}: {value!r} is not {describe_type(types_[key])}; fix the value "
                f"({fields[key].metadata.get('help', 'see saebench plugins --verbose')})"
            )
        out[key] = coerced
    missing = [
        name
        for name, f in fields.items()
        if f.default is _MISSING and f.default_factory is _MISSING and name not in out
    ]
    if missing:
        raise ConfigError(
            f"{where}: {what} needs `{missing[0]}` ({fields[missing[0]].metadata.get('help', '')})"
        )
    return out


def build_config(config_cls: type, args: dict[str, Any], *, where: str = "", what: str = "") -> Any:
    """Validate and instantiate. ``__post_init__`` checks may raise ValueError; we rephrase."""
    clean = validate_args(config_cls, args, where=where or "args", what=what or config_cls.__name__)
    try:
        return config_cls(**clean)
    except FieldValueError as exc:
        raise ConfigError(exc.at(where or "args", config_cls)) from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where or 'args'}: {exc}") from exc


def _declared(config_cls: type, name: str, key: str) -> Any:
    """Metadata ``key`` of field ``name``: the nearest declaration along the class's bases
    (so a subclass redefining a field without saying inherits it), or ``_MISSING``."""
    for klass in config_cls.__mro__:
        fields = getattr(klass, "__dataclass_fields__", None)
        if fields and name in fields and key in fields[name].metadata:
            return fields[name].metadata[key]
    return _MISSING


def absent_value(config_cls: type, name: str) -> Any:
    """The declared ``option(absent=...)`` of field ``name``, or ``dataclasses.MISSING``."""
    return _declared(config_cls, name, "absent")


def stored_args(config_cls: type, args: dict[str, Any]) -> dict[str, Any]:
    """``args`` read from a stored Config (a checkpoint's), with every field that declares
    ``option(absent=...)`` and is missing from them set to that value: the stored Config
    predates the field, so it was made with the behaviour the field's ``absent`` names."""
    filled = dict(args)
    for f in dataclasses.fields(config_cls):
        absent = absent_value(config_cls, f.name)
        if f.name not in filled and absent is not _MISSING:
            filled[f.name] = absent
    return filled


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def config_as_dict(config: Any) -> dict[str, Any]:
    """JSON-friendly dict of a Config instance (tuples become lists)."""
    return {f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def stated_dict(config: Any) -> dict[str, Any]:
    """:func:`config_as_dict` without the fields at their declared ``absent`` value: every
    setting (runtime ones included), as the Config stated them before those fields existed.
    An SAE's training-state fingerprint hashes it, so that a run interrupted before such a
    field was added resumes after it."""
    cls = type(config)
    return {k: v for k, v in config_as_dict(config).items() if not _at_absent(cls, k, v)}


def _at_absent(config_cls: type, name: str, value: Any) -> bool:
    """Whether field ``name`` holds its declared ``absent`` value (False without one)."""
    absent = absent_value(config_cls, name)
    return absent is not _MISSING and _same(value, absent)


def _same(value: Any, absent: Any) -> bool:
    # True == 1 and 1 == 1.0 in Python; only a bool matches a bool (an int 0 given for a float
    # field's 0.0 is the same setting, and trains the same).
    if isinstance(value, bool) or isinstance(absent, bool):
        return isinstance(value, bool) and isinstance(absent, bool) and value == absent
    return bool(value == _plain(absent))


def is_identity_field(config_cls: type, name: str) -> bool:
    """Whether field ``name`` of ``config_cls`` changes numbers (see :func:`option`): the
    nearest declaration along the class's bases wins; undeclared fields count as identity."""
    declared = _declared(config_cls, name, "identity")
    return True if declared is _MISSING else bool(declared)


def identity_fields(config_cls: type) -> list[str]:
    """Names of the fields that enter keys, in declaration order."""
    return [f.name for f in dataclasses.fields(config_cls) if is_identity_field(config_cls, f.name)]


def _resolved_path(value: Any) -> Any:
    if not isinstance(value, str) or not value:
        return value
    expanded = os.path.expanduser(value)
    return os.path.realpath(expanded) if os.path.exists(expanded) else value


def identity_dict(config: Any, *, keep_absent: bool = False) -> dict[str, Any]:
    """The config's identity fields, path options resolved: what determines the numbers.

    Cache keys, SAE ids and cell ids all derive from this one function (and so from the
    ``identity`` and ``absent`` declarations of :func:`option`). A field at its declared
    ``absent`` value is left out, so the keys are the ones the Config had before the field
    existed; ``keep_absent=True`` keeps it, for records that show what a result was made with
    (the results store's SAE configs) rather than for keys."""
    cls = type(config)
    values = config_as_dict(config)
    out = {}
    for f in dataclasses.fields(config):
        if not is_identity_field(cls, f.name):
            continue
        value = values[f.name]
        if not keep_absent and _at_absent(cls, f.name, value):
            continue
        out[f.name] = _resolved_path(value) if f.metadata.get("path") else value
    return out
