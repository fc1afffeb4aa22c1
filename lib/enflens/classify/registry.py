"""The study's six classifiers: names, input kinds, configs, construction and augmentation.

===================  ===========  ====================================================
model                input kind   input
===================  ===========  ====================================================
``enf_mlp``          ``enf``      :class:`~enflens.geometry.Latents` (n, N, ...), ENF
``enf_ponita``       ``enf``      same
``enf_transformer``  ``enf``      same
``cnf_mlp``          ``cnf``      (n, d) global CNF latents
``resnet18``         ``image``    (n, 64, 64) images in [0, 1]
``c8_gcnn``          ``image``    same
===================  ===========  ====================================================

Augmentation per input kind (:data:`DEFAULT_AUGMENT`): latents get pose and context noise plus a
random global rotation about the image centre; CNF vectors Gaussian noise; images a random
continuous rotation.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from flax import nnx

from enflens.classify.image_models import CNN_CONFIGS, make_cnn
from enflens.classify.latent_models import (
    CLASSIFIER_CONFIGS,
    InvariantLatentModel,
    make_classifier,
)
from enflens.classify.train import (
    Augment,
    NoiseAugmentation,
    image_augmentation,
    latent_augmentation,
)
from enflens.config import check_keys, from_dict

#: The study's models, in the order of the tables.
MODEL_NAMES: tuple[str, ...] = (
    "enf_mlp",
    "enf_ponita",
    "enf_transformer",
    "cnf_mlp",
    "resnet18",
    "c8_gcnn",
)
_KINDS = {
    "enf_mlp": "enf",
    "enf_ponita": "enf",
    "enf_transformer": "enf",
    "cnf_mlp": "cnf",
    "resnet18": "image",
    "c8_gcnn": "image",
}


def input_kind(model_name: str) -> str:
    """The input kind of a model: "enf" (point clouds), "cnf" (latent vectors) or "image"."""
    if model_name not in _KINDS:
        raise ValueError(f"unknown model {model_name!r}; choose from {list(MODEL_NAMES)}")
    return _KINDS[model_name]


#: Default augmentation per input kind (overridden field by field by ``augment_cfg``).
DEFAULT_AUGMENT: dict[str, dict[str, Any]] = {
    # noise stds: positions in image units ([-1, 1]^2), orientations in radians, contexts as a
    # fraction of the std of the training contexts; random rotation about the image centre
    "enf": {
        "position_noise": 0.01,
        "orientation_noise": 0.05,
        "context_noise": 0.05,
        "random_transform": True,
        "max_translation": 0.0,
    },
    "cnf": {"noise": 0.05},  # Gaussian noise, fraction of the std of the training latents
    # uniform in [-max, max] (torchvision RandomRotation); Fourier rotation keeps pixel noise
    "image": {"max_angle_deg": 180.0, "rotation": "fourier"},
}


def augment_settings(kind: str, augment_cfg: dict[str, Any] | None) -> dict[str, Any]:
    """:data:`DEFAULT_AUGMENT` of an input kind with the fields of ``augment_cfg`` replaced."""
    extra = dict(augment_cfg or {})
    check_keys(extra, DEFAULT_AUGMENT[kind], f"augment_cfg for {kind} inputs")
    return {**DEFAULT_AUGMENT[kind], **extra}


def make_augmentation(kind: str, settings: dict[str, Any], x_train: Any) -> Augment:
    """The training augmentation of an input kind (see :data:`DEFAULT_AUGMENT`).

    Context / latent noise levels are relative to the std of the training inputs ``x_train``.
    """
    if kind == "enf":
        scale = float(np.std(np.asarray(x_train.contexts)))
        return latent_augmentation(
            position_noise=float(settings["position_noise"]),
            orientation_noise=float(settings["orientation_noise"]),
            context_noise=float(settings["context_noise"]) * scale,
            random_transform=bool(settings["random_transform"]),
            max_translation=float(settings["max_translation"]),
        )
    if kind == "cnf":
        return NoiseAugmentation(float(settings["noise"]) * float(np.std(np.asarray(x_train))))
    return image_augmentation(
        math.radians(float(settings["max_angle_deg"])), str(settings["rotation"])
    )


def build_model(name: str, x_train: Any, model_cfg: dict[str, Any], seed: int) -> nnx.Module:
    """Build classifier ``name`` for inputs shaped like ``x_train`` (the training inputs, or a
    batch of them), init seed. The invariant latent models store the per-channel context
    statistics of ``x_train`` (:meth:`~enflens.classify.latent_models.InvariantLatentModel.
    set_context_statistics`), so pass the whole training split."""
    rngs = nnx.Rngs(seed)
    x_example = x_train
    kind = input_kind(name)
    if kind == "image":
        return make_cnn(name, rngs=rngs, **model_cfg)
    if kind == "cnf":
        return make_classifier(
            name, context_dim=0, num_latents=0, cnf_dim=int(np.shape(x_example)[-1]), rngs=rngs,
            **model_cfg,
        )  # fmt: skip
    model = make_classifier(
        name, context_dim=x_example.context_dim, num_latents=x_example.num_latents, rngs=rngs,
        **model_cfg,
    )  # fmt: skip
    if isinstance(model, InvariantLatentModel):
        model.set_context_statistics(x_train.contexts)
    return model


def full_model_config(name: str, model_cfg: dict[str, Any]) -> dict[str, Any]:
    """The complete config of model ``name`` (defaults filled in) as a plain dict."""
    input_kind(name)
    cls = CLASSIFIER_CONFIGS.get(name) or CNN_CONFIGS[name]
    return dataclasses.asdict(from_dict(cls, model_cfg, f"model config of {name!r}"))
