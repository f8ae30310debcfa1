#!/usr/bin/env python3
"""Check the built toylab book in headless Chromium, offline.

    python .ci/check_book.py HTML_DIR OUT_DIR [PAGE.html ...]

HTML_DIR is the built site (chapters/_build/html). PAGEs are paths relative
to it; by default intro.html and every chapter page (chNN_*.html). For each
page the script

1. reads the built HTML and fails if a script, stylesheet or image is loaded
   from the web, or if a local script, stylesheet or image it refers to is
   missing;
2. serves HTML_DIR on 127.0.0.1 (python's http.server, in a thread) and opens
   the page in Debian's headless Chromium with every other host unresolvable,
   so that nothing can come from the network;
3. reads the DOM after MathJax ran (--dump-dom, --virtual-time-budget) and
   fails if math was left unrendered: fewer <mjx-container> elements than
   the page has math nodes, a MathJax error (<mjx-merror>), or raw TeX
   delimiters (\\( \\) \\[ \\] $$) left in the text outside code blocks;
4. fails if the page asked the local server for a file that does not exist
   (a missing image, MathJax component or font);
5. saves a PNG screenshot of the page to OUT_DIR/<page>.png.

Exit status 0 when every page passes, 1 otherwise (and when Chromium is
missing: install it with `apt-get install -y chromium`).
Standard library only.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # we run as root in CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    # Only the local server resolves: anything fetched from the web fails.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
REMOTE = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:)?//")  # http://, https://, //cdn...
RAW_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$")
SKIP_TEXT_IN = {"script", "style", "pre", "code", "textarea", "kbd", "samp", "noscript",
                "mjx-container", "svg", "math"}


# ---------------------------------------------------------------- HTML parsing
class PageScan(HTMLParser):
    """Collect resources, math nodes and visible text of one HTML document."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.scripts: list[str] = []  # <script src>
        self.styles: list[str] = []  # <link rel=stylesheet|preload|icon href>
        self.images: list[str] = []  # <img src>
        self.math_nodes = 0  # Sphinx's <span|div class="math ...">
        self.mjx_containers = 0
        self.mjx_errors = 0
        self.theme_css = False
        self.text: list[str] = []
        self._skip: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "script" and a.get("src"):
            self.scripts.append(a["src"])
        elif tag == "link" and a.get("href"):
            rel = (a.get("rel") or "").lower().split()
            if {"stylesheet", "preload", "modulepreload", "icon", "shortcut"} & set(rel):
                self.styles.append(a["href"])
            if "stylesheet" in rel and "sphinx-book-theme" in a["href"]:
                self.theme_css = True
        elif tag == "img" and a.get("src"):
            self.images.append(a["src"])
        if tag in ("span", "div") and "math" in classes:
            self.math_nodes += 1
        if tag == "mjx-container":
            self.mjx_containers += 1
        if tag == "mjx-merror" or "data-mjx-error" in a:
            self.mjx_errors += 1
        if tag in SKIP_TEXT_IN:
            self._skip.append(tag)

    def handle_endtag(self, tag):
        if self._skip and tag == self._skip[-1]:
            self._skip.pop()
        elif tag in self._skip:  # tolerate sloppy nesting
            while self._skip and self._skip.pop() != tag:
                pass

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)


def scan(html: str) -> PageScan:
    p = PageScan()
    p.feed(html)
    p.close()
    return p


def local_target(page: Path, ref: str, root: Path) -> Path | None:
    """The file a relative reference points to, or None for data:/anchors."""
    if ref.startswith(("data:", "#", "javascript:", "about:", "blob:")):
        return None
    path = unquote(urlsplit(ref).path)
    if not path:
        return None
    return (root / path.lstrip("/")) if path.startswith("/") else (page.parent / path)


def static_checks(page: Path, root: Path) -> tuple[list[str], PageScan]:
    errors: list[str] = []
    s = scan(page.read_text(encoding="utf-8"))
    for kind, refs in (("script", s.scripts), ("stylesheet/preload", s.styles), ("image", s.images)):
        for ref in refs:
            if REMOTE.match(ref):
                errors.append(f"{kind} loaded from the web: {ref}")
                continue
            target = local_target(page, ref, root)
            if target is not None and not target.is_file():
                errors.append(f"{kind} points to a missing file: {ref}")
    if not s.theme_css:
        errors.append("the sphinx-book-theme stylesheet is not linked: the book theme is not applied")
    return errors, s


# ----------------------------------------------------------------- local server
class QuietHandler(http.server.SimpleHTTPRequestHandler):
    missing: list[str]  # set on the subclass

    def log_message(self, format, *args):  # noqa: A002 - signature from the base class
        pass

    def send_error(self, code, message=None, explain=None):
        if code == 404 and not self.path.startswith("/favicon.ico"):
            self.missing.append(self.path)
        super().send_error(code, message, explain)


def serve(root: Path):
    handler = type("Handler", (QuietHandler,), {"missing": []})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(root))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, handler.missing


# ---------------------------------------------------------------------- chromium
def find_chromium() -> str | None:
    env = os.environ.get("CHROMIUM")
    for c in ([env] if env else []) + list(CHROMIUM_CANDIDATES):
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    return None


def chromium(binary: str, extra: list[str], url: str, timeout: int) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="check_book_chromium_") as profile:
        cmd = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def default_pages(root: Path) -> list[str]:
    pages = ["intro.html"] if (root / "intro.html").is_file() else []
    pages += sorted(p.name for p in root.glob("ch[0-9][0-9]_*.html"))
    return pages


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("html_dir", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("pages", nargs="*", help="pages relative to HTML_DIR (default: intro + chapters)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=3000, help="screenshot height in px")
    ap.add_argument("--budget-ms", type=int, default=10000, help="Chromium virtual-time budget")
    ap.add_argument("--timeout", type=int, default=180, help="seconds per Chromium run")
    args = ap.parse_args(argv)

    binary = find_chromium()
    if binary is None:
        print("error: headless Chromium not found at /usr/bin/chromium.\n"
              "       Install it with:  apt-get update && apt-get install -y chromium",
              file=sys.stderr)
        return 1
    root = args.html_dir.resolve()
    if not (root / "index.html").is_file() and not (root / "intro.html").is_file():
        print(f"error: {root} does not look like a built book (no index.html); run .ci/book.sh first",
              file=sys.stderr)
        return 1
    pages = args.pages or default_pages(root)
    if not pages:
        print(f"error: no pages to check in {root}", file=sys.stderr)
        return 1
    args.out_dir.mkdir(parents=True, exist_ok=True)
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"checking {len(pages)} page(s) of {root} with {version}")

    server, missing = serve(root)
    port = server.server_address[1]
    failed = 0
    try:
        for rel in pages:
            page = root / rel
            if not page.is_file():
                print(f"FAIL {rel}: no such page")
                failed += 1
                continue
            errors, source = static_checks(page, root)
            url = f"http://127.0.0.1:{port}/{rel}"
            budget = f"--virtual-time-budget={args.budget_ms}"

            missing.clear()
            run = chromium(binary, [budget, "--dump-dom"], url, args.timeout)
            if run.returncode != 0 or "<html" not in run.stdout:
                errors.append(f"chromium --dump-dom failed (exit {run.returncode}): {run.stderr.strip()[-500:]}")
            else:
                dom = scan(run.stdout)
                if source.math_nodes and dom.mjx_containers == 0:
                    errors.append(f"math not rendered: {source.math_nodes} math node(s), no <mjx-container> "
                                  "(MathJax did not load or did not run)")
                elif dom.mjx_containers < source.math_nodes:
                    errors.append(f"math partly rendered: {source.math_nodes} math node(s), "
                                  f"{dom.mjx_containers} <mjx-container>")
                if dom.mjx_errors:
                    errors.append(f"{dom.mjx_errors} MathJax error(s) (<mjx-merror>): bad TeX on the page")
                text = " ".join(dom.text)
                for m in list(RAW_TEX.finditer(text))[:5]:
                    ctx = text[max(0, m.start() - 40): m.end() + 40].replace("\n", " ")
                    errors.append(f"raw TeX left in the text: ...{ctx}...")
            for path in sorted(set(missing)):
                errors.append(f"the page requested a missing file: {path}")

            shot = args.out_dir / (rel.replace("/", "__").removesuffix(".html") + ".png")
            run = chromium(binary, [budget, f"--window-size={args.width},{args.height}",
                                    f"--screenshot={shot}"], url, args.timeout)
            if run.returncode != 0 or not shot.is_file():
                errors.append(f"screenshot failed (exit {run.returncode}): {run.stderr.strip()[-500:]}")

            status = "FAIL" if errors else "ok  "
            print(f"{status} {rel}: {source.math_nodes} math node(s), {len(source.images)} image(s), "
                  f"screenshot {shot}")
            for e in errors:
                print(f"     - {e}")
            failed += bool(errors)
    finally:
        server.shutdown()
        server.server_close()

    if failed:
        print(f"{failed} of {len(pages)} page(s) failed")
        return 1
    print(f"all {len(pages)} page(s) passed; screenshots in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
