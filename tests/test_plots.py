"""Figures of notebooks 05/06 from hand-made records: one line per model, in the model's colour."""

import matplotlib

matplotlib.use("Agg")

from enflens.study import plots  # noqa: E402

CLASSES = ("no_sub", "cdm", "axion")


def _record(acc: float) -> dict:
    roc = {"fpr": [0.0, 0.5, 1.0], "tpr": [0.0, 0.8, 1.0]}
    return {
        "accuracy": acc, "confusion": [[2, 1, 0], [0, 3, 0], [1, 0, 2]],
        "roc": {c: roc for c in CLASSES}, "auc_per_class": {c: 0.7 for c in CLASSES},
        "history": {"step": [10, 20], "val_acc": [0.4, acc], "train_loss": [1.0, 0.8]},
    }  # fmt: skip


def test_figures_draw_one_line_per_model():
    models = {"enf_ponita": _record(0.6), "resnet18": _record(0.7)}
    fig = plots.training_curves(models)
    val_ax = fig.axes[0]
    lines = [ln for ln in val_ax.get_lines() if ln.get_label() in models]
    assert [ln.get_label() for ln in lines] == ["enf_ponita", "resnet18"]
    assert list(lines[1].get_ydata()) == [0.4, 0.7]
    assert lines[0].get_color() != lines[1].get_color()
    fig, axes = plots.roc_curves(models, extra_axis=True)
    assert len(axes) == 4 and len(axes[3].get_lines()) == 0
    curves = {"enf_ponita": {"accuracy": [0.6, 0.6], "latent_action_accuracy": [0.6, 0.6]},
              "resnet18": {"accuracy": [0.7, 0.4], "latent_action_accuracy": None}}  # fmt: skip
    plots.rotation_curves([0.0, 40.0], curves, ax=axes[3])
    # ponita: refit + latent action; resnet18: images only; plus the chance line
    assert len(axes[3].get_lines()) == 4
    assert len(plots.confusion_matrices(models).axes) == 2
    points = {"resnet18": [{"n_train": 9, "accuracy": 0.4}, {"n_train": 90, "accuracy": 0.6}]}
    (line, _chance) = plots.data_efficiency(points).axes[0].get_lines()
    assert list(line.get_xdata()) == [9, 90] and list(line.get_ydata()) == [40.0, 60.0]
