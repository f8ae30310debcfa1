"""Factored matrices: a product ``A @ B`` kept as its two factors.

Why factored
------------
Elhage et al. (2021) read a transformer through products of weight matrices
that are huge but low rank.  The full QK circuit of a head,
``W_E @ W_Q @ W_K.T @ W_E.T``, is ``[d_vocab, d_vocab]``: with
``d_vocab = 50_000`` that is 2.5e9 numbers (10 GB in float32), yet its rank is
at most ``d_head`` (64).  A :class:`FactoredMatrix` stores the product
``M = A @ B`` as

    ``A [..., m, k]`` and ``B [..., k, n]``   (``k`` small: d_model or d_head)

which costs ``O((m + n) k)`` memory instead of ``O(m n)``.  Everything the lab
needs is answered through small ``k x k`` matrices, never the ``m x n`` one:

* eigenvalues: the nonzero eigenvalues of ``AB [m, m]`` are those of
  ``BA [k, k]`` (the rest are zeros), because ``AB x = lam x`` with
  ``lam != 0`` gives ``BA (B x) = lam (B x)`` and ``B x != 0``;
* SVD: ``A = Q_A R_A`` and ``B.T = Q_B R_B`` (thin QR, ``Q`` orthonormal), so
  ``AB = Q_A (R_A R_B.T) Q_B.T`` and the SVD of the small middle matrix
  ``R_A R_B.T = U' S Vh'`` gives ``AB = (Q_A U') S (Vh' Q_B.T)``;
* Frobenius norm: ``||AB||_F^2 = trace(B.T A.T A B) = trace((A.T A)(B B.T))``;
* products with other matrices stay factored, through the small side.

Only :attr:`FactoredMatrix.AB` forms the ``m x n`` product, and only when you
ask for it.

Conventions: row vectors as in TransformerLens, so the OV circuit of a head is
``FactoredMatrix(W_V, W_O)`` and the QK circuit ``FactoredMatrix(W_Q, W_K.mT)``.
Leading (batch) dimensions, e.g. ``[n_layers, n_heads]``, broadcast between
``A`` and ``B``.  Nothing here mutates its inputs; ``.A`` and ``.B`` may be
views of the tensors you passed in (broadcast with ``expand``, no copy).

Non-finite factors: ``svd``, ``eigenvalues`` and ``norm`` refuse a factor holding
NaN or inf (``ValueError`` naming the factor and the count): LAPACK would fail
deep inside, or return one NaN eigenvalue among plausible ones. Products and
indexing let NaN propagate, as a matrix product does.

Precision: ``svd``, ``eigenvalues`` and ``norm`` compute in float64 and return
the input's precision (float32 in -> float32 / complex64 out).  Their inputs
are only ``O((m + n) k)`` numbers, so the promotion is cheap, and it keeps
results close to the dense computation.

Length: this module is longer than the lab's usual 400 lines on purpose. It is one
class, whose operations (products, transpose, eigenvalues, SVD, norms, indexing)
share the same broadcasting and precision rules and read best side by side.
"""

from __future__ import annotations

from typing import Any, Tuple, Union

import torch
from torch import Tensor

__all__ = ["FactoredMatrix"]


def _fmt(shape: Any) -> str:
    """Format a shape as ``[2, 3, 20, 5]``."""
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _compute_dtype() -> torch.dtype:
    """The dtype used for the accurate small-matrix algebra (always float64)."""
    return torch.float64


def _complex_of(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype matching a real floating dtype (complex64 below float64)."""
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def _broadcast_batch(s1: Tuple[int, ...], s2: Tuple[int, ...], what: str) -> torch.Size:
    try:
        return torch.broadcast_shapes(torch.Size(s1), torch.Size(s2))
    except RuntimeError:
        raise ValueError(
            f"{what}: batch dims {_fmt(s1)} and {_fmt(s2)} do not broadcast"
        ) from None


def _eye_like(n: int, ref: Tensor) -> Tensor:
    return torch.eye(n, dtype=ref.dtype, device=ref.device)


class FactoredMatrix:
    """The matrix product ``M = A @ B``, stored as its factors.

    Args:
        A: ``[..., m, k]`` floating-point tensor (left factor).
        B: ``[..., k, n]`` floating-point tensor (right factor).  The batch
            dims ``...`` of ``A`` and ``B`` must broadcast; both are broadcast
            (as views) to the common batch shape.  Different float dtypes are
            promoted to the common one.

    Shapes: ``ldim = m``, ``mdim = k`` (inner), ``rdim = n``;
    ``shape = batch_shape + (m, n)``.

    Raises:
        ValueError: a factor is not a tensor, has fewer than 2 dims, is not
            floating point, the factors sit on different devices, the inner
            dims differ (``A.shape[-1] != B.shape[-2]``), or the batch dims
            do not broadcast.
    """

    def __init__(self, A: Tensor, B: Tensor):
        for name, t in (("A", A), ("B", B)):
            if not isinstance(t, Tensor):
                raise ValueError(
                    f"FactoredMatrix: {name} must be a torch.Tensor, got {type(t).__name__}"
                )
            if t.ndim < 2:
                raise ValueError(
                    f"FactoredMatrix: {name} must have at least 2 dims [..., rows, cols], "
                    f"got shape {_fmt(t.shape)}"
                )
            if not t.is_floating_point():
                raise ValueError(
                    f"FactoredMatrix: {name} must be a floating-point tensor, got {t.dtype}"
                )
        if A.device != B.device:
            raise ValueError(
                f"FactoredMatrix: A is on {A.device} but B is on {B.device}"
            )
        if A.shape[-1] != B.shape[-2]:
            raise ValueError(
                f"FactoredMatrix: inner dims differ: A {_fmt(A.shape)} has "
                f"{A.shape[-1]} columns but B {_fmt(B.shape)} has {B.shape[-2]} rows "
                "(expected A [..., m, k] and B [..., k, n])"
            )
        batch = _broadcast_batch(
            tuple(A.shape[:-2]), tuple(B.shape[:-2]),
            f"FactoredMatrix(A {_fmt(A.shape)}, B {_fmt(B.shape)})",
        )
        dtype = torch.promote_types(A.dtype, B.dtype)
        # .to() returns the same tensor when nothing changes and a copy
        # otherwise; .expand() is a view.  Neither writes into the inputs.
        A = A.to(dtype)
        B = B.to(dtype)
        self._A = A.expand(*batch, *A.shape[-2:]) if A.shape[:-2] != batch else A
        self._B = B.expand(*batch, *B.shape[-2:]) if B.shape[:-2] != batch else B

    # ------------------------------------------------------------------ shape
    @property
    def A(self) -> Tensor:
        """Left factor ``[..., m, k]`` (broadcast to the common batch shape)."""
        return self._A

    @property
    def B(self) -> Tensor:
        """Right factor ``[..., k, n]`` (broadcast to the common batch shape)."""
        return self._B

    @property
    def pair(self) -> Tuple[Tensor, Tensor]:
        """``(A, B)``."""
        return self._A, self._B

    @property
    def ldim(self) -> int:
        """``m``, the number of rows of ``AB``."""
        return self._A.shape[-2]

    @property
    def mdim(self) -> int:
        """``k``, the inner dimension (an upper bound on the rank of ``AB``)."""
        return self._A.shape[-1]

    @property
    def rdim(self) -> int:
        """``n``, the number of columns of ``AB``."""
        return self._B.shape[-1]

    @property
    def batch_shape(self) -> torch.Size:
        """The leading (batch) dims ``...``."""
        return self._A.shape[:-2]

    @property
    def shape(self) -> torch.Size:
        """``batch_shape + (m, n)``, the shape of ``AB``."""
        return torch.Size((*self.batch_shape, self.ldim, self.rdim))

    @property
    def ndim(self) -> int:
        """``len(shape)``: batch dims + 2."""
        return self._A.ndim

    @property
    def dtype(self) -> torch.dtype:
        """The (common) dtype of ``A`` and ``B``."""
        return self._A.dtype

    @property
    def device(self) -> torch.device:
        """The device of ``A`` and ``B``."""
        return self._A.device

    def __len__(self) -> int:
        """Size of the first batch dim (error if there are no batch dims)."""
        if not self.batch_shape:
            raise TypeError(
                f"len() of a FactoredMatrix with no batch dims (shape {_fmt(self.shape)})"
            )
        return self.batch_shape[0]

    def __repr__(self) -> str:
        return (
            f"FactoredMatrix(shape={_fmt(self.shape)}, A={_fmt(self._A.shape)}, "
            f"B={_fmt(self._B.shape)}, dtype={self.dtype})"
        )

    # ------------------------------------------------------------- products
    @property
    def AB(self) -> Tensor:
        """The full product ``A @ B``, ``[..., m, n]``.  Costs O(m n) memory."""
        return self._A @ self._B

    @property
    def BA(self) -> Tensor:
        """The product the other way round, ``B @ A``, ``[..., k, k]``.

        Needs ``m == n`` (otherwise ``B @ A`` is not defined): ValueError.
        """
        if self.ldim != self.rdim:
            raise ValueError(
                f"BA needs a square FactoredMatrix (m == n), got [m, n] = "
                f"[{self.ldim}, {self.rdim}]"
            )
        return self._B @ self._A

    @property
    def T(self) -> "FactoredMatrix":
        """The transpose ``(AB)^T = B^T A^T``: ``FactoredMatrix(B^T, A^T)``,
        shape ``[..., n, m]`` (batch dims are not transposed)."""
        return FactoredMatrix(self._B.mT, self._A.mT)

    @staticmethod
    def _small(A: Tensor, B: Tensor) -> "FactoredMatrix":
        """Factor ``A [..., m, k] @ B [..., k, n]`` with inner dim ``min(m, n, k)``.

        If ``k`` is not the smallest, form ``P = A @ B`` (``m x n``, which is
        then no larger than the factors) and return ``(I_m, P)`` if ``m <= n``
        else ``(P, I_n)``.
        """
        m, k, n = A.shape[-2], A.shape[-1], B.shape[-1]
        if k <= m and k <= n:
            return FactoredMatrix(A, B)
        P = A @ B
        if m <= n:
            return FactoredMatrix(_eye_like(m, P), P)
        return FactoredMatrix(P, _eye_like(n, P))

    def __matmul__(self, other: Union[Tensor, "FactoredMatrix"]) -> Union["FactoredMatrix", Tensor]:
        """``self @ other``.

        * ``other`` a FactoredMatrix ``C @ D`` with ``C [..., n, k2]``,
          ``D [..., k2, p]``: through the middle ``M = B @ C [..., k, k2]``,
          ``A (M D)`` if ``k <= k2`` else ``(A M) D``; a FactoredMatrix
          ``[..., m, p]`` whose inner dim is ``min(k, k2)`` (or ``m``/``p`` if
          smaller).
        * ``other`` a tensor ``X [..., n, p]``: ``FactoredMatrix(A, B @ X)``,
          ``[..., m, p]``, with inner dim ``k``; if ``p < k`` (or ``m < k``) it
          is collapsed to inner dim ``min(m, p)``.
        * ``other`` a vector ``v [n]``: the tensor ``A @ (B @ v)``, ``[..., m]``.

        Raises ValueError if the inner dimensions or batch dims do not match.
        """
        if isinstance(other, FactoredMatrix):
            self._check_mul(self.shape, other.shape)
            M = self._B @ other.A
            if self.mdim <= other.mdim:
                return self._small(self._A, M @ other.B)
            return self._small(self._A @ M, other.B)
        if not isinstance(other, Tensor):
            return NotImplemented
        other = self._as_operand(other)
        if other.ndim == 1:
            self._check_mul(self.shape, other.shape, vector="right")
            return (self._A @ (self._B @ other[:, None]))[..., 0]
        self._check_mul(self.shape, other.shape)
        return self._small(self._A, self._B @ other)

    def __rmatmul__(self, other: Tensor) -> Union["FactoredMatrix", Tensor]:
        """``other @ self``.

        * ``other`` a tensor ``X [..., p, m]``: ``FactoredMatrix(X @ A, B)``,
          ``[..., p, n]``, inner dim ``k``, collapsed to ``min(p, n)`` if smaller.
        * ``other`` a vector ``v [m]``: the tensor ``(v @ A) @ B``, ``[..., n]``.

        Raises ValueError if the inner dimensions or batch dims do not match.
        """
        if not isinstance(other, Tensor):
            return NotImplemented
        other = self._as_operand(other)
        if other.ndim == 1:
            self._check_mul(other.shape, self.shape, vector="left")
            return ((other[None, :] @ self._A) @ self._B)[..., 0, :]
        self._check_mul(other.shape, self.shape)
        return self._small(other @ self._A, self._B)

    def _as_operand(self, X: Tensor) -> Tensor:
        if X.ndim == 0:
            raise ValueError(
                f"cannot multiply a FactoredMatrix {_fmt(self.shape)} by a 0-dim tensor "
                "(use a vector [n] or a matrix [..., n, p])"
            )
        if X.device != self.device:
            raise ValueError(
                f"cannot multiply: FactoredMatrix is on {self.device}, tensor on {X.device}"
            )
        if not X.is_floating_point():
            X = X.to(self.dtype)  # e.g. an int one-hot; complex is not supported
        dtype = torch.promote_types(X.dtype, self.dtype)
        return X.to(dtype)

    @staticmethod
    def _check_mul(left: Tuple[int, ...], right: Tuple[int, ...], vector: str = "") -> None:
        """Check ``left @ right`` shapes; ``vector`` says which side is 1-D."""
        msg = f"cannot multiply {_fmt(left)} by {_fmt(right)}"
        a = left[-1]
        b = right[0] if vector == "right" else right[-2]
        if a != b:
            raise ValueError(f"{msg}: inner dimensions {a} and {b} differ")
        if not vector:
            _broadcast_batch(tuple(left[:-2]), tuple(right[:-2]), msg)

    # ------------------------------------------------------------- indexing
    def __getitem__(self, idx: Any) -> "FactoredMatrix":
        """Index the batch dims only: ``fm[i]``, ``fm[i, j]``, ``fm[:, 1:3]``, ...

        ``fm[idx]`` is ``FactoredMatrix(A[idx], B[idx])`` with the matrix dims
        kept whole; an ``...`` stands for batch dims only.  Indexing that
        would reach the matrix dims ``[m, n]`` raises ValueError: use
        ``fm.A``/``fm.B`` (or ``fm.AB`` for a small matrix) for that.
        """
        if not isinstance(idx, tuple):
            idx = (idx,)
        used = 0
        for i in idx:
            if i is None or i is Ellipsis or isinstance(i, bool):
                continue
            if isinstance(i, Tensor) and i.dtype == torch.bool:
                used += i.ndim
            else:
                used += 1
        n_batch = len(self.batch_shape)
        if used > n_batch:
            raise ValueError(
                f"FactoredMatrix indexing reaches only the batch dims "
                f"{_fmt(self.batch_shape)} of shape {_fmt(self.shape)}; the index uses "
                f"{used} dims and would index into the matrix dims [m, n] = "
                f"[{self.ldim}, {self.rdim}] (index .A, .B or .AB instead)"
            )
        full = idx + (slice(None), slice(None))
        return FactoredMatrix(self._A[full], self._B[full])

    def _finite_factors(self, what: str) -> Tuple[Tensor, Tensor]:
        """``(A, B)`` in the compute dtype; ``ValueError`` if either holds NaN or inf."""
        for name, t in (("A", self._A), ("B", self._B)):
            n_bad = int((~torch.isfinite(t)).sum())
            if n_bad:
                raise ValueError(f"FactoredMatrix.{what}: factor {name} {_fmt(t.shape)} holds {n_bad} NaN or inf "
                                 f"value(s); the {what} of a matrix with non-finite entries is undefined "
                                 "(are the model's weights finite?)")
        ct = _compute_dtype()
        return self._A.to(ct), self._B.to(ct)

    # ----------------------------------------------------------------- SVD
    def svd(self) -> Tuple[Tensor, Tensor, Tensor]:
        """Thin SVD of ``AB`` without forming it: ``AB = U diag(S) Vh``.

        Returns:
            ``U [..., m, r]`` (orthonormal columns), ``S [..., r]`` (descending,
            >= 0), ``Vh [..., r, n]`` (orthonormal rows), with
            ``r = min(m, n, k)``.  Like ``torch.linalg.svd(AB, full_matrices=False)``
            truncated to its top ``r`` singular values (the rest are zero).

        Formula: ``A = Q_A R_A``, ``B^T = Q_B R_B`` (thin QR),
        ``R_A R_B^T = U' diag(S) Vh'``, ``U = Q_A U'``, ``Vh = Vh' Q_B^T``.
        Cost ``O((m + n) k^2)``; computed in float64, returned in ``dtype``.
        Note: singular vectors are defined up to sign (and rotation within
        repeated singular values).
        """
        A, B = self._finite_factors("svd")
        Q_A, R_A = torch.linalg.qr(A, mode="reduced")          # [.., m, ka], [.., ka, k]
        Q_B, R_B = torch.linalg.qr(B.mT, mode="reduced")       # [.., n, kb], [.., kb, k]
        U_s, S, Vh_s = torch.linalg.svd(R_A @ R_B.mT, full_matrices=False)  # [.., ka, kb]
        U = Q_A @ U_s                                          # [.., m, r]
        Vh = Vh_s @ Q_B.mT                                     # [.., r, n]
        return U.to(self.dtype), S.to(self.dtype), Vh.to(self.dtype)

    @property
    def U(self) -> Tensor:
        """``U [..., m, r]`` of :meth:`svd` (recomputes the SVD each call)."""
        return self.svd()[0]

    @property
    def S(self) -> Tensor:
        """``S [..., r]`` of :meth:`svd`, descending (recomputes the SVD each call)."""
        return self.svd()[1]

    @property
    def Vh(self) -> Tensor:
        """``Vh [..., r, n]`` of :meth:`svd` (recomputes the SVD each call)."""
        return self.svd()[2]

    def collapse_l(self) -> Tensor:
        """Drop the orthonormal left factor: ``diag(S) Vh``, ``[..., r, n]``.

        ``AB = U (diag(S) Vh)`` with ``U`` orthonormal, so this ``r x n``
        matrix has the same singular values and right singular vectors.
        """
        _, S, Vh = self.svd()
        return S[..., :, None] * Vh

    def collapse_r(self) -> Tensor:
        """Drop the orthonormal right factor: ``U diag(S)``, ``[..., m, r]``."""
        U, S, _ = self.svd()
        return U * S[..., None, :]

    # ---------------------------------------------------------- eigenvalues
    @property
    def eigenvalues(self) -> Tensor:
        """Eigenvalues of the square ``AB [..., m, m]`` that can be nonzero.

        Returns a complex tensor ``[..., min(m, k)]`` sorted by descending
        magnitude: ``eigvals(B @ A)`` (``k x k``) when ``k <= m`` -- the
        nonzero eigenvalues of ``AB`` and ``BA`` coincide with multiplicity,
        and ``AB`` has ``m - k`` more zeros -- or ``eigvals(A @ B)`` when
        ``m < k`` (then ``AB`` is the smaller matrix).  Computed in float64,
        returned as complex64 (complex128 for float64 input).

        Raises ValueError if ``m != n``.
        """
        if self.ldim != self.rdim:
            raise ValueError(
                f"eigenvalues need a square matrix, got [m, n] = [{self.ldim}, {self.rdim}]"
            )
        A, B = self._finite_factors("eigenvalues")
        small = B @ A if self.mdim <= self.ldim else A @ B
        ev = torch.linalg.eigvals(small)
        order = torch.sort(ev.abs(), dim=-1, descending=True, stable=True).indices
        ev = torch.gather(ev, -1, order)
        return ev.to(_complex_of(self.dtype))

    # ----------------------------------------------------------------- norm
    def norm(self) -> Tensor:
        """Frobenius norm of ``AB``, ``[...]``, without forming ``AB``.

        Formula: ``||AB||_F = sqrt(trace((A^T A)(B B^T)))``
        ``= sqrt(sum_ij (A^T A)_ij (B B^T)_ij)`` (both Gram matrices are
        symmetric ``k x k``); tiny negative round-off is clamped to 0.
        Computed in float64, returned in ``dtype``.
        """
        A, B = self._finite_factors("norm")
        G_A = A.mT @ A                                         # [.., k, k]
        G_B = B @ B.mT                                         # [.., k, k]
        sq = (G_A * G_B).sum(dim=(-2, -1))
        return sq.clamp_min(0).sqrt().to(self.dtype)

    # -------------------------------------------------------------- display
    def get_corner(self, k: int = 3) -> Tensor:
        """The top-left corner ``AB[..., :k, :k]``, ``[..., min(k, m), min(k, n)]``,
        computed as ``A[..., :k, :] @ B[..., :, :k]`` (only the corner)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"get_corner: k must be a positive int, got {k!r}")
        return self._A[..., :k, :] @ self._B[..., :, :k]
