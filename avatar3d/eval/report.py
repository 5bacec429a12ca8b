"""The evaluation report: one self-contained ``report.html`` (no external URLs, no scripts).

Why one file with everything embedded: a report is mailed, attached to an issue or opened
on a machine without the avatar folder; plots (matplotlib, Agg) and frames are base64 PNG
data URIs, the style sheet is inline, so it renders the same anywhere, offline.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from avatar3d.eval.landmark_metrics import MIN_RATE_DURATION_S
from avatar3d.eval.lpips import MIN_SIZE as LPIPS_MIN_SIZE
from avatar3d.eval.results import EvalRun
from avatar3d.io.atomic import write_text_atomic

__all__ = ["write_report", "render_html", "png_data_uri", "fmt"]

ERROR_GAIN = 4  # the abs-error panel is amplified so small errors are visible
MIN_PANEL = 192  # frames are shown at least this large (nearest-neighbour upscaling)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:24px 0 8px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
.na{color:#a33} .note{color:#555;font-size:13px;max-width:900px}
.plots img{max-width:100%;margin:4px 0} .grid{display:flex;flex-wrap:wrap;gap:12px}
.cell{font-size:12px;text-align:center} .cell img{display:block;image-rendering:pixelated}
pre{background:#f7f7f7;padding:8px;font-size:12px;max-height:320px;overflow:auto}
"""


def fmt(value: Any, digits: int = 2, unit: str = "") -> str:
    """A number for the table; None / NaN / inf -> ``n/a`` (never a made-up value)."""
    if value is None or isinstance(value, str):
        return "n/a" if value is None else value
    v = float(value)
    if not np.isfinite(v):
        return "n/a"
    return f"{v:.{digits}f}{unit}"


def png_data_uri(rgb: np.ndarray) -> str:
    """``data:image/png;base64,...`` of an RGB uint8 image."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(np.asarray(rgb, np.uint8)[..., ::-1]))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _figure_uri(fig: Any) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: heavy (~0.5 s); only the report plots

    FigureCanvasAgg(fig)
    stream = io.BytesIO()
    fig.savefig(stream, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(stream.getvalue()).decode("ascii")


def _plots(run: EvalRun) -> list[tuple[str, str]]:
    """(caption, data URI) for the three plots."""
    from matplotlib.figure import Figure  # lazy: heavy (~0.5 s); only the report plots

    out: list[tuple[str, str]] = []
    fig = Figure(figsize=(9, 2.8))
    ax = fig.add_subplot(1, 1, 1)
    psnr = np.where(np.isfinite(run.psnr_per_frame), run.psnr_per_frame, np.nan)
    ax.plot(run.frame_ids, psnr, "o-", ms=3, color="#1f77b4")
    ax.set_xlabel("subject frame")
    ax.set_ylabel("PSNR full frame (dB)")
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.grid(alpha=0.3)
    out.append(("PSNR per held-out frame", _figure_uri(fig)))

    fig = Figure(figsize=(9, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    t = run.span_start + np.arange(len(run.envelope))
    ax.plot(t, run.mouth_reference, "-", color="#2ca02c", label="mouth opening, reference frames")
    ax.plot(t, run.mouth_rendered, "-", color="#d62728", label="mouth opening, rendered frames")
    ax.set_xlabel("subject frame")
    ax.set_ylabel("inner-lip gap / eye distance")
    ax2 = ax.twinx()
    ax2.plot(t, run.envelope, ":", color="#555", label="speech envelope (dB)")
    ax2.set_ylabel("speech envelope (dB)")
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)
    out.append(("Mouth opening (MediaPipe) rendered vs reference, and the audio envelope; gaps = no face found",
                _figure_uri(fig)))

    fig = Figure(figsize=(9, 2.8))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(run.sync_lags, run.sync_corr_reference, "o-", ms=3, color="#2ca02c", label="reference")
    ax.plot(run.sync_lags, run.sync_corr_rendered, "o-", ms=3, color="#d62728", label="rendered")
    ax.axvline(0, color="#999", lw=0.8)
    if not (np.isfinite(run.sync_corr_rendered).any() or np.isfinite(run.sync_corr_reference).any()):
        ax.text(0.5, 0.5, "no lag could be scored (see the metrics table)", transform=ax.transAxes,
                ha="center", va="center", color="#a33")
    ax.set_xlabel("lag (frames; > 0 = video late)")
    ax.set_ylabel("normalised cross-correlation")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    out.append(("Cross-correlation of mouth opening with the speech envelope vs lag", _figure_uri(fig)))
    return out


def _panel(img: np.ndarray) -> np.ndarray:
    """Nearest-neighbour upscale so tiny renders stay visible."""
    h = img.shape[0]
    k = max(1, int(np.ceil(MIN_PANEL / h)))
    return np.repeat(np.repeat(img, k, axis=0), k, axis=1) if k > 1 else img


def _lpips_row(entry: dict[str, Any]) -> tuple[str, str, str]:
    """LPIPS full / head with the weights it was computed with, or the reason it is unavailable."""
    if "unavailable" in entry:
        return ("LPIPS", f"unavailable ({entry['unavailable']})", "AlexNet v0.1 needs local weights (--lpips-weights)")
    return ("LPIPS full / head (AlexNet v0.1)", f"{fmt(entry['full'], 4)} / {fmt(entry['head'], 4)}",
            f"lower is better; mean over {entry['n_frames']} frames (head: {entry['n_head']} frames whose "
            f"head box is at least {LPIPS_MIN_SIZE} px); "
            f"{entry['weights']}")


def _dlib_row(entry: dict[str, Any] | None) -> tuple[str, str, str]:
    """LMD from the second, independent detector (dlib, 68 points), or why it is unavailable."""
    if entry is None:  # a metrics.json written before the entry existed
        entry = {"unavailable": "not computed by the avatar3d that wrote these metrics"}
    if entry.get("mouth") is None:
        return ("LMD mouth / face (dlib 68-point)", "unavailable", entry.get("unavailable", ""))
    return ("LMD mouth / face (dlib 68-point)", f"{fmt(entry['mouth'])} / {fmt(entry['face'])}",
            f"px at 512², mouth = points 48-67 (the anchors' mouth LMD), over {entry['n_both']} of "
            f"{entry['n_frames']} frames with a face found by dlib in both; an independent second detector")


def _metric_rows(m: dict[str, Any]) -> list[tuple[str, str, str]]:
    img, lmd, sync, blink = m["image"], m["lmd"], m["sync"], m["blink"]
    rows = [
        ("PSNR full / head / mouth", f"{fmt(img['psnr_full'])} / {fmt(img['psnr_head'])} / {fmt(img['psnr_mouth'])}",
         "dB, mean of per-frame values"),
        ("SSIM full / head / mouth",
         f"{fmt(img['ssim_full'], 3)} / {fmt(img['ssim_head'], 3)} / {fmt(img['ssim_mouth'], 3)}",
         "11x11 Gaussian window (kornia)"),
        _lpips_row(m["lpips"]),
        ("LMD mouth / face", f"{fmt(lmd['mouth'])} / {fmt(lmd['face'])}",
         f"px at 512², over {lmd['n_both']} of {lmd['n_frames']} frames with a face in both"
         + (f" ({lmd['unavailable']})" if "unavailable" in lmd else "")),
        _dlib_row(m.get("lmd_dlib")),
        ("face detection rate rendered / reference",
         f"{fmt(lmd['detection_rate_pred'] * 100 if lmd['detection_rate_pred'] is not None else None, 0, '%')} / "
         f"{fmt(lmd['detection_rate_ref'] * 100 if lmd['detection_rate_ref'] is not None else None, 0, '%')}",
         "MediaPipe face mesh, frames upsampled to >= 256 px"),
    ]
    for key in ("rendered", "reference"):
        s = sync[key]
        note = s.get("unavailable", f"peak-minus-median {fmt(s['margin'], 3)}, {s['n_pairs']} frame pairs at lag 0")
        rows.append((f"sync lag / confidence ({key})", f"{fmt(s['lag_frames'], 0)} / {fmt(s['confidence'], 3)}",
                     note))
    rows.append(("sync lag rendered - reference", fmt(sync["lag_rendered_minus_reference"], 0),
                 f"frames; {sync['convention']}; searched +-{sync['max_lag_frames']}"))
    spread = sync.get("reference_lag_spread")
    if spread is not None:  # metrics.json written before this entry existed has none
        rows.append(("reference's own audio-lag spread at this span length", fmt(spread["spread_frames"], 1, " frames"),
                     f"robust sd of the lag over {spread['windows']} stretches of {spread['window_frames']} frames of "
                     "the whole clip (prep's landmarks); a rendered - reference difference inside it is not a measured "
                     "sync error" + ("" if spread["spread_frames"] is not None else " (too few stretches to tell)")))
    mouth = sync.get("mouth_rendered_vs_reference")
    if mouth is not None:  # metrics.json written before this entry existed has none
        rows.append(("mouth lag rendered vs reference / confidence",
                     f"{fmt(mouth['lag_frames'], 0)} / {fmt(mouth['confidence'], 3)}",
                     mouth.get("unavailable", "the rendered mouth-opening curve against the reference's, no audio; "
                                              "positive = rendered late")))
    br, bf = blink["rendered"], blink["reference"]
    rows.append(("blinks per minute rendered / reference", f"{fmt(br['per_minute'], 1)} / {fmt(bf['per_minute'], 1)}",
                 f"{br['count']} / {bf['count']} blinks over {fmt(br['duration_s'], 1)} / "
                 f"{fmt(bf['duration_s'], 1)} s with a face (a rate needs >= {MIN_RATE_DURATION_S:g} s)"))
    rows.append(("render speed", fmt(m["render_fps"], 1, " FPS"), "this machine, excludes file writing"))
    return rows


def render_html(run: EvalRun) -> str:
    """The report as one HTML string (all images inline)."""
    m = run.metrics
    e = html.escape
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             "<title>avatar3d eval report</title><style>", _CSS, "</style></head><body>",
             "<h1>avatar3d evaluation report</h1>",
             f"<div class='note'>avatar <b>{e(m['avatar'])}</b> on subject <b>{e(m['subject'])}</b>; "
             f"{m['frames']['n']} of {m['frames']['val_total']} held-out frames "
             f"({m['frames']['first']}–{m['frames']['last']}) rendered at {m['size']}² with their tracked pose "
             f"and motion. Created {e(m['created'])}, avatar3d {e(m['avatar3d_version'])}.</div>",
             "<h2>Metrics</h2><table><tr><th>metric</th><th>value</th><th>notes</th></tr>"]
    for name, value, note in _metric_rows(m):
        cls = "num na" if "n/a" in value else "num"
        parts.append(f"<tr><td>{e(name)}</td><td class='{cls}'>{e(value)}</td><td>{e(note)}</td></tr>")
    parts.append("</table>")
    parts.append("<p class='note'>n/a = not measurable on these frames (the reason is in the notes), never a "
                 "substituted value. Sync: the lag maximising the correlation between the mouth-opening curve "
                 "and the speech envelope; the reference frames' own lag is the speaker's natural offset, so "
                 "<i>rendered − reference</i> is the avatar's sync error.</p>")
    parts.append("<h2>Plots</h2><div class='plots'>")
    for caption, uri in _plots(run):
        parts.append(f"<figure><img alt='{e(caption)}' src='{uri}'><figcaption class='note'>{e(caption)}"
                     "</figcaption></figure>")
    parts.append("</div><h2>Frames: reference | rendered | abs error ×%d</h2><div class='grid'>" % ERROR_GAIN)
    for fid, ref, pred in run.samples:
        err = np.clip(np.abs(ref.astype(np.int16) - pred.astype(np.int16)) * ERROR_GAIN, 0, 255).astype(np.uint8)
        strip = np.concatenate([_panel(ref), _panel(pred), _panel(err)], axis=1)
        parts.append(f"<div class='cell'><img alt='frame {fid}' src='{png_data_uri(strip)}'>frame {fid}</div>")
    parts.append("</div><h2>Provenance</h2><table>")
    for key in ("avatar", "avatar_trained_on", "subject", "training_resolution", "size", "fps"):
        parts.append(f"<tr><th>{e(key)}</th><td>{e(str(m.get(key)))}</td></tr>")
    parts.append("</table><p class='note'>eval config</p><pre>" + e(json.dumps(m["eval_config"], indent=1)) + "</pre>")
    if m.get("train_config_yaml"):
        parts.append("<p class='note'>training config (config.yaml of the avatar)</p><pre>"
                     + e(m["train_config_yaml"]) + "</pre>")
    parts.append("</body></html>\n")
    return "".join(parts)


def write_report(path: str | Path, run: EvalRun) -> Path:
    """Write ``report.html`` atomically; returns its path."""
    return write_text_atomic(path, render_html(run))
