"""Speed-vs-quality scatter plots of bench records, as base64 PNGs for the HTML report."""

from __future__ import annotations

import base64
import io
import math

from .records import _num, not_run


def plot_points(records: list[dict], metric: str) -> dict[str, dict]:
    """Per label, the ``finite`` points ``(speed-up, value)`` of ``metric`` and the speed-ups of the ``identical``
    outputs (value ∞), which are drawn apart as a labelled marker."""
    groups: dict[str, dict] = {}
    for r in sorted(records, key=lambda r: r["_label"]):
        y, x = _num((r.get("fidelity") or {}).get(metric)), _num(r.get("speedup"))
        g = groups.setdefault(r["_label"], {"finite": [], "identical": []})
        if y is None or x is None:
            continue
        if math.isinf(y):
            g["identical"].append(x)
        else:
            g["finite"].append((x, y))
    return groups


def scatter_plots(records: list[dict]) -> list[tuple[str, str]]:
    """Speed-up vs PSNR and vs SSIM, one point per record with a speed-up (records whose method ran on 0 % of calls
    are left out), as ``(title, base64 PNG)``. Outputs identical to the reference (PSNR ∞) are drawn as a labelled
    star on a line above the finite points, never as an ordinary value."""
    points = [r for r in records if _num(r.get("speedup")) is not None and r.get("fidelity") and not not_run(r)]
    if not points:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = []
    for metric, label in (("psnr", "PSNR vs reference (dB)"), ("ssim", "SSIM vs reference")):
        fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=100)
        groups = plot_points(points, metric)
        finite = [y for g in groups.values() for _, y in g["finite"]]
        top = (max(finite) if finite else 1.0) * 1.08 + (0.0 if finite else 1.0)
        identical = False
        for name, g in groups.items():
            colour = None
            if g["finite"]:
                xs, ys = zip(*g["finite"])
                colour = ax.scatter(xs, ys, label=name, alpha=0.8).get_facecolor()
            if g["identical"]:
                identical = True
                kwargs = {"color": colour[0]} if colour is not None and len(colour) else {}
                ax.scatter(g["identical"], [top] * len(g["identical"]), marker="*", s=120,
                           label=None if g["finite"] else name, **kwargs)
        if identical:
            ax.axhline(top, color="grey", lw=0.6, ls=":")
            ax.annotate("identical to the reference (∞)" if metric == "psnr" else "identical to the reference",
                        (0.01, top), xycoords=("axes fraction", "data"), fontsize=7, va="bottom", color="grey")
        ax.axvline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("speed-up vs the reference (same seed, interleaved)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        plots.append((f"Speed-up vs {metric.upper()}", base64.b64encode(buf.getvalue()).decode()))
    return plots
