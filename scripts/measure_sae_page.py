"""How tall the run's ``sae.html`` is with its long tables paged, against every row shown (issue 25, item 5).

The page is the one a training run writes at its end (:func:`aquin_monitor.callbacks.run_pages.write_sae_page`):
the shipped SAE over a probe's embeddings, ``min_support=3``. The probe is the infonce recipe's default
(``scifact_probe(n_docs=300)``: the 300 SciFact test queries and 300 documents), embedded by the bundled
all-MiniLM-L6-v2 (the base model: a run's last snapshot differs, the table sizes are alike). Headless chromium
(1280 px wide) measures ``document.body.scrollHeight`` as the page opens (tables paged) and after every row is
shown again with the pagers hidden (what the page showed before paging), in the same page; also the file's size,
the time it takes to open (navigation start to the load event, which waits for the page's script: the median of
three opens) and the rows each table holds.

    python scripts/measure_sae_page.py [--docs 300] [--keep page.html] [--package-root /other/checkout]

``--package-root`` measures another checkout's page code (e.g. the main branch before the change; there the
page has no pagers, so its "paged" height is its whole height).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if "--package-root" in sys.argv:  # read before the package is imported
    sys.path.insert(0, sys.argv[sys.argv.index("--package-root") + 1])
else:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the DevTools-pipe client the page tests use
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from aquin_monitor.data import scifact_probe  # noqa: E402
from aquin_monitor.sae.embeddings import embed_corpus  # noqa: E402
from aquin_monitor.sae.model import load_sae  # noqa: E402
from aquin_monitor.sae.page import analyse_corpus, write_page  # noqa: E402

SHOW_EVERY_ROW = (
    "document.querySelectorAll('#features tr.feature, #diagnostics tbody tr').forEach(r => {r.hidden = false;});"
    "document.querySelectorAll('.pager').forEach(p => {p.hidden = true;}); document.body.scrollHeight"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=300, help="SciFact documents in the probe (default 300)")
    parser.add_argument("--keep", metavar="FILE", help="also copy the page here")
    parser.add_argument("--package-root", metavar="DIR", help="import aquin_monitor from this checkout")
    args = parser.parse_args()
    from devtools_pipe import Browser

    probe, _ = scifact_probe(n_docs=args.docs, split="test", seed=0)
    embeddings = embed_corpus("default", probe.texts, show_progress=True)
    browser, network, diagnostics = analyse_corpus(load_sae("default"), embeddings, probe.texts, min_support=3)
    with tempfile.TemporaryDirectory() as tmp:
        page_path = write_page(Path(tmp) / "sae.html", browser, network, diagnostics, title="SAE features")
        if args.keep:
            shutil.copyfile(page_path, args.keep)
        with Browser(Path(tmp) / "profile", width=1280) as page:
            loads = []
            for _ in range(3):  # the median of three opens: navigation start to the load event (script run)
                page.open(page_path)
                loads.append(page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd"))
            paged = page.evaluate("document.body.scrollHeight")
            shown = page.evaluate(
                "[...document.querySelectorAll('#features tr.feature')].filter(r => !r.hidden).length"
            )
            everything = page.evaluate(SHOW_EVERY_ROW)
            errors = page.console_errors()
        size = page_path.stat().st_size
    print(f"probe: {len(probe.texts)} texts; page: {size:,} bytes; opens in {sorted(loads)[1]:.0f} ms (median of 3)")
    pairs = len(diagnostics.absorption)
    print(f"rows: {len(browser.features)} features ({shown} on the first page), {pairs} absorption pairs")
    print(f"height: every row shown {everything:,} px -> paged {paged:,} px ({everything / paged:.1f}x shorter)")
    print(f"imported from: {Path(sys.modules['aquin_monitor'].__file__).parent}")
    print(f"console errors: {errors or 'none'}")


if __name__ == "__main__":
    main()
