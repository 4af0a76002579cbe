"""JSON-lines metrics log that stays consistent across crashes and resumes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from msflow._io import write_text


class MetricsLog:
    """Appends one JSON object per line; on resume drops lines past the checkpoint's step.

    Lines written after the last checkpoint of a killed run describe steps that the resumed run
    will redo, so they are removed to keep one line per step and event.
    """

    def __init__(self, path: Path, resume_step: int = 0) -> None:
        self.path = path
        if path.exists():
            kept = []
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
                if record.get("step", 0) <= resume_step:
                    kept.append(line)
            text = "".join(k + "\n" for k in kept)
            # Atomic, so a crash during the rewrite cannot cut the history short.
            write_text(path, text)

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` and flush it to disk."""
        # Non-finite numbers become null: NaN and Infinity are not valid JSON.
        clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(clean) + "\n")


class NullLog:
    """The metrics log of ranks other than 0 of a distributed run: they write nothing."""

    def write(self, record: dict[str, Any]) -> None:  # noqa: D102
        pass
