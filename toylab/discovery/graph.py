"""The computational graph of a transformer, at the level of edges.

The residual stream is a plain sum of what every earlier component wrote, so
every input a head or an MLP reads splits exactly into one term per upstream
component. That makes the model a graph:

- **sender nodes** (in topological order): ``embed`` (the token embedding
  ``W_E[x]``, hook ``hook_embed``), ``pos`` (the positional embedding
  ``W_pos[p]``, where it enters: only the query and key inputs for
  ``positional="shortformer"``, the whole residual stream for ``"learned"``,
  absent for ``"none"``), then layer by layer every head ``L{l}H{h}`` (its
  output ``z^h W_O^h``, hook ``blocks.{l}.attn.hook_result``) and, in a model
  with MLPs (``d_mlp > 0``), the layer's MLP ``MLP{l}`` (its output
  ``act(x W_in + b_in) W_out + b_out``, hook ``blocks.{l}.hook_mlp_out``);
- **receiver slots**: each head's query, key and value input
  (``"L{l}H{h}.q"``, ``.k``, ``.v``), each MLP's one input (``"MLP{l}"``, the
  same name as the node: hook ``blocks.{l}.hook_mlp_in``) and the ``logits``;
- an **edge** ``sender -> slot`` for every sender upstream of the slot, named
  ``"L0H0->L1H1.k"``, ``"L0H1->MLP0"``, ``"MLP0->logits"``. A head of layer
  ``l`` reads the heads and MLPs of layers ``< l``; the MLP of layer ``l``
  reads the heads of layers ``<= l`` and the MLPs of layers ``< l``.

With the input of a slot ``r`` written as a sum over its senders,
``x_r = sum_{s -> r} out_s`` (``+ W_pos`` where it enters), a receiver head
computes ``q = x_q W_Q^h``, ``k = x_k W_K^h``, ``v = x_v W_V^h``,
``A = softmax*(q k^T / sqrt(d_head))``, ``out = A v W_O^h``, an MLP
``out = act(x_r W_in + b_in) W_out + b_out``, and the logits are
``x_logits W_U``. A :class:`Circuit` is a set of kept edges.

**LayerNorm.** With ``cfg.layernorm`` the slot input ``x_r`` is still the sum
above, taken *before* the receiver's own LayerNorm, which is applied to it
afresh (``ln1`` for a head's q/k/v, ``ln2`` for an MLP, ``ln_final`` for the
logits), with its scale recomputed from the patched sum. Patching stays exact
(the receiver reads exactly the stream it would read had only those senders
changed), but a receiver is no longer affine in its input: effects of edges
into one receiver do not add up after the normalisation. A LayerNorm model with
``positional="shortformer"`` is refused: its positions join the queries and
keys after ``ln1``, outside the normalised sum. An attention-only
model's graph has no MLP nodes and no MLP slots: its nodes, slots and edges are
those of the graph before MLPs existed, in the same order.

**Which model.** Edge names say nothing about the model (every 2-layer, 2-head
model has an edge ``"L0H0->L1H1.k"``), so a graph remembers the model it was
built from: its config and a fingerprint of its weights (``Graph.model_key``,
a hash taken once, when the graph is built). A graph is used only with a model
of that shape and those weights (:meth:`Graph.check_model`), and circuits are
compared (ROC, precision and recall, ``==``) only when their graphs were built
from the same model (:meth:`Graph.same_model`): the same edge name in two
models is not the same edge.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from toylab.model import head_name  # noqa: F401 - re-exported: the discovery modules import it from here

SLOTS = ("q", "k", "v")


def mlp_name(layer: int) -> str:
    """``"MLP{layer}"``: the name of layer ``layer``'s MLP, as a node and as a receiver slot."""
    return f"MLP{layer}"


class GraphNotApplicable(ValueError, NotImplementedError):
    """The edge graph does not apply to this model (MLP modules its config does not declare; LayerNorm with
    shortformer positions, which join the queries and keys after the normalisation)."""


def model_fingerprint(model) -> str:
    """A short hash of ``model``'s config and weights (every tensor of its ``state_dict``, byte for byte)."""
    h = hashlib.sha1(repr(sorted(model.cfg.to_dict().items())).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        try:
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        except (RuntimeError, NotImplementedError, TypeError):  # a meta or exotic tensor: its shape only
            h.update(repr((t.dtype, tuple(t.shape), id(t))).encode())
    return h.hexdigest()[:16]


def _no_model():
    return None


def check_graph(graph) -> "Graph":
    """``graph`` itself; ``TypeError`` unless it is a :class:`Graph`."""
    if not isinstance(graph, Graph):
        raise TypeError(f"graph must be a toylab.discovery.graph.Graph (Graph(model)), got {type(graph).__name__}")
    return graph


def check_circuit(circuit, graph: "Graph", what: str = "circuit") -> "Circuit":
    """``circuit`` itself; ``TypeError`` unless it is a :class:`Circuit`, ``ValueError`` unless its graph
    was built from the same model as ``graph``."""
    if not isinstance(circuit, Circuit):
        raise TypeError(f"{what} must be a Circuit (graph.circuit(edge names)), got {type(circuit).__name__}")
    if not graph.same_model(circuit.graph):
        raise ValueError(f"{what} belongs to the graph of another model ({circuit.graph.describe()}), not to "
                         f"this one ({graph.describe()}): the same edge name in two models is not the same edge")
    return circuit


@dataclass(frozen=True)
class Node:
    """A sender: ``kind`` is ``"embed"``, ``"pos"``, ``"head"`` (with ``layer`` and ``head``) or ``"mlp"``
    (with ``layer``)."""

    name: str
    kind: str
    layer: int = -1
    head: int = -1


@dataclass(frozen=True)
class Edge:
    """``sender -> receiver``: ``receiver`` is a slot name (``"L1H0.k"``, ``"MLP0"``) or ``"logits"``."""

    sender: str
    receiver: str

    @property
    def name(self) -> str:
        return f"{self.sender}->{self.receiver}"


class Graph:
    """The edge graph of ``model`` (an :class:`~toylab.model.AttnOnlyTransformer`, with or without MLPs
    and LayerNorm; not LayerNorm with shortformer positions).

    Attributes:
        nodes: senders in topological order (``embed``, ``pos``, then per layer its heads and its MLP).
        receivers: slots in topological order (layer by layer: head by head ``q, k, v``, then the MLP's
            input; ``logits`` last).
        edges: every edge, ordered by receiver, then by sender (topological order).
        index: edge name -> position in ``edges`` (the axis of every per-edge tensor).
    """

    def __init__(self, model) -> None:
        cfg = getattr(model, "cfg", None)
        if cfg is None or not hasattr(model, "state_dict") or not hasattr(cfg, "n_layers"):
            raise TypeError(f"Graph takes a model (an AttnOnlyTransformer), got {type(model).__name__}")
        if cfg.layernorm and cfg.positional == "shortformer":
            raise GraphNotApplicable("the edge graph needs a model without LayerNorm, or with positional='learned' "
                                     "or 'none': shortformer positions join the queries and keys after ln1, so "
                                     "a head's input is not one normalised sum of upstream terms")
        if cfg.n_layers < 1:
            raise ValueError("the edge graph needs a model with at least one layer of attention")
        d_mlp = getattr(cfg, "d_mlp", 0)
        mlps = [n for n, _ in model.named_modules() if n.split(".")[-1].startswith("mlp")]
        if mlps and not d_mlp:
            raise GraphNotApplicable(f"the edge graph is of attention-only models and of the MLPs a "
                                     f"ModelConfig declares (d_mlp > 0): this model has MLP modules "
                                     f"({', '.join(mlps[:2])}) but d_mlp = 0, so they would be left out of it")
        self.cfg = cfg
        self.model_key = model_fingerprint(model)
        self._model = weakref.ref(model)
        self.positional = cfg.positional
        nodes = [Node("embed", "embed")]
        if cfg.positional != "none":
            nodes.append(Node("pos", "pos"))
        self.has_mlps = bool(d_mlp)
        for l in range(cfg.n_layers):
            for h in range(cfg.n_heads):
                nodes.append(Node(head_name(l, h), "head", l, h))
            if self.has_mlps:
                nodes.append(Node(mlp_name(l), "mlp", l))
        self.nodes: list[Node] = nodes
        self.node_index = {n.name: i for i, n in enumerate(nodes)}
        receivers, edges = [], []
        for l in range(cfg.n_layers):
            for h in range(cfg.n_heads):
                for slot in SLOTS:
                    r = f"{head_name(l, h)}.{slot}"
                    receivers.append(r)
                    edges += [Edge(s.name, r) for s in self._senders(l, slot)]
            if self.has_mlps:
                receivers.append(mlp_name(l))
                edges += [Edge(s.name, mlp_name(l)) for s in self._senders(l, "mlp")]
        receivers.append("logits")
        edges += [Edge(s.name, "logits") for s in self._senders(cfg.n_layers, "v")]
        self.receivers: list[str] = receivers
        self.edges: list[Edge] = edges
        self.index = {e.name: i for i, e in enumerate(edges)}

    def _senders(self, layer: int, slot: str) -> list[Node]:
        """The senders upstream of ``slot`` (``q, k, v`` of a head or ``"mlp"``) of layer ``layer``."""
        out = []
        for n in self.nodes:
            if n.kind == "pos" and slot in ("v", "mlp") and self.positional == "shortformer":
                continue  # shortformer: positions enter queries and keys only (not values, MLPs or the logits)
            if n.kind == "head" and (n.layer > layer if slot == "mlp" else n.layer >= layer):
                continue  # an MLP reads the heads of its own layer too
            if n.kind == "mlp" and n.layer >= layer:
                continue
            out.append(n)
        return out

    def __len__(self) -> int:
        return len(self.edges)

    def __repr__(self) -> str:
        return f"Graph({len(self.nodes)} nodes, {len(self.receivers)} receivers, {len(self.edges)} edges)"

    def __getstate__(self) -> dict:  # a weak reference does not pickle: the fingerprint travels instead
        return {k: v for k, v in self.__dict__.items() if k != "_model"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("has_mlps", False)  # a graph pickled before MLP nodes existed
        self._model = _no_model

    def describe(self) -> str:
        c = self.cfg
        mlp = f", d_mlp {c.d_mlp}" if self.has_mlps else ""
        return f"{c.n_layers} layers x {c.n_heads} heads{mlp}, d_vocab {c.d_vocab}, weights {self.model_key}"

    def same_model(self, other: "Graph") -> bool:
        """Whether ``other`` was built from the same model (the same object, or equal weights and config)."""
        return other is self or (isinstance(other, Graph) and (
            other.model_key == self.model_key or (self._model() is not None and other._model() is self._model())))

    def check_model(self, model) -> None:
        """``ValueError`` unless ``model`` is the model this graph was built from (its shape and weights)."""
        if model is self._model():
            return
        cfg = getattr(model, "cfg", None)
        if cfg is None or not hasattr(model, "state_dict"):
            raise TypeError(f"model must be an AttnOnlyTransformer, got {type(model).__name__}")
        if cfg != self.cfg:
            raise ValueError(f"the graph was built for another model ({self.describe()}), not this one "
                             f"({cfg.n_layers} layers x {cfg.n_heads} heads, d_vocab {cfg.d_vocab}): "
                             f"build Graph(model) for this model")
        if model_fingerprint(model) != self.model_key:
            raise ValueError(f"the graph was built from a model with other weights ({self.describe()}): the same "
                             f"edge name in two models is not the same edge; build Graph(model) for this model")

    @property
    def edge_names(self) -> list[str]:
        return [e.name for e in self.edges]

    def node(self, name: str) -> Node:
        """The sender called ``name``; ``ValueError`` listing the nodes if there is none."""
        if not isinstance(name, str):
            raise TypeError(f"a node is named by a string like 'L0H1', 'MLP0' or 'embed', got {type(name).__name__}")
        if name not in self.node_index:
            raise ValueError(f"unknown node {name!r}; this model's nodes are {[n.name for n in self.nodes]}")
        return self.nodes[self.node_index[name]]

    def edge_index(self, name: str) -> int:
        """Position of edge ``name`` (``"L0H0->L1H1.k"``); ``ValueError`` if the graph has no such edge."""
        if not isinstance(name, str):
            raise TypeError(f"an edge is named by a string like 'L0H0->L1H1.k', got {type(name).__name__}")
        if name not in self.index:
            raise ValueError(f"unknown edge {name!r}; edges are named 'sender->receiver', e.g. "
                             f"{self.edges[0].name!r}, {self.edges[-1].name!r} (see Graph.edge_names)")
        return self.index[name]

    def incoming(self, receiver: str) -> list[int]:
        """Indices of the edges into ``receiver`` (a slot or ``"logits"``), senders in topological order."""
        if receiver not in self.receivers:
            raise ValueError(f"unknown receiver {receiver!r}; receivers are {self.receivers}")
        return [i for i, e in enumerate(self.edges) if e.receiver == receiver]

    def outgoing(self, sender: str) -> list[int]:
        """Indices of the edges out of node ``sender``."""
        self.node(sender)
        return [i for i, e in enumerate(self.edges) if e.sender == sender]

    def mask(self, edges: Iterable[str]):
        """Bool tensor ``[n_edges]``: True at the named edges."""
        edges = _edge_names(edges, self)
        m = torch.zeros(len(self.edges), dtype=torch.bool)
        for name in edges:
            m[self.edge_index(name)] = True
        return m

    def circuit(self, edges: Iterable[str]) -> "Circuit":
        """A :class:`Circuit` of this graph keeping ``edges`` (names are checked)."""
        return Circuit(self, edges)


class Circuit:
    """A set of kept edges of a :class:`Graph` (every other edge is patched or ablated).

    ``circuit.edges`` is a frozenset of edge names; ``circuit.mask`` a bool
    tensor ``[n_edges]``; ``circuit.nodes`` the senders with a kept outgoing edge.
    """

    def __init__(self, graph: Graph, edges: Iterable[str]):
        check_graph(graph)
        edges = frozenset(_edge_names(edges, graph))
        for e in edges:
            graph.edge_index(e)
        self.graph = graph
        self.edges = edges

    @property
    def mask(self):
        return self.graph.mask(self.edges)

    @property
    def nodes(self) -> set[str]:
        return {self.graph.edges[self.graph.index[e]].sender for e in self.edges}

    def __len__(self) -> int:
        return len(self.edges)

    def __contains__(self, edge: str) -> bool:
        return edge in self.edges

    def __eq__(self, other) -> bool:
        return isinstance(other, Circuit) and self.edges == other.edges and self.graph.same_model(other.graph)

    def __hash__(self) -> int:
        return hash(self.edges)

    def __repr__(self) -> str:
        order = sorted(self.edges, key=self.graph.index.__getitem__)
        return f"Circuit({len(self.edges)} of {len(self.graph)} edges: {', '.join(order)})"

    def precision_recall(self, reference: "Circuit") -> tuple[float, float]:
        """``(|C & R| / |C|, |C & R| / |R|)`` against a reference circuit ``R`` (precision 1.0 for an empty C)."""
        check_circuit(reference, self.graph, "reference")
        both = len(self.edges & reference.edges)
        precision = both / len(self.edges) if self.edges else 1.0
        recall = both / len(reference.edges) if reference.edges else 1.0
        return precision, recall


def _edge_names(edges, graph: "Graph | None" = None) -> list:
    """``edges`` as a list of edge names; ``TypeError`` for one string or a non-iterable, ``ValueError``
    for a Circuit of another model's graph than ``graph``."""
    if isinstance(edges, str):
        raise TypeError(f"give an iterable of edge names such as [{edges!r}], not a single string")
    if isinstance(edges, Circuit):
        if graph is not None:
            check_circuit(edges, graph, "edges")
        return list(edges.edges)
    try:
        return list(edges)
    except TypeError:
        raise TypeError(f"edges must be an iterable of edge names, got {type(edges).__name__}") from None
