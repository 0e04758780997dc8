"""Check that the built HTML docs typeset their math offline, in a headless browser.

    python tests/check_docs_offline.py [BUILD_DIR] [--page NAME.html ...]

BUILD_DIR is the output of ``sphinx-build -b html`` (default ``docs/_build/html``). Every
top-level page whose HTML holds Sphinx math (``class="math``), or each ``--page``, is
opened in headless Chromium with every non-``file://`` request aborted (see
``tests/browser.py``). A page passes when MathJax loaded from the build itself, finished
typesetting, every math element holds an ``mjx-container`` and no ``mjx-merror``, no raw
TeX delimiter (``\\(``, ``\\[``, ``$$``) is left in the page's text outside code, no request
needed the network and no script threw.

This is a script, not a pytest test, because it needs the built docs: ``.ci/run`` runs it
right after the docs build, while the plain ``pytest`` run comes before that build (the
name does not match ``test_*.py``, so pytest does not collect it).

Exit status: 0 when every page passes, 1 when one fails. Without Playwright or Chromium it
prints why and the fix, then exits 1 under ``CI=true`` and 0 (skipped) otherwise.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from browser import browser_unavailable_reason, launch_chromium, open_offline, running_in_ci

if TYPE_CHECKING:
    from playwright.sync_api import Browser

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUILD_DIR = REPO_ROOT / "docs" / "_build" / "html"
MATH_MARKER = 'class="math'
"""How Sphinx's HTML writer marks inline (``span``) and display (``div``) math."""

TYPESET_TIMEOUT_MS = 30_000
"""How long MathJax may take to typeset one page once it has loaded."""

# Runs in the page once it has loaded. MathJax is a deferred script in the page, so by the
# `load` event it has run if it could be fetched; a CDN script blocked offline never defines
# `MathJax.version`. Then waits for the first typeset (`MathJax.startup.promise`) and counts.
_INSPECT_JS = r"""
async (timeoutMs) => {
    const rawTex = () => {
        const skip = "pre, code, script, style, textarea, mjx-container";
        const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
        const raw = [];
        for (let node = walker.nextNode(); node; node = walker.nextNode()) {
            const text = node.textContent;
            if (/\\[(\[]|\$\$/.test(text) && !node.parentElement.closest(skip)) {
                raw.push(text.trim().slice(0, 120));
            }
        }
        return raw;
    };
    const mj = window.MathJax;
    if (!mj || typeof mj.version !== "string" || !mj.startup || !mj.startup.promise) {
        return {loaded: false, raw: rawTex()};
    }
    const timeout = new Promise((_, reject) => setTimeout(
        () => reject(new Error(`MathJax did not finish typesetting in ${timeoutMs} ms`)),
        timeoutMs));
    await Promise.race([mj.startup.promise, timeout]);
    const math = Array.from(document.querySelectorAll(".math"));
    return {
        loaded: true,
        version: mj.version,
        math: math.length,
        typeset: math.filter((el) => el.querySelector("mjx-container")).length,
        containers: document.querySelectorAll("mjx-container").length,
        errors: document.querySelectorAll("mjx-merror").length,
        raw: rawTex(),
    };
}
"""


@dataclass
class PageResult:
    """What the check found on one page."""

    name: str
    problems: list[str] = field(default_factory=list)
    summary: str = ""


def pages_with_math(build_dir: Path) -> list[Path]:
    """The top-level HTML pages of a build whose source holds Sphinx math, sorted."""
    return sorted(
        path
        for path in build_dir.glob("*.html")
        if MATH_MARKER in path.read_text(encoding="utf-8", errors="replace")
    )


def check_page(browser: Browser, path: Path) -> PageResult:
    """Open one page offline and check that its math was typeset."""
    result = PageResult(name=path.name)
    with open_offline(path, browser=browser) as view:
        found: dict[str, Any] = view.page.evaluate(_INSPECT_JS, TYPESET_TIMEOUT_MS)
        if not found["loaded"]:
            result.problems.append("MathJax did not load from the build (no MathJax.version)")
        else:
            math, typeset = found["math"], found["typeset"]
            result.summary = (
                f"MathJax {found['version']}: {typeset}/{math} math elements typeset, "
                f"{found['containers']} mjx-container"
            )
            if math == 0 or found["containers"] == 0:
                result.problems.append(f"no math was typeset ({math} math elements)")
            elif typeset != math:
                result.problems.append(f"only {typeset} of {math} math elements typeset")
            if found["errors"]:
                result.problems.append(f"{found['errors']} MathJax errors (mjx-merror)")
        raw: list[str] = found["raw"]
        for text in raw[:3]:
            result.problems.append(f"raw TeX left in the text: {text}")
        if len(raw) > 3:
            result.problems.append(f"... and {len(raw) - 3} more text nodes with raw TeX")
        for url in view.blocked_requests:
            result.problems.append(f"needed the network: {url}")
        for error in view.page_errors:
            result.problems.append(f"script error: {error}")
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the check; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("build_dir", nargs="?", type=Path, default=DEFAULT_BUILD_DIR)
    parser.add_argument(
        "--page",
        action="append",
        default=[],
        metavar="NAME",
        help="a page of the build to check (repeatable); default: every page with math",
    )
    args = parser.parse_args(argv)
    build_dir: Path = args.build_dir.resolve()

    if not (build_dir / "index.html").is_file():
        print(f"ERROR: {build_dir} is not an HTML docs build (no index.html)", file=sys.stderr)
        return 1
    pages = [build_dir / name for name in args.page] if args.page else pages_with_math(build_dir)
    if not pages:
        print(f"ERROR: no page with math ({MATH_MARKER}) in {build_dir}", file=sys.stderr)
        return 1
    missing = [str(page) for page in pages if not page.is_file()]
    if missing:
        print(f"ERROR: no such page: {', '.join(missing)}", file=sys.stderr)
        return 1

    reason = browser_unavailable_reason()
    if reason is not None:
        if running_in_ci():
            print(
                f"ERROR: {reason} (CI=true: the browser check cannot be skipped)", file=sys.stderr
            )
            return 1
        print(f"SKIPPED: docs offline check: {reason}")
        return 0

    failed = 0
    with launch_chromium() as browser:
        for path in pages:
            result = check_page(browser, path)
            status = "FAIL" if result.problems else "ok"
            print(f"{status:4}  {result.name}: {result.summary or 'not typeset'}")
            for problem in result.problems:
                print(f"      - {problem}")
            failed += bool(result.problems)
    if failed:
        print(f"ERROR: {failed} of {len(pages)} pages do not render their math offline")
        return 1
    print(f"all {len(pages)} pages with math render it offline (network blocked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
