"""Tests for toylab.factored.FactoredMatrix: every operation against its dense twin."""

import math

import pytest
import torch

from toylab.factored import FactoredMatrix

BATCH = (2, 3)
M, K, N = 20, 5, 20


def rand(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def close(actual, expected, rtol=1e-4):
    """|actual - expected| <= rtol * max|expected| (+ tiny), in float64."""
    actual = actual.to(torch.complex128 if actual.is_complex() else torch.float64)
    expected = expected.to(actual.dtype)
    assert actual.shape == expected.shape, f"shape {list(actual.shape)} != {list(expected.shape)}"
    scale = expected.abs().max().item() if expected.numel() else 1.0
    err = (actual - expected).abs().max().item() if expected.numel() else 0.0
    assert err <= rtol * scale + 1e-12, f"max error {err:.3g} > {rtol} * {scale:.3g}"


def same_multiset(actual, expected, tol):
    """Greedy nearest matching of two 1-D complex collections."""
    assert actual.shape == expected.shape, f"{list(actual.shape)} != {list(expected.shape)}"
    left = list(actual.to(torch.complex128).tolist())
    for e in expected.to(torch.complex128).tolist():
        j = min(range(len(left)), key=lambda i: abs(left[i] - e))
        assert abs(left[j] - e) <= tol, f"eigenvalue {e} not found (closest {left[j]})"
        left.pop(j)


@pytest.fixture
def fm():
    A = rand(*BATCH, M, K, seed=1)
    B = rand(*BATCH, K, N, seed=2)
    return FactoredMatrix(A, B)


def dense(fm):
    return fm.A.double() @ fm.B.double()


# ------------------------------------------------------------------ basics
def test_shapes_and_dims(fm):
    assert fm.shape == torch.Size((*BATCH, M, N))
    assert fm.batch_shape == torch.Size(BATCH)
    assert (fm.ldim, fm.mdim, fm.rdim, fm.ndim) == (M, K, N, 4)
    assert fm.A.shape == (*BATCH, M, K) and fm.B.shape == (*BATCH, K, N)
    assert "[2, 3, 20, 20]" in repr(fm)


def test_AB_BA(fm):
    A, B = fm.A.double(), fm.B.double()
    close(fm.AB, A @ B)
    assert fm.BA.shape == (*BATCH, K, K)
    close(fm.BA, B @ A)


def test_BA_needs_square():
    fm = FactoredMatrix(rand(6, 3), rand(3, 4))
    with pytest.raises(ValueError, match="square"):
        fm.BA


def test_transpose(fm):
    t = fm.T
    assert isinstance(t, FactoredMatrix)
    assert t.shape == (*BATCH, N, M)
    close(t.AB, dense(fm).mT)


def test_broadcast_batch_dims():
    A = rand(7, 4, seed=3)          # no batch dims
    B = rand(2, 3, 4, 6, seed=4)    # [n_layers, n_heads]
    fm = FactoredMatrix(A, B)
    assert fm.shape == (2, 3, 7, 6) and fm.A.shape == (2, 3, 7, 4)
    close(fm.AB, A.double() @ B.double())
    fm2 = FactoredMatrix(rand(3, 1, 7, 4), rand(5, 4, 6))
    assert fm2.batch_shape == (3, 5)


def test_dtype_promotion():
    fm = FactoredMatrix(rand(4, 3), rand(3, 4, dtype=torch.float64))
    assert fm.dtype == torch.float64 and fm.A.dtype == fm.B.dtype == torch.float64


def test_inputs_not_mutated(fm):
    A0, B0 = rand(*BATCH, M, K, seed=1), rand(*BATCH, K, N, seed=2)
    A, B = A0.clone(), B0.clone()
    f = FactoredMatrix(A, B)
    X = rand(N, 4, seed=9)
    X0 = X.clone()
    _ = (f.AB, f.BA, f.T.AB, f @ X, X.mT @ f.T, f @ f, f[0], f.svd(), f.eigenvalues,
         f.norm(), f.get_corner(), f.collapse_l(), f.collapse_r())
    assert torch.equal(A, A0) and torch.equal(B, B0) and torch.equal(X, X0)


# ----------------------------------------------------------------- matmul
def test_matmul_tensor_right_keeps_inner(fm):
    X = rand(N, 8, seed=5)                      # p = 8 > k = 5
    out = fm @ X
    assert isinstance(out, FactoredMatrix)
    assert out.shape == (*BATCH, M, 8) and out.mdim == K
    close(out.AB, dense(fm) @ X.double())


def test_matmul_tensor_right_collapses_small_p(fm):
    X = rand(*BATCH, N, 2, seed=6)              # p = 2 < k = 5, batched
    out = fm @ X
    assert isinstance(out, FactoredMatrix)
    assert out.shape == (*BATCH, M, 2) and out.mdim == 2
    close(out.AB, dense(fm) @ X.double())


def test_matmul_tensor_left(fm):
    X = rand(9, M, seed=7)
    out = X @ fm
    assert isinstance(out, FactoredMatrix)
    assert out.shape == (*BATCH, 9, N) and out.mdim == K
    close(out.AB, X.double() @ dense(fm))
    Y = rand(3, M, seed=8)                      # p = 3 < k
    out = Y @ fm
    assert out.mdim == 3
    close(out.AB, Y.double() @ dense(fm))


def test_matmul_factored(fm):
    other = FactoredMatrix(rand(*BATCH, N, 8, seed=10), rand(*BATCH, 8, 30, seed=11))
    out = fm @ other
    assert isinstance(out, FactoredMatrix)
    assert out.shape == (*BATCH, M, 30)
    assert out.mdim == min(fm.mdim, other.mdim) == K
    close(out.AB, dense(fm) @ dense(other))
    out2 = other.T @ fm.T                       # inner 5 on the right this time
    assert out2.mdim == K
    close(out2.AB, (dense(fm) @ dense(other)).mT)
    small = FactoredMatrix(rand(N, 3, seed=12), rand(3, 25, seed=13))
    out3 = fm @ small
    assert out3.mdim == 3 and out3.shape == (*BATCH, M, 25)
    close(out3.AB, dense(fm) @ dense(small))


def test_vector_products(fm):
    v = rand(N, seed=14)
    out = fm @ v
    assert isinstance(out, torch.Tensor) and out.shape == (*BATCH, M)
    close(out, dense(fm) @ v.double())
    u = rand(M, seed=15)
    out = u @ fm
    assert isinstance(out, torch.Tensor) and out.shape == (*BATCH, N)
    close(out, u.double() @ dense(fm))


def test_matmul_mismatch_errors(fm):
    with pytest.raises(ValueError, match=r"cannot multiply \[2, 3, 20, 20\] by \[7, 4\]: "
                                         r"inner dimensions 20 and 7 differ"):
        fm @ rand(7, 4)
    with pytest.raises(ValueError, match=r"cannot multiply \[4, 7\] by \[2, 3, 20, 20\]: "
                                         r"inner dimensions 7 and 20 differ"):
        rand(4, 7) @ fm
    with pytest.raises(ValueError, match="inner dimensions 20 and 6 differ"):
        fm @ FactoredMatrix(rand(6, 2), rand(2, 6))
    with pytest.raises(ValueError, match="inner dimensions 20 and 3 differ"):
        fm @ rand(3)
    with pytest.raises(ValueError, match="do not broadcast"):
        fm @ rand(4, N, 2)


# --------------------------------------------------------------- indexing
def test_indexing(fm):
    full = dense(fm)
    close(fm[1].AB, full[1])
    assert fm[1].shape == (3, M, N)
    close(fm[1, 2].AB, full[1, 2])
    assert fm[1, 2].shape == (M, N)
    close(fm[:, 1:].AB, full[:, 1:])
    close(fm[..., 0].AB, full[:, 0])            # ... covers batch dims only
    close(fm[torch.tensor([1, 0])].AB, full[[1, 0]])


def test_indexing_into_matrix_dims_errors(fm):
    with pytest.raises(ValueError, match="batch dims"):
        fm[0, 0, 0]
    with pytest.raises(ValueError, match="matrix dims"):
        FactoredMatrix(rand(4, 2), rand(2, 4))[0]


# -------------------------------------------------------------------- SVD
def test_svd_matches_dense(fm):
    U, S, Vh = fm.svd()
    r = min(M, N, K)
    assert U.shape == (*BATCH, M, r) and S.shape == (*BATCH, r) and Vh.shape == (*BATCH, r, N)
    S_dense = torch.linalg.svdvals(dense(fm))[..., :r]
    close(S, S_dense)
    assert (S[..., :-1] >= S[..., 1:]).all(), "singular values must be descending"
    close(U @ torch.diag_embed(S) @ Vh, dense(fm))
    eye = torch.eye(r, dtype=torch.float64)
    close(U.double().mT @ U.double(), eye.expand(*BATCH, r, r))
    close(Vh.double() @ Vh.double().mT, eye.expand(*BATCH, r, r))
    close(fm.S, S)
    close(fm.collapse_r() @ fm.Vh, dense(fm))
    close(fm.U @ fm.collapse_l(), dense(fm))


def test_svd_inner_dim_larger_than_matrix():
    fm = FactoredMatrix(rand(6, 10, seed=20), rand(10, 4, seed=21))  # r = min(6, 4, 10) = 4
    U, S, Vh = fm.svd()
    assert U.shape == (6, 4) and S.shape == (4,) and Vh.shape == (4, 4)
    close(S, torch.linalg.svdvals(dense(fm)))
    close(U @ torch.diag(S) @ Vh, dense(fm))


# ------------------------------------------------------------ eigenvalues
def test_eigenvalues_match_dense(fm):
    ev = fm.eigenvalues
    assert ev.is_complex() and ev.shape == (*BATCH, K)
    mags = ev.abs()
    assert (mags[..., :-1] >= mags[..., 1:] - 1e-6).all(), "sorted by descending magnitude"
    full = torch.linalg.eigvals(dense(fm))          # [2, 3, 20]: 5 nonzero + 15 zeros
    for b in range(2):
        for h in range(3):
            d = full[b, h]
            top = d[d.abs().argsort(descending=True)[:K]]
            rest = d[d.abs().argsort(descending=True)[K:]]
            scale = d.abs().max().item()
            assert rest.abs().max() < 1e-8 * scale
            same_multiset(ev[b, h], top, tol=1e-4 * scale)


def test_eigenvalues_inner_dim_larger():
    fm = FactoredMatrix(rand(4, 9, seed=22), rand(9, 4, seed=23))
    ev = fm.eigenvalues
    assert ev.shape == (4,)
    same_multiset(ev, torch.linalg.eigvals(dense(fm)), tol=1e-4 * dense(fm).abs().max().item())


def test_eigenvalues_non_square():
    with pytest.raises(ValueError, match=r"eigenvalues need a square matrix, got \[m, n\] = \[6, 4\]"):
        FactoredMatrix(rand(6, 3), rand(3, 4)).eigenvalues


# ------------------------------------------------------------------- norm
def test_norm(fm):
    n = fm.norm()
    assert n.shape == BATCH and n.dtype == torch.float32
    close(n, torch.linalg.matrix_norm(dense(fm)))


def test_norm_of_zero_product_is_zero():
    A = rand(5, 2, seed=24)
    B = torch.zeros(2, 5)
    assert FactoredMatrix(A, B).norm().item() == 0.0


def test_get_corner(fm):
    c = fm.get_corner(3)
    assert c.shape == (*BATCH, 3, 3)
    close(c, dense(fm)[..., :3, :3])


# ----------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "A, B, match",
    [
        (rand(5, 3), rand(4, 5), r"inner dims differ: A \[5, 3\] has 3 columns but B \[4, 5\] has 4 rows"),
        (rand(5), rand(5, 5), r"at least 2 dims.*\[5\]"),
        ([[1.0]], rand(1, 1), "must be a torch.Tensor"),
        (torch.ones(3, 2, dtype=torch.long), rand(2, 3), "floating-point"),
        (rand(2, 5, 3), rand(3, 3, 5), r"batch dims \[2\] and \[3\] do not broadcast"),
    ],
)
def test_construction_errors(A, B, match):
    with pytest.raises(ValueError, match=match):
        FactoredMatrix(A, B)


# ------------------------------------------------------- big vocabulary
class _BiggestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """Record the largest tensor (in elements) that any torch op produces."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


def test_size_guard_sees_dense_product():
    """The guard used below does notice an m x n tensor (so that test can fail)."""
    fm = FactoredMatrix(rand(300, 4), rand(4, 300))
    with _BiggestTensor() as guard:
        fm.AB
    assert guard.max_numel == 300 * 300


def test_big_vocab_never_forms_m_by_n():
    m = n = 50_000
    k = 64
    A = rand(m, k, seed=30) / math.sqrt(k)
    B = rand(k, n, seed=31) / math.sqrt(k)
    # Known spectrum: AB = Q diag(lam) Q^T with Q orthonormal [m, k].
    Q = torch.linalg.qr(rand(m, k, seed=32, dtype=torch.float64)).Q
    lam = torch.linspace(3.0, 0.1, k, dtype=torch.float64) * torch.tensor([1.0, -1.0]).repeat(k // 2)
    known = FactoredMatrix(Q.float() * lam.float(), Q.float().mT)
    fm = FactoredMatrix(A, B)
    with _BiggestTensor() as guard:
        ev = fm.eigenvalues
        nrm = fm.norm()
        U, S, Vh = fm.svd()
        corner = fm.get_corner(5)
        ev_known = known.eigenvalues
        S_known = known.svd()[1]
        norm_known = known.norm()
    assert guard.max_numel <= 2 * m * k, f"a tensor of {guard.max_numel} elements was made"
    assert ev.shape == (k,) and U.shape == (m, k) and S.shape == (k,) and Vh.shape == (k, n)
    # independent checks, none of which forms AB
    trace = (A.double() * B.double().mT).sum()               # trace(AB) = sum of eigenvalues
    assert abs(ev.sum().real.item() - trace.item()) <= 1e-4 * A.double().norm() * B.double().norm()
    assert abs(ev.sum().imag.item()) < 1e-3
    close(S.double().square().sum(), nrm.double().square())  # ||AB||_F^2 = sum S^2 (QR vs Gram)
    close((U[:5] * S) @ Vh[:, :5], corner)                   # reconstruction, corner only
    close(corner, A[:5].double() @ B[:, :5].double())
    same_multiset(ev_known, lam.to(torch.complex128), tol=1e-4 * 3)
    close(S_known, lam.abs().sort(descending=True).values)
    close(norm_known, lam.norm())
