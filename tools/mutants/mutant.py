"""One mutant: a plausible wrong answer to one exercise, made from the solution's own source.

A mutant file ``tools/mutants/chNN_<topic>.py`` holds ``MUTANTS = [...]`` of :class:`M`:

    M("func", "what the mistake is", old="x >= t", new="x > t", keys=("boundary", ">="))
    M("func", "a hard-coded answer", code="def func(model):\n    return [(1, 0)]\n", keys=(...,))

``old``/``new`` replace text inside the solution's function ``func`` (``old`` must occur
exactly ``count`` times there, default once, and every occurrence is replaced); ``code``
replaces the whole function. ``keys`` are the words (case-insensitive, any one suffices) that a
failure message should contain to count as naming the mistake.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass, field


@dataclass
class M:
    func: str
    what: str
    old: str | None = None
    new: str | None = None
    code: str | None = None
    keys: tuple = field(default_factory=tuple)
    count: int = 1

    def source(self, module_source: str) -> str:
        """The mutated function's source (dedented), from the solution module's source."""
        if self.code is not None:
            return textwrap.dedent(self.code)
        tree = ast.parse(module_source)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name == self.func:
                lines = module_source.splitlines(keepends=True)
                start = (node.decorator_list[0].lineno if node.decorator_list else node.lineno) - 1
                text = "".join(lines[start:node.end_lineno])
                n = text.count(self.old)
                if n != self.count:
                    raise ValueError(f"mutant {self.func!r} / {self.what!r}: {self.old!r} occurs {n} times "
                                     f"in the solution's function, expected {self.count}")
                return textwrap.dedent(text.replace(self.old, self.new))
        raise ValueError(f"mutant {self.what!r}: the solution has no function {self.func!r}")

    def build(self, module, module_source: str):
        """The mutated function, compiled in a copy of the solution module's namespace."""
        ns = dict(vars(module))
        exec(compile(self.source(module_source), f"<mutant {self.func}: {self.what}>", "exec"), ns)
        if self.func not in ns or not callable(ns[self.func]):
            raise ValueError(f"mutant {self.what!r} defines no function {self.func!r}")
        return ns[self.func]

    def names_mistake(self, message: str) -> bool:
        low = message.lower()
        return any(k.lower() in low for k in self.keys)
