"""Speed-vs-quality scatter plots of bench records, as base64 PNGs for the HTML report."""

from __future__ import annotations

import base64
import io
import math

from .records import _num, not_run


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
        labels = sorted({r["_label"] for r in points})
        finite = [v for r in points if (v := _num(r["fidelity"].get(metric))) is not None and math.isfinite(v)]
        top = (max(finite) if finite else 1.0) * 1.08 + (0.0 if finite else 1.0)
        identical = False
        for name in labels:
            xs, ys, xi = [], [], []
            for r in points:
                if r["_label"] != name or (y := _num(r["fidelity"].get(metric))) is None:
                    continue
                (xi if math.isinf(y) else xs).append(_num(r["speedup"]))
                if not math.isinf(y):
                    ys.append(y)
            colour = ax.scatter(xs, ys, label=name, alpha=0.8).get_facecolor() if xs else None
            if xi:
                identical = True
                kwargs = {"color": colour[0]} if colour is not None and len(colour) else {}
                ax.scatter(xi, [top] * len(xi), marker="*", s=120, label=None if xs else name, **kwargs)
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
