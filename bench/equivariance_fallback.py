"""Issue 12: the quadrupole branch of the frame, and its pi ambiguity, in a trained model.

Loads a model saved by ``bench/equivariance.py --save DIR`` and measures end-to-end equivariance
(:func:`enflens.evaluate.equivariance.end_to_end_equivariance`, all pixels, index matching up to the
template's symmetries) on the first 64 validation images with the angles of that script, for two
starts that replace the dipole frame:

* the quadrupole branch for every image (``min_dipole=2.0``);
* the quadrupole axis with a random choice of its two directions per fit (the worst case of the
  pi ambiguity; harmless when the template is symmetric under a rotation by pi).

    python bench/equivariance_fallback.py --model /tmp/equiv_ckpt_rings --data /tmp/equiv_data.h5
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import jax.numpy as jnp
import numpy as np

from enflens import data
from enflens.evaluate.equivariance import end_to_end_equivariance
from enflens.fields import adapters, frame
from enflens.grid import rotate_images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default="/tmp/equiv_data.h5")
    ap.add_argument("--n", type=int, default=64)
    args = ap.parse_args()
    ad, params, _ = adapters.load_trained(args.model)
    val = data.load(args.data, "val").images[: args.n]
    angles = np.random.default_rng(12).uniform(0, 2 * np.pi, args.n)
    rng = np.random.default_rng(5)

    def quad_start(init, px, shape):
        z = ad.expand(init, px.shape[0])
        return frame.equivariant_start(z, px.reshape(px.shape[0], *shape, -1), min_dipole=2.0)

    def axis_start(init, px, shape):
        m = frame.masked_moments(px.reshape(px.shape[0], *shape, -1))
        axis = 0.5 * jnp.arctan2(m["quad_s"], m["quad_c"])
        flip = jnp.asarray(rng.integers(0, 2, px.shape[0]), jnp.float32) * jnp.pi
        return frame.rotate_latents(ad.expand(init, px.shape[0]), axis + flip)

    a0, modes = frame.image_frame(val, min_dipole=2.0)
    a1, _ = frame.image_frame(rotate_images(val, angles), min_dipole=2.0)
    d = np.degrees(np.abs((np.asarray(a1) - np.asarray(a0) - angles + np.pi) % (2 * np.pi) - np.pi))
    out = {
        "modes": np.bincount(np.asarray(modes), minlength=3).tolist(),
        "pi_flips_of_signed_axis": int((d > 90).sum()),
        "axis_error_deg_median": float(np.median(np.minimum(d, 180 - d))),
    }
    for name, start in (("quadrupole_branch", quad_start), ("axis_random_flips", axis_start)):
        r = end_to_end_equivariance(
            dataclasses.replace(ad, start=start), params, val, angles, steps=3, pixels=None
        )
        r.pop("per_image")
        out[name] = r
        print(name, r)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
