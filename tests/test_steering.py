"""The steering mechanism on tiny SD 1.x and SD 3 pipelines built from configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest_steering import SIZE, build_sd1, build_sd3, tiny_sae
from PIL import Image
from saebench_vision_plugins.models.configs import SDTextEncoderConfig
from saebench_vision_plugins.models.sd_text import SDTextEncoderAdapter
from saebench_vision_plugins.steering.steering import (
    DiffusionSteerer,
    GenerationSettings,
    ImageStore,
    SteeringOptions,
    steer,
    typical_activations,
)

from saebench_vision.errors import ConfigError
from saebench_vision.interfaces import TokenKind

SETTINGS = GenerationSettings(num_inference_steps=2, guidance_scale=5.0, height=SIZE, width=SIZE)
PROMPT = "a red car"
T5_LENGTH = 16


@pytest.fixture(scope="module")
def sd1(tmp_path_factory: pytest.TempPathFactory) -> SDTextEncoderAdapter:
    path = build_sd1(tmp_path_factory.mktemp("sd1-pipe"))
    adapter = SDTextEncoderAdapter(SDTextEncoderConfig(model_id=str(path)))
    adapter.ensure_loaded()
    return adapter


@pytest.fixture(scope="module")
def sd3(tmp_path_factory: pytest.TempPathFactory) -> SDTextEncoderAdapter:
    path = build_sd3(tmp_path_factory.mktemp("sd3-pipe"))
    adapter = SDTextEncoderAdapter(
        SDTextEncoderConfig(variant="sd3", model_id=str(path), t5_max_length=T5_LENGTH)
    )
    adapter.ensure_loaded()
    return adapter


def expected_delta(sae: Any, feature: int, strength: float, scale: float) -> torch.Tensor:
    """λ · s · W_dec[f] / input_scale: the decoder row in raw activation space, by hand."""
    return strength * scale * sae.W_dec.detach()[feature] / sae.input_scale


def _images(
    steerer: DiffusionSteerer, strengths: list[float], feature: int = 3
) -> list[np.ndarray]:
    return [np.asarray(im) for im in steerer.generate(PROMPT, 7, feature, strengths, 1.3)]


@pytest.mark.parametrize("positions", ["tokens", "all", "active"])
def test_sd1_delta_exact_at_chosen_positions(sd1: SDTextEncoderAdapter, positions: str) -> None:
    sae = tiny_sae(32)
    steerer = DiffusionSteerer(
        sd1,
        sae,
        "penultimate",
        settings=SETTINGS,
        options=SteeringOptions(positions=positions),  # type: ignore[arg-type]
    )
    cond = steerer.conditioning([PROMPT, "an old man"])
    tokens = cond.kinds != int(TokenKind.PAD)
    with torch.no_grad():
        z = sae.encode(cond.embeds.reshape(-1, 32)).reshape(2, 77, -1)
    fires = ((z > 0) & tokens.unsqueeze(-1)).sum((0, 1))
    feature = int(((fires > 0) & (fires < tokens.sum())).nonzero()[0, 0])
    lam, scale = 2.5, 0.8
    out = steerer.steer(cond, feature, lam, scale)
    want = expected_delta(sae, feature, lam, scale)
    if positions == "all":
        mask = torch.ones_like(tokens)
    elif positions == "tokens":
        mask = tokens
    else:
        mask = tokens & (z[..., feature] > 0)
        assert 0 < int(mask.sum()) < int(tokens.sum())
    diff = out.embeds - cond.embeds
    torch.testing.assert_close(diff[mask], want.expand(int(mask.sum()), -1), rtol=1e-5, atol=1e-6)
    assert torch.equal(out.embeds[~mask], cond.embeds[~mask])
    # The negative (empty prompt) moves the other way at its own tokens.
    neg_mask = (
        torch.ones_like(cond.negative_kinds, dtype=torch.bool)
        if positions == "all"
        else cond.negative_kinds != int(TokenKind.PAD)
    )
    ndiff = out.negative - cond.negative
    torch.testing.assert_close(
        ndiff[neg_mask], -want.expand(int(neg_mask.sum()), -1), rtol=1e-5, atol=1e-6
    )
    assert torch.equal(out.negative[~neg_mask], cond.negative[~neg_mask])
    off = DiffusionSteerer(
        sd1, sae, "penultimate", settings=SETTINGS, options=SteeringOptions(negative=False)
    )
    assert torch.equal(off.steer(cond, feature, lam, scale).negative, cond.negative)


def test_sd1_lambda_zero_is_the_plain_pipeline_and_steering_changes_images(
    sd1: SDTextEncoderAdapter,
) -> None:
    sae = tiny_sae(32)
    steerer = DiffusionSteerer(sd1, sae, "final", settings=SETTINGS)
    original, zero, steered = _images(steerer, [0.0, 6.0])
    assert np.array_equal(original, zero)
    assert np.abs(original.astype(int) - steered).max() > 0
    # diffusers' own text path (final layer, empty negative prompt), same seeds and batch layout
    pipe = steerer.pipeline
    plain = pipe(
        prompt=[PROMPT] * 3,
        negative_prompt=[""] * 3,
        num_inference_steps=2,
        guidance_scale=5.0,
        height=SIZE,
        width=SIZE,
        generator=[torch.Generator("cpu").manual_seed(7) for _ in range(3)],
    ).images
    assert np.array_equal(np.asarray(plain[0]), original)
    assert np.array_equal(np.asarray(plain[1]), zero)


def test_loading_the_pipeline_shows_no_diffusers_bars(
    sd1: SDTextEncoderAdapter, capsys: pytest.CaptureFixture[str]
) -> None:
    from diffusers.utils import logging as diffusers_logging

    capsys.readouterr()
    assert diffusers_logging.is_progress_bar_enabled()
    DiffusionSteerer(sd1, tiny_sae(32), "final", settings=SETTINGS)
    err = capsys.readouterr().err
    assert "Loading pipeline components" not in err and "it/s" not in err, err
    # Quieted for the load only: diffusers' own setting is as it was.
    assert diffusers_logging.is_progress_bar_enabled()


@pytest.mark.parametrize("layer", ["prompt-embeds", "pooled"])
def test_sd3_joint_and_pooled(sd3: SDTextEncoderAdapter, layer: str) -> None:
    width = 64 if layer == "prompt-embeds" else 40
    sae = tiny_sae(width)
    steerer = DiffusionSteerer(sd3, sae, layer, settings=SETTINGS)
    cond = steerer.conditioning([PROMPT])
    out = steerer.steer(cond, 2, 3.0, 1.0)
    mask = cond.kinds != int(TokenKind.PAD)
    want = expected_delta(sae, 2, 3.0, 1.0)
    torch.testing.assert_close(
        (out.embeds - cond.embeds)[mask], want.expand(int(mask.sum()), -1), rtol=1e-5, atol=1e-6
    )
    assert torch.equal(out.other, cond.other)  # the other SD 3 input is left alone
    original, zero, steered = _images(steerer, [0.0, 8.0], feature=2)
    assert np.array_equal(original, zero)
    assert np.abs(original.astype(int) - steered).max() > 0
    plain = steerer.pipeline(
        prompt=[PROMPT] * 3,
        negative_prompt=[""] * 3,
        num_inference_steps=2,
        guidance_scale=5.0,
        height=SIZE,
        width=SIZE,
        max_sequence_length=T5_LENGTH,
        generator=[torch.Generator("cpu").manual_seed(7) for _ in range(3)],
    ).images
    assert np.array_equal(np.asarray(plain[0]), original)


def test_sd3_joint_with_pooled(sd3: SDTextEncoderAdapter, sd1: SDTextEncoderAdapter) -> None:
    from saebench_vision_plugins.steering.steering import PooledSteering

    joint, pooled = tiny_sae(64), tiny_sae(40, seed=1)
    steerer = DiffusionSteerer(
        sd3, joint, "prompt-embeds", settings=SETTINGS, pooled=PooledSteering(pooled, 7, 0.5)
    )
    cond = steerer.conditioning([PROMPT])
    out = steerer.steer(cond, 2, 3.0, 1.0)
    want = expected_delta(pooled, 7, 3.0, 0.5)
    torch.testing.assert_close(out.other[0, 0] - cond.other[0, 0], want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        out.negative_other[0, 0] - cond.negative_other[0, 0], -want, rtol=1e-5, atol=1e-6
    )
    mask = cond.kinds != int(TokenKind.PAD)
    torch.testing.assert_close(
        (out.embeds - cond.embeds)[mask],
        expected_delta(joint, 2, 3.0, 1.0).expand(int(mask.sum()), -1),
        rtol=1e-5,
        atol=1e-6,
    )
    original, zero, steered = _images(steerer, [0.0, 8.0], feature=2)
    assert np.array_equal(original, zero) and np.abs(original.astype(int) - steered).max() > 0
    with pytest.raises(ConfigError, match="pooled steering goes with an SD 3 SAE"):
        DiffusionSteerer(sd1, tiny_sae(32), "final", pooled=PooledSteering(pooled, 0))


def test_bad_input_is_one_line(sd1: SDTextEncoderAdapter) -> None:
    sae = tiny_sae(32)
    with pytest.raises(ConfigError, match="not what the pipeline is conditioned on") as err:
        DiffusionSteerer(sd1, sae, "blocks.1", settings=SETTINGS)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="trained on layer 'final' .* asked to steer layer 'pen"):
        DiffusionSteerer(sd1, sae, "penultimate", sae_meta={"layer": "final", "model": "sd"})
    steerer = DiffusionSteerer(
        sd1, sae, "penultimate", settings=SETTINGS, sae_meta={"layer": "penultimate"}
    )
    cond = steerer.conditioning([PROMPT])
    with pytest.raises(ConfigError, match="feature 64 is out of range .* 64 latents"):
        steerer.steer(cond, 64, 1.0, 1.0)
    wrong = DiffusionSteerer(sd1, tiny_sae(16), "penultimate", settings=SETTINGS)
    with pytest.raises(ConfigError, match="16-wide .* 32 wide: it was trained on another model"):
        wrong.steer(cond, 0, 1.0, 1.0)


class _Chunks:
    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows

    def iter_chunks(self, n: int):  # type: ignore[no-untyped-def]
        for lo in range(0, len(self.rows), n):
            yield lo, self.rows[lo : lo + n]


def test_typical_activations_against_numpy() -> None:
    sae = tiny_sae(8, expansion=4, k=6)
    rows = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
    with torch.no_grad():
        z = sae.encode(torch.from_numpy(rows)).double().numpy()
    feats = [0, 5, 17]
    acts = _Chunks(rows)
    mean = typical_activations(sae, acts, feats, batch_size=64)
    top = typical_activations(sae, acts, feats, mode="quantile", quantile=0.75, batch_size=64)
    mx = typical_activations(sae, acts, feats, mode="max", batch_size=64)
    for j, f in enumerate(feats):
        col = z[:, f]
        if (col > 0).any():
            assert mean[j] == pytest.approx(col[col > 0].mean())
            assert top[j] == pytest.approx(np.quantile(col[col > 0], 0.75))
            assert mx[j] == pytest.approx(col.max())
        else:
            assert mean[j] == 1.0
    assert (typical_activations(sae, acts, feats, mode="unit") == 1).all()


def test_steer_function_and_image_store(sd1: SDTextEncoderAdapter, tmp_path: Path) -> None:
    sae = tiny_sae(32)
    original, steered = steer(
        sd1,
        sae,
        "penultimate",
        PROMPT,
        4,
        5.0,
        seed=1,
        activations=_Chunks(np.random.default_rng(1).normal(size=(50, 32)).astype(np.float32)),
        settings=SETTINGS,
    )
    assert original.size == (SIZE, SIZE) and np.asarray(original).shape == np.asarray(steered).shape
    store = ImageStore(tmp_path)
    calls: list[int] = []

    def make() -> list[Any]:
        calls.append(1)
        return [original, steered]

    first = store.get_or_make({"p": PROMPT}, make)
    again = store.get_or_make({"p": PROMPT}, make)
    assert len(calls) == 1 and store.hits == 1
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, again))
    # a group whose completion marker is missing (killed while writing) is made again
    next(tmp_path.rglob("done.json")).unlink()
    store.get_or_make({"p": PROMPT}, make)
    assert len(calls) == 2


def test_sd3_rows_map_to_words(sd3: SDTextEncoderAdapter) -> None:
    from saebench_vision_plugins.steering.discovery import sd_row_offsets
    from saebench_vision_plugins.steering.words import token_words, word_spans

    from saebench_vision.interfaces import select_tokens

    texts = ["an old man", "a red-car, at sunset"]
    offsets = sd_row_offsets(sd3, "prompt-embeds")
    with torch.inference_mode():
        out = sd3.forward(sd3.preprocess(texts), ["prompt-embeds"])["prompt-embeds"]
    _, item = select_tokens(out, "text")
    for i, text in enumerate(texts):
        mapped = token_words(text, offsets(text))
        assert len(mapped) == int((item == i).sum())  # one word slot per cached row
        n_clip = len(sd3.tokenizers["clip-l"](text)["input_ids"])
        words = [w for _, _, w in word_spans(text)]
        for part in (mapped[:n_clip], mapped[n_clip:]):  # CLIP-L's tokens, then T5's
            assert list(dict.fromkeys(w for w in part if w)) == words
        assert mapped[0] is None and mapped[n_clip - 1] is None and mapped[-1] is None


class _IdentitySAE:
    """encode(x) = x: hand-made activations are the latents."""

    d_sae = 3

    def to(self, device: Any) -> _IdentitySAE:
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _Rows(_Chunks):
    def __init__(self, rows: np.ndarray, sample_index: np.ndarray) -> None:
        super().__init__(rows)
        self.sample_index = sample_index


def test_discovery_on_a_hand_example(sd1: SDTextEncoderAdapter) -> None:
    from saebench_vision_plugins.steering.discovery import discover, sd_row_offsets
    from saebench_vision_plugins.steering.words import token_words

    texts = ["an elderly man", "the elderly woman", "a red car"]
    offsets = sd_row_offsets(sd1, "penultimate")
    rows, index = [], []
    for i, text in enumerate(texts):
        for pos, word in enumerate(token_words(text, offsets(text))):
            row = np.zeros(3, dtype=np.float32)
            row[0] = 2.0 if word == "elderly" else 0.0  # an attribute feature
            row[1] = 1.0 if pos == 0 else 0.0  # fires on the start token only
            row[2] = 1.5 if word == "the" else 0.0  # a stop word
            rows.append(row)
            index.append(i)
    found, candidates = discover(
        _IdentitySAE(),
        _Rows(np.stack(rows), np.array(index)),
        texts,
        offsets,
        top_rows=32,
        tagger=None,
        wordnet=None,
    )
    by_feature = {fw.feature: fw for fw in found}
    assert by_feature[0].top_word == "elderly" and by_feature[0].share == 1.0
    assert by_feature[0].rows == len("elderly") * 2  # every letter piece of both captions
    assert by_feature[1].top_word is None and by_feature[2].pos == "stop"
    assert [c.feature for c in candidates] == [0]


_WRITER = """
import sys, time
from PIL import Image
from saebench_vision_plugins.steering.steering import ImageStore
store = ImageStore(sys.argv[1])
def make(i):
    time.sleep(0.02)
    return [Image.new("RGB", (8, 8), (i, 0, 0)), Image.new("RGB", (8, 8), (0, i, 0))]
for i in range(60):
    store.get_or_make({"group": i}, lambda i=i: make(i))
"""


def test_sigkill_loses_at_most_the_call_in_flight(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)])
    deadline = time.time() + 120
    while len(list(tmp_path.rglob("done.json"))) < 10 and time.time() < deadline:
        assert proc.poll() is None, "the writer ended before it was killed"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(list(tmp_path.rglob("done.json")))
    assert 10 <= finished < 60
    store = ImageStore(tmp_path)
    made: list[int] = []
    for i in range(60):
        images = store.get_or_make(
            {"group": i},
            lambda i=i: made.append(i) or [Image.new("RGB", (8, 8), (i, 0, 0))] * 2,
        )
        assert np.asarray(images[0])[0, 0, 0] == i and len(images) == 2
    assert len(made) == 60 - finished  # every finished group is reused, none half-read
