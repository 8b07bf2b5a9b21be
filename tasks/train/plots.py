"""Evaluation plots of a binary classifier, rendered as PNG bytes for logging to MLflow as artifacts.

Every function is pure (arrays and plain dicts in, PNG bytes out) and draws on its own ``Figure`` with the Agg
canvas, never through pyplot's global state, so it is safe in Prefect task threads and leaks no figures.
matplotlib and scikit-learn are imported inside the functions to keep importing this module cheap.
Figures are 6 x 4.5 inches at 100 dpi (600 x 450 pixels); the fairness plot grows taller with more attributes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from numbers import Real
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

WIDTH = 6.0
HEIGHT = 4.5
DPI = 100
FAIRNESS_METRICS = ("selection_rate", "tpr", "fpr")
FAIRNESS_KEYS = (*FAIRNESS_METRICS, "auc", "count")
_METRIC_NAMES = {"selection_rate": "Selection rate", "tpr": "True positive rate", "fpr": "False positive rate"}
_COLOURS = {"selection_rate": "tab:blue", "tpr": "tab:green", "fpr": "tab:red"}

Floats = npt.NDArray[np.float64]


# --- validation ---------------------------------------------------------------------------------------------------


def _vector(values: npt.ArrayLike, name: str) -> Floats:
    """A non-empty one-dimensional array of finite floats, or a ValueError naming the problem."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from exc
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _labels(y_true: npt.ArrayLike) -> Floats:
    """Binary labels as floats 0.0/1.0."""
    y = _vector(y_true, "y_true")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("y_true must contain only 0 and 1")
    return y


def _scores(scores: npt.ArrayLike, rows: int, name: str) -> Floats:
    """Scores with one value per row of y_true."""
    p = _vector(scores, name)
    if len(p) != rows:
        raise ValueError(f"lengths differ: y_true has {rows} rows, {name} has {len(p)}")
    return p


def _two_classes(y: Floats, plot: str) -> None:
    """A ROC or PR curve needs both classes."""
    if y.min() == y.max():
        raise ValueError(f"y_true has a single class ({int(y[0])}); a {plot} needs both 0 and 1")


def _text(value: object) -> str:
    """User text for a label, with ``$`` escaped so matplotlib never reads it as mathtext."""
    return str(value).replace("$", r"\$")


# --- rendering ----------------------------------------------------------------------------------------------------


def _figure(height: float = HEIGHT) -> Figure:
    """A new figure on its own Agg canvas, outside pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _thin(*series: np.ndarray, points: int = 2_000) -> tuple[np.ndarray, ...]:
    """At most ``points`` points of a curve, evenly spaced along it, the first and last kept.

    A 600-pixel-wide figure shows no more; a large test window has a point per distinct score.
    """
    n = len(series[0])
    if n <= points:
        return series
    keep = np.unique(np.linspace(0, n - 1, points).round().astype(int))
    return tuple(values[keep] for values in series)


def _png(fig: Figure) -> bytes:
    """The figure, laid out tightly, as PNG bytes."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


# --- plots --------------------------------------------------------------------------------------------------------


def roc_curve_png(
    y_true: npt.ArrayLike, scores: npt.ArrayLike, label: str = "model", champion_scores: npt.ArrayLike | None = None
) -> bytes:
    """ROC curve with AUC in the legend and the chance diagonal; overlays the champion's curve when given."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y = _labels(y_true)
    curves = [(_text(label), _scores(scores, len(y), "scores"), "tab:blue", "-")]
    if champion_scores is not None:
        curves.append(("champion", _scores(champion_scores, len(y), "champion_scores"), "tab:orange", "--"))
    _two_classes(y, "ROC curve")

    fig = _figure()
    ax = fig.add_subplot()
    for name, p, colour, style in curves:
        fpr, tpr, _ = roc_curve(y, p)  # already without the points inside straight segments
        ax.plot(fpr, tpr, color=colour, linestyle=style, label=f"{name} (AUC = {roc_auc_score(y, p):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="Chance")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="False positive rate",
        ylabel="True positive rate",
        title=f"ROC curve ({len(y):,} rows)",
    )
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _png(fig)


def pr_curve_png(
    y_true: npt.ArrayLike, scores: npt.ArrayLike, champion_scores: npt.ArrayLike | None = None, label: str = "model"
) -> bytes:
    """Precision-recall curve with average precision in the legend and the base rate as a horizontal line."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y = _labels(y_true)
    curves = [(_text(label), _scores(scores, len(y), "scores"), "tab:blue", "-")]
    if champion_scores is not None:
        curves.append(("champion", _scores(champion_scores, len(y), "champion_scores"), "tab:orange", "--"))
    _two_classes(y, "precision-recall curve")

    fig = _figure()
    ax = fig.add_subplot()
    for name, p, colour, style in curves:
        precision, recall = _thin(*precision_recall_curve(y, p)[:2])
        ap = average_precision_score(y, p)
        ax.plot(
            recall, precision, color=colour, linestyle=style, drawstyle="steps-post", label=f"{name} (AP = {ap:.3f})"
        )
    base_rate = float(y.mean())
    ax.axhline(base_rate, color="grey", linestyle=":", label=f"Base rate = {base_rate:.3f}")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="Recall",
        ylabel="Precision",
        title=f"Precision-recall curve ({len(y):,} rows)",
    )
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    return _png(fig)


def calibration_png(y_true: npt.ArrayLike, scores: npt.ArrayLike, bins: int = 10) -> bytes:
    """Reliability diagram over quantile bins with the perfect-calibration diagonal and a histogram of scores."""
    from sklearn.calibration import calibration_curve

    y = _labels(y_true)
    p = _scores(scores, len(y), "scores")
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 2:
        raise ValueError(f"bins must be an integer of at least 2, got {bins!r}")
    if p.min() < 0 or p.max() > 1:
        raise ValueError("scores must be probabilities in [0, 1] for a calibration plot")
    observed, predicted = calibration_curve(y, p, n_bins=int(bins), strategy="quantile")

    fig = _figure()
    grid = fig.add_gridspec(2, 1, height_ratios=(3, 1))
    ax = fig.add_subplot(grid[0])
    hist = fig.add_subplot(grid[1], sharex=ax)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="Perfectly calibrated")
    ax.plot(predicted, observed, marker="o", color="tab:blue", label=f"Model ({len(predicted)} quantile bins)")
    ax.set(ylim=(0, 1), ylabel="Observed positive rate", title=f"Calibration ({len(y):,} rows)")
    ax.tick_params(labelbottom=False)
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    hist.hist(p, bins=20, range=(0, 1), color="tab:blue", alpha=0.6)
    hist.set(xlim=(0, 1), xlabel="Predicted probability (top: mean per bin)", ylabel="Rows")
    return _png(fig)


def _metric_value(value: object, attribute: str, group: str, key: str) -> float | None:
    """A metric as a float, or None when missing (None or NaN)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{attribute}/{group}: {key} must be a number or None, got {value!r}")
    number = float(value)
    if math.isnan(number):
        return None
    if key == "count":
        if number < 0 or math.isinf(number):
            raise ValueError(f"{attribute}/{group}: count must be a non-negative number, got {value!r}")
    elif not 0 <= number <= 1:
        raise ValueError(f"{attribute}/{group}: {key} must lie in [0, 1], got {value!r}")
    return number


def _fairness_table(
    by_group: Mapping[str, Mapping[str, Mapping[str, float | None]]],
) -> dict[str, dict[str, dict[str, float | None]]]:
    """The input checked and converted: attribute -> group -> metric -> float or None."""
    if not isinstance(by_group, Mapping) or not by_group:
        raise ValueError("by_group is empty: expected attribute -> group -> metrics")
    table: dict[str, dict[str, dict[str, float | None]]] = {}
    for attribute, groups in by_group.items():
        if not isinstance(groups, Mapping) or not groups:
            raise ValueError(f"attribute {attribute!r} has no groups")
        table[str(attribute)] = {}
        for group, values in groups.items():
            if not isinstance(values, Mapping):
                raise ValueError(f"{attribute}/{group}: metrics must be a dict, got {type(values).__name__}")
            unknown = sorted(str(k) for k in values if k not in FAIRNESS_KEYS)
            if unknown:
                raise ValueError(f"{attribute}/{group}: unknown metric keys {unknown}; expected {list(FAIRNESS_KEYS)}")
            table[str(attribute)][str(group)] = {
                key: _metric_value(values.get(key), str(attribute), str(group), key) for key in FAIRNESS_KEYS
            }
    return table


def _fairness_row(ax: Axes, attribute: str, groups: dict[str, dict[str, float | None]], min_group_rows: float) -> None:
    """Grouped bars of selection rate, TPR and FPR per group of one attribute; small groups hatched."""
    from matplotlib.patches import Patch

    width = 0.8 / len(FAIRNESS_METRICS)
    ticks: list[str] = []
    any_small = False
    drawn = False
    for i, (group, values) in enumerate(groups.items()):
        count = values["count"]
        small = count is not None and count < min_group_rows
        any_small = any_small or small
        tick = _text(group)
        if count is not None:
            tick += f"\nn={count:,.0f}" + (" (small)" if small else "")
        if values["auc"] is not None:
            tick += f"\nAUC {values['auc']:.2f}"
        ticks.append(tick)
        for j, metric in enumerate(FAIRNESS_METRICS):
            value = values[metric]
            if value is None:
                continue
            drawn = True
            ax.bar(
                i + (j - 1) * width,
                value,
                width,
                color=_COLOURS[metric],
                alpha=0.45 if small else 0.9,
                hatch="//" if small else None,
                edgecolor="black" if small else _COLOURS[metric],
            )
    ax.set_xticks(range(len(ticks)), ticks, fontsize=8)
    ax.set(
        xlim=(-0.5, len(ticks) - 0.5),
        ylim=(0, 1.4),
        yticks=np.linspace(0, 1, 6),
        ylabel="Rate",
        title=f"By {_text(attribute)}",
    )
    ax.grid(axis="y", alpha=0.3)
    handles = [Patch(color=_COLOURS[m], label=_METRIC_NAMES[m]) for m in FAIRNESS_METRICS]
    if any_small:
        handles.append(
            Patch(facecolor="white", edgecolor="black", hatch="//", label=f"small (< {min_group_rows:,.0f} rows)")
        )
    ax.legend(handles=handles, fontsize=7, loc="upper right", ncols=2)
    if not drawn:
        ax.text(0.5, 0.5, "no metric values", transform=ax.transAxes, ha="center", va="center", color="grey")


def fairness_png(by_group: Mapping[str, Mapping[str, Mapping[str, float | None]]], min_group_rows: float = 0) -> bytes:
    """Selection rate, TPR and FPR by group, one row per sensitive attribute; groups under min_group_rows hatched."""
    table = _fairness_table(by_group)
    if isinstance(min_group_rows, bool) or not isinstance(min_group_rows, Real) or not min_group_rows >= 0:
        raise ValueError(f"min_group_rows must be a non-negative number, got {min_group_rows!r}")

    fig = _figure(max(HEIGHT, 0.5 + 2.5 * len(table)))
    axes = fig.subplots(len(table), 1, squeeze=False)[:, 0]
    for ax, (attribute, groups) in zip(axes, table.items(), strict=True):
        _fairness_row(ax, attribute, groups, float(min_group_rows))
    return _png(fig)


def shap_importance_png(importance: Mapping[str, float], top: int = 15) -> bytes:
    """Horizontal bars of mean |SHAP| per feature, largest on top, at most ``top`` features."""
    if not isinstance(importance, Mapping) or not importance:
        raise ValueError("importance is empty: expected feature -> mean |SHAP value|")
    if isinstance(top, bool) or not isinstance(top, int | np.integer) or top < 1:
        raise ValueError(f"top must be a positive integer, got {top!r}")
    values = _vector(list(importance.values()), "importance values")
    if values.min() < 0:
        raise ValueError("importance values must be non-negative (mean absolute SHAP values)")
    names = [str(name) for name in importance]
    order = np.argsort(-values, kind="stable")[: int(top)]
    shown = [(_text(names[i][:40]), float(values[i])) for i in order][::-1]  # barh draws bottom-up

    fig = _figure()
    ax = fig.add_subplot()
    positions = np.arange(len(shown))  # numeric positions: names truncated alike still get their own bar
    ax.barh(positions, [value for _, value in shown], color="tab:blue")
    ax.set_yticks(positions, [name for name, _ in shown])
    title = "Feature importance"
    if len(shown) < len(names):
        title += f" (top {len(shown)} of {len(names)})"
    ax.set(xlabel="Mean |SHAP value|", title=title)
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def threshold_cost_png(thresholds: npt.ArrayLike, costs: npt.ArrayLike, chosen: float) -> bytes:
    """Expected cost per application against the decision threshold, with a vertical line at the chosen one."""
    t = _vector(thresholds, "thresholds")
    c = _vector(costs, "costs")
    if len(t) != len(c):
        raise ValueError(f"lengths differ: thresholds has {len(t)} values, costs has {len(c)}")
    if isinstance(chosen, bool) or not isinstance(chosen, Real) or not math.isfinite(float(chosen)):
        raise ValueError(f"chosen must be a finite number, got {chosen!r}")
    order = np.argsort(t, kind="stable")

    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(t[order], c[order], color="tab:blue", label="Expected cost")
    ax.axvline(float(chosen), color="tab:red", linestyle="--", label=f"Chosen threshold = {float(chosen):.3f}")
    ax.set(
        xlabel="Decision threshold (refuse when score >= threshold)",
        ylabel="Expected cost per application",
        title="Expected cost by decision threshold",
    )
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    return _png(fig)
