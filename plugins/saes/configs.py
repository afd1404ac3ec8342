"""Config dataclasses of the built-in SAE architectures. Light: imports no torch.

Choices the paper leaves open, and why the defaults are what they are:

* **Decoder norm.** The paper trained with SAELens, whose L1 penalty multiplies each latent by
  its decoder row's norm (``decoder_norm="weighted-l1"``) and whose decoder rows start at norm
  0.1 with ``W_enc = W_decᵀ``. The paper's λ grid (0.1 ... 100) is calibrated to that loss, so
  the L1-penalised architectures (``relu``, ``gated``) default to it. The TopK family has no L1
  term to weight and defaults to free decoder rows with the same 0.1 initialisation. Unit-norm
  rows (OpenAI, sparsify, saev; ``decoder_norm="unit"``) are an option, but at an equal budget
  they learn much less: Adam moves every weight by about ``lr`` per step whatever its scale, so
  rows of norm 1 turn about ten times slower than rows of norm 0.1 (and the tied encoder with
  them). On the planted-dictionary benchmark (``benchmarks/quality.py``) unit rows reach about
  half the MMCS of free rows after one pass, and recover most of the gap at a ten times larger
  learning rate, which is what that explanation predicts.
* **Gated auxiliary loss.** The Gated SAE paper reconstructs ``x`` from ``ReLU(π_gate)``
  through a stop-gradient copy of the decoder (``aux_decoder="frozen"``). With the shared
  (gradient-carrying) decoder, as SAELens trains it, the decoder also adapts to the gate
  path's code, and at an equal budget the SAE ends far sparser and more accurate (benchmark:
  L0 860 -> 190 and FVU 0.64 -> 0.48 at λ = 6), so ``shared`` is the default.
* **Gated λ.** The gate and magnitude paths share ``W_enc``, so the encoder gets the
  reconstruction gradient twice (the main loss through the magnitude path, the auxiliary loss
  through the gate) against one L1 term. At initialisation (``r_mag = b_mag = b_gate = 0``)
  both paths give the code ``ReLU(W_enc (x - b_dec))`` and SAELens's Gated loss at λ has
  exactly ``1 + aux_coefficient`` times the gradients of a ReLU SAE at ``λ / (1 +
  aux_coefficient)``: Adam, blind to that scale, trains it as that ReLU SAE (λ / 2 with the
  default ``aux_coefficient`` 1), and the biases and ``r_mag`` that would make it differ move
  by about ``lr`` per step (on the quickstart's ``final`` layer ``b_gate`` ends at -0.07 on
  average while the gate's pre-activations have a spread of 0.8). That is why Gated stayed
  denser than ReLU at the same λ (quickstart ``final``, λ = 3: L0 264 against 175), and
  neither gate-bias learning nor the auxiliary decoder is the cause: learning ``b_gate`` 30 times faster gave
  L0 242, a frozen auxiliary decoder 627, and cutting the magnitude path's gradient into
  ``W_enc`` 184, ReLU's own. ``l1_convention: relu`` (default) weights the gate's L1 by
  ``λ (1 + aux_coefficient)``, so λ means what it means for ReLU; Gated is then sparser
  than ReLU at every λ of the quickstart, with more explained variance. ``saelens`` keeps
  SAELens's and the Gated SAE paper's λ (checkpoints saved before the option, and SAELens
  checkpoints without an ``l1_convention`` key, load with it; our SAELens exports write the key).
* **Decoder bias.** The TopK family starts ``b_dec`` at the geometric median of a training
  sample (dictionary_learning, SAELens v5): on uncentred activations (EfficientNet's are all
  positive) the few latents aligned with the mean otherwise win the top k for every input and
  the rest die (99% dead on the quickstart's ``final`` layer). The L1 architectures keep
  SAELens v6's zeros, to which the paper's λ grid is calibrated: there the mean is what lets
  the encoder sparsify quickly, and on the planted-dictionary benchmark a median start makes
  ReLU at λ = 6 four times denser at the same FVU. On strongly uncentred activations and short
  training (the quickstart) set ``b_dec_init: geometric-median`` for them too. The median
  costs TopK a little on centred data: on the benchmark's full size (one pass at batch 4096,
  constant learning rate) ``zeros`` gives FVU 0.475 / MMCS 0.488 against the median's 0.494 /
  0.474 (``mean`` is the same as the median there), but on the quickstart's ``final`` layer
  ``zeros`` leaves 93% of the latents dead, so the median stays the default.
* **Encoder input.** ``apply_b_dec_to_input`` subtracts ``b_dec`` before encoding, as SAELens
  does by default (and Gated SAEs' eq. 5 writes explicitly).
* **Dead latents.** TopK-family SAEs use the AuxK loss (Gao et al. 2024) with SAELens's default
  coefficient 1 and ``k_aux = d_in / 2``; a latent is dead after ``dead_after`` training
  samples *and* ``dead_after_steps`` steps without firing. The sample window is what matters
  at small batches: at batch 64 (the paper's), a window of 200,000 samples never opens within
  a 60,000-sample run and leaves 44% of the latents dead, while 10,000 samples gives 2% dead,
  FVU 0.14 instead of 0.20 and MMCS 0.60 instead of 0.45 (``benchmarks/quality.py --quick
  --batch 64``). The step floor is what matters at large batches: at batch 4096, 10,000
  samples alone would start AuxK at the third step, before the latents have settled. The
  floor of 10 steps is a compromise measured at the benchmark's full size (batch 4096, 46
  steps): with the calibrated generator no latent stays silent for 10 steps there, and a
  window that never opens (``dead_after_steps: 1000``) gives the same figures to the digit.
* **BatchTopK warm-up.** At initialisation the encoder is not selective: a pre-activation is
  about ``‖x‖ cos(x, w)``, so the batch's k·B largest are mostly in the rows of large norm,
  which take most of the budget while the others get a few latents or none, and in a short
  run the encoder never recovers from it. ``topk_warmup`` trains with per-sample TopK (each
  row its own k) for the first half of the run's samples (a fraction, so that a short run
  still ends with batch selection) and switches to batch selection after; the
  inference threshold is estimated from the batch selection throughout, so it is ready
  whenever training stops. On the planted-dictionary benchmark's full size (one pass at
  batch 4096, 46 steps; ``benchmarks/quality.py``) it takes BatchTopK from FVU 0.596 / MMCS
  0.361 to 0.503 / 0.464 and Matryoshka (``nesting: latents``) from 0.630 / 0.332 to 0.515 /
  0.451 (warm-ups of 20-80% of the pass all help; one over the whole pass, per-sample
  training with threshold inference, recovers as much as TopK, MMCS 0.474, but at FVU
  0.577), and at the quick size
  (65k samples) BatchTopK from 0.506 / 0.396 to 0.459 / 0.450. Bussmann et
  al. and SAELens select per batch from the first step: ``topk_warmup: 0``.
* **k ramp.** A TopK-family SAE keeps ``k_start · k`` latents per sample when training starts
  (1/16 of k by default, rounded, at least one) and ``k`` once ``k_ramp`` of the run's
  samples are trained (a quarter by default), linearly in between; inference always keeps
  ``k``, and BatchTopK's threshold is estimated at ``k · B`` throughout. With few latents per
  sample, each row's largest pre-activations alone must reconstruct it, so the latents that
  win early align with the directions that carry most of the data's variance instead of
  sharing it out; the later latents then refine. (Nesting by activation rank has the same
  effect on Matryoshka, through extra losses instead of a schedule. k-sparse autoencoders ramp
  the other way, down from a larger k: from 2k that cost TopK 0.04 in FVU and 0.07 in MMCS
  here.) On the planted-dictionary benchmark (``benchmarks/quality.py``, full size) it takes
  TopK from FVU 0.494 / MMCS 0.474 to 0.353 / 0.672 in one pass at batch 4096 (46 steps), and
  from 0.390 / 0.572 to 0.317 / 0.683 at batch 64 (2,969 steps); BatchTopK and Matryoshka gain
  as much (``docs/design.md``, SAE quality). The ramp's length trades short runs against long
  ones: over 75% of the run TopK gives 0.335 / 0.703 at batch 4096 but 0.363 / 0.633 at batch
  64, over half 0.343 / 0.689 and 0.341 / 0.661; a quarter is the best on average, the only one
  with batch 64 no worse than batch 4096, and long runs (the paper's scale) are where it is
  best. A start at k/32 or k/8 is a little worse than k/16, and BatchTopK still needs its
  warm-up (with the ramp over half the run and ``topk_warmup: 0``: 0.544 / 0.431). It is no
  cure for tiny data: on the quickstart's ``final`` layer (900 inputs, 140 steps) it leaves
  64% of TopK's latents dead at k = 32 instead of 40%, so the quickstart turns it off.
  ``k_ramp: 0`` keeps k from the first step, as Gao et al. and SAELens train; checkpoints
  saved before the ramp existed and SAELens imports load so.
* **JumpReLU thresholds.** Adam moves a parameter by about ``lr`` per step, so a threshold
  stored as itself travels at most ``lr x steps`` (0.06 in the quick benchmark), while the
  thresholds the L0 penalty asks for are about 1.5 in normalised units: at short budgets the
  SAE stays nearly dense whatever ``l0_coefficient`` (in SAELens too). ``threshold_lr_scale``
  learns θ as that scale times a parameter; 30 sparsifies the quick benchmark (λ = 1: L0 69,
  FVU 0.439, MMCS 0.305, against L0 1,740, FVU 0.049, MMCS 0.245 at 1) but at lr 5e-3 over
  1,000 steps it moves θ too coarsely (44% dead latents), so the default stays SAELens's 1.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from saebench_vision.config import FieldValueError, SAEConfig, option

DecoderNorm = Literal["weighted-l1", "unit", "free"]


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise FieldValueError(name, value, "more than 0")


def _check_non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise FieldValueError(name, value, "0 or more")


@dataclasses.dataclass(frozen=True)
class BaseSAEConfig(SAEConfig):
    """Fields shared by the built-in architectures."""

    apply_b_dec_to_input: bool = option(
        True, "subtract b_dec from the input before encoding (SAELens default)"
    )
    decoder_init_norm: float = option(
        0.1, "initial norm of decoder rows when they are not held at unit norm (SAELens: 0.1)"
    )

    def __post_init__(self) -> None:
        _check_positive("expansion", self.expansion)
        _check_positive("decoder_init_norm", self.decoder_init_norm)


@dataclasses.dataclass(frozen=True)
class ReLUConfig(BaseSAEConfig):
    """ReLU SAE with an L1 penalty (paper eqs. 1-3)."""

    l1_coefficient: float = option(1.0, "λ, the weight of the L1 sparsity penalty")
    decoder_norm: DecoderNorm = option(
        "weighted-l1",
        "weighted-l1: free decoder rows, L1 of z weighted by row norms (SAELens, the paper's λ "
        "scale); unit: rows held at unit norm, plain L1; free: rows unconstrained, plain L1",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_non_negative("l1_coefficient", self.l1_coefficient)


@dataclasses.dataclass(frozen=True)
class GatedConfig(ReLUConfig):
    """Gated SAE (paper eq. 5; Rajamanoharan et al. 2024) with its auxiliary gate loss."""

    aux_coefficient: float = option(
        1.0, "weight of the auxiliary reconstruction through the gate path (paper: 1)"
    )
    aux_decoder: Literal["frozen", "shared"] = option(
        "shared",
        "decoder of the auxiliary reconstruction: frozen (a stop-gradient copy, the paper's) "
        "or shared (gradients reach the decoder too, as in SAELens)",
    )
    gate_bias_init: float = option(
        0.0, "initial gate bias b_gate, in normalised input space (SAELens: 0)"
    )
    l1_convention: Literal["relu", "saelens"] = option(
        "relu",
        "relu: the gate's L1 is weighted by 1 + aux_coefficient, the total weight of the "
        "reconstruction terms whose gradient reaches the shared encoder, so that λ sparsifies "
        "as it does a ReLU SAE; saelens: λ as SAELens and the Gated SAE paper weight it (the "
        "SAE then trains like a ReLU SAE at λ / (1 + aux_coefficient))",
        absent="saelens",  # checkpoints saved before the field existed were trained so
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_non_negative("aux_coefficient", self.aux_coefficient)


@dataclasses.dataclass(frozen=True)
class JumpReLUConfig(BaseSAEConfig):
    """JumpReLU SAE with an L0 penalty trained through straight-through threshold estimates."""

    l0_coefficient: float = option(1.0, "weight of the L0 sparsity penalty (SAELens name)")
    bandwidth: float = option(
        0.05, "width of the rectangle kernel of the threshold's pseudo-derivative (SAELens 0.05)"
    )
    init_threshold: float = option(0.01, "initial threshold of every latent (SAELens 0.01)")
    threshold_lr_scale: float = option(
        1.0,
        "the threshold is learnt as threshold_lr_scale x a parameter, so Adam moves it this "
        "many times faster than the weights (1: SAELens; 30 lets short runs sparsify)",
    )
    decoder_norm: DecoderNorm = option(
        "free", "free: decoder rows unconstrained (SAELens); unit: held at unit norm"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive("bandwidth", self.bandwidth)
        _check_positive("threshold_lr_scale", self.threshold_lr_scale)
        _check_non_negative("l0_coefficient", self.l0_coefficient)


def ramp_start(k: int, k_start: float) -> int:
    """The latents kept per sample when a k ramp starts: ``k_start · k`` rounded to the
    nearest (halves up), at least 1 and at most ``k``."""
    return max(1, min(k, math.floor(k_start * k + 0.5)))


@dataclasses.dataclass(frozen=True)
class TopKConfig(BaseSAEConfig):
    """TopK SAE (paper eq. 4) with the AuxK loss for dead latents."""

    b_dec_init: Literal["zeros", "mean", "geometric-median"] = option(
        "geometric-median",
        "initial decoder bias, from a sample of the training data: geometric-median "
        "(dictionary_learning, SAELens v5), mean, or zeros (SAELens v6)",
    )
    k: int = option(32, "latents kept per sample")
    aux_k_coefficient: float = option(1.0, "weight of the AuxK loss (0 turns it off)")
    aux_k: int = option(0, "latents the AuxK loss may use (0: d_in / 2)")
    dead_after: int = option(
        10_000, "training samples without firing after which a latent counts as dead for AuxK"
    )
    dead_after_steps: int = option(
        10, "and at least this many training steps (so large batches do not start AuxK at once)"
    )
    decoder_norm: Literal["unit", "free"] = option(
        "free",
        "free: decoder rows unconstrained, initialised at decoder_init_norm (SAELens's init); "
        "unit: rows held at unit norm (OpenAI, sparsify, saev), which learns slower under Adam",
    )
    sparse_backend: Literal["auto", "dense", "sparse"] = option(
        "auto",
        "how the decoder and the encoder's weight gradient use sparsity; every backend gives "
        "the same numbers up to float rounding",
    )
    k_ramp: float = option(
        0.25,
        "fraction of the run's training samples over which the latents kept per sample grow "
        "linearly from k_start x k to k (0: k from the first step, as Gao et al. and SAELens "
        "train)",
        absent=0.0,  # checkpoints saved before the ramp existed were trained with k throughout
    )
    k_start: float = option(
        0.0625,
        "latents kept per sample when training starts, as a fraction of k (rounded to the "
        "nearest, at least 1 latent); a ramp that is flat (k_ramp 0, or a start that rounds "
        "to k) is recorded as k_ramp 0, k_start 1",
        absent=1.0,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k < 1:
            raise FieldValueError("k", self.k, "at least 1")
        if not 0 <= self.k_ramp < 1:
            raise FieldValueError("k_ramp", self.k_ramp, "at least 0 and below 1")
        if not 0 < self.k_start <= 1:
            raise FieldValueError("k_start", self.k_start, "above 0 and at most 1")
        # Without a ramp k_start is unused, and a ramp that starts at k is flat: either way k
        # is constant, recorded as the one setting it is (so that it has one identity).
        if self.k_ramp == 0 or ramp_start(self.k, self.k_start) >= self.k:
            object.__setattr__(self, "k_ramp", 0.0)
            object.__setattr__(self, "k_start", 1.0)
        _check_non_negative("aux_k_coefficient", self.aux_k_coefficient)
        _check_non_negative("aux_k", self.aux_k)
        if self.dead_after < 1:
            raise FieldValueError("dead_after", self.dead_after, "at least 1")
        _check_non_negative("dead_after_steps", self.dead_after_steps)


@dataclasses.dataclass(frozen=True)
class BatchTopKConfig(TopKConfig):
    """BatchTopK SAE (Bussmann et al. 2024): k latents per sample on average over a batch.

    At inference a latent fires when its pre-activation exceeds a threshold learnt during
    training (a running mean of the smallest kept activation), so a sample's code does not
    depend on the other samples of its batch.
    """

    threshold_momentum: float = option(
        0.0,
        "update rate per step of the inference threshold's running mean (SAELens "
        "topk_threshold_lr, 0.01); 0: batch size / threshold_window, a mean over about "
        "threshold_window recent samples whatever the batch size",
    )
    threshold_window: int = option(
        16_384, "samples the running mean of the threshold spans when threshold_momentum is 0"
    )
    inference: Literal["threshold", "batch-topk"] = option(
        "threshold", "encode with the learnt threshold (per sample) or with BatchTopK itself"
    )
    topk_warmup: float = option(
        0.5,
        "fraction of the run's training samples during which every sample keeps its own top "
        "k (per-sample TopK) before selection switches to the batch's top k·B (0: BatchTopK "
        "from the first step, Bussmann et al.'s and SAELens's)",
        absent=0.0,  # checkpoints saved before the warm-up existed were trained without it
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.threshold_momentum <= 1:
            raise FieldValueError("threshold_momentum", self.threshold_momentum, "between 0 and 1")
        if self.threshold_window < 1:
            raise FieldValueError("threshold_window", self.threshold_window, "at least 1")
        if not 0 <= self.topk_warmup < 1:
            raise FieldValueError("topk_warmup", self.topk_warmup, "at least 0 and below 1")


@dataclasses.dataclass(frozen=True)
class MatryoshkaConfig(BatchTopKConfig):
    """Matryoshka BatchTopK SAE (Bussmann et al. 2025; Nabeshima 2024).

    Nested parts of each code must reconstruct the input by themselves, so that early latents
    (``latents``) or a row's largest activations (``rank``) learn general features and the rest
    refine them. The loss is the mean of the nested reconstruction errors.
    """

    nesting: Literal["latents", "rank", "both"] = option(
        "both",
        "which nested parts reconstruct: latents (dictionary prefixes: Bussmann et al., "
        "SAELens), rank (each row's largest activations: Zaigrajew et al.'s MSAE) or both",
        absent="latents",  # checkpoints saved before the field existed nested by latents
    )

    prefix_fractions: tuple[float, ...] = option(
        (0.0625, 0.125, 0.25, 0.5, 1.0),
        "nested part sizes, increasing, the last one 1: fractions of d_sae (latents) and of "
        "the latents each row keeps (rank)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        fr = tuple(self.prefix_fractions)
        if not fr or fr[-1] != 1.0 or any(b <= a for a, b in zip(fr, fr[1:])) or fr[0] <= 0:
            raise FieldValueError(
                "prefix_fractions", fr, "a list that increases strictly from above 0 to 1.0"
            )
