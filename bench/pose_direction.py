"""Issue 12: do inner-loop pose updates move latents towards the light they explain?

For a model saved by ``bench/equivariance.py --save DIR``, fits the first 64 validation images
(3 inner steps, 1024 stratified pixels per step, as the study encodes) and reports, over all
latents of all images:

* the mean image intensity at the latent positions before and after the inner steps (bilinear,
  raw and after a 2 px Gaussian blur) and the fraction of latents that end on brighter pixels;
* the cosine between each latent's displacement and the gradient of the blurred image at its
  starting position (1: straight uphill), median and fraction > 0.

    python bench/pose_direction.py --model /tmp/equiv_ckpt_rings --data /tmp/equiv_data.h5
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import scipy.ndimage as nd

from enflens import data
from enflens.fields import adapters
from enflens.metalearn import encode as encode_mod


def _sample(img: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Bilinear values of an (H, W) image at grid positions (N, 2) (enflens.grid convention)."""
    h, w = img.shape
    j = ((pos[:, 0] + 1) * w - 1) / 2
    i = ((pos[:, 1] + 1) * h - 1) / 2
    return nd.map_coordinates(img, [i, j], order=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default="/tmp/equiv_data.h5")
    ap.add_argument("--n", type=int, default=64)
    args = ap.parse_args()
    ad, params, _ = adapters.load_trained(args.model)
    val = np.asarray(data.load(args.data, "val").images[: args.n], np.float32)
    x = val if val.ndim == 3 else val[..., 0]
    path, _ = encode_mod.fit_path(ad, params, x, steps=3, pixels=1024)
    p0, p3 = path.positions[0], path.positions[-1]  # (n, N, 2)
    out = {"n_images": int(len(x)), "median_displacement_px": float(
        np.median(np.linalg.norm(p3 - p0, axis=-1)) / (2 / x.shape[2]))}  # fmt: skip
    for sigma in (0, 2):
        imgs = [nd.gaussian_filter(im, sigma) if sigma else im for im in x]
        a0 = np.array([_sample(im, p) for im, p in zip(imgs, p0, strict=True)])
        a3 = np.array([_sample(im, p) for im, p in zip(imgs, p3, strict=True)])
        out[f"blur{sigma}px"] = {
            "intensity_start": float(a0.mean()),
            "intensity_end": float(a3.mean()),
            "fraction_brighter": float(np.mean(a3 > a0)),
        }
    cos = []
    for im, a, b in zip(x, p0, p3, strict=True):
        gy, gx = np.gradient(nd.gaussian_filter(im, 2))
        g = np.stack([_sample(gx, a), _sample(gy, a)], -1)
        d = b - a
        cos.append(
            (g * d).sum(-1) / (np.linalg.norm(g, axis=-1) * np.linalg.norm(d, axis=-1) + 1e-12)
        )
    cos = np.concatenate(cos)
    out["cosine_to_gradient_median"] = float(np.median(cos))
    out["cosine_to_gradient_positive"] = float(np.mean(cos > 0))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
