"""TRAK engine: projection, closed-form MLP features, TRAKer against exact TRAK, bad input."""

import itertools
import re
import shutil

import numpy as np
import pytest
import torch
from torch.func import grad, vmap

from scdm.trak import (
    RandomProjector,
    TRAKer,
    dense_projection,
    inverse_gram,
    margins_and_out_to_loss,
    mlp_features,
)


def test_projector_is_deterministic_and_blocked():
    grads = torch.randn(10, 9000, generator=torch.Generator().manual_seed(0))
    blocked = RandomProjector(9000, 64, seed=3, cache_bytes=0)
    cached = RandomProjector(9000, 64, seed=3)
    # three row blocks applied one at a time = the whole matrix at once
    np.testing.assert_allclose(blocked.project(grads, 1), cached.project(grads, 1),
                               rtol=1e-5, atol=1e-3)
    # a batch projected in two parts = at once; another model_id, another matrix
    np.testing.assert_allclose(torch.cat([cached.project(grads[:4], 1),
                                          cached.project(grads[4:], 1)]),
                               cached.project(grads, 1), rtol=1e-6, atol=1e-5)
    assert not torch.equal(cached.matrix(1), cached.matrix(2))
    assert set(torch.unique(cached.matrix(1)).tolist()) == {-1.0, 1.0}
    with pytest.raises(ValueError, match="proj_dim"):
        RandomProjector(300, 0)
    with pytest.raises(ValueError, match=r"\[batch, 300\]"):
        RandomProjector(300, 4).project(torch.ones(2, 5), 0)


def test_projector_generator_on_the_device_is_seeded_and_recorded(tmp_path):
    """generator="device" draws the matrix where it is used (here: the CPU, so the very
    matrix of the default); a save_dir records it and refuses the other kind."""
    on_cpu = RandomProjector(9000, 32, seed=3, cache_bytes=0, generator="device")
    np.testing.assert_array_equal(on_cpu.matrix(1), RandomProjector(9000, 32, seed=3).matrix(1))
    with pytest.raises(ValueError, match="generator"):
        RandomProjector(300, 4, generator="gpu")
    model = torch.nn.Linear(4, 2)
    TRAKer(model, train_set_size=8, proj_dim=4, save_dir=tmp_path, device="cpu",
           projector_generator="device")
    with pytest.raises(ValueError, match="projector_generator"):
        TRAKer(model, train_set_size=8, proj_dim=4, save_dir=tmp_path, device="cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_projector_generator_on_cuda_is_blocked_and_reproducible():
    grads = torch.randn(10, 9000, generator=torch.Generator().manual_seed(0)).cuda()
    blocked = RandomProjector(9000, 64, seed=3, cache_bytes=0, device="cuda", generator="device")
    cached = RandomProjector(9000, 64, seed=3, device="cuda", generator="device")
    torch.testing.assert_close(blocked.project(grads, 1), cached.project(grads, 1), rtol=1e-5,
                               atol=1e-3)
    again = RandomProjector(9000, 64, seed=3, device="cuda", generator="device")
    assert torch.equal(again.matrix(1), cached.matrix(1)) and cached.matrix(1).is_cuda
    assert set(torch.unique(cached.matrix(1)).tolist()) == {-1.0, 1.0}


def _stacked_mlp(sizes, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        params += [torch.randn(K, fan_in, fan_out, generator=g) / np.sqrt(fan_in),
                   0.1 * torch.randn(K, fan_out, generator=g)]
    return params


def _exact_margin_grads(params, c, X, y):
    """Per-example gradients of TRAK's margin for checkpoint c by autodiff (torch.func)."""
    own = [p[c] for p in params]

    def logits(ps, x):
        h = x
        for layer in range(len(ps) // 2):
            h = h @ ps[2 * layer] + ps[2 * layer + 1]
            if layer < len(ps) // 2 - 1:
                h = torch.relu(h)
        if h.shape[-1] == 1:  # scdm's two-class logit difference
            h = torch.cat([-h / 2, h / 2], dim=-1)
        return h

    def margin(ps, x, yi):
        return margins_and_out_to_loss(logits(ps, x.unsqueeze(0)), yi.view(1))[0].sum()

    grads = vmap(grad(margin), in_dims=(None, 0, 0))(own, X, y)
    flat = torch.cat([g.reshape(X.shape[0], -1) for g in grads], dim=1)
    return flat, margins_and_out_to_loss(logits(own, X), y)[1]


@pytest.mark.parametrize("sizes", [[5, 7, 1], [5, 7, 6, 3], [4, 2]])
def test_mlp_features_equal_projected_autodiff_gradients(sizes):
    K, n, k = 3, 11, 16
    params = _stacked_mlp(sizes, K)
    g = torch.Generator().manual_seed(1)
    X = torch.randn(n, sizes[0], generator=g)
    y = torch.randint(0, max(2, sizes[-1]), (n,), generator=g)
    G, Q = mlp_features(params, X, y, proj_dim=k, seed=7, model_ids=[4, 5, 6], batch_size=4)
    n_params = sum(int(np.prod(p.shape[1:])) for p in params)
    for c, model_id in enumerate([4, 5, 6]):
        exact, q = _exact_margin_grads(params, c, X, y)
        projected = exact @ dense_projection(sizes, k, 7, model_id) / np.sqrt(n_params)
        np.testing.assert_allclose(G[c], projected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(Q[c], q, rtol=1e-5, atol=1e-6)


class TinyNet(torch.nn.Module):
    def __init__(self, d=4, h=5, c=3):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.Tanh(),
                                        torch.nn.Linear(h, c))

    def forward(self, x):
        return self.body(x)


def _data(n=60, d=4, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()
    return X, y.clamp_max(c - 1)


def _checkpoint(seed):
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in TinyNet().state_dict().items()}


def _run_traker(tmp_path, checkpoints, X, y, Xt, yt, proj_dim, **kwargs):
    traker = TRAKer(TinyNet(), "classification", len(X), save_dir=tmp_path, proj_dim=proj_dim,
                    projection="normal", device="cpu", **kwargs)
    for model_id, ckpt in enumerate(checkpoints):
        traker.load_checkpoint(ckpt, model_id)
        for start in range(0, len(X), 16):
            traker.featurize((X[start:start + 16], y[start:start + 16]),
                             num_samples=len(X[start:start + 16]))
    traker.finalize_features()
    for model_id, ckpt in enumerate(checkpoints):
        traker.start_scoring_checkpoint("test", ckpt, model_id, len(Xt))
        traker.score((Xt, yt), num_samples=len(Xt))
    return traker, traker.finalize_scores("test")


def test_traker_equals_exact_trak_when_the_projection_is_invertible(tmp_path):
    """With proj_dim = grad_dim the projection cancels in g(z)ᵀ P (PᵀGᵀGP)⁻¹ Pᵀ g_i, so TRAKer's
    scores are exact TRAK's (unprojected gradients, torch.autograd) up to traker's positive
    per-checkpoint scale. Gradients w.r.t. the first layer only: the margin is invariant to
    shifting all logits, which makes the full gradient Gram matrix singular."""
    X, y = _data()
    Xt, yt = _data(n=7, seed=1)
    model = TinyNet()
    ckpt = _checkpoint(0)
    first = ["body.0.weight", "body.0.bias"]
    grad_dim = sum(p.numel() for name, p in model.named_parameters() if name in first)
    _, scores = _run_traker(tmp_path, [ckpt], X, y, Xt, yt, proj_dim=grad_dim, grad_wrt=first)
    model.load_state_dict(ckpt)

    def per_example(Xs, ys):
        rows, q = [], []
        for xi, yi in zip(Xs, ys, strict=True):
            model.zero_grad()
            logits = model(xi.unsqueeze(0))
            m, qi = margins_and_out_to_loss(logits, yi.view(1))
            m.sum().backward()
            rows.append(torch.cat([p.grad.reshape(-1) for name, p in model.named_parameters()
                                   if name in first]))
            q.append(qi.detach())
        return torch.stack(rows).double(), torch.cat(q).double()

    G, q = per_example(X, y)
    Gt, _ = per_example(Xt, yt)
    exact = (G @ torch.linalg.inv(G.T @ G) @ Gt.T * q[:, None]).numpy()
    assert scores.shape == (60, 7)
    scale = float((scores * exact).sum() / (exact * exact).sum())  # least-squares scale
    assert scale > 0
    # float32 storage of gradients and features: agreement to 1e-3 of the largest score
    assert np.abs(scores - scale * exact).max() < 1e-3 * np.abs(scale * exact).max()


def test_traker_resumes_and_refuses_mismatched_checkpoints(tmp_path):
    X, y = _data()
    Xt, yt = _data(n=5, seed=1)
    ckpts = [_checkpoint(0), _checkpoint(1)]
    _, scores = _run_traker(tmp_path / "a", ckpts, X, y, Xt, yt, proj_dim=20, damping=0.1)
    # a second process featurizing half of the examples, then a restart: same scores
    partial = TRAKer(TinyNet(), "classification", len(X), save_dir=tmp_path / "b",
                     proj_dim=20, projection="normal", device="cpu", damping=0.1)
    partial.load_checkpoint(ckpts[0], 0)
    assert partial.featurize((X[:30], y[:30]), inds=np.arange(30)) == 30
    _, again = _run_traker(tmp_path / "b", ckpts, X, y, Xt, yt, proj_dim=20, damping=0.1)
    np.testing.assert_allclose(again, scores, rtol=1e-5, atol=1e-7)
    assert np.load(tmp_path / "b" / "experiments" / "test" / "scores.npy").shape == (60, 5)

    traker = TRAKer(TinyNet(), "classification", len(X), save_dir=tmp_path / "a",
                    proj_dim=20, projection="normal", device="cpu", damping=0.1)
    with pytest.raises(ValueError, match="another checkpoint"):
        traker.load_checkpoint(ckpts[1], 0)
    with pytest.raises(ValueError, match="same checkpoint"):
        traker.start_scoring_checkpoint("test", ckpts[1], 0, 5)
    with pytest.raises(ValueError, match="another setting"):
        TRAKer(TinyNet(), "classification", len(X), save_dir=tmp_path / "a", proj_dim=30,
               projection="normal", device="cpu")
    # self-influence from the stored gradients = the diagonal of scoring the training set
    for model_id, ckpt in enumerate(ckpts):
        traker.start_scoring_checkpoint("train", ckpt, model_id, len(X))
        traker.score((X, y), num_samples=len(X))
    diagonal = np.diagonal(traker.finalize_scores("train"))
    np.testing.assert_allclose(traker.self_influence(), diagonal, rtol=1e-4, atol=1e-6)
    # finalized features depend on the ridge: another damping must not reuse them
    with pytest.raises(ValueError, match="damping"):
        TRAKer(TinyNet(), "classification", len(X), save_dir=tmp_path / "a", proj_dim=20,
               projection="normal", device="cpu", damping=1.0)


def test_traker_bad_input_fails_before_writing(tmp_path):
    X, y = _data()
    with pytest.raises(ValueError, match="proj_dim"):
        TRAKer(TinyNet(), "classification", 60, save_dir=tmp_path / "p", proj_dim=0)
    with pytest.raises(ValueError, match="task"):
        TRAKer(TinyNet(), "regression", 60, save_dir=tmp_path / "t")

    class Flat(TinyNet):
        def forward(self, x):
            return self.body(x)[:, 0]

    flat = TRAKer(Flat(), "classification", 60, save_dir=tmp_path / "f", proj_dim=8,
                  device="cpu")
    flat.load_checkpoint(Flat().state_dict(), 0)
    with pytest.raises(ValueError, match=r"\[batch, classes\]"):
        flat.featurize((X[:10], y[:10]), num_samples=10)
    assert not (tmp_path / "f" / "model_0" / "grads.npy").exists()

    traker = TRAKer(TinyNet(), "classification", 60, save_dir=tmp_path / "n", proj_dim=8,
                    device="cpu")
    with pytest.raises(RuntimeError, match="load a checkpoint"):
        traker.featurize((X[:10], y[:10]), num_samples=10)
    broken = _checkpoint(0)
    broken["body.0.weight"][0, 0] = float("nan")
    traker.load_checkpoint(broken, 0)
    with pytest.raises(FloatingPointError, match="nothing was written"):
        traker.featurize((X[:10], y[:10]), num_samples=10)
    assert not (tmp_path / "n" / "model_0" / "grads.npy").exists()
    with pytest.raises(ValueError, match="not featurized"):
        traker.finalize_features()
    with pytest.raises(IndexError, match="indices"):
        traker.featurize((X[:2], y[:2]), inds=[0, 60])


def test_inverse_gram_refuses_a_singular_system():
    G = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="damping"):
        inverse_gram(G)
    assert torch.isfinite(inverse_gram(G, damping=0.1)).all()


# ------------------------------------------------------------------ low rank and tl.trak
def test_lowrank_embedding_equals_the_dense_computation():
    from scdm.tl._embed import standardized_columns
    from scdm.trak._lowrank import lowrank_embedding

    rng = np.random.default_rng(0)
    A = 0.3 * rng.normal(size=(90, 200))
    for g in range(3):
        A[30 * g:30 * (g + 1), 10 * g:10 * (g + 1)] += 1.0
    q = rng.uniform(0.05, 0.9, 90)
    M = standardized_columns(A @ A.T * q[None, :])  # the n × n way
    U, S, _ = np.linalg.svd(M)
    signs = np.sign(U[np.argmax(np.abs(U[:, :6]), axis=0), np.arange(6)])
    np.testing.assert_allclose(lowrank_embedding(A, q, n_comps=6), U[:, :6] * S[:6] * signs,
                               atol=1e-8)


def test_large_classes_stream_the_checkpoints_into_a_randomized_svd():
    """ClassFactors applies [F_1[C], …, F_K[C]] / sqrt(K) without forming it, and the
    randomized SVD a large class gets finds the embedding of the exact computation."""
    from scdm.trak._lowrank import ClassFactors, lowrank_embedding

    rng = np.random.default_rng(1)
    n, k, K = 700, 40, 5
    groups = np.repeat(np.arange(4), n // 4 + 1)[:n]
    factors = []
    for _ in range(K):
        F = 0.2 * rng.normal(size=(n, k))
        F[:, :4] += np.eye(4)[groups]  # four groups of examples share directions
        factors.append(torch.as_tensor(F, dtype=torch.float32))
    rows = rng.permutation(n)[:600]
    op = ClassFactors(factors, rows)
    dense = torch.cat([f[rows] for f in factors], dim=1).numpy() / np.sqrt(K)
    np.testing.assert_allclose(op.dense(), dense, rtol=1e-6)
    M = torch.as_tensor(rng.normal(size=(K * k, 3)), dtype=torch.float32)
    np.testing.assert_allclose(op.matmul(M), dense @ M.numpy(), rtol=1e-4, atol=1e-4)
    Y = torch.as_tensor(rng.normal(size=(600, 3)), dtype=torch.float32)
    np.testing.assert_allclose(op.rmatmul(Y), dense.T @ Y.numpy(), rtol=1e-4, atol=1e-4)

    q = rng.uniform(0.05, 0.9, 600)
    exact = lowrank_embedding(dense, q, n_comps=3, rank=256)  # 200 columns: exact path
    randomized = lowrank_embedding(op, q, n_comps=3, rank=20, seed=0)
    for c in range(3):
        assert abs(np.corrcoef(exact[:, c], randomized[:, c])[0, 1]) > 0.999
    np.testing.assert_array_equal(randomized, lowrank_embedding(op, q, n_comps=3, rank=20,
                                                                seed=0))


def test_all_classes_share_one_set_of_reads_and_equal_one_class_at_a_time(tmp_path,
                                                                          monkeypatch):
    """class_embeddings reads the checkpoints once per pass for every class together (file
    order, blocks of rows): each class's embedding equals the one it gets alone, memory maps
    give the numbers tensors give, and a class too small for the randomized SVD takes the
    exact path beside them."""
    import scdm.trak._lowrank as lowrank

    monkeypatch.setattr(lowrank, "BLOCK_ROWS", 128)  # blocks that cut across the classes
    rng = np.random.default_rng(2)
    n, k, K = 900, 40, 6
    types = rng.integers(0, 4, n)
    arrays = []
    for c in range(K):
        F = 0.2 * rng.normal(size=(n, k))
        F[:, :4] += np.eye(4)[types]
        arrays.append(F.astype(np.float32))
        np.save(tmp_path / f"f{c}.npy", arrays[-1])
    maps = [np.load(tmp_path / f"f{c}.npy", mmap_mode="r") for c in range(K)]
    tensors = [torch.from_numpy(a) for a in arrays]
    label = rng.integers(0, 3, n)
    label[:30] = 3  # a fourth class of 30 cells: the exact path
    groups = [np.flatnonzero(label == g) for g in range(4)]
    q = rng.uniform(0.05, 0.9, n)
    together = lowrank.class_embeddings(maps, groups, q, n_comps=3, rank=20, seed=0)
    from_tensors = lowrank.class_embeddings(tensors, groups, q, n_comps=3, rank=20, seed=0)
    for a, b in zip(together, from_tensors, strict=True):
        np.testing.assert_array_equal(a, b)
    for rows, emb in zip(groups, together, strict=True):
        alone = lowrank.lowrank_embedding(lowrank.ClassFactors(tensors, rows), q[rows],
                                          n_comps=3, rank=20, seed=0)
        np.testing.assert_allclose(emb, alone, rtol=1e-4, atol=1e-4 * np.abs(alone).max())
        exact = lowrank.lowrank_embedding(lowrank.ClassFactors(tensors, rows).dense(), q[rows],
                                          n_comps=3, rank=1000)
        for c in range(3):  # the randomized SVD finds the exact embedding
            assert abs(np.corrcoef(exact[:, c], emb[:, c])[0, 1]) > 0.999


def test_features_on_disk_equal_the_in_memory_formula_and_resume_where_they_stopped(
        tmp_path, monkeypatch):
    """Each checkpoint's features are computed in row blocks and written to their own files:
    equal to centring and whitening the whole gradient matrix in memory; a run killed
    part-way redoes only the checkpoints it had not finished, with the same numbers; the class
    operator reads its rows from the memory maps."""
    import scdm.trak._ondisk as ondisk
    from scdm.trak._core import inverse_sqrt_gram
    from scdm.trak._lowrank import ClassFactors

    monkeypatch.setattr(ondisk, "BLOCK_ROWS", 64)  # several blocks for 300 rows
    torch.manual_seed(0)
    n, d, h, K, k = 300, 12, 16, 4, 24
    params = [torch.randn(K, d, h) / 3, torch.randn(K, h) / 3, torch.randn(K, h, 1) / 3,
              torch.randn(K, 1) / 3]
    X, y = torch.randn(n, d), torch.randint(0, 2, (n,))
    cells = np.arange(n) % 3 + 3 * y.numpy()  # (class, batch) cells
    ids = [5, 6, 7, 8]
    store = ondisk.FeatureStore(tmp_path / "f", n_obs=n, proj_dim=k, model_ids=ids)
    assert ondisk.featurize(store, params, X, y, seed=3, damping=0.5, cells=cells) == K

    G, Q = mlp_features(params, X, y, proj_dim=k, seed=3, model_ids=ids)
    codes = torch.as_tensor(cells)
    for c in range(K):
        g = G[c].double()
        means = torch.zeros(6, k, dtype=torch.float64).index_add_(0, codes, g)
        g = g - (means / torch.bincount(codes)[:, None])[codes]
        expected = g.float() @ inverse_sqrt_gram(g.float(), damping=0.5, normalize=False)
        torch.testing.assert_close(torch.from_numpy(np.array(store.features(c))), expected,
                                   rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(store.out_to_loss(), Q.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(store.sq_norm(), np.stack(
        [(np.asarray(f, np.float64) ** 2).sum(1) for f in store.feature_maps()]), rtol=1e-12)

    # killed while writing the third checkpoint: its folder is left without meta.json
    real = ondisk.featurize_checkpoint
    computed: list[int] = []

    def dies_on_the_third(*args, **kwds):
        computed.append(kwds["model_id"])
        if len(computed) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwds)

    monkeypatch.setattr(ondisk, "featurize_checkpoint", dies_on_the_third)
    again = ondisk.FeatureStore(tmp_path / "g", n_obs=n, proj_dim=k, model_ids=ids)
    with pytest.raises(KeyboardInterrupt):
        ondisk.featurize(again, params, X, y, seed=3, damping=0.5, cells=cells)
    assert again.missing() == [7, 8]
    with pytest.raises(RuntimeError, match="not in"):
        again.feature_maps()
    computed.clear()
    monkeypatch.setattr(ondisk, "featurize_checkpoint", real)
    assert ondisk.featurize(again, params, X, y, seed=3, damping=0.5, cells=cells) == 2
    for a, b in zip(store.feature_maps(), again.feature_maps(), strict=True):
        np.testing.assert_array_equal(a, b)

    # the class operator on memory maps is the operator on tensors
    rows = np.sort(np.random.default_rng(0).choice(n, 120, replace=False))
    maps = ClassFactors(store.feature_maps(), rows)
    tensors = ClassFactors(store.load(), rows)
    M = torch.randn(K * k, 5)
    torch.testing.assert_close(maps.matmul(M), tensors.matmul(M), rtol=0, atol=0)
    Y = torch.randn(rows.size, 5)
    torch.testing.assert_close(maps.rmatmul(Y), tensors.rmatmul(Y), rtol=0, atol=0)


def test_features_on_disk_do_not_depend_on_the_thread_count(tmp_path):
    """A Ray worker featurizes on one thread, this process on several: the files must be
    the same bitwise (LAPACK's eigh was not, before it ran single-threaded)."""
    import scdm.trak._ondisk as ondisk

    torch.manual_seed(0)
    n, d, h, k = 3000, 50, 64, 512
    params = [torch.randn(1, d, h) / 5, torch.randn(1, h) / 5, torch.randn(1, h, 1) / 5,
              torch.randn(1, 1) / 5]
    X, y = torch.randn(n, d), torch.randint(0, 2, (n,))
    threads = torch.get_num_threads()
    files = []
    try:
        for count in (1, max(2, threads)):
            torch.set_num_threads(count)
            store = ondisk.FeatureStore(tmp_path / str(count), n_obs=n, proj_dim=k,
                                        model_ids=[3])
            ondisk.featurize(store, params, X, y, seed=0, damping=1.0)
            files.append(np.array(store.features(0)))
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(files[0], files[1])


@pytest.fixture(scope="module")
def small_trak(tmp_path_factory):
    import scanpy as sc

    import scdm

    scdm.settings.verbosity = 0
    # 150 + 2 × 75 cells: at 120 + 2 × 60 the two halves of 20 checkpoints agreed on the
    # subtypes only at ARI ~0.55 with igraph 1.0 / torch 2.13 (0.97 at this size)
    adata = scdm.datasets.planted_subtypes(n_controls=150, n_per_subtype=75, n_subtypes=2,
                                           n_genes=200, batch_genes=100, random_state=0)
    sc.pp.pca(adata, n_comps=20, random_state=0)
    scdm.tl.trak(adata, "disease", use_rep="X_pca", store=tmp_path_factory.mktemp("t") / "s")
    return adata


@pytest.mark.slow
def test_tl_trak_matches_the_trak_formula_and_finds_subtypes(small_trak, tmp_path):
    import scdm
    from scdm.tl._embed import embed_blocks, embedding_blocks
    from scdm.tl._recorded import recorded_training
    from scdm.trak._core import inverse_gram

    adata = small_trak.copy()
    info = adata.uns["trak"]
    assert info["method"] == "trak" and info["trak_params"]["n_checkpoints"] == 40
    assert adata.obsm["X_trak"].shape == (300, 10) and adata.obs["trak_ok"].all()
    # the stored matrix is τ(j, i) = mean_c g_c(j)ᵀ (G_cᵀG_c + λ_c I)⁻¹ g_c(i) · q̄_i
    training = recorded_training(adata, "trak")
    completed = training.store.completed_indices()
    trainer = training.trainer(0, "cpu")
    params = trainer.train(np.asarray(training.store.masks)[completed], completed,
                           keep_params=True).extras["params"]
    G, Q = mlp_features(params, trainer.X, trainer.y, proj_dim=512, seed=0,
                        model_ids=completed)
    damping = info["trak_params"]["damping"]
    W = sum((G[c] @ inverse_gram(G[c], damping=damping, normalize=False) @ G[c].T).numpy()
            for c in range(G.shape[0])) / G.shape[0] * Q.mean(0).numpy()[None, :]
    np.testing.assert_allclose(adata.obsp["trak"], W, rtol=1e-3, atol=1e-3 * np.abs(W).max())
    np.testing.assert_allclose(info["self_influence"], np.diag(W), rtol=1e-3)
    # and the embedding from the factors is the datamodels embedding of that matrix
    dense, _ = embed_blocks(W, embedding_blocks(adata, "disease"), ok=np.ones(300, bool),
                            n_comps=10, standardize=True, within_class=True, seed=0)
    np.testing.assert_allclose(np.abs(adata.obsm["X_trak"][:, :2]), np.abs(dense[:, :2]),
                               atol=1e-2 * np.abs(dense[:, :2]).max())

    scdm.tl.subgroups(adata, key="trak", markers=False)
    disease = (adata.obs["disease"] == "disease").to_numpy()
    assert adata.uns["trak_subgroup"]["reproducibility"]["disease"]["split"]
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(adata.obs["subtype"][disease],
                               adata.obs["trak_subgroup"][disease]) > 0.9
    with pytest.raises(ValueError, match=r"tl\.lds"):  # the curve needs evaluation models
        scdm.tl.model_count_curve(adata, key="trak")
    scdm.tl.lds(adata, key="trak", n_models=60, store=tmp_path / "lds")
    assert adata.uns["trak"]["lds"]["mean"] > 0.3
    # the LDS from the low-rank factors is the LDS of the stored n × n matrix
    from scdm.evaluation import linear_datamodeling_score
    from scdm.get import evaluation_models
    from scdm.store import ModelStore

    masks, margins = evaluation_models(ModelStore.open(adata.uns["trak"]["lds"]["store"]),
                                        60, 1)
    dense = linear_datamodeling_score(adata.obsp["trak"], masks, margins, rows="targets",
                                      heldout=True)
    np.testing.assert_allclose(adata.obs["trak_lds"], dense, atol=1e-4)
    scdm.tl.model_count_curve(adata, key="trak")
    curve = adata.uns["trak"]["model_curve"]
    assert list(curve["n_models"]) == [10, 20, 40]
    assert curve["mean_lds"][-1] == pytest.approx(adata.uns["trak"]["lds"]["mean"], abs=1e-4)
    assert "checkpoints" in curve["recommendation"]


def test_tl_trak_without_the_matrix_is_the_same_and_deterministic(small_trak):
    import scdm

    store = small_trak.uns["trak"]["store"]
    again = scdm.tl.trak(small_trak, "disease", use_rep="X_pca", store=store, max_obsp=100,
                         copy=True)
    assert "trak" not in again.obsp  # 300 cells > max_obsp
    np.testing.assert_allclose(again.obsm["X_trak"], small_trak.obsm["X_trak"], atol=1e-5)
    np.testing.assert_allclose(again.obsm["X_trak_half1"], small_trak.obsm["X_trak_half1"],
                               atol=1e-5)


def test_tl_trak_keeps_its_checkpoints_in_the_store_and_uses_them(small_trak, tmp_path):
    import shutil

    import torch

    import scdm
    from scdm.store import ModelStore

    path = tmp_path / "store"
    shutil.copytree(small_trak.uns["trak"]["store"], path)
    store = ModelStore.open(path)
    assert all(store.load_checkpoint(m) is not None for m in range(40))  # kept by tl.trak
    stamps = [store.checkpoint_path(m).stat().st_mtime_ns for m in range(40)]
    again = scdm.tl.trak(small_trak, "disease", use_rep="X_pca", store=path, copy=True)
    np.testing.assert_array_equal(again.obsm["X_trak"], small_trak.obsm["X_trak"])
    assert [store.checkpoint_path(m).stat().st_mtime_ns for m in range(40)] == stamps
    # the kept parameters are what TRAK uses: change one checkpoint and the result changes
    saved = torch.load(store.checkpoint_path(3), weights_only=True)
    state = {k: v * 1.5 for k, v in saved["state"].items()}
    torch.save({**saved, "state": state}, store.checkpoint_path(3))
    changed = scdm.tl.trak(small_trak, "disease", use_rep="X_pca", store=path, copy=True)
    assert np.abs(changed.obsm["X_trak"] - small_trak.obsm["X_trak"]).max() > 1e-3
    # parameters that belong to another mask (a store refilled in place) are not used: the
    # model is retrained from its seed, and kept again
    store.save_checkpoint(3, state, ~np.asarray(store.masks[3]))
    assert store.load_checkpoint(3) is None
    fresh = scdm.tl.trak(small_trak, "disease", use_rep="X_pca", store=path, copy=True)
    np.testing.assert_array_equal(fresh.obsm["X_trak"], small_trak.obsm["X_trak"])
    for key, value in store.load_checkpoint(3).items():
        torch.testing.assert_close(value, saved["state"][key], rtol=0, atol=0)


def test_tl_trak_trains_each_checkpoint_once_and_computes_its_features_once(
        small_trak, tmp_path, monkeypatch):
    import scdm
    import scdm.tl._trak as trak_module
    import scdm.trak._ondisk as ondisk
    from scdm.ensemble import EnsembleTrainer
    from scdm.tl import attribution

    trained: list[int] = []
    featurized: list[int] = []
    real_train, real_features = EnsembleTrainer.train, ondisk.featurize_checkpoint

    def counting_train(self, masks, model_indices, **kwds):  # the real training, counted
        trained.extend(int(m) for m in np.asarray(model_indices).ravel())
        return real_train(self, masks, model_indices, **kwds)

    def counting_features(*args, **kwds):
        featurized.append(kwds["model_id"])
        return real_features(*args, **kwds)

    monkeypatch.setattr(EnsembleTrainer, "train", counting_train)
    monkeypatch.setattr(ondisk, "featurize_checkpoint", counting_features)
    adata = small_trak.copy()
    scdm.tl.trak(adata, "disease", use_rep="X_pca", store=tmp_path / "new", n_models=8,
                 max_obsp=0)
    assert sorted(trained) == list(range(8)) and featurized == list(range(8))

    # the same result as before, when a store filled without checkpoints retrained them
    old = adata.copy()
    scdm.tl.train_models(old, "disease", use_rep="X_pca", store=tmp_path / "old", n_models=8,
                         min_heldout=0, key_added="trak")  # no checkpoints kept
    trained.clear()
    scdm.tl.trak(old, "disease", use_rep="X_pca", store=tmp_path / "old", n_models=8,
                 max_obsp=0)
    assert sorted(trained) == list(range(8))  # retrained from their seeds, once
    for key in ("X_trak", "X_trak_half1", "X_trak_half2"):
        np.testing.assert_array_equal(old.obsm[key], adata.obsm[key])

    # later tools read the kept features: no gradients again, and the same numbers
    trained.clear()
    featurized.clear()
    factors = attribution(adata, "trak").factors
    scdm.tl.lds(adata, key="trak", n_models=20, store=tmp_path / "lds")
    scdm.tl.model_count_curve(adata, key="trak")
    assert featurized == [] and len(trained) == 20  # the evaluation models only
    kept = list((tmp_path / "new" / trak_module.FACTORS_DIR).iterdir())
    assert len(kept) == 1 and len(list(kept[0].glob("model_*/meta.json"))) == 8
    shutil.rmtree(kept[0])  # without them, the same factors are computed again
    recomputed = attribution(adata, "trak").factors
    assert featurized == list(range(8))
    for a, b in zip(factors, recomputed, strict=True):  # memory maps of the store's files
        np.testing.assert_array_equal(a, b)


def test_the_models_input_is_built_and_checked_once_per_public_call(
        small_trak, planted, tmp_path, monkeypatch):
    """Every tool reads the recorded training through one view per call: the models' input
    (a dense copy and a hash of every feature) is built once, nested tools included; the next
    call checks the AnnData again."""
    import scdm
    import scdm.tl._recorded as recorded

    built: list[int] = []
    real = recorded.model_inputs

    def counting(*args, **kwds):
        built.append(1)
        return real(*args, **kwds)

    monkeypatch.setattr(recorded, "model_inputs", counting)
    trak, dm = small_trak.copy(), planted.copy()
    calls = {
        "trak": lambda: scdm.tl.trak(trak, "disease", use_rep="X_pca", store=tmp_path / "t",
                                     max_obsp=0),
        "subgroups(trak)": lambda: scdm.tl.subgroups(trak, key="trak"),
        "lds(trak)": lambda: scdm.tl.lds(trak, key="trak", n_models=20,
                                         store=tmp_path / "lt"),
        "label_issues(trak)": lambda: scdm.tl.label_issues(
            trak, "disease", key="trak", n_probability_models=20),
        "subgroups": lambda: scdm.tl.subgroups(dm),
        "lds": lambda: scdm.tl.lds(dm, n_models=20, store=tmp_path / "ld"),
    }
    counts = {}
    for name, call in calls.items():
        built.clear()
        call()
        counts[name] = len(built)
    assert counts == dict.fromkeys(calls, 1), counts
    # nothing is kept past a call: an AnnData changed since is checked again, and refused
    dm.obsm["X_pca"] = dm.obsm["X_pca"] + 1.0
    with pytest.raises(ValueError, match="differ from those the models"):
        scdm.tl.lds(dm, n_models=20, store=tmp_path / "ld2")


def test_attribution_of_large_data_streams_the_features_from_the_store(small_trak):
    """Without the n × n matrix, tl.attribution and tl.lds read TRAK's features from the
    store's memory maps in row blocks; the sums equal those of the stored matrix, the
    predicted margins those from the features in memory."""
    from scdm.tl import attribution
    from scdm.tl._attribution import Attribution
    from scdm.tl._trak import checkpoint_features

    dense = attribution(small_trak, "trak")
    assert dense.W is not None
    params = small_trak.uns["trak"]["trak_params"]
    features = checkpoint_features(small_trak, "trak", proj_dim=int(params["proj_dim"]),
                                   damping=float(params["damping"]))
    maps = features.feature_maps()
    assert all(isinstance(f, np.memmap) for f in maps)
    streamed = Attribution(method="trak", diagonal=dense.diagonal, factors=maps,
                           q=features.out_to_loss().mean(0).astype(np.float64))
    B = np.random.default_rng(0).normal(size=(small_trak.n_obs, 3))
    for name in ("class_sums", "target_sums"):
        np.testing.assert_allclose(getattr(streamed, name)(B), getattr(dense, name)(B),
                                   rtol=1e-3, atol=1e-4 * np.abs(getattr(dense, name)(B)).max())
    # tl.lds' predictions of TRAK on large data: the same from memory maps as from tensors
    from scdm.tl._trak import trak_predictions

    masks = np.random.default_rng(1).random((4, small_trak.n_obs)) < 0.5
    q = streamed.q
    expected = trak_predictions(features.load(), q, masks)
    np.testing.assert_allclose(trak_predictions(maps, q, masks), expected, rtol=1e-3,
                               atol=1e-4 * np.abs(expected).max())


def test_tl_trak_uses_the_checkpoints_it_asked_for_from_a_larger_store(small_trak):
    import scdm

    store = small_trak.uns["trak"]["store"]  # 40 checkpoints
    fewer = scdm.tl.trak(small_trak, "disease", use_rep="X_pca", store=store, n_models=10,
                         copy=True)
    assert fewer.uns["trak"]["trak_params"]["n_checkpoints"] == 10
    assert list(fewer.uns["trak"]["halves"]["n_models"]) == [5, 5]


@pytest.mark.slow
def test_tl_trak_on_null_data_finds_one_subgroup(tmp_path):
    import scanpy as sc

    import scdm

    adata = scdm.datasets.gaussian_subtypes({"control": [150], "disease": [150]},
                                            random_state=1)
    sc.pp.pca(adata, n_comps=20, random_state=0)
    scdm.tl.trak(adata, "disease", use_rep="X_pca", store=tmp_path / "s")
    scdm.tl.subgroups(adata, key="trak", markers=False)
    assert adata.obs.loc[adata.obs["disease"] == "disease", "trak_subgroup"].nunique() == 1


def test_tl_trak_bad_input(small_trak, tmp_path):
    import scdm

    with pytest.raises(ValueError, match="n_models"):
        scdm.tl.trak(small_trak, "disease", n_models=2, copy=True)
    with pytest.raises(ValueError, match="proj_dim"):
        scdm.tl.trak(small_trak, "disease", proj_dim=0, copy=True)
    with pytest.raises(ValueError, match="damping"):
        scdm.tl.trak(small_trak, "disease", damping=-1, copy=True)
    with pytest.raises(TypeError, match="train_kwds"):
        scdm.tl.trak(small_trak, "disease", train_kwds={"alpha": 0.3}, copy=True)
    with pytest.raises(KeyError, match="label_key"):
        scdm.tl.trak(small_trak, "nope", store=tmp_path / "x", copy=True)
    assert not (tmp_path / "x").exists()


def test_time_estimates_are_calibrated_by_a_probe_on_this_machine(tmp_path):
    """A run long enough to be worth it is timed by a real probe (a chunk of real models of the
    run's shape) and its estimate says so, with the probes' spread as its range; a tiny run
    keeps the reference estimate; a measured speed scales the reference time and range."""
    import anndata as ad
    import pandas as pd

    from scdm.tl._cost import (
        Speed,
        check_datamodels_cost,
        estimate_datamodels,
        estimate_trak,
        probe_speed,
    )
    from scdm.tl._recorded import train_config

    config = train_config(None, n_train=350)
    speed = probe_speed(700, 20, 2, config, n_models=17_500)
    assert 0 < speed.low <= speed.factor <= speed.high < 1e3
    reference = estimate_datamodels(700, 17_500)
    slow = estimate_datamodels(700, 17_500, speed=Speed(2.0, 1.5, 3.0))
    assert slow.seconds == pytest.approx(2 * reference.seconds)
    assert slow.seconds_range == pytest.approx((1.5 * reference.seconds, 3 * reference.seconds))
    assert "calibrated on this machine" in slow.describe()
    assert "reference timings" in reference.describe()
    # on a GPU: datamodels calibrated by the probe there, TRAK's reference named as such
    on_gpu = estimate_datamodels(700, 17_500, device="cuda:0", speed=Speed(0.2, 0.1, 0.3))
    assert on_gpu.seconds == pytest.approx(0.2 * reference.seconds)
    assert "calibrated on this machine (cuda:0)" in on_gpu.describe()
    trak_gpu = estimate_trak(20_000, 40, device="cuda:0")
    assert trak_gpu.seconds == estimate_trak(20_000, 40).seconds
    assert "2 CPU cores (reference timings; not calibrated on cuda:0)" in trak_gpu.describe()

    rng = np.random.default_rng(0)
    cells = ad.AnnData(rng.standard_normal((700, 20)).astype(np.float32), obs=pd.DataFrame(
        {"y": pd.Categorical(["a", "b"] * 350)}, index=[f"c{i}" for i in range(700)]))
    kw = {"label_key": "y", "n_features": 20, "group_key": None, "alpha": 0.5,
          "config": config, "device": "cpu", "store": tmp_path / "s"}
    probed = check_datamodels_cost(cells, n_models=None, **kw)
    assert probed.n_models == 17_500 and probed.seconds_range is not None
    low, high = probed.seconds_range
    assert low <= probed.seconds <= high
    tiny = check_datamodels_cost(cells, n_models=1000, **kw)
    assert tiny.seconds_range is None  # ~3 s by the reference: not worth a probe
    assert not (tmp_path / "s").exists()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_a_datamodels_estimate_is_probed_there_and_max_hours_holds(tmp_path,
                                                                            monkeypatch):
    import anndata as ad
    import pandas as pd

    import scdm
    from scdm.tl._cost import check_datamodels_cost
    from scdm.tl._recorded import train_config

    rng = np.random.default_rng(0)
    cells = ad.AnnData(rng.standard_normal((2000, 20)).astype(np.float32), obs=pd.DataFrame(
        {"y": pd.Categorical(["a", "b"] * 1000)}, index=[f"c{i}" for i in range(2000)]))
    kw = {"label_key": "y", "n_features": 20, "group_key": None, "alpha": 0.5,
          "config": train_config(None, n_train=1000), "store": tmp_path / "s"}
    on_gpu = check_datamodels_cost(cells, n_models=100_000, device="cuda", **kw)
    on_cpu = check_datamodels_cost(cells, n_models=100_000, device="cpu", **kw)
    assert on_gpu.seconds_range is not None and "calibrated on this machine (cuda" in (
        on_gpu.describe())
    assert on_gpu.seconds < on_cpu.seconds  # the probe ran on the GPU, not the host
    monkeypatch.setattr(scdm.settings, "max_hours", on_gpu.seconds / 3600 / 4)
    with pytest.raises(MemoryError, match="max_hours"):
        scdm.tl.datamodels(cells, "y", n_models=100_000, store=tmp_path / "dm", device="cuda")
    assert not (tmp_path / "dm").exists()


def test_costs_are_estimated_and_oversized_runs_refused_before_any_work(tmp_path, monkeypatch):
    import anndata as ad
    import pandas as pd

    import scdm
    from scdm.tl._cost import estimate_datamodels, estimate_trak

    small, large = estimate_datamodels(700, 17_500), estimate_datamodels(20_000, 500_000)
    assert small.seconds < 120 and large.seconds > 10 * 3600
    assert large.disk_bytes == 5.0 * 500_000 * 20_000
    assert estimate_trak(20_000, 40).seconds < 600
    cells = ad.AnnData(np.zeros((20_000, 5), np.float32), obs=pd.DataFrame(
        {"y": pd.Categorical(["a", "b"] * 10_000)}, index=[f"c{i}" for i in range(20_000)]))
    monkeypatch.setattr(scdm.settings, "max_hours", 1.0)
    # the reference timings are those of 2 CPU cores: the test runs there whatever it finds
    with pytest.raises(MemoryError, match=r"max_hours.*scdm\.tl\.trak \(trak on 20,000 cells"):
        scdm.tl.datamodels(cells, "y", store=tmp_path / "dm", device="cpu")
    assert not (tmp_path / "dm").exists()
    monkeypatch.setattr(scdm.settings, "max_memory", 2**20)  # 1 MiB
    with pytest.raises(MemoryError, match="max_memory"):
        scdm.tl.trak(cells, "y", store=tmp_path / "t", device="cpu")
    assert not (tmp_path / "t").exists()

    # the features are kept on disk: 40 checkpoints × 512 float32 per cell, counted and
    # refused where the store's disk lacks the room, before anything is written
    monkeypatch.setattr(scdm.settings, "max_memory", None)
    atlas = estimate_trak(1_000_000, 40, largest_class=500_000)
    assert atlas.disk_bytes > 40 * 512 * 4 * 1_000_000 and atlas.memory_bytes < 8 * 2**30
    # on Ray each worker featurizes a checkpoint at a time, and computes one checkpoint's
    # share of an embedding pass (the range and its product: O(n · rank)): its memory is
    # stated apart and grows with the models' input it rebuilds and with rank, not with the
    # checkpoints
    assert atlas.worker_memory_bytes is None and "per Ray worker" not in atlas.describe()
    on_ray = [estimate_trak(1_000_000, m, largest_class=500_000, n_features=d, ray=True,
                            rank=r) for m, d, r in ((40, 50, 256), (400, 50, 256),
                                                    (40, 2000, 256), (40, 50, 32))]
    assert on_ray[0].worker_memory_bytes == on_ray[1].worker_memory_bytes < 7 * 2**30
    assert on_ray[2].worker_memory_bytes > on_ray[0].worker_memory_bytes + 9e9
    assert on_ray[3].worker_memory_bytes < on_ray[0].worker_memory_bytes - 2.5e9
    assert re.search(r"memory ~\d+\.\d+ GiB here and ~6\.\d+ GiB per Ray worker",
                     on_ray[0].describe())
    free = 2**20  # what this disk reports as free, made small
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real_usage(p)._replace(free=free))
    with pytest.raises(MemoryError, match=r"disk ~.* GiB > 0\.0 GiB free.*store="):
        scdm.tl.trak(cells[:400].copy(), "y", store=tmp_path / "t")  # 400 cells: 33 MB
    assert not (tmp_path / "t").exists()


@pytest.mark.slow
def test_tl_trak_with_a_known_batch_does_not_split_by_it(tmp_path):
    """20 PCs of a small planted set are dominated by its 4 batches: the gradients of a batch
    share its input shift, and without stratify_key TRAK's subgroups were subtype × batch
    (controls split in two). With stratify_key the gradients are centred within each class and
    batch: the controls stay one subgroup and the disease splits into its two subtypes."""
    import scanpy as sc
    from sklearn.metrics import adjusted_rand_score

    import scdm

    adata = scdm.datasets.planted_subtypes(n_controls=150, n_per_subtype=75, n_subtypes=2,
                                           random_state=0)
    sc.pp.pca(adata, n_comps=20, random_state=0)
    scdm.tl.trak(adata, "disease", use_rep="X_pca", stratify_key="batch",
                 store=tmp_path / "s")
    scdm.tl.subgroups(adata, key="trak", markers=False)
    groups = adata.obs["trak_subgroup"].astype(str)
    disease = (adata.obs["disease"] == "disease").to_numpy()
    assert groups[~disease].nunique() == 1
    assert adjusted_rand_score(adata.obs["subtype"][disease], groups[disease]) > 0.9
    # the batch check that tl.subgroups ran on the stratify_key finds nothing
    assert (adata.uns["trak_subgroup"]["composition"]["flag"] == "").all()


@pytest.mark.parametrize("as_sparse", [False, True])
def test_tl_trak_on_an_anndata_opened_backed_equals_in_memory_and_leaves_the_file(
        tmp_path, as_sparse):
    """An AnnData opened with backed="r" (dense or sparse .X on disk) is read in row blocks:
    the models' input, and with it the result, equal those of the same data in memory, and
    the file is only read. A NaN on disk is reported before any training."""
    import hashlib

    import anndata as ad
    from scipy import sparse

    import scdm
    from scdm._anndata import READ_ROWS, dense_features

    adata = scdm.datasets.planted_subtypes(n_controls=60, n_per_subtype=30, n_subtypes=2,
                                           n_genes=60, batch_genes=30, random_state=1)
    adata.X = sparse.csr_matrix(adata.X) if as_sparse else np.asarray(adata.X)
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    backed = ad.read_h5ad(path, backed="r")
    assert not isinstance(backed.X, np.ndarray) and not sparse.issparse(backed.X)
    np.testing.assert_array_equal(dense_features(backed.X), dense_features(adata.X))
    assert READ_ROWS < 10**6  # the blocks are what keeps a million rows out of memory

    settings = {"n_models": 4, "max_obsp": 0, "random_state": 2}
    scdm.tl.trak(backed, "disease", store=tmp_path / "backed", **settings)
    scdm.tl.trak(adata, "disease", store=tmp_path / "memory", **settings)
    np.testing.assert_array_equal(backed.obsm["X_trak"], adata.obsm["X_trak"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest

    if not as_sparse:
        broken = adata.copy()
        broken.X[5, 3] = np.nan
        broken.write_h5ad(tmp_path / "nan.h5ad")
        with pytest.raises(ValueError, match="NaN or inf"):
            scdm.tl.trak(ad.read_h5ad(tmp_path / "nan.h5ad", backed="r"), "disease",
                         store=tmp_path / "nan", **settings)
        assert not (tmp_path / "nan").exists()
