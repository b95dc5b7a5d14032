"""``report.html`` of a run directory, rebuilt from the directory alone (no backend).

It reads ``config.json``, ``metrics.json``, ``history.csv``, ``idata.nc`` and any
``ood-*.npz`` written by ``vdppl evaluate --dataset``; draws the plots of
:mod:`vdppl.diagnostics.plots` to PNG files beside them; and writes one self-contained
HTML page with the plots embedded (base64) and the settings and metrics as tables.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import numpy as np

from vdppl import runs
from vdppl.sparsity import LayerSparsity, SparsityReport

__all__ = ["build_report"]


def _figures(run: Path, config: dict, metrics: dict, history: list[dict]) -> list[tuple[str, Path]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vdppl.diagnostics import plots
    from vdppl.diagnostics.inference_data import keep_mask_out_in

    made: list[tuple[str, Path]] = []

    def save(title: str, name: str, figure) -> None:
        path = run / name
        figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(figure)
        made.append((title, path))

    def figure_of(result):
        return result if hasattr(result, "savefig") else np.ravel(result)[0].figure

    if history:
        curves = {
            "elbo": [-row["loss"] for row in history],
            "data": [row["data"] for row in history],
            "kl": [row["kl"] for row in history],
        }
        save(
            "Training: ELBO, data term and KL per example",
            "training.png",
            figure_of(plots.plot_training_curves(curves)),
        )
    layers = metrics.get("layers", [])
    if layers:
        report = SparsityReport(
            float(config.get("threshold", 3.0)),
            [
                LayerSparsity(
                    d["name"],
                    tuple(d["shape"]),
                    d["kept"],
                    d["total"],
                    d["dead_outputs"],
                    d["dead_inputs"],
                )
                for d in layers
            ],
        )
        save("Kept weights per layer", "sparsity.png", figure_of(plots.plot_sparsity(report)))
    idata_path = run / runs.IDATA
    if idata_path.is_file():
        import arviz as az

        idata = az.from_netcdf(idata_path)
        threshold = float(config.get("threshold", 3.0))
        if "log_alpha" in idata.groups():
            log_alpha = {name: idata.log_alpha[name].values for name in idata.log_alpha.data_vars}
            save(
                "log alpha per layer (pruned right of the line)",
                "log_alpha.png",
                figure_of(plots.plot_log_alpha(log_alpha, threshold=threshold)),
            )
            image_shape = metrics.get("image_shape")
            # the first layer's keep-mask as (out, in): its axes are found by name, so a
            # torch (out, in) weight and a Flax (in, out) kernel give the same image
            first = keep_mask_out_in(idata.log_alpha[next(iter(log_alpha))], threshold)
            if image_shape and first is not None and first.shape[1] == math.prod(image_shape):
                save(
                    "Input pixels still used by the first layer",
                    "mask.png",
                    figure_of(plots.plot_weight_mask(first, tuple(image_shape))),
                )
        if "logits" in idata.posterior_predictive:
            logits = idata.posterior_predictive["logits"].values[0]
            z = np.exp(logits - logits.max(-1, keepdims=True))
            probs = (z / z.sum(-1, keepdims=True)).mean(0)
            y = idata.observed_data["y"].values
            save(
                "Reliability diagram (posterior predictive)",
                "reliability.png",
                figure_of(plots.plot_reliability(probs, y)),
            )
        else:
            draws = idata.posterior_predictive.sizes["draw"]
            save(
                "Posterior predictive check",
                "ppc.png",
                figure_of(az.plot_ppc(idata, num_pp_samples=min(50, draws))),
            )
    for ood in sorted(run.glob("ood-*.npz")):
        data = np.load(ood)
        name = ood.stem.removeprefix("ood-")
        save(
            f"Predictive entropy: test set vs {name}",
            f"entropy-{name}.png",
            figure_of(
                plots.plot_entropy_histograms(
                    data["entropy_in"], data["entropy_out"], labels=(config["dataset"], name)
                )
            ),
        )
    return made


def _table(rows: dict) -> str:
    cells = []
    for key, value in rows.items():
        if isinstance(value, (dict, list)):
            continue
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        cells.append(f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(text)}</td></tr>")
    return "<table>" + "".join(cells) + "</table>"


def build_report(run: str | Path) -> Path:
    """Write ``run/report.html`` (and the PNG plots) from the run directory; return its path."""
    run = Path(run)
    config = runs.read_json(run / runs.CONFIG)
    metrics = runs.read_json(run / runs.METRICS) if (run / runs.METRICS).is_file() else {}
    history = runs.read_history(run / runs.HISTORY)
    figures = _figures(run, config, metrics, history)
    images = "".join(
        f"<figure><img alt='{html.escape(title)}' src='data:image/png;base64,"
        f"{base64.b64encode(path.read_bytes()).decode()}'><figcaption>{html.escape(title)}"
        "</figcaption></figure>"
        for title, path in figures
    )
    title = (
        f"vdppl run: {config.get('method')} on {config.get('dataset')} ({config.get('backend')})"
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
figure {{ display: inline-block; margin: 0.5em; vertical-align: top; }}
img {{ max-width: 520px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<h2>Metrics</h2>{_table(metrics)}
<h2>Plots</h2>{images}
<h2>Settings</h2>{_table(config)}
</body></html>
"""
    path = run / runs.REPORT
    runs.atomic_write(path, lambda tmp: Path(tmp).write_text(page))
    return path
