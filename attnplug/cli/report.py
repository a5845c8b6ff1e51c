"""``attnplug report DIR``: merge every record under DIR into DIR/report.json and DIR/report.html."""

from __future__ import annotations

from pathlib import Path

from .errors import UserError


def cmd_report(args) -> int:
    """Write the merged report of the records under ``args.dir`` and print where."""
    from ..report import collect_records, write_report

    directory = Path(args.dir)
    if not directory.is_dir():
        raise UserError(f"report: {str(directory)!r} is not a folder.")
    if not collect_records(directory):
        raise UserError(f"report: no attnplug records (*.json sidecars) under {str(directory)!r}.")
    json_path, html_path = write_report(directory)
    print(f"{json_path}\n{html_path}")
    return 0
