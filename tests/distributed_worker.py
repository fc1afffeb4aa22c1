"""Subprocess of tests/test_parallel.py: one process of a (possibly multi-process) run that
meta-trains a tiny ENF for a few steps with checkpoints and encodes the training split of an
HDF5 store into a latent store, reading only this process's rows of the images.

    python tests/distributed_worker.py DATA.h5 OUT_DIR [COORDINATOR NUM_PROCESSES PROCESS_ID]

Prints one JSON line: the process index, the process and device counts, and how many image
rows this process read for the encoding.
"""

import json
import sys
from pathlib import Path

from enflens import parallel


def main(argv: list[str]) -> None:
    data_path, out = Path(argv[0]), Path(argv[1])
    if len(argv) > 2:
        parallel.initialize(argv[2], int(argv[3]), int(argv[4]))
    import jax

    from enflens import data
    from enflens.checkpoint import tree_hash
    from enflens.fields import adapters
    from enflens.metalearn import encode, outer

    sys.path.insert(0, str(Path(__file__).parent))
    from parallel_worker import ENF, META

    cfg = outer.MetaConfig(**{**META.__dict__, "batch_size": 4, "num_steps": 2})
    adapter = adapters.enf_adapter(ENF, seed=0)
    train = data.load(data_path, "train")  # meta-training draws random rows: the whole split
    res = outer.meta_train(adapter, train.images, cfg, checkpoint_dir=out / "ckpt", progress=False)
    rows = data.SplitRows(data_path, "train")  # the encoding reads only this process's rows
    encode.encode_dataset(
        adapter, res.state.params, rows, rows.labels, out / "latents.h5", decoder_path="ckpt",
        decoder_hash=tree_hash(res.state.params), steps=1, pixels=64, batch_size=8,
        progress=False,
    )  # fmt: skip
    print(json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                      "devices": jax.device_count(), "rows_read": rows.rows_read}))  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
