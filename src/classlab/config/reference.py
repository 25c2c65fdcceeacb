"""The config reference (``classlab config``; the README's table is this output)."""

from __future__ import annotations

import yaml

from classlab.config.schema import Config
from classlab.config.validate import walk


def reference() -> str:
    """A Markdown table of every config field: key, default, unit, meaning."""
    rows = ["| key | default | unit / allowed | meaning |", "| --- | --- | --- | --- |"]
    for key, value, meta in walk(Config()):
        allowed = meta.get("unit", "")
        choices = meta.get("choices")
        if choices is not None:
            allowed = " \\| ".join(choices)
        default = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6
                                 ).strip().removesuffix("...")
        rows.append(f"| `{key}` | `{default.strip()}` | {allowed} | {meta['help']} |")
    return "\n".join(rows)
