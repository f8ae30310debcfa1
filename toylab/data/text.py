"""Offline natural text: docstrings of the Python standard library, character-tokenized.

Every machine with Python has this English text, so the lab needs no download.
The corpus is deterministic for a given Python version (the stdlib's docstrings
change between versions); :func:`corpus_fingerprint` records which one a model saw.
"""

from __future__ import annotations

import ast
import functools
import gc
import hashlib
import importlib.util
import os
import re
import string
import warnings
from typing import Any, Iterator

import torch

from toylab.data.bigram import BOS
from toylab.data.sampling import check_batch_size, check_generator
from toylab.data.spec import check_int, check_json_able, check_seed, check_spec

#: Standard-library modules whose docstrings form the corpus (sorted; pure Python;
#: a dotted name is found inside its package's folder, nothing is imported).
#: Modules missing from an installation are skipped (the fingerprint changes).
CORPUS_MODULES: tuple[str, ...] = tuple(sorted([
    "_pydecimal", "argparse", "ast", "asyncio.base_events", "asyncio.events", "base64",
    "calendar", "cmd", "collections", "concurrent.futures._base", "configparser",
    "contextlib", "difflib", "doctest", "email._header_value_parser",
    "email.message", "enum", "fractions", "ftplib", "functools", "http.client",
    "http.cookiejar", "http.server", "imaplib", "inspect", "ipaddress", "json", "logging",
    "logging.handlers", "optparse", "pdb", "pickle",
    "queue", "random", "shutil", "smtplib", "socket", "statistics",
    "subprocess", "tarfile", "tempfile", "textwrap", "threading", "traceback", "typing",
    "unittest.case", "unittest.mock", "urllib.parse", "urllib.request", "uuid",
    "xml.dom.minidom", "xml.etree.ElementTree", "zipfile",
]))

#: Characters kept in the corpus: printable ASCII without tab/CR/VT/FF, plus newline.
ALLOWED_CHARS = frozenset(c for c in string.printable if c not in "\t\r\x0b\x0c")

_NOT_ALLOWED = re.compile(r"[^\n -~]")  # anything but newline and printable ASCII
_SPACES = re.compile(r" {2,}")
MIN_DOCSTRING_CHARS = 64  # docstrings shorter than this (after cleaning) are dropped


def _module_source_path(name: str) -> str | None:
    """Path of the ``.py`` file of stdlib module ``name`` without executing it (``None`` if absent)."""
    top, *rest = name.split(".")
    spec = importlib.util.find_spec(top)  # a top-level name is located, not imported
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    if not rest:
        return spec.origin
    if not spec.submodule_search_locations:
        return None
    base = os.path.join(spec.submodule_search_locations[0], *rest)
    for candidate in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(candidate):
            return candidate
    return None


def _parse(source: str) -> ast.Module:
    """``ast.parse`` with the cyclic garbage collector paused (about 3x faster)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(source)
    finally:
        if was_enabled:
            gc.enable()


def _docstrings(source: str) -> Iterator[str]:
    """Module, class and function docstrings of ``source``, in source (pre-)order."""
    def visit(node: ast.AST) -> Iterator[str]:
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc
        for child in ast.iter_child_nodes(node):
            yield from visit(child)
    yield from visit(_parse(source))


def _clean(doc: str) -> str:
    """Normalise one docstring.

    Tabs become spaces; characters outside :data:`ALLOWED_CHARS` are dropped; doctest
    lines (starting with ``>>>`` or ``...``) are dropped; each line is stripped and
    runs of spaces collapse to one; runs of blank lines collapse to one.
    """
    doc = _NOT_ALLOWED.sub("", doc.replace("\t", " "))
    lines: list[str] = []
    for line in doc.split("\n"):
        line = _SPACES.sub(" ", line).strip()
        if line.startswith((">>>", "...")):
            continue
        if line or (lines and lines[-1]):
            lines.append(line)
    return "\n".join(lines).strip()


@functools.lru_cache(maxsize=1)
def load_corpus() -> str:
    """English text from the docstrings of :data:`CORPUS_MODULES` (about 0.5 MB on CPython 3.11).

    Each module's source is parsed with :mod:`ast` (never imported); its docstrings
    are cleaned with :func:`_clean`, those shorter than ``MIN_DOCSTRING_CHARS`` and
    exact duplicates are dropped, and the rest are joined with blank lines in module
    order. The text holds only printable ASCII and ``\\n``. Cached per process.
    """
    seen: set[str] = set()
    parts: list[str] = []
    for name in CORPUS_MODULES:
        path = _module_source_path(name)
        if path is None:
            continue
        with open(path, encoding="utf-8") as f:
            source = f.read()
        for doc in _docstrings(source):
            doc = _clean(doc)
            if len(doc) >= MIN_DOCSTRING_CHARS and doc not in seen:
                seen.add(doc)
                parts.append(doc)
    if not parts:
        raise RuntimeError("found no standard-library sources to build the text corpus from")
    return "\n\n".join(parts) + "\n"


def corpus_fingerprint(text: str) -> str:
    """First 16 hex digits of ``sha256(text.encode("utf-8"))``: which corpus a model saw."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class CharTokenizer:
    """Character-level tokenizer: id 0 is BOS, ids ``1..len(alphabet)`` the characters.

    ``alphabet`` is the sorted set of characters of ``text`` (or given directly via
    :meth:`from_alphabet`). ``vocab[i]`` is the string of id ``i`` (``"<bos>"`` for 0).
    """

    kind = "char"

    def __init__(self, text: str) -> None:
        if not isinstance(text, str) or not text:
            raise ValueError("CharTokenizer needs a non-empty str to take its alphabet from")
        self.alphabet = "".join(sorted(set(text)))
        self.vocab: list[str] = ["<bos>"] + list(self.alphabet)
        # _table[ord(c)] = id of c, -1 for characters outside the alphabet
        self._table = torch.full((ord(self.alphabet[-1]) + 1,), -1, dtype=torch.long)
        self._table[[ord(c) for c in self.alphabet]] = torch.arange(1, len(self.alphabet) + 1)

    @classmethod
    def from_alphabet(cls, alphabet: str) -> "CharTokenizer":
        """A tokenizer for exactly the (distinct) characters of ``alphabet``."""
        return cls(alphabet)

    @property
    def d_vocab(self) -> int:
        """Number of token ids: ``1 + len(alphabet)``."""
        return len(self.vocab)

    def encode(self, text: str, bos: bool = False) -> torch.Tensor:
        """``[len(text) (+1 with bos)]`` LongTensor of ids; ``bos=True`` prepends id 0.

        Raises:
            ValueError: naming the first character not in the alphabet and its position.
        """
        if not isinstance(text, str):
            raise ValueError(f"encode needs a str, got {type(text).__name__}")
        codes = torch.tensor([ord(c) for c in text], dtype=torch.long)
        known = codes < len(self._table)
        ids = torch.full_like(codes, -1)
        ids[known] = self._table[codes[known]]
        if (ids < 0).any():
            pos = int((ids < 0).nonzero()[0])
            raise ValueError(f"character {text[pos]!r} at position {pos} is not in the "
                             f"tokenizer's alphabet of {len(self.alphabet)} characters")
        if bos:
            ids = torch.cat([torch.tensor([BOS]), ids])
        return ids

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """The text of a 1-D sequence of ids; BOS (id 0) decodes to nothing.

        Raises:
            ValueError: if an id is outside ``[0, d_vocab)``.
        """
        values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if values and isinstance(values[0], list):
            raise ValueError("decode needs a 1-D sequence of ids")
        out = []
        for pos, i in enumerate(values):
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.d_vocab:
                raise ValueError(f"id {i!r} at position {pos} is outside [0, {self.d_vocab - 1}]")
            if i != BOS:
                out.append(self.vocab[i])
        return "".join(out)

    @property
    def spec(self) -> dict[str, Any]:
        """``{"kind": "char", "alphabet": str}``."""
        return {"kind": self.kind, "alphabet": self.alphabet}


@functools.lru_cache(maxsize=1)
def _tokenized_corpus() -> tuple[CharTokenizer, torch.Tensor]:
    """The corpus's own :class:`CharTokenizer` and the ``[N]`` ids of the corpus (cached)."""
    text = load_corpus()
    tokenizer = CharTokenizer(text)
    return tokenizer, tokenizer.encode(text)


class TextData:
    """Windows of the docstring corpus: ``[BOS, c_1, ..., c_{n_ctx-1}]``.

    The corpus (:func:`load_corpus`) is tokenized with a :class:`CharTokenizer` over
    its own characters; the first 90% of characters is the training split, the last
    10% the validation split. :meth:`sample` draws window starts
    ``i ~ Uniform{0..N - n_ctx + 1}`` in the chosen split (length ``N``) and returns
    ``[BOS] + split[i : i + n_ctx - 1]``.

    ``seed`` is accepted for the common dataset interface; the corpus and the split
    are fixed, and sampling uses only the generator passed to :meth:`sample`.
    """

    kind = "text"
    SPLITS = ("train", "validation")
    _FIELDS: tuple[str, ...] = ("n_ctx", "seed")  # constructor arguments kept in the spec

    def __init__(self, *, n_ctx: int = 64, seed: int = 0) -> None:
        self.n_ctx = check_int("n_ctx", n_ctx, minimum=2)
        self.seed = check_seed(seed)
        self.fingerprint = corpus_fingerprint(load_corpus())
        self.tokenizer, ids = _tokenized_corpus()
        self.d_vocab = self.tokenizer.d_vocab
        cut = int(0.9 * len(ids))
        self.splits = {"train": ids[:cut].clone(), "validation": ids[cut:].clone()}
        if len(self.splits["validation"]) < self.n_ctx - 1:
            raise ValueError(f"n_ctx={self.n_ctx} is longer than the validation split")

    def sample(self, batch_size: int, generator: torch.Generator,
               split: str = "train") -> torch.Tensor:
        """``[batch_size, n_ctx]`` LongTensor of windows from ``split``; uses only ``generator``."""
        batch_size = check_batch_size(batch_size)
        generator = check_generator(generator)
        if split not in self.SPLITS:
            raise ValueError(f"split must be one of {list(self.SPLITS)}, got {split!r}")
        data = self.splits[split]
        width = self.n_ctx - 1
        starts = torch.randint(0, len(data) - width + 1, (batch_size,), generator=generator)
        windows = data[starts.unsqueeze(1) + torch.arange(width)]
        bos = torch.full((batch_size, 1), BOS, dtype=torch.long)
        return torch.cat([bos, windows], dim=1)

    def _settings(self) -> dict[str, Any]:
        """Constructor arguments (subclasses add theirs)."""
        return {"n_ctx": self.n_ctx, "seed": self.seed}

    @property
    def spec(self) -> dict[str, Any]:
        """JSON-able description, with the corpus fingerprint and alphabet it was built on."""
        return check_json_able({"kind": self.kind, **self._settings(),
                                "corpus_fingerprint": self.fingerprint,
                                "alphabet": self.tokenizer.alphabet})

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "TextData":
        """Rebuild from :attr:`spec`; warns if this machine's corpus differs from the spec's.

        ``corpus_fingerprint`` and ``alphabet`` may be left out together (a preset
        says "this machine's corpus"); the dataset's own ``spec`` always has them.
        """
        if isinstance(spec, dict) and "corpus_fingerprint" not in spec and "alphabet" not in spec:
            return cls(**check_spec(spec, cls.kind, list(cls._FIELDS)))
        kwargs = check_spec(spec, cls.kind, list(cls._FIELDS) + ["corpus_fingerprint", "alphabet"])
        fingerprint, alphabet = kwargs.pop("corpus_fingerprint"), kwargs.pop("alphabet")
        data = cls(**kwargs)
        if (data.fingerprint, data.tokenizer.alphabet) != (fingerprint, alphabet):
            warnings.warn(
                f"the text corpus here (fingerprint {data.fingerprint}) differs from the one in "
                f"the spec ({fingerprint}): a different Python version has different "
                "docstrings, so samples will not match", RuntimeWarning, stacklevel=2)
        return data

    def __repr__(self) -> str:
        return f"TextData(n_ctx={self.n_ctx}, corpus={self.fingerprint}, d_vocab={self.d_vocab})"
