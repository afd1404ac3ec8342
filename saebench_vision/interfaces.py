"""Base classes for the four component kinds: ModelAdapter, SAE, Dataset, Evaluator.

Each component class declares ``name`` (lower-kebab, as registered), ``version`` (bump it when
its numbers change, so caches and results are not reused across changes) and ``Config`` (a
frozen dataclass built with :func:`saebench_vision.config.option`; keep it in a module that
imports nothing heavy so ``saebench validate`` stays light).

This module imports torch; the CLI imports it only when a run needs it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

import numpy as np
import torch
from torch import nn

from saebench_vision.config import ModelConfig, SAEConfig, identity_dict, stated_dict
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


# The token kinds each selection reads; a layer that offers none of them yields no rows.
TOKEN_NEEDS: dict[str, frozenset[TokenKind]] = {
    "cls": frozenset({TokenKind.CLS}),
    "mean-patch": frozenset({TokenKind.PATCH}),
    "patch": frozenset({TokenKind.PATCH}),
    "text": frozenset({TokenKind.TEXT}),
    "generated": frozenset({TokenKind.GENERATED}),
    "all": frozenset({TokenKind.CLS, TokenKind.PATCH, TokenKind.TEXT, TokenKind.GENERATED}),
}


def selections_offered(kinds: Iterable[TokenKind]) -> list[str]:
    """The token selections that find rows in a layer offering ``kinds``."""
    have = set(kinds)
    return [name for name, needs in TOKEN_NEEDS.items() if needs & have]


def _inherit_from_config(cls: type, attrs: Sequence[str]) -> None:
    """Copy ``attrs`` a component's Config declares (as ClassVars) onto the component, unless
    the component sets them itself: the light Config is then the one place they are written,
    and ``saebench plugins --verbose`` shows them without importing the implementation."""
    config = cls.__dict__.get("Config")
    for attr in attrs:
        value = getattr(config, attr, None)
        if isinstance(value, str) and attr not in cls.__dict__:
            setattr(cls, attr, value)


@dataclass
class LayerOutput:
    """One layer's activations for a batch: ``values`` (B, T, d) and ``kinds`` (B, T) TokenKind.

    ``responses`` (optional): per batch item, the text the model generated (multimodal LMs with
    ``GENERATED`` tokens); extraction stores it with the cache entry so users can read what the
    model said.
    """

    values: torch.Tensor
    kinds: torch.Tensor
    responses: list[str] | None = None

    def __post_init__(self) -> None:
        if self.values.ndim != 3 or self.kinds.shape != self.values.shape[:2]:
            raise ValueError(
                f"LayerOutput needs values (B, T, d) and kinds (B, T); got {tuple(self.values.shape)} "
                f"and {tuple(self.kinds.shape)}"
            )
        if self.responses is not None and len(self.responses) != self.values.shape[0]:
            raise ValueError(
                f"LayerOutput: {len(self.responses)} responses for a batch of {self.values.shape[0]}"
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
    """``image``, ``text`` or ``image-text``: what ``preprocess`` accepts. May be declared on
    the Config class instead (a ClassVar), where ``saebench plugins --verbose`` and
    ``saebench validate`` read it without importing the adapter."""
    default_tokens: ClassVar[str] = "cls"
    """The token selection used when a suite names none (also declarable on the Config)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _inherit_from_config(cls, ("input_kind", "default_tokens"))

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._loaded = False

    def layer_names(self) -> list[str]:
        raise NotImplementedError

    def layer_width(self, layer: str) -> int | None:
        """The width of ``layer``'s activations, known without loading weights (from the
        architecture or its config), so ``saebench validate`` can check that the suite's SAEs
        fit in memory before a run. None (the default) means "known only once the weights
        load": the check then happens when the run reaches training."""
        return None

    def layer_token_kinds(self, layer: str) -> frozenset[TokenKind] | None:
        """The token kinds ``layer`` outputs (PAD aside), known without loading weights, so
        ``saebench validate`` can refuse a token selection that would find no rows there
        (``tokens: text`` on an image layer). None (the default) means "not declared": the
        selection is then only checked during extraction."""
        return None

    def classify(
        self, batch: Any, classes: Sequence[ClassInfo], prompts: Sequence[str] = ()
    ) -> torch.Tensor | None:
        """Optional: the model's own scores of ``classes`` for a preprocessed ``batch``, a
        float tensor (B, len(classes)); None (the default) when the model has no head.

        A head trained on a fixed label set (ImageNet-1k) scores the classes by their WordNet
        ids, restricted to those columns; a CLIP model scores them zero-shot against
        ``prompts`` (templates with ``{}`` for the class name; their text embeddings are
        averaged per class). The ``head-accuracy`` evaluator reads it."""
        return None

    def default_tokens_for(self, layer: str) -> str:
        """The selection a layer gets when the suite names none: ``default_tokens``, or, when
        the layer does not offer it (SD3's single-token ``pooled`` among text layers), the
        first of cls, text, patch that it does offer."""
        kinds = self.layer_token_kinds(layer)
        if kinds is None or TOKEN_NEEDS[self.default_tokens] & kinds:
            return self.default_tokens
        offered = selections_offered(kinds)
        for choice in ("cls", "text", "patch"):
            if choice in offered:
                return choice
        return self.default_tokens

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
    """``image``, ``text`` or ``image-text``: what the items are (also declarable on the
    Config class, where validate and ``plugins --verbose`` read it without an import)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _inherit_from_config(cls, ("modality",))

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

    def metadata(self) -> dict[str, Any]:
        """Optional: facts about how the split was read that a user should see next to its
        activations (e.g. ``{"skipped_files": 3}``); stored with each cache entry it fills.
        JSON-serialisable values only."""
        return {}

    def groups(self) -> np.ndarray | None:
        """Optional: an int group per item, equal for items that are views of one source
        image (``views: N``), so that anything splitting items (folds, per-class subsets) can
        keep a group on one side. None: every item is its own group."""
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


@dataclass
class TrainTerms:
    """One SAE's share of a training forward pass, in normalised space (:meth:`SAE.train_terms`).

    ``fired`` counts, per latent, the samples of the batch it was active on (for dead and
    dense latent tracking); ``dense_z`` builds the (B, d_sae) code on demand, since sparse
    paths need never materialise it. ``loss`` is this SAE's loss (for a fused group's backward
    pass use :attr:`GroupTerms.loss`).
    """

    loss: torch.Tensor
    x_hat: torch.Tensor
    fired: torch.Tensor
    dense_z: Callable[[], torch.Tensor]
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class GroupTerms:
    """A fused group's step (:meth:`SAE.group_terms`): ``loss`` is the sum of the members'
    losses (backward is called on it once), ``items`` each member's terms, in order."""

    loss: torch.Tensor
    items: list[TrainTerms]


class SAE(nn.Module):
    """A sparse autoencoder over ``d_in``-wide activations with ``d_sae`` latents.

    Subclasses implement ``encode``, ``pre_activations``, ``decode``, ``decoder_directions`` and
    ``loss``. Inputs and outputs are in the activation space the SAE was trained on; any input
    normalisation is held in the ``input_scale`` buffer and undone by the SAE itself.

    The methods in the sections marked optional have defaults that work for any SAE; an SAE
    overrides the ones it can do better. The trainer and the checkpoint code call nothing else.

    * Training: :meth:`train_terms` (loss on a normalised batch; default: through ``loss``),
      :meth:`init_b_dec` (``b_dec_init`` other than zeros), :meth:`before_optimizer_step`
      (e.g. project gradients) and :meth:`on_step_end` (e.g. renormalise rows).
    * Fused sweeps: SAEs whose :meth:`fusion_key` is equal (not None) train as one group with
      stacked parameters through the classmethods :meth:`group_terms` and
      :meth:`before_group_optimizer_step`; :meth:`stacked_params` is an SAE as a group of one.
    * Checkpoints: :meth:`resize_latents` (a checkpoint's width is not ``d_in x expansion``),
      :meth:`to_saelens` / :meth:`from_saelens` with :attr:`saelens_architectures` (SAELens v6
      format, so any SAE, built in or not, can be exported and loaded).
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = SAEConfig
    saelens_architectures: ClassVar[tuple[str, ...]] = ()
    """SAELens ``architecture`` values :meth:`from_saelens` loads (empty: none)."""

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

    def decoder_directions(self) -> torch.Tensor:
        """(d_sae, d_in) directions each latent writes, for steering and analysis."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """Every setting of the SAE (runtime ones too: the training-state fingerprint hashes
        it), fields at their declared ``absent`` value left out (:func:`stated_dict`)."""
        return {"name": self.name, "version": self.version, "config": stated_dict(self.config)}

    # -- optional: training ------------------------------------------------------------------

    def train_terms(self, xn: torch.Tensor, *, sparsity_scale: float = 1.0) -> TrainTerms:
        """Loss and statistics of a batch ``xn`` already multiplied by ``input_scale``.

        The default calls :meth:`loss` on the raw batch; override it to skip the round trip
        or to avoid building the dense code.
        """
        scale = cast(torch.Tensor, self.input_scale)
        out = self.loss(xn / scale, sparsity_scale=sparsity_scale)
        metrics = dict(out.metrics)
        metrics.setdefault("loss", out.loss.detach())
        z = out.z.detach()
        return TrainTerms(out.loss, out.x_hat * scale, (z != 0).sum(0), lambda: z, metrics)

    def init_b_dec(self, value: torch.Tensor) -> None:
        """Set the decoder bias to ``value`` (normalised space), for ``b_dec_init`` other than
        zeros. The default refuses, since an SAE without this method has no bias to set."""
        raise ConfigError(
            f"SAE `{self.name}` cannot initialise a decoder bias (it does not implement "
            f"init_b_dec); set b_dec_init: zeros"
        )

    def begin_training(self, total_samples: int) -> None:
        """Called once before the first step (and again on resume) with the number of samples
        the run will train on, for schedules that are fractions of the run (default: nothing)."""

    def before_optimizer_step(self) -> None:
        """Called with the gradients in place, before each optimiser step (default: nothing)."""

    def on_step_end(self) -> None:
        """Called after each optimiser step (e.g. to renormalise decoder rows)."""

    # -- optional: fused sweeps ------------------------------------------------------------

    def fusion_key(self) -> str | None:
        """SAEs with equal keys may train as one fused group (default None: never fused).

        SAEs of one key must have the same parameter names and shapes, and their class must
        implement :meth:`group_terms`.
        """
        return None

    @classmethod
    def group_terms(
        cls,
        saes: Sequence[SAE],
        params: dict[str, torch.Tensor],
        xn: torch.Tensor,
        sparsity_scale: float,
    ) -> GroupTerms:
        """The training step of a fused group on a normalised batch ``xn``; ``params`` maps each
        parameter name to the members' parameters stacked along a new leading dimension."""
        raise NotImplementedError(f"SAE `{cls.name}` has a fusion_key but no group_terms")

    @classmethod
    def before_group_optimizer_step(
        cls, saes: Sequence[SAE], params: dict[str, nn.Parameter]
    ) -> None:
        """:meth:`before_optimizer_step` for a fused group, whose gradients live on the stacked
        ``params`` (default: nothing)."""

    def stacked_params(self) -> dict[str, torch.Tensor]:
        """This SAE's parameters as a group of one (differentiable views)."""
        return {name: p.unsqueeze(0) for name, p in self.named_parameters()}

    # -- optional: checkpoints -------------------------------------------------------------

    def resize_latents(self, d_sae: int) -> None:
        """Rebuild the parameters for ``d_sae`` latents, for checkpoints whose width is not
        ``d_in x expansion`` (the default cannot)."""
        raise NotImplementedError(f"SAE `{self.name}` cannot change its number of latents")

    def to_saelens(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """This SAE as a SAELens v6 inference checkpoint: ``(cfg, tensors)``.

        ``cfg`` holds at least ``architecture`` (``standard``, ``topk``, ``gated``,
        ``jumprelu``) and the architecture's fields; tensors use SAELens's names and layout
        (``W_enc`` (d_in, d_sae), ``W_dec`` (d_sae, d_in)) with ``input_scale`` folded in.
        ``d_in``, ``d_sae``, dtype and metadata are added by the caller. The default refuses.
        """
        raise NotImplementedError(f"SAE `{self.name}` has no SAELens counterpart")

    @classmethod
    def from_saelens(cls, cfg: dict[str, Any], tensors: dict[str, torch.Tensor]) -> SAE:
        """An SAE equal to the SAELens checkpoint ``cfg`` + ``tensors`` (float32, CPU), for an
        ``architecture`` in :attr:`saelens_architectures`. Raise ``ValueError`` with a short
        reason for a checkpoint that cannot be represented."""
        raise NotImplementedError(f"SAE `{cls.name}` cannot load SAELens checkpoints")


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
        layers: Sequence[str] = (),
        layer_activation_loader: Any = None,
        sae_resolver: Any = None,
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
        self.layers: tuple[str, ...] = tuple(layers) or (layer,)
        """Every layer of this cell's model in the suite (in suite order)."""
        self._layer_activation_loader = layer_activation_loader
        self._sae_resolver = sae_resolver
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

    # -- other layers of the same model, and the suite's SAEs on them ----------------------
    # For evaluators that compare layers (e.g. how visual features persist from LLaVA's
    # projector into its language model); they declare the layers in Evaluator.reads_layers.
    # The runner resolves both; they are optional for other hosts, which then answer with a
    # one-line error.

    def layer_activations(self, split: str, layer: str) -> ActivationSet:
        """The cached activations of ``split`` at another ``layer`` of this cell's model (same
        token selection). ``layer`` must be one of :attr:`layers`."""
        if layer == self.layer:
            return self.activations(split)
        self._check_layer(layer)
        if self._layer_activation_loader is None:
            raise ConfigError(f"this runner gives evaluators no activations of layer {layer!r}")
        return self._layer_activation_loader(split, layer)

    def suite_sae(self, layer: str, *, label: str | None = None) -> tuple[SAE, str]:
        """``(sae, sae_id)``: the suite's SAE on ``layer`` of this model and seed, loaded from
        its checkpoint. ``label`` picks a sweep variant by its label (``relu[expansion=8]``);
        by default, the variant with this cell's SAE's label. The layer must be one the
        evaluator declares in :meth:`Evaluator.reads_layers`, so that it is trained before the
        cell runs. Raises a one-line :class:`~saebench_vision.errors.ConfigError` when no SAE
        of the suite is trained on that layer."""
        self._check_layer(layer)
        if self._sae_resolver is None:
            raise ConfigError(f"this runner gives evaluators no SAE of layer {layer!r}")
        sae, sae_id = self._sae_resolver(layer, self.sae_id, label)
        return sae, sae_id

    def _check_layer(self, layer: str) -> None:
        if layer not in self.layers:
            raise ConfigError(
                f"model `{self.model_name}`: no SAE of this suite is trained on layer {layer!r} "
                f"(the suite's layers: {', '.join(self.layers)}); add it to the model's layers"
            )


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

    def reads_layers(self, layer: str, layers: Sequence[str]) -> tuple[str, ...]:
        """Other layers of the same model whose activations and suite SAEs a cell on ``layer``
        reads (:meth:`EvalContext.layer_activations`, :meth:`EvalContext.suite_sae`);
        ``layers`` are the model's layers in the suite.

        Default: none. The plan extracts the layers named here with the cell's own and makes
        the cell (its SAE's and its baseline) wait for the training of every SAE of those
        layers for the same model and seed, so that any executor finds them trained. Layers
        outside ``layers`` are ignored here (the evaluator reports them when it runs). E.g. an
        evaluator comparing a projector with an LM layer returns ``("lm.6",)`` for
        ``layer == "projector"``.
        """
        return ()

    def baseline(self, ctx: EvalContext) -> list[Record]:
        return []


# --------------------------------------------------------------------------------------------
# Steering: labellers (a fifth component kind, registered with ``register_labellers``)
#
# Evaluators that steer a generator (``diffusion-steering``) ask a labeller what tells a set of
# original images from their steered versions. Labellers are components like the others: a
# ``name``, a ``version`` (bump it when answers change: cached answers are keyed by it) and a
# ``Config`` whose fields (model id, prompt, device) are part of the answer cache's key.


@dataclass
class LabellerAnswer:
    """A labeller's reply: ``keywords`` in its order of importance, or ``abstained``.

    ``raw`` is the model's text as given (kept with the results); an answer that cannot be
    parsed is an abstention, never an error.
    """

    keywords: list[str]
    abstained: bool = False
    raw: str = ""


class Labeller(Component):
    """Names the attributes that set the ``steered`` images apart from the ``originals``.

    ``label`` gets the two image sets in matching order (original ``i`` and steered ``i`` share
    prompt and seed), the prompts they were made from, and ``hints``: candidate words for the
    feature (e.g. the words it fires on), which a labeller may use or ignore. Returns a
    :class:`LabellerAnswer`. Labellers load their model lazily, on the first call.
    """

    def label(
        self,
        originals: Sequence[Any],
        steered: Sequence[Any],
        *,
        prompts: Sequence[str] = (),
        hints: Sequence[str] = (),
    ) -> LabellerAnswer:
        raise NotImplementedError
