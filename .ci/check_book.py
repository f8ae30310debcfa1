#!/usr/bin/env python3
"""Check the built toylab book in headless Chromium, offline.

    python .ci/check_book.py HTML_DIR OUT_DIR [PAGE.html ...]

HTML_DIR is the built site (chapters/_build/html). PAGEs are paths relative
to it; by default intro.html, every chapter page (chNN_*.html) and the
back matter (run_it_yourself, glossary, hooks_cheatsheet, bibliography). For each
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
5. saves a PNG screenshot of the page to OUT_DIR/<page>.png;
6. if the page holds toylab attention viewers (toylab.circuits.viewer), drives Chromium
   over the DevTools protocol (a minimal client on the standard library):
   moves the mouse onto a token of each viewer (a real hover), clicks another
   one, and checks that the weights the viewer highlights equal the row of
   the pattern embedded in the page to 1e-6, and that the page made no
   request except to the local server.

Exit status 0 when every page passes, 1 otherwise (and when Chromium is
missing: install it with `apt-get install -y chromium`).
Standard library only.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import http.server
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
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


# ------------------------------------------------- DevTools protocol (the viewer check)
# Flags that make any request to another host fail: unresolvable names (CHROMIUM_FLAGS) and
# a proxy that does not exist (Chromium never proxies loopback, so the local server works).
NO_NETWORK_FLAGS = ["--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1"]
VIEWER_MARK = "toylab-attention-viewer"


class CDPError(RuntimeError):
    pass


class CDPSession:
    """A minimal Chrome DevTools Protocol client: one WebSocket over a plain socket.

    ``call(method, **params)`` sends a command and returns its result; events that
    arrive meanwhile are kept in ``events`` (a list of ``{"method", "params"}``).
    """

    def __init__(self, ws_url: str, timeout: float = 30.0):
        u = urlsplit(ws_url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise CDPError("DevTools closed the connection during the WebSocket handshake")
            head += chunk
        head, self._buf = head.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise CDPError(f"WebSocket handshake refused: {head[:200]!r}")
        self._id = 0
        self.events: list[dict] = []

    def _send(self, text: str, opcode: int = 0x1) -> None:
        data = text.encode()
        n = len(data)
        header = bytes([0x80 | opcode])
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(header + mask + masked)

    def _exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                raise CDPError("DevTools closed the connection")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _recv(self) -> dict:
        parts: list[bytes] = []
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            mask = self._exact(4) if b1 & 0x80 else None
            data = self._exact(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise CDPError("DevTools closed the WebSocket")
            if opcode == 0x9:  # ping
                self._send(data.decode(errors="replace"), opcode=0xA)
                continue
            if opcode in (0x0, 0x1, 0x2):
                parts.append(data)
                if b0 & 0x80:
                    return json.loads(b"".join(parts))

    def call(self, method: str, **params):
        self._id += 1
        self._send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = self._recv()
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise CDPError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_event(self, method: str, timeout: float) -> dict:
        end = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev["method"] == method:
                    return self.events.pop(i)
            if time.monotonic() > end:
                raise CDPError(f"no {method} event within {timeout} s")
            self.sock.settimeout(max(0.1, end - time.monotonic()))
            msg = self._recv()
            if "method" in msg:
                self.events.append(msg)

    def evaluate(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise CDPError(f"script failed in the page: {r['exceptionDetails'].get('text')} "
                           f"{r['exceptionDetails'].get('exception', {}).get('description', '')}")
        return r["result"].get("value")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class DevToolsChromium:
    """Headless Chromium with the network blocked, driven over the DevTools protocol."""

    def __init__(self, binary: str, width: int = 1280, height: int = 1600, timeout: float = 60.0):
        self.profile = tempfile.TemporaryDirectory(prefix="check_book_cdp_")
        cmd = [binary, *CHROMIUM_FLAGS, *NO_NETWORK_FLAGS, f"--user-data-dir={self.profile.name}",
               "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
               f"--window-size={width},{height}", "about:blank"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        port_file = Path(self.profile.name) / "DevToolsActivePort"
        end = time.monotonic() + timeout
        while not port_file.is_file() or len(port_file.read_text().split()) < 2:
            if self.proc.poll() is not None:
                raise CDPError(f"chromium exited ({self.proc.returncode}): {self.proc.stderr.read()[-500:]}")
            if time.monotonic() > end:
                self.quit()
                raise CDPError(f"chromium did not open its DevTools port within {timeout} s")
            time.sleep(0.05)
        self.port = int(port_file.read_text().split()[0])
        # the local DevTools endpoint, never through a proxy from the environment
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        targets = json.loads(opener.open(f"http://127.0.0.1:{self.port}/json/list", timeout=timeout).read())
        page = next(t for t in targets if t.get("type") == "page")
        self.cdp = CDPSession(page["webSocketDebuggerUrl"], timeout=timeout)
        self.cdp.call("Page.enable")
        self.cdp.call("Network.enable")
        self.cdp.call("Runtime.enable")

    def open(self, url: str, timeout: float = 60.0) -> None:
        self.cdp.events.clear()
        self.cdp.call("Page.navigate", url=url)
        self.cdp.wait_event("Page.loadEventFired", timeout)

    def requests(self) -> list[str]:
        """URLs the page requested since it was opened."""
        return [ev["params"]["request"]["url"] for ev in self.cdp.events
                if ev["method"] == "Network.requestWillBeSent"]

    def mouse(self, kind: str, x: float, y: float) -> None:
        args = {"type": kind, "x": x, "y": y}
        if kind in ("mousePressed", "mouseReleased"):
            args.update(button="left", clickCount=1)
        self.cdp.call("Input.dispatchMouseEvent", **args)

    def quit(self) -> None:
        if getattr(self, "cdp", None) is not None:
            try:
                self.cdp.call("Browser.close")
            except (CDPError, OSError):
                pass
            self.cdp.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.profile.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.quit()


_VIEWER_STATE = """(() => {
  const out = [];
  for (const root of document.querySelectorAll(".toylab-attention-viewer")) {
    const data = JSON.parse(document.getElementById(root.id + "-data").textContent);
    out.push({id: root.id, ready: root.getAttribute("data-ready"), nHeads: data.heads.length,
              n: data.tokens.length, pattern: data.pattern});
  }
  return out;
})()"""


def _token_center(browser: DevToolsChromium, vid: str, k: int) -> tuple[float, float]:
    r = browser.cdp.evaluate(f"""(() => {{
      const t = document.getElementById({json.dumps(vid)}).querySelectorAll(".tlv-tok")[{k}];
      t.scrollIntoView({{block: "center", inline: "center"}});
      const b = t.getBoundingClientRect();
      return [b.left + b.width / 2, b.top + b.height / 2];
    }})()""")
    return float(r[0]), float(r[1])


def _shown(browser: DevToolsChromium, vid: str) -> dict:
    return browser.cdp.evaluate(f"""(() => {{
      const root = document.getElementById({json.dumps(vid)});
      return {{head: root.getAttribute("data-head"), query: root.getAttribute("data-query"),
              weights: Array.from(root.querySelectorAll(".tlv-tok"),
                                  t => t.getAttribute("data-weight"))}};
    }})()""")


def _select_head(browser: DevToolsChromium, vid: str, h: int) -> None:
    browser.cdp.evaluate(f"""(() => {{
      const s = document.getElementById({json.dumps(vid + "-head")});
      s.value = "{h}"; s.dispatchEvent(new Event("change"));
    }})()""")


def _compare(shown: dict, expected_row: list[float], h: int, q: int, what: str, tol: float) -> list[str]:
    if shown["head"] != str(h) or shown["query"] != str(q):
        return [f"{what}: the viewer shows head {shown['head']} query {shown['query']}, expected head {h} query {q}"]
    got = [float(w) if w is not None else float("nan") for w in shown["weights"]]
    if len(got) != len(expected_row):
        return [f"{what}: {len(got)} highlighted tokens, the row has {len(expected_row)}"]
    worst = max(abs(a - b) if a == a else float("inf") for a, b in zip(got, expected_row))
    if worst > tol:
        return [f"{what}: highlighted weights differ from the pattern row by {worst:.3g} (> {tol})"]
    return []


def check_viewers(browser: DevToolsChromium, url: str, expected: dict | None = None,
                  allowed_prefixes: tuple[str, ...] = (), tol: float = 1e-6) -> tuple[list[str], int]:
    """Open ``url`` and exercise every attention viewer on it with real mouse events.

    For each viewer: select its last head, hover the middle token (mouse moved onto it: the
    viewer first shows the last one), check the highlighted weights; click the token at a
    quarter, move the mouse away, check again (the click keeps the row). The expected rows come from ``expected[viewer_index]``
    (``[n_heads, n, n]`` nested lists, e.g. the model's pattern) or, by default, from the
    pattern embedded in the page. Requests to URLs outside ``allowed_prefixes`` are errors.
    Returns ``(errors, number of rows checked)``.
    """
    browser.open(url)
    errors: list[str] = []
    checked = 0
    viewers = browser.cdp.evaluate(_VIEWER_STATE)
    if not viewers:
        return ["no toylab attention viewer found on the page"], 0
    for i, v in enumerate(viewers):
        name = f"viewer {i} ({v['id']})"
        if v["ready"] != "1":
            errors.append(f"{name}: its script did not run (data-ready is not 1)")
            continue
        truth = expected[i] if expected is not None else v["pattern"]
        h, n = v["nHeads"] - 1, v["n"]
        _select_head(browser, v["id"], h)
        for q, click in ((n // 2, False), (n // 4, True)):
            x, y = _token_center(browser, v["id"], q)
            browser.mouse("mouseMoved", x, y)
            if click:
                browser.mouse("mousePressed", x, y)
                browser.mouse("mouseReleased", x, y)
                browser.mouse("mouseMoved", 1, 1)  # away: the viewer must keep the clicked row
            what = f"{name}, head {h}, {'clicked' if click else 'hovered'} query {q}"
            errors += _compare(_shown(browser, v["id"]), truth[h][q], h, q, what, tol)
            checked += 1
    page_url = url.split("#")[0]
    for req in browser.requests():
        if req.split("#")[0] != page_url and not req.startswith(("data:", *allowed_prefixes)):
            errors.append(f"the page made a network request: {req}")
    return errors, checked


BACK_MATTER = ("run_it_yourself.html", "glossary.html", "hooks_cheatsheet.html", "bibliography.html")


def default_pages(root: Path) -> list[str]:
    pages = ["intro.html"] if (root / "intro.html").is_file() else []
    pages += sorted(p.name for p in root.glob("ch[0-9][0-9]_*.html"))
    pages += [name for name in BACK_MATTER if (root / name).is_file()]
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

            viewer_note = ""
            if VIEWER_MARK in page.read_text(encoding="utf-8"):
                try:
                    with DevToolsChromium(binary) as browser:
                        v_errors, rows = check_viewers(browser, url, allowed_prefixes=(f"http://127.0.0.1:{port}/",))
                    errors += v_errors
                    viewer_note = f", attention viewer: {rows} hovered/clicked row(s) checked"
                except (CDPError, OSError, StopIteration) as exc:
                    errors.append(f"attention viewer check failed to run: {exc}")

            status = "FAIL" if errors else "ok  "
            print(f"{status} {rel}: {source.math_nodes} math node(s), {len(source.images)} image(s), "
                  f"screenshot {shot}{viewer_note}")
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
