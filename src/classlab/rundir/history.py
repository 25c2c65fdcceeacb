"""history.jsonl: one JSON object per line for each event in a run folder's life that its
other files do not show (resumed with changed settings, extended to more epochs, started
from another run's weights). Appended, never rewritten; read by resume and the report."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def append_event(path: Path, event: dict) -> None:
    """Append ``event`` (plus the time) as one line, flushed to disk."""
    line = json.dumps({"time": time.strftime("%Y-%m-%d %H:%M:%S"), **event}, sort_keys=False)
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_events(path: Path) -> list[dict]:
    """The events in order ([] without the file); a damaged line (a write cut short) is
    skipped."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    events = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events
