"""Variants of the invariant latent classifiers on a profile's ENF latent stores, scored on the
validation split only (the test split is never read).

Each variant is one ``enf_ponita`` / ``enf_transformer`` config trained by the library's own
trainer (:func:`enflens.classify.train.fit`, AdamW with warm-up + cosine over exactly its steps,
the default latent augmentation, ten validations) on the stores named in
``results/<profile>/03_meta_learning.json``. One JSON line per variant: steps, seconds, ms per
step (a timing: run one variant at a time on an idle machine to compare them), the best
validation accuracy and the validation curve. Use it to choose ``MODEL_CONFIGS`` and ``STEPS``
of notebook 05 before a committed run; run notebooks 01-03 of the profile first.

    .venv/bin/python bench/latent_classifiers.py [--profile cpu] \\
        [--variants default,slots,tiny_slots:3000] [--steps 1500] [--lr 1e-3] [--rotated-val 5] \\
        [--seeds 0,1,2]

``--seeds`` trains every variant once per seed (the classifier's initialisation, data order and
augmentation; the latents stay the stores'), one line each, to tell a difference between
variants from seed noise.

``--variants mlp`` runs the (not invariant) ``enf_mlp`` reference the same way.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

from enflens import data
from enflens.classify import registry, train
from enflens.config import from_dict
from enflens.evaluate import rotation
from enflens.study import stages
from enflens.study.classifiers import read_meta_learning
from enflens.study.pipeline import notebook_parameters, parameter_defaults
from enflens.study.results import repo_path

#: A small PONITA: one kernel basis of 8 from degree-2 invariants, two blocks of 32 channels.
TINY = {"hidden": 32, "basis_dim": 8, "degree": 2, "layers": 2, "expansion": 2, "pool_heads": 2}
#: name -> (model, config overrides)
VARIANTS = {
    "default": ("enf_ponita", {}),
    "slots": ("enf_ponita", {"slot_embedding": True}),
    "slots_readout": ("enf_ponita", {"slot_embedding": True, "pool": "slots"}),
    "tiny": ("enf_ponita", TINY),
    "tiny_slots": ("enf_ponita", {**TINY, "slot_embedding": True, "pool": "slots"}),
    # one message-passing block instead of two: about half the pair work per step
    "tiny_slots_1": ("enf_ponita", {**TINY, "layers": 1, "slot_embedding": True, "pool": "slots"}),
    # no message passing: the invariant node features (standardised contexts, radius, angle to
    # the radial direction) of each template slot, read in slot order. The control that says
    # how much the pair geometry adds over the per-latent invariants, at an MLP's cost per step
    "slot_nodes": ("enf_ponita", {**TINY, "hidden": 64, "layers": 0, "slot_embedding": True,
                                  "pool": "slots"}),
    "transformer": ("enf_transformer", {}),
    "transformer_slots": ("enf_transformer", {"slot_embedding": True, "pool": "slots"}),
}
#: Not invariant, run by the same trainer on the same stores: the reference that the invariant
#: variants are measured against (its ms per step sets equal-wall-time step counts on the
#: machine at hand; notebook 05 trains it for 73,000 steps at lr 1e-3)
REFERENCES = {"mlp": ("enf_mlp", {})}


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]; ValueError (naming the text) for anything but distinct
    non-negative integers."""
    items = [v for v in text.split(",") if v]
    if not items or not all(v.isascii() and v.isdigit() for v in items):
        raise ValueError(f"{text!r} must be comma-separated non-negative integers")
    seeds = [int(v) for v in items]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{text!r} repeats a seed")
    return seeds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="cpu")
    p.add_argument("--variants", default="default,slots,tiny_slots",
                   help=f"comma-separated, from {sorted(VARIANTS)}")  # fmt: skip
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rotated-val", type=int, default=0, metavar="A",
                   help="also score every variant on the validation images rotated by 0 and "
                        "A - 1 random continuous angles and re-encoded with the ENF decoder, "
                        "the refit notebook 05 runs on the test split (0: off)")  # fmt: skip
    p.add_argument("--seeds", default="0",
                   help="comma-separated classifier seeds; each variant trains once per seed")
    args = p.parse_args()
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as e:
        p.error(f"--seeds: {e}")
    if args.rotated_val < 0:
        p.error(f"--rotated-val: must be >= 0, got {args.rotated_val}")
    steps = {}  # a variant written NAME:STEPS runs STEPS steps instead of --steps
    for item in (v for v in args.variants.split(",") if v):
        label, colon, n = item.partition(":")
        if colon and not (n.isascii() and n.isdigit() and int(n) > 0):
            p.error(f"--variants: {item!r}: the steps after ':' must be a positive integer")
        if label in steps:
            p.error(f"--variants: {label!r} is given twice")
        steps[label] = int(n) if colon else args.steps
    names = list(steps)
    known = {**VARIANTS, **REFERENCES}
    unknown = sorted(set(names) - set(known))
    if unknown:
        p.error(f"--variants: unknown {unknown}; choose from {sorted(known)}")
    nb = "05_classifiers"  # the dataset settings notebook 05 runs with under this profile
    params = {**parameter_defaults(repo_path("notebooks", f"{nb}.py")),
              **notebook_parameters(args.profile, nb)}  # fmt: skip
    keys = ("RECIPE", "N_TRAIN", "N_VAL", "N_TEST", "DATA_SEED")
    recipe, n_train, n_val, n_test, data_seed = (params[k] for k in keys)
    dataset_file, _ = stages.dataset_path(recipe, n_train, n_val, n_test, data_seed)
    results03 = repo_path("results", args.profile, "03_meta_learning.json")
    if not results03.is_file():
        p.error(f"{results03} does not exist: run notebooks 01-03 of profile {args.profile!r}")
    inputs = stages.classifier_inputs(dataset_file, read_meta_learning(results03), ("enf",))
    refits, refit_info = None, {}
    if args.rotated_val:  # one refit of the rotated validation images, shared by the variants
        angles = rotation.rotation_angles(args.rotated_val, seed=0)
        t0 = time.perf_counter()
        refits, psnr = rotation.refit_rotated(
            inputs.decoders["enf"], data.load(dataset_file, "val").images, angles,
            **inputs.encodings.get("enf", {}),
        )  # fmt: skip
        refit_info = {"angles_deg": [round(float(a), 1) for a in angles],
                      "refit_psnr_db": [round(float(v), 2) for v in psnr.mean(1)],
                      "refit_seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    for label, seed in itertools.product(names, seeds):
        name, cfg = known[label]
        x_tr, y_tr = inputs.split(name, "train")
        model = registry.build_model(name, x_tr, cfg, seed)
        augment = registry.make_augmentation("enf", registry.augment_settings("enf", None), x_tr)
        tcfg = from_dict(train.TrainConfig, {
            "steps": steps[label], "eval_every": max(steps[label] // 10, 1),
            "batch_size": args.batch,
            "learning_rate": args.lr, "seed": seed, "progress": False,
        }, "train config")  # fmt: skip
        t0 = time.perf_counter()
        hist = train.fit(model, (x_tr, y_tr), inputs.split(name, "val"), tcfg, augment=augment)
        sec = time.perf_counter() - t0
        extra = {}
        if refits is not None:
            acc = rotation.refit_curve(model, refits, inputs.split(name, "val")[1])
            extra["rotated_val"] = {
                **refit_info, "accuracy": [round(a, 4) for a in acc],
                "mean_rotated": round(rotation.mean_rotated(refit_info["angles_deg"], acc), 4),
            }  # fmt: skip
        print(json.dumps({
            "variant": label, "model": name, "config": cfg, "seed": seed, "steps": steps[label],
            "lr": args.lr, "seconds": round(sec, 1),
            "ms_per_step": round(1000 * sec / steps[label], 1),
            "best_val_acc": round(hist["best_val_acc"], 4),
            "val_acc": [round(v, 3) for v in hist["val_acc"]], **extra,
        }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
