"""Write an eval report: `report.json`, a self-contained `report.html` (plots and image grids
embedded as base64 PNG) and a plain-text headline table for the terminal."""

from __future__ import annotations

import base64
import datetime
import html
import io
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from t2i.checkpoint import atomic_write_json
from t2i.imaging import captioned_grid, tensor_to_pil

# ----------------------------------------------------------------------------- images


def report_header(pipe, data, cfg) -> dict:
    """What every report starts with: the model, data, device, time and eval settings."""
    return {
        "model": str(getattr(pipe, "model_dir", None) or getattr(pipe, "model_id", "")),
        "model_id": str(getattr(pipe, "model_id", "t2i")),
        "data": str(data),
        "device": str(getattr(pipe, "device", "cpu")),
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "settings": {**asdict(cfg), "image_size": int(pipe.image_size)},
    }


def prompt_grid(images: torch.Tensor, prompts: list[str], per_prompt: int, notes: list[str] | None = None,
                scale: int = 2) -> Image.Image:
    """One row per prompt: its `per_prompt` images (prompt-major order), the prompt under the
    row, and under each image an optional note (e.g. the attributes the judge found wrong: red,
    or "ok" in green)."""
    pil = tensor_to_pil(images)
    if len(pil) != len(prompts) * per_prompt:
        raise ValueError(f"{len(pil)} images for {len(prompts)} prompts x {per_prompt}")
    notes = notes or [""] * len(pil)
    colours = [(0, 110, 0) if n.startswith("ok") else (170, 0, 0) for n in notes]
    return captioned_grid(pil, notes, cols=per_prompt, scale=scale, row_captions=prompts, colours=colours,
                          max_lines=3)


def png_base64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ----------------------------------------------------------------------------- plots


def _figure_png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _nums(values) -> list[float]:
    """None (undefined) -> NaN, so matplotlib leaves a gap."""
    return [float("nan") if v is None else float(v) for v in values]


def sweep_plots(report: dict) -> dict[str, str]:
    """Base64 PNGs: faithfulness vs steps, FD vs steps, faithfulness vs guidance, per sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = report.get("sweep") or []
    base = report["settings"]
    out: dict[str, str] = {}
    by_sampler: dict[str, list[dict]] = {}
    for r in sweep:
        if r["guidance"] == base["guidance"]:
            by_sampler.setdefault(r["sampler"], []).append(r)
    steps_rows = {s: sorted(rs, key=lambda r: r["steps"]) for s, rs in by_sampler.items() if len(rs) >= 2}
    if steps_rows:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for s, rs in steps_rows.items():
            x = [r["steps"] for r in rs]
            axes[0].plot(x, _nums(r["macro_balanced"] for r in rs), "o-", label=f"{s} balanced")
            axes[0].plot(x, _nums(r["all_correct_rate"] for r in rs), "s--", label=f"{s} all-correct")
            axes[1].plot(x, _nums(r["fd"] for r in rs), "o-", label=s)
        ceiling = report["faithfulness"]["ceiling_real"]
        if ceiling["macro_balanced"] is not None:
            axes[0].axhline(ceiling["macro_balanced"], color="g", lw=0.8, ls=":", label="real images (ceiling)")
        axes[0].axhline(0.5, color="r", lw=0.8, ls=":", label="chance")
        floor = [r["fd_real_vs_real"] for r in sweep if r.get("fd_real_vs_real") is not None]
        if floor:
            axes[1].axhline(floor[0], color="g", lw=0.8, ls=":", label="real vs real (same n)")
        ticks = sorted({r["steps"] for rs in steps_rows.values() for r in rs})
        for ax, title in zip(axes, ("faithfulness vs steps", "FD (judge features) vs steps")):
            ax.set_xscale("log")
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.minorticks_off()
            ax.set_xlabel("sampling steps")
            ax.set_title(title)
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
        out["steps"] = _figure_png(fig)
    g_rows = sorted([r for r in sweep if r["steps"] == base["steps"] and r["sampler"] == base["sampler"]],
                    key=lambda r: r["guidance"])
    if len(g_rows) >= 2:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        x = [r["guidance"] for r in g_rows]
        ax.plot(x, _nums(r["macro_balanced"] for r in g_rows), "o-", label="balanced faithfulness")
        ax.plot(x, _nums(r["all_correct_rate"] for r in g_rows), "s--", label="all-correct rate")
        ax2 = ax.twinx()
        ax2.plot(x, _nums(r["fd"] for r in g_rows), "^:", color="gray", label="FD")
        ax2.ticklabel_format(axis="y", useOffset=False)
        ax2.set_ylabel("FD (gray)")
        ax.set_xlabel("guidance scale")
        ax.set_title(f"vs guidance ({base['sampler']}, {base['steps']} steps)")
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(alpha=0.3)
        out["guidance"] = _figure_png(fig)
    return out


def attribute_plot(report: dict) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = report["faithfulness"]
    names = list(f["test"]["per_attribute"])
    if not names:
        return None
    series = [("generated (test prompts)", f["test"]), ("generated (held-out)", f.get("heldout")),
              ("real images (ceiling)", f["ceiling_real"]), ("real images through the VAE", f.get("ceiling_vae")),
              ("shuffled captions (floor)", f["floor_shuffled"])]
    series = [(label, s) for label, s in series if s and s.get("images")]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names)), 3.8))
    width = 0.8 / len(series)
    x = np.arange(len(names))
    for k, (label, s) in enumerate(series):
        vals = [s["per_attribute"][n]["balanced"] for n in names]
        ax.bar(x + k * width, [np.nan if v is None else v for v in vals], width, label=label)
    ax.axhline(0.5, color="r", lw=0.8, ls=":")
    ax.set_xticks(x + width * (len(series) - 1) / 2, names, rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("balanced accuracy")
    ax.set_title("per-attribute faithfulness (balanced accuracy)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _figure_png(fig)


# ----------------------------------------------------------------------------- text


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if x != 0 and abs(x) < 10 ** -digits:  # tiny values (an untrained judge's FD) keep their digits
            return f"{x:.2g}"
        return f"{x:.{digits}f}"
    return str(x)


def fmt_ci(x, interval, digits: int = 3) -> str:
    """A figure with its 95% interval: "0.966 [0.951, 0.978]"."""
    if x is None or not interval:
        return fmt(x, digits)
    return f"{fmt(x, digits)} [{fmt(interval[0], digits)}, {fmt(interval[1], digits)}]"


def _ci(figures: dict | None, key: str) -> str:
    figures = figures or {}
    return fmt_ci(figures.get(key), (figures.get("intervals") or {}).get(key))


def eval_headline(report: dict) -> dict:
    """The few numbers worth a line: faithfulness (with the real-image ceiling), R-precision,
    FD, CLIP score. A caption-only report (no attribute labels) has no faithfulness entries,
    and its FD is on CLIP features (`fd_clip`, not `fd_judge`)."""
    f = report.get("faithfulness")
    rprec = report.get("r_precision") or {}
    headline = {"sampler": report["settings"]["sampler"], "steps": report["settings"]["steps"],
                "guidance": report["settings"]["guidance"]}
    if f:
        headline.update({
            "faithfulness_balanced": f["test"]["macro_balanced"], "all_correct": f["test"]["all_correct_rate"],
            "heldout_balanced": (f["heldout"] or {}).get("macro_balanced"),
            "heldout_all_correct": (f["heldout"] or {}).get("all_correct_rate"),
            "real_ceiling_balanced": f["ceiling_real"]["macro_balanced"],
            "real_ceiling_all_correct": f["ceiling_real"]["all_correct_rate"],
            "shuffled_floor_balanced": f["floor_shuffled"]["macro_balanced"],
        })
    headline.update({
        "r_precision": (rprec.get("generated") or {}).get("r_precision"),
        "r_precision_real": (rprec.get("real") or {}).get("r_precision"),
        "r_precision_chance": rprec.get("chance"),
        "fd_judge" if f else "fd_clip": report["fd"]["generated"],
        "fd_vae_floor": report["fd"]["vae_reconstruction"],
        "clip_score": (report["clip_score"] or {}).get("generated"),
        "seconds_per_image": report["timing"]["seconds_per_image"],
    })
    return headline


def _r_precision_row(report: dict) -> tuple[str, str, str, str] | None:
    rp = report.get("r_precision")
    if not rp:
        return None
    gen = (rp.get("generated") or {}).get("r_precision")
    return (f"R-precision (project CLIP, own prompt among {rp['real']['distractors'] + 1}; chance {fmt(rp['chance'])})",
            fmt(gen), fmt(rp["real"]["r_precision"]), f"shuffled captions {fmt(rp['real_shuffled']['r_precision'])}")


def caption_headline_rows(report: dict) -> list[tuple[str, str, str, str]]:
    """Headline rows of a caption-only report (no attribute labels, no judge)."""
    fd, clip, div = report["fd"], report.get("clip_score") or {}, report["diversity"]
    rows = [
        _r_precision_row(report),
        ("CLIP score (project CLIP)", fmt(clip.get("generated"), 2), fmt(clip.get("real"), 2),
         f"shuffled captions {fmt(clip.get('real_shuffled'), 2)}"),
        ("FD, project CLIP features (not Inception FID)", fmt(fd["generated"], 2),
         f"real/real {fmt(fd['real_vs_real'], 2)}; VAE {fmt(fd['vae_reconstruction'], 2)}",
         f"phrase-shuffled prompts {fmt(fd.get('phrase_shuffled_prompts'), 2)}"),
        ("diversity (mean pairwise CLIP feature dist.)", fmt(div.get("generated")),
         f"distinct real images {fmt(div.get('real_distinct_images'))}", ""),
        ("seconds per image", fmt(report["timing"]["seconds_per_image"], 4), "", ""),
    ]
    return [r for r in rows if r is not None]


def headline_rows(report: dict) -> list[tuple[str, str, str, str]]:
    if not report.get("faithfulness"):
        return caption_headline_rows(report)
    f, fd, clip, div = report["faithfulness"], report["fd"], report.get("clip_score") or {}, report["diversity"]
    held = f.get("heldout") or {}
    vae = f.get("ceiling_vae") or {}

    def ceiling(key: str) -> str:
        text = fmt(f["ceiling_real"][key])
        return f"{text} (VAE {fmt(vae[key])})" if vae else text

    rows = [
        ("attribute faithfulness (balanced, chance 0.5)", _ci(f["test"], "macro_balanced"),
         ceiling("macro_balanced"), fmt(f["floor_shuffled"]["macro_balanced"])),
        ("all-attributes-correct rate", _ci(f["test"], "all_correct_rate"),
         ceiling("all_correct_rate"), fmt(f["floor_shuffled"]["all_correct_rate"])),
        ("held-out combinations: balanced / all-correct",
         f"{_ci(held, 'macro_balanced')} / {_ci(held, 'all_correct_rate')}", "", ""),
        ("explicit negations obeyed", _ci(f["test"], "negations_obeyed"), "", ""),
        _r_precision_row(report),
        ("FD, judge features (not Inception FID)", fmt(fd["generated"], 2),
         f"real/real {fmt(fd['real_vs_real'], 2)}; VAE {fmt(fd['vae_reconstruction'], 2)}",
         f"shuffled prompts {fmt(fd.get('column_shuffled_prompts'), 2)}"),
        ("CLIP score (project CLIP)", fmt(clip.get("generated"), 2), fmt(clip.get("real"), 2),
         fmt(clip.get("real_shuffled"), 2)),
        ("diversity (mean pairwise feature dist.)", fmt(div.get("generated")),
         fmt(div.get("real_same_attributes")), ""),
        ("seconds per image", fmt(report["timing"]["seconds_per_image"], 4), "", ""),
    ]
    return [r for r in rows if r is not None]


def headline_table(report: dict) -> str:
    rows = [("metric", "generated", "real (ceiling/ref)", "floor / control")] + headline_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    s = report["settings"]
    title = (f"t2i eval: {report['model_id']} | {s['sampler']}, {s['steps']} steps, guidance {s['guidance']} | "
             f"{report['suite']['info']['test_prompts']} test + {report['suite']['info']['heldout_prompts']} "
             f"held-out prompts x {s['n_per_prompt']} images | ")
    if report.get("faithfulness"):
        title += f"judge test accuracy {fmt(report['judge'].get('test_mean_balanced_accuracy'))}"
    else:
        title += "no attribute labels: measured with the model's own CLIP"
    return title + "\n" + "\n".join(lines)


# The composed forms (`t2i.eval.run.COMPOSED_FORMS`) as the report titles them.
COMPOSED_TITLES = (("terms", "a term per attribute"), ("denials", "description AND NOT denial"))


def _composed_forms(report: dict) -> list[tuple[str, dict]]:
    """(title, form) for each composed form the report holds, in COMPOSED_TITLES order."""
    c = report.get("composed") or {}
    return [(title, c[key]) for key, title in COMPOSED_TITLES if c.get(key)]


def composed_header(report: dict) -> tuple[str, ...]:
    return ("prompts", "metric", "plain prompt", *(f"composed: {t}" for t, _ in _composed_forms(report)))


def composed_rows(report: dict) -> list[tuple[str, ...]]:
    """(prompts, metric, plain prompt, then each composed form) rows of the plain-vs-composed
    comparison."""
    forms = [f for _, f in _composed_forms(report)]
    rows = []
    for group, title in (("heldout", "held-out combinations"), ("negations", "prompts with a denial")):
        pairs = [f.get(group) for f in forms]
        if not pairs or not all(pairs):
            continue
        plain = pairs[0]["plain"]
        rows.append((title, "balanced", _ci(plain, "macro_balanced"),
                     *(_ci(q["composed"], "macro_balanced") for q in pairs)))
        rows.append((title, "all-correct", _ci(plain, "all_correct_rate"),
                     *(_ci(q["composed"], "all_correct_rate") for q in pairs)))
        if plain.get("negations"):
            rows.append((title, f"denials obeyed ({plain['negations']})", _ci(plain, "negations_obeyed"),
                         *(_ci(q["composed"], "negations_obeyed") for q in pairs)))
    if rows:
        rows.append(("", "seconds per image", fmt(report["timing"]["seconds_per_image"], 4),
                     *(fmt(f.get("seconds_per_image"), 4) for f in forms)))
    return rows


def composed_table(report: dict) -> str:
    """The same requests as one plain prompt and composed (`a AND b AND NOT c`)."""
    rows = composed_rows(report)
    if not rows:
        return ""
    rows = [composed_header(report)] + rows
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


WORDINGS = (("vocabulary", "everyday words"), ("phrasing", "new sentence shapes"))


def wording_rows(report: dict) -> list[tuple[str, str, str, str, str]]:
    """(suite, metric, canonical wording, other wording, gap [95% interval]) rows."""
    w = report.get("wording") or {}
    rows = []
    for key, title in WORDINGS:
        suite = w.get(key)
        if not suite:
            continue
        for metric, label in (("macro_balanced", "balanced"), ("all_correct_rate", "all-correct")):
            gap = suite["gap"].get(metric) or {}
            rows.append((f"{key} ({title})", label, fmt(suite["canonical"][metric]), fmt(suite["variant"][metric]),
                         fmt_ci(gap.get("gap"), gap.get("interval"))))
    return rows


def wording_table(report: dict) -> str:
    """The same requests in the canonical caption wording and in the words/shapes people use."""
    rows = [("suite", "metric", "canonical wording", "other wording", "gap [95% interval]")] + wording_rows(report)
    if len(rows) == 1:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


SWEEP_HEADER = ("sampler", "steps", "guidance", "balanced", "all-correct", "default - this: balanced",
                "default - this: all-correct", "FD", "s/image")


def sweep_rows(report: dict) -> list[tuple[str, ...]]:
    """One row per sweep setting: its figures with 95% intervals, and the paired gap of the
    default setting over it (blank on the default's own row)."""
    out = []
    for r in report.get("sweep") or []:
        gap = r.get("gap_to_default") or {}
        gaps = [fmt_ci((gap.get(k) or {}).get("gap"), (gap.get(k) or {}).get("interval")) if gap else ""
                for k in ("macro_balanced", "all_correct_rate")]
        out.append((r["sampler"], str(r["steps"]), fmt(r["guidance"], 1), _ci(r, "macro_balanced"),
                    _ci(r, "all_correct_rate"), *gaps, fmt(r["fd"], 2), fmt(r["seconds_per_image"], 4)))
    return out


def sweep_table(report: dict) -> str:
    rows = sweep_rows(report)
    if not rows:
        return ""
    rows = [SWEEP_HEADER] + rows
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


# ----------------------------------------------------------------------------- html

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}.note{color:#555;font-size:13px}img{max-width:100%}h2{margin-top:1.6em}"""


def _table(rows: list[tuple], header: tuple) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>")
    return "".join(out) + "</table>"


def render_html(report: dict, grids: dict[str, Image.Image], plots: dict[str, str]) -> str:
    s, f = report["settings"], report["faithfulness"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>t2i eval: {html.escape(report['model_id'])}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>t2i eval: {html.escape(report['model_id'])}</h1>",
             f"<p class='note'>model <code>{html.escape(report['model'])}</code>, data <code>{html.escape(report['data'])}</code>, "
             f"sampler {html.escape(s['sampler'])}, {s['steps']} steps, guidance {s['guidance']}, seed {s['seed']}, "
             f"device {html.escape(report['device'])}, {html.escape(report['created'])}.</p>",
             "<h2>Headline</h2>",
             _table(headline_rows(report), ("metric", "generated", "real (ceiling/ref)", "floor / control"))]
    if f:
        parts.append(
            "<p class='note'>Measured with the project's attribute judge and CLIP. Faithfulness: per attribute, the "
            "mean of the judge's hit rate where the prompt asks for the attribute and its rejection rate where it does "
            "not; a model that ignores the text scores 0.5. The ceiling is the judge on real test images against their "
            "own attributes, the floor the same images against shuffled captions. Brackets hold 95% bootstrap "
            "intervals over prompts. FD uses the project's own judge "
            "features, so it is <b>not comparable to Inception FID</b>; compare it with the real-vs-real value at the "
            "same sample size.</p>")
    else:
        parts.append(
            "<p class='note'>The data has no attribute labels, so there is no judge: every number here is measured "
            "with <b>the model's own CLIP</b> (trained on this data), and is only as good as that CLIP can see; the "
            "real-image column says how much that is.</p>")
    if report.get("r_precision"):
        rp = report["r_precision"]
        parts.append(
            f"<p class='note'>R-precision (AttnGAN, Xu et al. 2018): for each image, its own prompt is ranked "
            f"against {rp['real']['distractors']} other test captions by the CLIP's image-text similarity; the "
            f"score is the share ranked first (chance {fmt(rp['chance'])}). Ceiling: real test images with their "
            f"own captions; floor: the same images with shuffled captions.</p>")
    if not f:
        parts.append(
            "<p class='note'>FD here uses the CLIP's image embedding, <b>not Inception FID</b>. The phrase-shuffled "
            "control generates from test captions whose phrases were swapped between captions: a model that reads "
            "the text draws a different set of pictures and FD rises.</p>")
    else:
        if "attributes" in plots:
            parts.append(f"<h2>Per attribute</h2><img src='data:image/png;base64,{plots['attributes']}'>")
        names = list(f["test"]["per_attribute"])
        rows = []
        for n in names:
            t, c = f["test"]["per_attribute"][n], f["ceiling_real"]["per_attribute"][n]
            fl = f["floor_shuffled"]["per_attribute"][n]
            h = (f.get("heldout") or {}).get("per_attribute", {}).get(n, {})
            interval = ((f["test"].get("intervals") or {}).get("per_attribute") or {}).get(n)
            rows.append((n, fmt_ci(t["balanced"], interval), fmt(t["hit_rate"]), fmt(t["rejection_rate"]),
                         f"{t['n_pos']}/{t['n_neg']}", fmt(h.get("balanced")), fmt(c["balanced"]), fmt(fl["balanced"])))
        parts.append(_table(rows, ("attribute", "balanced", "hit rate", "rejection rate", "asked yes/no",
                                   "held-out balanced", "real (ceiling)", "shuffled (floor)")))
    rows = composed_rows(report)
    if rows:
        parts.append("<h2>Plain vs composed prompts</h2>")
        parts.append(_table(rows, composed_header(report)))
        for title, form in _composed_forms(report):
            example = next((p["composed"] for p in form["prompts"] if " AND " in p["composed"]),
                           form["prompts"][0]["composed"])
            parts.append(f"<p class='note'>{html.escape(title[0].upper() + title[1:])}: {html.escape(form['form'])}. "
                         f"Example: <code>{html.escape(example)}</code></p>")
        parts.append("<p class='note'>The same requests written as one prompt and as composed terms, combined as "
                     "the conjunction and negation of Liu et al. 2022.</p>")
    if wording_rows(report):
        parts.append("<h2>The words and sentence shapes people use</h2>")
        parts.append(_table(wording_rows(report), ("suite", "metric", "canonical wording", "other wording",
                                                   "gap [95% interval]")))
        examples = "; ".join(f"<code>{html.escape(report['wording'][k]['prompts'][0]['variant'])}</code>"
                             for k, _ in WORDINGS if (report["wording"].get(k) or {}).get("prompts"))
        parts.append("<p class='note'>The same test requests in the canonical caption wording and rewritten: "
                     "every attribute in everyday words (vocabulary), or the canonical words in sentence shapes the "
                     f"caption templates never produce (phrasing). Examples: {examples}. The gap is canonical minus "
                     "other; its interval resamples the prompts of both sets together.</p>")
    if report.get("sweep"):
        parts.append("<h2>Sweep</h2>")
        for key in ("steps", "guidance"):
            if key in plots:
                parts.append(f"<img src='data:image/png;base64,{plots[key]}'>")
        sw = report["sweep"]
        parts.append(_table(sweep_rows(report), SWEEP_HEADER))
        parts.append(f"<p class='note'>{sw[0]['images']} images a setting, one per test row drawn at random, every "
                     f"setting from the same start noise. Intervals are 95% bootstrap intervals over the prompts; "
                     f"the gap is the default setting's figure minus the row's, resampled in pairs (an interval "
                     f"below zero: the row is better). FD real/real at the same n: "
                     f"{fmt(sw[0].get('fd_real_vs_real'), 2)}.</p>")
    for title, grid in grids.items():
        parts.append(f"<h2>{html.escape(title)}</h2><img src='data:image/png;base64,{png_base64(grid)}'>")
    parts.append("<h2>Raw numbers</h2><p class='note'>All numbers are in report.json beside this file.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(report: dict, out_dir: str | Path, grids: dict[str, Image.Image]) -> dict[str, Path]:
    """Write report.json, report.html and the grids as PNG files; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = sweep_plots(report)
    attr = attribute_plot(report) if report.get("faithfulness") else None
    if attr:
        plots["attributes"] = attr
    paths = {"json": out_dir / "report.json", "html": out_dir / "report.html"}
    atomic_write_json(paths["json"], report)
    for k, grid in enumerate(grids.values()):
        p = out_dir / f"grid_{k}.png"
        grid.save(p)
        paths[f"grid_{k}"] = p
    for name, png in plots.items():  # also as files, for READMEs and slides
        p = out_dir / f"plot_{name}.png"
        p.write_bytes(base64.b64decode(png))
        paths[f"plot_{name}"] = p
    tmp = paths["html"].with_suffix(".html.tmp")
    tmp.write_text(render_html(report, grids, plots), encoding="utf-8")
    tmp.replace(paths["html"])
    return paths
