"""Issue 12 evidence: equivariant start, ring template, pose motion and end-to-end equivariance.

Meta-trains the cpu-profile ENF (hidden 64, k = 4, second order, 3 inner steps on 256
stratified pixels, batch 8, Adam 1e-2; ``profiles/cpu.yaml``, 03_meta_learning) for a fixed
number of outer steps on a Model II dataset, with the start chosen by the flags (default: ring
template 12 + 12 latents of context 33, rotated into each image's frame), then prints

* validation PSNR after 0..3 inner steps (1024 stratified pixels per step, as the study encodes)
  against the noisy images and against the noise-free renders;
* latent motion: median pose displacement over the inner steps, PSNR with poses frozen vs
  adapted (:func:`enflens.evaluate.equivariance.latent_motion`);
* end-to-end equivariance on ``--n-equiv`` validation images with random continuous angles, for
  the adapter's start and for the fixed (unrotated) start as the control
  (:func:`enflens.evaluate.equivariance.end_to_end_equivariance`);

and one JSON line last. Make the dataset first::

    python -m enflens.data generate --recipe model_ii --n-per-class 1000 --n-val 100 \\
        --n-test 100 --seed 0 --workers 2 --out /tmp/equiv_data.h5
    python bench/equivariance.py --data /tmp/equiv_data.h5 --steps 1100
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from enflens import data
from enflens.data import renders
from enflens.evaluate.equivariance import end_to_end_equivariance, latent_motion
from enflens.fields import adapters
from enflens.fields.enf import ENFConfig
from enflens.metalearn import encode as encode_mod
from enflens.metalearn import outer

META = dict(
    inner_steps=3, inner_pixels=256, outer_pixels=512, batch_size=8, outer_lr=0.01, lr_lr=0.01,
    warmup_steps=50, first_order=False, checkpoint_every=0, eval_every=0,
)  # fmt: skip


def build(args) -> adapters.FieldAdapter:
    if args.template == "rings":
        counts = tuple(args.ring_counts)
        cfg = ENFConfig(
            num_latents=sum(counts), latent_dim=args.latent_dim, hidden=64, num_heads=2,
            k_nearest=4, num_rff=32, template="rings", ring_counts=counts,
            ring_radii=tuple(args.ring_radii),
        )  # fmt: skip
    else:
        cfg = ENFConfig(num_latents=25, latent_dim=32, hidden=64, num_heads=2, k_nearest=4)
    bounds = {}
    if args.pos_bounds:
        bounds["positions"] = tuple(args.pos_bounds)
    if args.ori_bounds:
        bounds["orientations"] = tuple(args.ori_bounds)
    return adapters.enf_adapter(
        cfg, lr_positions=args.lr_positions, lr_orientations=args.lr_orientations,
        lr_contexts=150.0, equivariant_start=args.equivariant_start, lr_bounds=bounds or None,
        fit_radius=args.fit_radius,
        max_pose_step=None if args.max_pose_step is None else tuple(args.max_pose_step),
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="/tmp/equiv_data.h5")
    ap.add_argument("--steps", type=int, default=1100, help="outer steps")
    ap.add_argument("--template", choices=["rings", "grid"], default="rings")
    ap.add_argument("--ring-counts", type=int, nargs="+", default=[12, 12])
    ap.add_argument("--ring-radii", type=float, nargs="+", default=[0.32, 0.48])
    ap.add_argument("--latent-dim", type=int, default=33)
    ap.add_argument("--no-equivariant-start", dest="equivariant_start", action="store_false")
    ap.add_argument("--lr-positions", type=float, default=1.0)
    ap.add_argument("--lr-orientations", type=float, default=1.0)
    ap.add_argument("--pos-bounds", type=float, nargs=2, default=None)
    ap.add_argument("--ori-bounds", type=float, nargs=2, default=None)
    ap.add_argument("--fit-radius", type=float, default=None, help="inner loss on this disk")
    ap.add_argument("--max-pose-step", type=float, nargs=2, default=None,
                    help="per-step bound: position (grid units), orientation (rad)")  # fmt: skip
    ap.add_argument("--n-val", type=int, default=300, help="images for PSNR and motion")
    ap.add_argument("--n-equiv", type=int, default=64)
    ap.add_argument("--save", default=None, help="save the trained model here")
    args = ap.parse_args()

    train = data.load(args.data, "train").images
    val = data.load(args.data, "val").images[: args.n_val]
    adapter = build(args)
    cfg = outer.MetaConfig(num_steps=args.steps, **META)
    floats = adapters.latent_floats(adapter)
    print(f"{len(train)} train / {len(val)} val images; {floats} latent floats")
    print("model_config:", json.dumps(adapter.model_config))
    t0 = time.perf_counter()
    result = outer.meta_train(adapter, train, cfg, progress=False, log_every=100)
    train_s = time.perf_counter() - t0
    params = result.state.params
    rates = {k: np.asarray(v).mean().item() for k, v in vars(adapter.inner_rates(params)).items()}
    print(f"meta-trained {args.steps} outer steps in {train_s:.0f} s; inner rates {rates}")
    for h in result.history:
        print("  ", h)
    if args.save:
        adapters.save_trained(args.save, adapter, params, tuple(train.shape[1:]))

    t0 = time.perf_counter()
    clean = renders.noise_free_images(args.data, "val", np.arange(len(val)))
    fit = dict(steps=3, pixels=1024, sampling="stratified", batch_size=64, seed=0)
    scores = encode_mod.psnr_path(adapter, params, val, {"clean": clean}, **fit)
    psnr = {k: v.mean(1).round(3).tolist() for k, v in scores.items()}
    print("val PSNR after 0..3 inner steps (1024 px/step): noisy", psnr["fitted"],
          "noise-free", psnr["clean"])  # fmt: skip
    motion = latent_motion(adapter, params, val, targets=None, **fit)
    motion_clean = latent_motion(adapter, params, val, targets=clean, **fit)
    print("latent motion:", motion, "| vs noise-free:", motion_clean)
    angles = np.random.default_rng(12).uniform(0, 2 * np.pi, args.n_equiv)
    eq_imgs = val[: args.n_equiv]
    ends = {}
    for name, start, matching, pixels in (
        ("equivariant", "adapter", "index", None),
        ("equivariant_nearest", "adapter", "nearest", None),
        ("equivariant_1024px", "adapter", "index", 1024),
        ("control", "fixed", "nearest", None),
    ):
        r = end_to_end_equivariance(
            adapter, params, eq_imgs, angles, steps=3, pixels=pixels, start=start,
            matching=matching, batch_size=64,
        )  # fmt: skip
        r.pop("per_image")
        ends[name] = r
        print(f"end-to-end ({name}):", r)
    eval_s = time.perf_counter() - t0
    out = {
        "outer_steps": args.steps,
        "train_seconds": round(train_s, 1),
        "eval_seconds": round(eval_s, 1),
        "n_train": int(len(train)),
        "n_val": int(len(val)),
        "latent_floats": adapters.latent_floats(adapter),
        "model_config": adapter.model_config,
        "inner_rates": rates,
        "psnr_noisy_db": psnr["fitted"],
        "psnr_noise_free_db": psnr["clean"],
        "latent_motion": motion,
        "latent_motion_vs_noise_free": motion_clean,
        "end_to_end": ends,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
