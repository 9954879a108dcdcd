"""stencil_from_sparse: round trips through pyamg's matrices and the Stencil's own, and rejections."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mgcore.operators import Stencil
from mgcore.sparse import stencil_from_sparse

pyamg = pytest.importorskip("pyamg")


def _same(A, B) -> bool:
    """Equal entry for entry, explicit zeros aside."""
    D = sp.csr_array(A, dtype=np.float64) - sp.csr_array(B, dtype=np.float64)
    D.eliminate_zeros()
    return D.nnz == 0


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 3), (4, 5), (6, 3), (8, 8), (3, 4, 5), (4, 4, 4), (5, 2, 3)])
def test_pyamg_poisson_round_trip(shape):
    A = pyamg.gallery.poisson(shape, format="csr")
    S = stencil_from_sparse(A, shape)
    assert S.is_constant and S.dim == len(shape)
    assert _same(S.to_sparse(shape), A)
    if min(shape) >= 2:  # every neighbour occurs somewhere: the 2d+1-point Laplacian with h = 1
        L = Stencil.laplacian(len(shape))
        assert dict(zip(S.offsets, S.coefficients.tolist())) == dict(zip(L.offsets, L.coefficients.tolist()))
    assert S.offsets == tuple(sorted(S.offsets))


@pytest.mark.parametrize(("eps", "theta"), [(1.0, 0.0), (0.01, 0.0), (0.1, math.pi / 6), (0.5, 1.3)])
@pytest.mark.parametrize("shape", [(5, 5), (6, 9), (8, 3)])
def test_stencil_grid_diffusion_round_trip(eps, theta, shape):
    stencil = pyamg.gallery.diffusion_stencil_2d(epsilon=eps, theta=theta, type="FD")
    A = pyamg.gallery.stencil_grid(stencil, shape, format="csr")
    S = stencil_from_sparse(A, shape)
    assert S.is_constant and len(S.offsets) == np.count_nonzero(stencil)
    assert _same(S.to_sparse(shape), A)
    # The kernel comes back in pyamg's orientation: S[center + o] is the coupling to x + o (C order).
    kernel = np.zeros((3, 3))
    for o, c in zip(S.offsets, S.coefficients.tolist()):
        kernel[o[0] + 1, o[1] + 1] = c
    np.testing.assert_array_equal(kernel, np.where(stencil == 0, 0.0, stencil))
    assert S.is_symmetric()


@pytest.mark.parametrize("shape", [(4, 5), (3, 4, 5)])
def test_asymmetric_full_kernels(shape):
    dim = len(shape)
    kernel = np.arange(1.0, 3**dim + 1).reshape((3,) * dim)
    A = pyamg.gallery.stencil_grid(kernel, shape, format="csr")
    S = stencil_from_sparse(A, shape)
    assert S.is_constant and len(S.offsets) == 3**dim and not S.is_symmetric()
    np.testing.assert_array_equal(S.coefficients.numpy(), Stencil.from_kernel(kernel).coefficients.numpy())


@pytest.mark.parametrize("shape", [(5, 6), (7, 4), (3, 4, 5)])
def test_variable_round_trip(shape):
    dim = len(shape)
    rng = np.random.default_rng(0)
    offsets = list(itertools.product((-1, 0, 1), repeat=dim))
    V = Stencil(offsets, torch.from_numpy(rng.standard_normal((len(offsets), *shape))))
    A = V.to_sparse(shape)
    S = stencil_from_sparse(A, shape)
    assert not S.is_constant and S.grid_shape == shape
    assert _same(S.to_sparse(shape), A)
    # Wherever the neighbour lies in the grid the coefficients come back exactly.
    for k, o in enumerate(S.offsets):
        inside = tuple(slice(max(-v, 0), n - max(v, 0)) for v, n in zip(o, shape))
        j = offsets.index(o)
        np.testing.assert_array_equal(S.coefficients[k][inside].numpy(), V.coefficients[j][inside].numpy())


def test_one_changed_entry_makes_it_variable():
    A = pyamg.gallery.poisson((5, 5), format="lil")
    A[12, 12] = 5.0
    S = stencil_from_sparse(A, (5, 5))
    assert not S.is_constant
    assert S.diagonal()[0, 0, 2, 2].item() == 5.0 and S.diagonal().sum().item() == 4 * 24 + 5
    assert _same(S.to_sparse(), A)


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "lil", "dia", "bsr", "dok"])
def test_any_sparse_format(fmt):
    A = pyamg.gallery.poisson((4, 6), format=fmt)
    S = stencil_from_sparse(A, (4, 6))
    assert S.is_constant and _same(S.to_sparse((4, 6)), A)
    S = stencil_from_sparse(sp.csr_matrix(A).asformat(fmt), [4, 6])  # sparse matrix class, list grid
    assert S.is_constant


def test_duplicates_explicit_zeros_and_input_untouched():
    A = pyamg.gallery.poisson((4, 4), format="coo")
    # Split every entry into two halves (duplicates) and add explicit zeros on a far diagonal.
    rows = np.concatenate([A.row, A.row, np.arange(16)])
    cols = np.concatenate([A.col, A.col, (np.arange(16) + 7) % 16])
    vals = np.concatenate([A.data / 2, A.data / 2, np.zeros(16)])
    B = sp.coo_matrix((vals, (rows, cols)), shape=(16, 16))
    before = B.data.copy()
    S = stencil_from_sparse(B, (4, 4))
    assert S.is_constant and len(S.offsets) == 5
    np.testing.assert_array_equal(B.data, before)


def test_integer_and_float32_matrices():
    A = pyamg.gallery.poisson((5, 5), format="csr")
    S = stencil_from_sparse(A.astype(np.int64), (5, 5))
    assert S.coefficients.dtype == torch.float64 and S.coefficients.tolist() == [-1, -1, 4, -1, -1]
    S32 = stencil_from_sparse(A.astype(np.float32) / 3, (5, 5), dtype=torch.float32)
    assert S32.coefficients.dtype == torch.float32


def test_problem_matrices_round_trip():
    from pde.problems import lognormal_diffusion, rotated_anisotropic

    for p in [lognormal_diffusion((6, 5), 1.0, seed=0), lognormal_diffusion((3, 4, 5), 0.5, seed=1)]:
        S = stencil_from_sparse(p.to_sparse(), p.grid_shape)
        assert not S.is_constant and S.is_symmetric() and _same(S.to_sparse(), p.to_sparse())
    p = rotated_anisotropic((7, 6), 0.1, 0.4)
    S = stencil_from_sparse(p.to_sparse(), p.grid_shape)
    assert S.is_constant and len(S.offsets) == 9


def test_larger_radius_on_request():
    kernel = np.zeros((5, 5))
    kernel[2, :] = [1.0, -16.0, 30.0, -16.0, 1.0]  # fourth-order -u_yy stencil (times 12)
    A = pyamg.gallery.stencil_grid(kernel, (6, 7), format="csr")
    with pytest.raises(ValueError, match="max_radius"):
        stencil_from_sparse(A, (6, 7))
    S = stencil_from_sparse(A, (6, 7), max_radius=2)
    assert S.is_constant and S.radius == 2 and _same(S.to_sparse((6, 7)), A)


def test_two_point_axis_is_read_as_a_nine_point_stencil():
    # Documented ambiguity: on an (n, 2) grid the 1D tridiagonal matrix couples (i, 1) to (i + 1, 0).
    A = pyamg.gallery.poisson((8,), format="csr")
    S = stencil_from_sparse(A, (4, 2))
    assert S.is_constant and (1, -1) in S.offsets and _same(S.to_sparse((4, 2)), A)


def test_not_a_stencil_on_the_grid():
    # A 1D tridiagonal matrix on a 2D grid: the bands wrap from the end of a grid row to the next.
    A = pyamg.gallery.poisson((20,), format="csr")
    with pytest.raises(ValueError, match=r"A: row 4 .* offset \(1, -4\).*not a stencil on grid \(4, 5\)"):
        stencil_from_sparse(A, (4, 5))
    # Right size, wrong (transposed) grid of a rectangular poisson matrix.
    with pytest.raises(ValueError, match="not a stencil on grid"):
        stencil_from_sparse(pyamg.gallery.poisson((4, 5), format="csr"), (5, 4))
    # A random sparse matrix.
    R = sp.random(25, 25, density=0.3, random_state=0, format="csr")
    with pytest.raises(ValueError, match="A: "):
        stencil_from_sparse(R, (5, 5))


def test_rejections():
    A = pyamg.gallery.poisson((4, 4), format="csr")
    with pytest.raises(TypeError, match=r"A .*sparse"):
        stencil_from_sparse(A.toarray(), (4, 4))
    with pytest.raises(TypeError, match=r"A .*sparse"):
        stencil_from_sparse(torch.eye(4), (2, 2))
    with pytest.raises(ValueError, match=r"A \(matrix\) has 16 rows but grid \(grid_shape\) \(5, 4\)"):
        stencil_from_sparse(A, (5, 4))
    with pytest.raises(ValueError, match="square"):
        stencil_from_sparse(sp.csr_array(np.ones((16, 12))), (4, 4))
    with pytest.raises(ValueError, match="grid"):
        stencil_from_sparse(A, (4, 0, 4))
    with pytest.raises(ValueError, match="grid"):
        stencil_from_sparse(A, (2, 2, 2, 2))
    with pytest.raises(TypeError, match="grid"):
        stencil_from_sparse(A, (4.0, 4.0))
    with pytest.raises(ValueError, match="no non-zero"):
        stencil_from_sparse(sp.csr_array((16, 16)), (4, 4))
    with pytest.raises(TypeError, match="complex"):
        stencil_from_sparse(A.astype(np.complex128), (4, 4))
    with pytest.raises(ValueError, match="non-finite"):
        stencil_from_sparse(A * np.inf, (4, 4))
    with pytest.raises(ValueError, match="max_radius"):
        stencil_from_sparse(A, (4, 4), max_radius=0)
    # A 1D grid given as a bare integer is accepted.
    assert stencil_from_sparse(pyamg.gallery.poisson((6,)), 6).dim == 1


def test_large_grid_is_fast():
    import time

    n = 255
    A = pyamg.gallery.poisson((n, n), format="csr")
    start = time.perf_counter()
    S = stencil_from_sparse(A, (n, n))
    assert S.is_constant
    assert time.perf_counter() - start < 2.0  # vectorised: about 0.05 s here, 5 s at 2047^2


# ---------------------------------------------------------------------------------------------- the O(nnz) reading
def _reference(matrix, shape, boundary=None, max_radius=1):
    """The axis-by-axis reading (the reading before the flat-offset table), with its reassembly check."""
    from mgcore.operators import parse_faces
    from mgcore.sparse import _check_reassembly, _collapse, _read_by_axes

    faces = parse_faces("dirichlet" if boundary is None else boundary, len(shape))
    periodic = [low == "periodic" for low, _ in faces]
    offsets, coefficients = _read_by_axes(matrix, shape, periodic, max_radius)
    S = _collapse(offsets, coefficients, shape, periodic, faces, torch.float64)
    _check_reassembly(S, matrix, shape, torch.float64)
    return S


def _fast(matrix, shape, boundary=None, max_radius=1):
    from mgcore.operators import parse_faces
    from mgcore.sparse import _read_by_flat_offsets

    faces = parse_faces("dirichlet" if boundary is None else boundary, len(shape))
    return _read_by_flat_offsets(matrix, shape, [low == "periodic" for low, _ in faces], max_radius, torch.float64)


@pytest.mark.parametrize("shape", [(9,), (5, 6), (7, 4), (3, 4, 5), (6, 3, 4)])
@pytest.mark.parametrize("boundary", ["dirichlet", "periodic", "periodic-first"])
@pytest.mark.parametrize("points", ["axes", "full"])
def test_flat_reading_equals_the_axis_reading(shape, boundary, points):
    if boundary == "periodic-first":  # periodic along axis 0 only
        boundary = ["periodic"] + ["dirichlet"] * (len(shape) - 1)
    rng = np.random.default_rng(len(shape) * 7 + len(boundary))
    dim = len(shape)
    offsets = [o for o in itertools.product((-1, 0, 1), repeat=dim) if points == "full" or sum(map(abs, o)) <= 1]
    for variable in (False, True):
        values = rng.standard_normal((len(offsets), *shape) if variable else (len(offsets),))
        V = Stencil(offsets, torch.from_numpy(values), boundary=boundary)
        A = V.to_sparse(shape)
        read = _fast(A, shape, boundary)
        # A wrap along a periodic axis after the first has the flat difference of a diagonal neighbour ((0, 1)
        # wrapped is (-1, 1) in 2D):
        # ambiguous for the table, so such grids are read axis by axis.
        ambiguous = boundary == "periodic" and len(shape) > 1
        assert (read is None) == ambiguous
        S, R = stencil_from_sparse(A, shape, boundary=boundary), _reference(A, shape, boundary)
        assert S.offsets == R.offsets and (ambiguous or S.offsets == tuple(read[0]))
        assert S.is_constant == R.is_constant == (not variable)
        assert torch.equal(S.coefficients, R.coefficients)


def test_flat_reading_of_unsorted_duplicated_and_explicit_zero_entries():
    A = sp.csr_array(pyamg.gallery.stencil_grid(np.arange(1.0, 10.0).reshape(3, 3), (5, 6), format="csr"))
    reference = stencil_from_sparse(A, (5, 6))
    # Every row's columns in reverse order (unsorted indices).
    indices, data = A.indices.copy(), A.data.copy()
    for row in range(30):
        part = slice(A.indptr[row], A.indptr[row + 1])
        indices[part], data[part] = indices[part][::-1], data[part][::-1]
    unsorted = sp.csr_array((data, indices, A.indptr.copy()), shape=A.shape)
    assert not unsorted.has_sorted_indices
    # Each entry split into two halves within its row (duplicates) plus explicit zeros far away.
    rows = np.repeat(np.arange(30), np.diff(A.indptr))
    far = (np.arange(30) + 13) % 30
    coo = sp.coo_array(
        (np.concatenate([A.data / 2, A.data / 2, np.zeros(30)]),
         (np.concatenate([rows, rows, np.arange(30)]), np.concatenate([A.indices, A.indices, far]))),
        shape=(30, 30),
    )
    duplicated = sp.csr_array((coo.data, (coo.row, coo.col)), shape=(30, 30))
    # Not canonical either: each row's (reversed) entries with their first one repeated as two halves, and an
    # explicit zero far away.
    raw_data, raw_indices = [], []
    for row in range(30):
        part = slice(A.indptr[row], A.indptr[row + 1])
        raw_data += [data[part][:1] / 2, data[part][:1] / 2, data[part][1:], [0.0]]
        raw_indices += [indices[part][:1], indices[part][:1], indices[part][1:], [far[row]]]
    raw_indptr = np.concatenate([[0], np.cumsum(np.diff(A.indptr) + 2)])
    duplicated_raw = sp.csr_array((np.concatenate(raw_data), np.concatenate(raw_indices), raw_indptr), shape=(30, 30))
    assert not duplicated_raw.has_canonical_format
    for matrix in (unsorted, duplicated, coo, duplicated_raw):
        before = (matrix.data.copy(), getattr(matrix, "indices", getattr(matrix, "col", None)).copy())
        S = stencil_from_sparse(matrix, (5, 6))
        assert S.offsets == reference.offsets and torch.equal(S.coefficients, reference.coefficients)
        assert _fast(matrix, (5, 6)) is not None
        np.testing.assert_array_equal(matrix.data, before[0])  # the caller's matrix is untouched
        np.testing.assert_array_equal(getattr(matrix, "indices", getattr(matrix, "col", None)), before[1])


def test_flat_reading_leaves_non_stencils_to_the_axis_reading():
    # A coupling that wraps from the end of a grid row to the next: same flat difference as offset (0, 1).
    A = pyamg.gallery.poisson((20,), format="csr")
    assert _fast(A, (4, 5)) is None
    with pytest.raises(ValueError, match=r"A: row 4 .* offset \(1, -4\)"):
        stencil_from_sparse(A, (4, 5))
    # One entry far from every neighbour (an explicit non-zero, unlike the explicit zeros above).
    B = sp.lil_array(pyamg.gallery.poisson((5, 5), format="csr"))
    B[3, 17] = 0.5
    assert _fast(sp.csr_array(B), (5, 5)) is None
    with pytest.raises(ValueError, match=r"A: row 3 .* column 17 .* more than max_radius=1"):
        stencil_from_sparse(B, (5, 5))
    # A periodic wrap given for a Dirichlet grid, and the periodic reading of the same matrix.
    L = Stencil.laplacian(2)
    P = Stencil(L.offsets, L.coefficients, boundary="periodic").to_sparse((6, 6))
    assert _fast(P, (6, 6)) is None
    with pytest.raises(ValueError, match="not a stencil on grid"):
        stencil_from_sparse(P, (6, 6))
    assert stencil_from_sparse(P, (6, 6), boundary="periodic").is_constant
    # A short axis (2 points) is ambiguous for the table: the axis reading decides, as before.
    assert _fast(pyamg.gallery.poisson((8,), format="csr"), (4, 2)) is None


def test_flat_reading_refuses_what_rounds_to_zero_in_float32():
    A = sp.lil_array(pyamg.gallery.poisson((5, 5), format="csr"))
    A[6, 7] = 1e-60  # a coupling that float32 cannot hold: the stencil would not reassemble to A
    with pytest.raises(ValueError, match="does not reassemble"):
        stencil_from_sparse(A, (5, 5), dtype=torch.float32)
    assert not stencil_from_sparse(A, (5, 5)).is_constant


# ---------------------------------------------------------------------------------------------- the slab reading
def _slabs(matrix, shape, boundary=None, max_radius=1):
    from mgcore.operators import parse_faces
    from mgcore.sparse import _read_constant_by_slabs

    faces = parse_faces("dirichlet" if boundary is None else boundary, len(shape))
    periodic = [low == "periodic" for low, _ in faces]
    return _read_constant_by_slabs(sp.csr_array(matrix), shape, periodic, faces, max_radius, torch.float64)


@pytest.mark.parametrize("shape", [(12,), (9, 6), (8, 5), (7, 4, 5), (11, 3, 3)])
@pytest.mark.parametrize("boundary", ["dirichlet", "periodic-after-first"])
@pytest.mark.parametrize("points", ["axes", "full"])
def test_slab_reading_equals_the_axis_reading(shape, boundary, points):
    boundary = "dirichlet" if boundary == "dirichlet" or len(shape) == 1 else (
        ["dirichlet"] + ["periodic"] * (len(shape) - 1))
    rng = np.random.default_rng(len(shape) * 5 + len(boundary))
    dim = len(shape)
    offsets = [o for o in itertools.product((-1, 0, 1), repeat=dim) if points == "full" or sum(map(abs, o)) <= 1]
    A = Stencil(offsets, torch.from_numpy(rng.standard_normal(len(offsets))), boundary=boundary).to_sparse(shape)
    S, R = _slabs(A, shape, boundary), _reference(A, shape, boundary)
    assert S is not None and S.is_constant and S.offsets == R.offsets
    assert torch.equal(S.coefficients, R.coefficients)
    assert S.faces == R.faces


def test_slab_reading_leaves_everything_else_to_the_entry_reading():
    shape = (12, 7)
    A = sp.lil_array(pyamg.gallery.poisson(shape, format="csr"))
    assert _slabs(A, shape) is not None
    n = 12 * 7
    # One changed coefficient in an interior slab, in the first slabs, in the last slab; one extra coupling
    # far away in an interior row, in the first slab (beyond the first 3 slabs) and in the last slab.
    for row, col, value in [(40, 41, -2.0), (3, 4, -2.0), (n - 3, n - 2, -2.0), (40, 75, 0.5), (2, 70, 0.5),
                            (n - 2, 5, 0.5)]:
        B = A.copy()
        B[row, col] = value
        B = sp.csr_array(B)
        assert _slabs(B, shape) is None, (row, col, value)
        if abs(row - col) < 2:  # a stencil still, a variable one
            assert not stencil_from_sparse(B, shape).is_constant
    # Short first axes, a periodic first axis, non-canonical input: not for this reading.
    assert _slabs(pyamg.gallery.poisson((6, 9), format="csr"), (6, 9)) is None
    L = Stencil.laplacian(2)
    P = Stencil(L.offsets, L.coefficients, boundary="periodic").to_sparse((12, 6))
    assert _slabs(P, (12, 6), "periodic") is None
    assert stencil_from_sparse(P, (12, 6), boundary="periodic").is_constant
    # Neumann rows (halved at the faces) are a variable stencil: the entry reading keeps them.
    from pde import poisson as pde_poisson

    N = pde_poisson((13, 13), bc="neumann").to_sparse()
    assert _slabs(N, (13, 13), "neumann") is None


def test_neumann_labelled_matrices_keep_their_rows():
    # A constant stencil on a Neumann face applies the box scheme (mirrored neighbour, half rows), so a matrix
    # whose face rows simply leave the outside neighbour out is read as a variable stencil, and the box
    # scheme's own matrix as the constant stencil.
    from pde import poisson

    cut = Stencil.laplacian(2).to_sparse((8, 8))
    read = stencil_from_sparse(cut, (8, 8), boundary="neumann")
    assert not read.is_constant and abs(read.to_sparse((8, 8)) - cut).max() == 0
    for shape, bc in (((9, 9), "neumann"), ((8, 9), ("periodic", ("neumann", "dirichlet")))):
        box = poisson(shape, bc=bc, solution=None)
        read = stencil_from_sparse(box.to_sparse(), shape, boundary=bc)
        assert read.is_constant and abs(read.to_sparse(shape) - box.to_sparse()).max() == 0
