"""Base classes for the four component kinds: ModelAdapter, SAE, Dataset, Evaluator.

Each component class declares ``name`` (lower-kebab, as registered), ``version`` (bump it when
its numbers change, so caches and results are not reused across changes) and ``Config`` (a
frozen dataclass built with :func:`saebench_vision.config.option`; keep it in a module that
imports nothing heavy so ``saebench validate`` stays light).

This module imports torch; the CLI imports it only when a run needs it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from saebench_vision.config import ModelConfig, SAEConfig, config_as_dict, identity_dict
from saebench_vision.errors import ConfigError

if TYPE_CHECKING:
    from saebench_vision.cache import ActivationSet
    from saebench_vision.encodings import Encoding, EncodingStore


# --------------------------------------------------------------------------------------------
# Tokens


class TokenKind(enum.IntEnum):
    """What a position in a layer's output is. CNNs use CLS for a stage's pooled vector."""

    PAD = 0
    CLS = 1
    PATCH = 2
    TEXT = 3
    GENERATED = 4


TOKEN_SELECTIONS: dict[str, str] = {
    "cls": "the CLS token (a CNN stage's global-average-pooled vector): one row per input",
    "mean-patch": "mean of the patch tokens (a CNN's spatial positions): one row per input",
    "patch": "every patch token: one row per patch",
    "text": "every text token of the prompt: one row per token",
    "generated": "every generated token (multimodal LMs): one row per token",
    "all": "every non-padding token: one row per token",
}


@dataclass
class LayerOutput:
    """One layer's activations for a batch: ``values`` (B, T, d) and ``kinds`` (B, T) TokenKind."""

    values: torch.Tensor
    kinds: torch.Tensor

    def __post_init__(self) -> None:
        if self.values.ndim != 3 or self.kinds.shape != self.values.shape[:2]:
            raise ValueError(
                f"LayerOutput needs values (B, T, d) and kinds (B, T); got {tuple(self.values.shape)} "
                f"and {tuple(self.kinds.shape)}"
            )


def select_tokens(out: LayerOutput, selection: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows for a token selection: ``(rows (N, d) float32, batch index of each row (N,))``.

    Raises ValueError when the selection matches nothing in a batch item that should have it
    (e.g. ``cls`` on a model with no CLS token).
    """
    values, kinds = out.values, out.kinds
    batch = values.shape[0]
    if selection == "mean-patch":
        mask = (kinds == TokenKind.PATCH).to(values.dtype)
        counts = mask.sum(1)
        if (counts == 0).any():
            raise ValueError("token selection 'mean-patch': an input has no patch tokens")
        rows = (values * mask.unsqueeze(-1)).sum(1) / counts.unsqueeze(-1)
        return rows.float(), torch.arange(batch)
    wanted = {
        "cls": (TokenKind.CLS,),
        "patch": (TokenKind.PATCH,),
        "text": (TokenKind.TEXT,),
        "generated": (TokenKind.GENERATED,),
        "all": (TokenKind.CLS, TokenKind.PATCH, TokenKind.TEXT, TokenKind.GENERATED),
    }.get(selection)
    if wanted is None:
        raise ValueError(
            f"unknown token selection {selection!r} (expected: {', '.join(TOKEN_SELECTIONS)})"
        )
    mask = torch.zeros_like(kinds, dtype=torch.bool)
    for kind in wanted:
        mask |= kinds == kind
    if selection == "cls" and (mask.sum(1) != 1).any():
        raise ValueError("token selection 'cls': every input must have exactly one CLS token")
    idx = mask.nonzero(as_tuple=False)
    return values[idx[:, 0], idx[:, 1]].float(), idx[:, 0]


# --------------------------------------------------------------------------------------------
# Components


class Component:
    """Shared by every component: a name, a version, a Config and an identity."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = object

    def __init__(self, config: Any) -> None:
        self.config = config

    def identity(self) -> dict[str, Any]:
        """Everything that determines this component's numbers (hashed into cache keys)."""
        return {"name": self.name, "version": self.version, "config": identity_dict(self.config)}


class ModelAdapter(Component):
    """Turns a model and a batch of inputs into named layer activations.

    Contract:

    * ``layer_names()`` lists stable names (``blocks.0`` ... ``final``) without loading weights
      when possible.
    * ``preprocess(items)`` turns dataset items into a model batch; it runs in DataLoader
      workers, so it must be picklable and deterministic. Its settings are part of
      :meth:`identity` (and so of the cache key).
    * ``load()`` fetches weights onto ``config.device`` in ``config.dtype``; a missing model
      raises :class:`~saebench_vision.errors.WeightsNotFoundError` with a one-line fix.
    * ``forward(batch, layers)`` returns ``{layer: LayerOutput}`` for the requested layers in
      one pass.
    """

    Config: ClassVar[type] = ModelConfig
    input_kind: ClassVar[str] = "image"
    """``image``, ``text`` or ``image-text``: what ``preprocess`` accepts."""
    default_tokens: ClassVar[str] = "cls"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._loaded = False

    def layer_names(self) -> list[str]:
        raise NotImplementedError

    def preprocess(self, items: Sequence[Any]) -> Any:
        raise NotImplementedError

    def load(self) -> None:
        raise NotImplementedError

    def forward(self, batch: Any, layers: Sequence[str]) -> dict[str, LayerOutput]:
        raise NotImplementedError

    def ensure_loaded(self) -> None:
        if not self._loaded:
            self.load()
            self._loaded = True

    @property
    def device(self) -> torch.device:
        return resolve_device(self.config.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[
            self.config.dtype
        ]

    def check_layers(self, layers: Iterable[str], where: str = "layers") -> None:
        known = self.layer_names()
        for layer in layers:
            if layer not in known:
                from saebench_vision.registry import did_you_mean

                raise ConfigError(
                    f"{where}: model `{self.name}` has no layer {layer!r}.{did_you_mean(layer, known)} "
                    f"Layers: {', '.join(known[:8])}{' ...' if len(known) > 8 else ''}"
                )


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; an unavailable device is a one-line error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {device!r}: this torch sees no CUDA device (torch.cuda.is_available() is "
                f"False); use device: cpu or auto, or install a CUDA build of torch"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r}: MPS is not available here; use device: cpu or auto")
    return resolved


@dataclass
class ClassInfo:
    """A label: ``id`` is a WordNet id (``n01440764``) or a dataset's own node id."""

    id: str
    name: str


class Dataset(Component):
    """One split of inputs. Items are PIL RGB images, strings, or dicts for image-text models.

    ``labels()`` gives an int class index per item into ``classes()`` (or None if unlabelled).
    ``hierarchy()`` gives ``{node id: [parent ids]}`` for datasets with their own tree; None
    means class ids are WordNet noun ids and the WordNet hierarchy applies.
    """

    modality: ClassVar[str] = "image"

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Any:
        raise NotImplementedError

    def labels(self) -> np.ndarray | None:
        return None

    def classes(self) -> list[ClassInfo] | None:
        return None

    def hierarchy(self) -> dict[str, list[str]] | None:
        return None

    def fingerprint(self) -> str | None:
        """A cheap digest of what this split reads from outside its Config (files on disk), or
        None when the Config determines the items (generated or pinned data).

        It enters the activation cache key, so changed folder contents are re-extracted. Folder
        datasets return :func:`files_fingerprint` of the files they list; override it in a
        dataset that reads files. Computed once per run, so keep it to listing and ``stat``.
        """
        return None


def files_fingerprint(files: Iterable[str | Path]) -> str:
    """SHA-256 of each file's resolved path, size and modification time, in the given order:
    changes when a file is added, removed, replaced or edited, without reading any file."""
    import hashlib
    import os

    digest = hashlib.sha256()
    for f in files:
        path = os.path.realpath(f)
        st = os.stat(path)
        digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@dataclass
class SAEOutput:
    """What :meth:`SAE.loss` returns. ``metrics`` are detached scalars for logging."""

    loss: torch.Tensor
    x_hat: torch.Tensor
    z: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class SAE(nn.Module):
    """A sparse autoencoder over ``d_in``-wide activations with ``d_sae`` latents.

    Subclasses implement ``encode``, ``pre_activations``, ``decode`` and ``loss``. Inputs and
    outputs are in the activation space the SAE was trained on; any input normalisation is
    held in the ``input_scale`` buffer and undone by the SAE itself.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = SAEConfig

    def __init__(self, d_in: int, config: Any) -> None:
        super().__init__()
        self.config = config
        self.d_in = int(d_in)
        self.d_sae = int(d_in * config.expansion)
        self.register_buffer("input_scale", torch.ones(()))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents z (B, d_sae), non-negative and sparse."""
        raise NotImplementedError

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's affine output before the sparsifying nonlinearity (paper Fig. 12)."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def loss(self, x: torch.Tensor, *, sparsity_scale: float = 1.0) -> SAEOutput:
        """Training loss on a batch; ``sparsity_scale`` in [0, 1] is the warm-up factor."""
        raise NotImplementedError

    def on_step_end(self) -> None:
        """Called after each optimiser step (e.g. to renormalise decoder rows)."""

    def decoder_directions(self) -> torch.Tensor:
        """(d_sae, d_in) directions each latent writes, for steering and analysis."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "config": config_as_dict(self.config)}


@dataclass
class Record:
    """One number an evaluator reports. The runner adds model, layer, SAE, evaluator and seed."""

    metric: str
    value: float
    split: str = ""
    stderr: float | None = None
    higher_is_better: bool | None = None
    n: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class EvalContext:
    """What an evaluator gets for one cell: the SAE, the activations, datasets and the adapter.

    Everything is loaded lazily; the runner shares one context per (model, layer, seed) across
    SAEs, so activations are read and the adapter loaded at most once, and one
    :class:`~saebench_vision.encodings.EncodingStore` across every cell of a run, so each
    (SAE, split) is encoded once however many evaluators read its latents.

    Evaluators read SAE latents by streaming: :meth:`latents` gives the split's sparse
    :class:`~saebench_vision.encodings.Encoding` (``iter_dense`` / ``iter_sparse`` chunks,
    ``read`` rows by index). :meth:`sae_encode` (dense, whole split) is for small splits only.
    """

    def __init__(
        self,
        *,
        model_name: str,
        layer: str,
        tokens: str,
        seed: int,
        device: str,
        splits: dict[str, str],
        activation_loader: Any,
        dataset_loader: Any,
        adapter_loader: Any,
        output_dir: Path,
        sae: SAE | None = None,
        sae_id: str = "",
        encodings: EncodingStore | None = None,
    ) -> None:
        self.model_name = model_name
        self.layer = layer
        self.tokens = tokens
        self.seed = seed
        self.device = device
        self.splits = dict(splits)
        self._activation_loader = activation_loader
        self._dataset_loader = dataset_loader
        self._adapter_loader = adapter_loader
        self.output_dir = output_dir
        self.sae = sae
        self.sae_id = sae_id
        if encodings is None:
            from saebench_vision.encodings import EncodingStore

            encodings = EncodingStore()
        self.encoding_store: EncodingStore = encodings

    def with_sae(self, sae: SAE | None, sae_id: str) -> EvalContext:
        clone = object.__new__(EvalContext)
        clone.__dict__.update(self.__dict__)
        clone.sae, clone.sae_id = sae, sae_id
        return clone

    def split_names(self, *roles: str) -> list[str]:
        """Split names with one of ``roles`` (train, eval, shifted, near-ood, far-ood), in suite order."""
        return [name for name, role in self.splits.items() if not roles or role in roles]

    def activations(self, split: str) -> ActivationSet:
        """The cached activations of ``split`` at this cell's model, layer and tokens."""
        return self._activation_loader(split)

    def dataset(self, split: str) -> Dataset:
        return self._dataset_loader(split)

    @property
    def adapter(self) -> ModelAdapter:
        """The model adapter, loaded on first use (evaluators that drive the model need it)."""
        return self._adapter_loader()

    def latents(self, split: str, *, device: str | None = None, batch_size: int = 4096) -> Encoding:
        """The SAE's latents of ``split`` (sparse, shared: encoded on the first request of the
        run and reused by every later evaluator of the same SAE). ``device`` runs the encoding
        (default: the context's)."""
        if self.sae is None:
            raise ValueError("this evaluation cell has no SAE")
        if not self.sae_id:
            raise ValueError("EvalContext.latents needs the cell's sae_id to share encodings")
        return self.encoding_store.get(
            self.sae_id,
            split,
            self.sae,
            self.activations(split),
            device=resolve_device(device or self.device),
            batch_size=batch_size,
        )

    def sae_encode(
        self,
        split: str,
        *,
        pre: bool = False,
        batch_size: int = 4096,
        max_bytes: int | None = None,
    ) -> np.ndarray:
        """SAE latents (or pre-activations) of a split as a dense float32 array (N, d_sae).

        For small splits only: beyond ``max_bytes`` (default
        :data:`~saebench_vision.encodings.DEFAULT_DENSE_LIMIT`, 2 GiB) it raises a one-line
        error pointing to :meth:`latents`. Latents come from the shared encoding."""
        from saebench_vision.encodings import DEFAULT_DENSE_LIMIT, dense_limit_error

        if self.sae is None:
            raise ValueError("this evaluation cell has no SAE")
        acts = self.activations(split)
        limit = DEFAULT_DENSE_LIMIT if max_bytes is None else max_bytes
        if acts.n * self.sae.d_sae * 4 > limit:
            raise dense_limit_error(split, acts.n, self.sae.d_sae, limit)
        if not pre:
            return self.latents(split, batch_size=batch_size).dense(0, acts.n)
        device = resolve_device(self.device)
        sae = self.sae.to(device)
        out = np.empty((acts.n, sae.d_sae), dtype=np.float32)
        with torch.no_grad():
            for start, chunk in acts.iter_chunks(batch_size):
                x = torch.from_numpy(np.array(chunk, dtype=np.float32)).to(device)
                out[start : start + len(chunk)] = sae.pre_activations(x).float().cpu().numpy()
        return out


class Evaluator(Component):
    """Scores one (model, layer, SAE) cell and returns long-form :class:`Record` s.

    ``metrics`` maps each metric name to whether higher is better (the leaderboard's arrows).
    ``baseline`` (optional) is called once per (model, layer, seed) with ``ctx.sae`` None, for
    rows such as "raw embeddings" or "random directions".
    """

    metrics: ClassVar[dict[str, bool | None]] = {}
    headline: ClassVar[tuple[str, ...]] = ()
    """Metrics the default leaderboard shows (empty: all); ``--all-metrics`` shows every one."""
    needs_adapter: ClassVar[bool] = False
    """True for evaluators that drive the model (steering, generation)."""

    def evaluate(self, ctx: EvalContext) -> list[Record]:
        raise NotImplementedError

    def required_roles(self) -> tuple[str, ...]:
        """Split roles this evaluator cannot run without (``validate`` checks them up front).

        Default: none. E.g. a probe evaluator returns ``("train",)``; one that reads only the
        in-distribution test split returns ``("eval",)``.
        """
        return ()

    def baseline(self, ctx: EvalContext) -> list[Record]:
        return []
