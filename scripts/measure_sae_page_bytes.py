"""What the bytes of an SAE page (``sae.html``) are: its embedded JSON broken down by part, and the page's size
in the compact form (:mod:`aquin_monitor.sae.page_compact`) when it holds the plain one.

A page written before the compact form (its JSON holds ``labels`` and feature records) is measured as it is and
as :func:`~aquin_monitor.sae.page.render_page` would write the same data now: the same data, so the same page,
and no model or SAE is loaded.

    python scripts/measure_sae_page_bytes.py runs/infonce/sae.html [more pages...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aquin_monitor.sae.page import render_page_data  # noqa: E402
from aquin_monitor.sae.page_compact import compact_page_data  # noqa: E402

MARK = 'id="sae-data">'


def embedded(html: str) -> tuple[dict[str, Any], int]:
    """The page's JSON block, parsed, and its length in characters."""
    start = html.index(MARK) + len(MARK)
    block = html[start : html.index("</script>", start)]
    return json.loads(block), len(block)


def json_bytes(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=True, separators=(",", ":")))


def breakdown(data: dict[str, Any]) -> list[tuple[str, int]]:
    """Bytes per top-level key, and per field of the feature records (plain) or tables (compact)."""
    parts = [(key, json_bytes(value)) for key, value in data.items()]
    features = data.get("features")
    if isinstance(features, list) and features:  # plain: one record per feature
        parts += [(f"features[].{name}", sum(json_bytes(f[name]) for f in features)) for name in features[0]]
        texts = [e["text"] for f in features for e in f["examples"]]
        parts.append((f"  example texts ({len(texts):,}, {len(set(texts)):,} distinct)", sum(map(json_bytes, texts))))
        parts.append(("  the distinct ones once", sum(map(json_bytes, set(texts)))))
    elif isinstance(features, dict):  # compact: one column table
        for i, name in enumerate(features["columns"]):
            parts.append((f"features.{name}", sum(json_bytes(row[i]) for row in features["rows"])))
    return parts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="+", type=Path)
    args = parser.parse_args()
    for path in args.pages:
        html = path.read_text(encoding="utf-8")
        data, block = embedded(html)
        print(f"{path}: {len(html.encode('utf-8')):,} bytes, of which JSON {block:,}")
        for name, size in breakdown(data):
            print(f"  {name:<48} {size:>12,}")
        if "labels" in data:  # the plain form: the same page written now
            compact = compact_page_data(data)
            page = render_page_data(data)
            size = len(page.encode("utf-8"))
            print(f"  compact form: {size:,} bytes ({len(html.encode('utf-8')) / size:.1f}x smaller)")
            for name, part in breakdown(compact):
                print(f"    {name:<46} {part:>12,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
