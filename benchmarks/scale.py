"""Scale benchmark: memory and time per row from 50k to 800k activation rows (issue: stream at
ImageNet scale).

For each N, in a fresh subprocess (so peak memory is that N's own), synthetic activations
(N train rows and N/5 eval rows x 768, 100 classes in a two-level tree) are written to an
activation cache, then the harness's own parts run on them as a suite would: a TopK SAE with
6,144 latents is trained (``train_saes``, streaming from the memory map), the train and eval
splits are encoded once into the run's shared sparse encodings (phase ``encode``), and the
``reconstruction``, ``ood-accuracy`` (raw-activation baseline and SAE latents, minibatch
solver) and ``ontology`` (SAE latents and as many random directions) evaluators score it
through one ``EvalContext``. Printed per N and phase: wall seconds and CPU seconds
(``time.process_time``, every thread of the process), each also per 1k train rows, the 1-minute
load average at the end of the phase (the machine may be shared: a measurement says what else
ran), and peak memory:

* ``peak RSS``: the kernel's high-water mark (VmHWM), which counts pages of the memory-mapped
  cache the process has touched; the kernel drops those under pressure, so they grow with N
  without being held memory;
* ``peak anon``: the largest anonymous (heap) resident size seen by a sampler every 20 ms:
  memory the process really holds.

Then the ratios largest N / smallest N of peak anon and of time per row (wall and CPU, for
training, the evaluators and each phase), and evaluators / training per N. Targets: peak anon
within 1.3x and time per row within 1.5x from the smallest N to the largest, and the
evaluators' time at most the training time. CPU seconds are the steadier measure on a shared
machine: wall time grows with the load, CPU time much less, as the children run with
``OMP_WAIT_POLICY=PASSIVE`` (as ``saebench run`` does), so idle OpenMP threads sleep rather
than spin.

Freed heap that glibc keeps (the dynamic mmap threshold sends the streaming loops' large
temporaries to the heap, and small long-lived arrays between them keep it from shrinking)
shows up as anonymous memory growing with N; ``--malloc-trim`` runs each size with glibc
returning freed memory at once, which separates memory held from memory merely not given back.
Every memory budget (training's ``in_memory_limit_gb``, the probes' ``memory_budget_gb``, the
encoding store's) is set to ``--budget-gb`` (0.1 GiB: below the smallest N's 147 MiB of train
rows) so that no size fits "in memory" and everything streams, as at the paper's scale.

    python benchmarks/scale.py [--sizes 50000,200000,800000] [--latents 6144] [--budget-gb 0.1]
        [--malloc-trim] [--threads 2]

Measured (``--sizes 50000,200000,800000 --latents 6144 --malloc-trim``, 3 training epochs at
batch 4096, probes 10 epochs, 2 threads on a 2-core CPU shared with other jobs, load 3.9-5.9):

    phase / N            50k wall  cpu    200k wall  cpu    800k wall  cpu  (s per 1k rows)
    train                  1.282  1.183     1.636  1.315     1.586  1.324
    encode (shared)        0.205  0.197     0.313  0.201     0.232  0.209
    reconstruction         0.176  0.160     0.240  0.161     0.164  0.154
    probes-raw             0.137  0.135     0.176  0.132     0.141  0.128
    probes-latents         0.073  0.067     0.070  0.066     0.082  0.063
    ontology               0.006  0.006     0.003  0.002     0.002  0.001
    evaluators             0.597  0.566     0.802  0.564     0.621  0.555
    peak anon (MB)           810              814              824
    evaluators / training   0.47 / 0.48      0.49 / 0.43      0.39 / 0.42   (wall / cpu)

From 50k to 800k rows: peak anon 1.02x; time per row training 1.24x wall, 1.12x CPU,
evaluators 1.04x wall, 0.98x CPU; the evaluators take 0.39-0.49 of the training time.
Without ``--malloc-trim`` (load 1.6-1.9): peak anon 1158 / 1355 MB at 50k / 200k (1.17x),
time per row 1.16x / 0.99x CPU (training / evaluators), evaluators / training 0.49 / 0.41.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

D = 768
N_CLASSES = 100
GROUPS = 10


def _anon_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def _hwm_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class AnonSampler(threading.Thread):
    """Tracks the peak anonymous RSS of this process."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self.running = True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, _anon_kb())
            time.sleep(0.02)

    def phase(self) -> int:
        """Peak since the last call (then the count restarts)."""
        peak = max(self.peak, _anon_kb())
        self.peak = 0
        return peak

    def stop(self) -> int:
        self.running = False
        self.join()
        return max(self.peak, _anon_kb())


def _load() -> str:
    """The machine's 1-minute load average (``uptime``), as measurements on a shared machine
    must say what else was running."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"


class Phases:
    """Wall and CPU seconds (``time.process_time``: every thread of this process) per phase."""

    def __init__(self, sampler: AnonSampler) -> None:
        self.sampler = sampler
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.anon: dict[str, int] = {}
        self.load: dict[str, str] = {}

    def run(self, label: str, fn):  # noqa: ANN001, ANN201
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        self.wall[label] = time.perf_counter() - t0
        self.cpu[label] = time.process_time() - c0
        self.anon[label] = self.sampler.phase()
        self.load[label] = _load()
        return out


def write_split(cache, key: str, n: int, seed: int, centers) -> object:  # noqa: ANN001
    import numpy as np

    rng = np.random.default_rng(seed)
    writer = cache.writer(key, D, {"model": "synthetic", "layer": "final", "split": key[:8]})
    step = 16384
    for lo in range(0, n, step):
        m = min(step, n - lo)
        y = rng.integers(0, N_CLASSES, m)
        x = centers[y] + rng.standard_normal((m, D), dtype=np.float32)
        writer.append(np.maximum(x, 0), np.arange(lo, lo + m), y)
    return writer.commit()


def one(args: argparse.Namespace) -> dict[str, float]:
    """Everything for one N, in this process; returns the measurements."""
    import numpy as np
    import torch
    from saebench_vision_plugins.evaluators.configs import (
        OntologyConfig,
        OODAccuracyConfig,
        ReconstructionConfig,
    )
    from saebench_vision_plugins.evaluators.ontology import OntologyEvaluator
    from saebench_vision_plugins.evaluators.ood_accuracy import OODAccuracyEvaluator
    from saebench_vision_plugins.evaluators.reconstruction import ReconstructionEvaluator
    from saebench_vision_plugins.saes.configs import TopKConfig
    from saebench_vision_plugins.saes.topk import TopKSAE

    from saebench_vision.cache import ActivationCache
    from saebench_vision.config import TrainingConfig
    from saebench_vision.encodings import EncodingStore
    from saebench_vision.interfaces import ClassInfo, Dataset, EvalContext

    torch.set_num_threads(args.threads)
    n = args.one
    budget = args.budget_gb
    root = Path(args.cache_dir)
    cache = ActivationCache(root)
    rng = np.random.default_rng(0)
    group_centers = rng.standard_normal((GROUPS, D), dtype=np.float32) * 2
    centers = group_centers[np.arange(N_CLASSES) // (N_CLASSES // GROUPS)] + rng.standard_normal(
        (N_CLASSES, D), dtype=np.float32
    )
    t0 = time.perf_counter()
    train = write_split(cache, f"{'train':0<8}{n:0>56}", n, 1, centers)
    val = write_split(cache, f"{'val':0<8}{n:0>56}", max(n // 5, 1000), 2, centers)
    write_s = time.perf_counter() - t0
    del train, val
    acts = {
        "train": cache.lookup(f"{'train':0<8}{n:0>56}"),
        "val": cache.lookup(f"{'val':0<8}{n:0>56}"),
    }

    class Synthetic(Dataset):
        name = "synthetic"

        def __init__(self, labels: np.ndarray) -> None:
            super().__init__(None)
            self._labels = labels

        def __len__(self) -> int:
            return len(self._labels)

        def labels(self) -> np.ndarray:
            return self._labels

        def classes(self) -> list[ClassInfo]:
            return [ClassInfo(f"c{i}", f"c{i}") for i in range(N_CLASSES)]

        def hierarchy(self) -> dict[str, list[str]]:
            tree = {f"c{i}": [f"g{i // (N_CLASSES // GROUPS)}"] for i in range(N_CLASSES)}
            return tree | {f"g{g}": ["root"] for g in range(GROUPS)}

    datasets = {name: Synthetic(a.labels) for name, a in acts.items()}
    sampler = AnonSampler()
    sampler.start()
    base_anon = _anon_kb()

    sae = TopKSAE(D, TopKConfig(expansion=args.latents // D, k=32))
    cfg = TrainingConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=1e-3,
        in_memory_limit_gb=budget,
        device=args.device,
    )
    from saebench_vision.training import train_saes

    phases = Phases(sampler)
    phases.run("train", lambda: train_saes([sae], acts["train"], cfg, seed=0, progress=False))

    store = EncodingStore(
        root / "tmp" / f"encodings.{os.getpid()}.bench", memory_budget_bytes=int(budget * 2**30)
    )
    ctx = EvalContext(
        model_name="synthetic",
        layer="final",
        tokens="cls",
        seed=0,
        device=args.device,
        splits={"train": "train", "val": "eval"},
        activation_loader=acts.__getitem__,
        dataset_loader=datasets.__getitem__,
        adapter_loader=lambda: None,
        output_dir=root / "out",
        sae=sae,
        sae_id="bench-sae",
        encodings=store,
    )
    probe = OODAccuracyConfig(
        device=args.device,
        solver="minibatch",
        epochs=args.probe_epochs,
        features=("latents",),
        memory_budget_gb=budget,
    )
    # The shared encodings first (as the first evaluator of a run would make them), so each
    # evaluator's time is its own work.
    phases.run(
        "encode", lambda: [ctx.latents(s, device=args.device, batch_size=4096) for s in acts]
    )
    evaluators = [
        ("reconstruction", ReconstructionEvaluator(ReconstructionConfig(device=args.device)), True),
        ("probes-raw", OODAccuracyEvaluator(probe), False),
        ("probes-latents", OODAccuracyEvaluator(probe), True),
        ("ontology", OntologyEvaluator(OntologyConfig(device=args.device)), True),
    ]
    for label, ev, with_sae in evaluators:
        records = phases.run(
            label,
            lambda ev=ev, with_sae=with_sae: (
                ev.evaluate(ctx) if with_sae else ev.baseline(ctx.with_sae(None, ""))
            ),
        )
        assert records, label
    peak_anon = max(sampler.stop(), *phases.anon.values())
    store.close()
    eval_labels = [k for k in phases.wall if k != "train"]
    return {
        "n": n,
        "write_s": write_s,
        "train_s": phases.wall["train"],
        "train_cpu_s": phases.cpu["train"],
        "eval_s": sum(phases.wall[k] for k in eval_labels),
        "eval_cpu_s": sum(phases.cpu[k] for k in eval_labels),
        "wall": phases.wall,
        "cpu": phases.cpu,
        "load": phases.load,
        "peak_rss_mb": _hwm_kb() / 1024,
        "peak_anon_mb": peak_anon / 1024,
        "start_anon_mb": base_anon / 1024,
        "anon_mb": {k: v / 1024 for k, v in phases.anon.items()},
    }


def _per_1k(seconds: float, n: int) -> str:
    return f"{1000 * seconds / n:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", default="50000,200000,800000", help="train rows, comma-separated"
    )
    parser.add_argument("--latents", type=int, default=6144)
    parser.add_argument(
        "--epochs", type=float, default=3.0, help="SAE training epochs (the paper: 3)"
    )
    parser.add_argument("--batch-size", type=int, default=4096, help="SAE training batch")
    parser.add_argument(
        "--probe-epochs", type=int, default=10, help="probe epochs (the default: 10)"
    )
    parser.add_argument("--budget-gb", type=float, default=0.1, help="every memory budget")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=max(1, min(os.cpu_count() or 1, 2)))
    parser.add_argument("--cache-dir", help="where the synthetic cache goes (default: a temp dir)")
    parser.add_argument(
        "--malloc-trim",
        action="store_true",
        help="run each size with glibc returning freed memory at once (MALLOC_TRIM_THRESHOLD_=0, "
        "SAEBENCH_VISION_MALLOC_DEFAULTS=1): separates memory held from freed heap glibc keeps",
    )
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args)), flush=True)
        return 0
    results = []
    for n in [int(s) for s in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory(prefix="saebench-scale-", dir=args.cache_dir) as tmp:
            cmd = [sys.executable, __file__, "--one", str(n), "--cache-dir", tmp]
            for flag in (
                "latents",
                "epochs",
                "batch_size",
                "probe_epochs",
                "budget_gb",
                "device",
                "threads",
            ):
                cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            env = dict(os.environ)
            # As `saebench run` does (saebench_vision/threads.py): idle OpenMP threads sleep
            # instead of spinning, so a shared machine's load costs time, not several-fold.
            env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            if args.malloc_trim:
                env |= {"MALLOC_TRIM_THRESHOLD_": "0", "SAEBENCH_VISION_MALLOC_DEFAULTS": "1"}
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                return 1
            line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
            results.append(json.loads(line[len("RESULT ") :]))
            r = results[-1]
            print(
                f"N={n:>8,}: peak anon {r['peak_anon_mb']:.0f} MB ("
                + ", ".join(f"{k} {v:.0f}" for k, v in r["anon_mb"].items())
                + f"), peak RSS {r['peak_rss_mb']:.0f} MB; load at the end of each phase: "
                + ", ".join(f"{k} {v}" for k, v in r["load"].items()),
                flush=True,
            )
            print(f"  {'phase':<15} {'wall s':>8} {'cpu s':>8} {'wall s/1k':>10} {'cpu s/1k':>9}")
            rows = [(k, r["wall"][k], r["cpu"][k]) for k in r["wall"]]
            rows.append(("evaluators", r["eval_s"], r["eval_cpu_s"]))
            for k, w, c in rows:
                print(f"  {k:<15} {w:8.1f} {c:8.1f} {_per_1k(w, n):>10} {_per_1k(c, n):>9}")
    if len(results) > 1:
        a, b = results[0], results[-1]

        def per_row(r: dict, key: str) -> float:
            return r[key] / r["n"]

        print(
            f"\n{a['n']:,} -> {b['n']:,} rows ({b['n'] / a['n']:.0f}x): peak anon "
            f"{b['peak_anon_mb'] / a['peak_anon_mb']:.2f}x (target <= 1.3), peak RSS "
            f"{b['peak_rss_mb'] / a['peak_rss_mb']:.2f}x (memory-mapped pages included)"
        )
        print("  time per row, largest N / smallest N (target <= 1.5):")
        for label, key in (("training", "train"), ("evaluators", "eval")):
            print(
                f"    {label:<11} wall {per_row(b, key + '_s') / per_row(a, key + '_s'):.2f}x, "
                f"cpu {per_row(b, key + '_cpu_s') / per_row(a, key + '_cpu_s'):.2f}x"
            )
        for k in a["wall"]:
            if k == "train":
                continue
            w = (b["wall"][k] / b["n"]) / (a["wall"][k] / a["n"])
            c = (b["cpu"][k] / b["n"]) / max(a["cpu"][k] / a["n"], 1e-12)
            print(f"      {k:<15} wall {w:.2f}x, cpu {c:.2f}x")
    for r in results:
        print(
            f"N={r['n']:,}: evaluators / training = wall {r['eval_s'] / r['train_s']:.2f}, "
            f"cpu {r['eval_cpu_s'] / r['train_cpu_s']:.2f} (target <= 1)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
