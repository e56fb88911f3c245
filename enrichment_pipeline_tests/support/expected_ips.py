"""What a Cowrie log should yield, computed independently of the reader under test."""

from __future__ import annotations

import json
from pathlib import Path

from enrichment_pipeline.core.ips import canonical_ip


def distinct_valid_ips(log_file: Path) -> set[str]:
    """Independent of the reader under test: the stdlib json module over every line."""
    ips = set()
    for line in log_file.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        ip = canonical_ip(event.get("src_ip")) if isinstance(event, dict) else None
        if ip:
            ips.add(ip)
    return ips
