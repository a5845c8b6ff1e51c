"""Measure and report, one set of helpers for the CLI, the reports and the UI.

- :mod:`.timing`: synchronised stopwatches, interleaved repeats, denoiser / attention time, median and spread
- :mod:`.memory`: peak allocated tensor memory (CUDA counters; elsewhere an allocation tracker, in an untimed pass)
- :mod:`.measure`: one measured pipeline call
- :mod:`.metrics`: outputs as float arrays, PSNR / SSIM / LPIPS, difference maps, the embedded detector's verdicts
- :mod:`.media`, :mod:`.writers`: PNG / MP4 / GIF and JSON writers (atomic), display enlargement, frame strips
- :mod:`.environment`, :mod:`.stats`, :mod:`.labels`: the run's environment and load, attention counters, and
  plain-language names of schedules and hi-res / long-video plans
- :mod:`.records`, :mod:`.plots`, :mod:`.html`: merging records into ``report.json`` and a self-contained
  ``report.html``

Importing this package imports no torch; each helper imports what it needs when called.
"""

from __future__ import annotations

from .environment import environment, load_average, loaded, noise_warning
from .html import render_html, write_report
from .labels import hires_label, long_video_label, run_label, schedule_words
from .measure import measure
from .media import DISPLAY_MIN_SIDE, enlarge, frame_strip, save_media, save_previews, to_uint8
from .memory import PeakMemory, peak_memory
from .metrics import UNAVAILABLE_NO_WEIGHTS, as_float_array, difference_map, fidelity, judge, psnr, ssim
from .plots import scatter_plots
from .records import (
    RECORD_MARK,
    REPORT_HTML,
    REPORT_JSON,
    build_report,
    collect_records,
    label_of,
    media_path,
    summarize,
)
from .stats import sparsity_of, summarize_stats
from .timing import BreakdownTimer, Stopwatch, median, spread, synchronize, time_interleaved
from .writers import atomic_write_bytes, jsonable, write_json

__all__ = [
    "DISPLAY_MIN_SIDE", "RECORD_MARK", "REPORT_HTML", "REPORT_JSON", "UNAVAILABLE_NO_WEIGHTS", "BreakdownTimer",
    "PeakMemory", "Stopwatch", "as_float_array", "atomic_write_bytes", "build_report", "collect_records",
    "difference_map", "enlarge", "environment", "fidelity", "frame_strip", "hires_label", "jsonable", "judge",
    "label_of", "load_average", "loaded", "long_video_label", "measure", "media_path", "median", "noise_warning",
    "peak_memory", "psnr", "render_html", "run_label", "save_media", "save_previews", "scatter_plots",
    "schedule_words", "sparsity_of", "spread", "ssim", "summarize", "summarize_stats", "synchronize",
    "time_interleaved", "to_uint8", "write_json", "write_report",
]
