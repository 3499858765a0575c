"""SemaMIL (reconstruction): reordering invertibility, padding invariance, SRSM conditioning, training."""

from __future__ import annotations

import json

import pytest
import torch

from zoo.batch import collate
from zoo.models.semamil import SemaMIL, kmeans, semantic_order
from zoo.registry import create_model, model_from_config_dict


def _model(**kw) -> SemaMIL:
    torch.manual_seed(0)
    cfg = dict(in_dim=32, hidden=32, n_clusters=4, n_queries=4, kmeans_iters=4)
    cfg.update(kw)
    model = create_model("semamil", **cfg)
    assert isinstance(model, SemaMIL)
    return model


def _wake_conditioning(model: SemaMIL) -> None:
    """The conditioning linears start at zero; give them weights so the tests exercise them."""
    g = torch.Generator().manual_seed(1)
    for layer in model.layers:
        for lin in (layer.delta_cond, layer.bc_cond):
            if lin is not None:
                with torch.no_grad():
                    lin.weight.copy_(0.3 * torch.randn(lin.weight.shape, generator=g))


def _clustered(n: int, dim: int = 32, seed: int = 0) -> torch.Tensor:
    """Points around 4 well-separated centres (no near-ties in the clustering)."""
    g = torch.Generator().manual_seed(seed)
    centres = 6 * torch.randn(4, dim, generator=g)
    return centres[torch.arange(n) % 4] + torch.randn(n, dim, generator=g)


def test_kmeans_order_is_a_permutation_grouping_clusters():
    x = _clustered(40)[None]
    mask = torch.ones(1, 40, dtype=torch.bool)
    assign, dist, centres = kmeans(x, mask, 4, 5)
    assert centres.shape == (1, 4, 32)
    perm = semantic_order(assign, dist, mask, 4)
    assert torch.equal(perm.sort(1).values, torch.arange(40)[None])
    ordered = assign.gather(1, perm)[0]
    assert torch.all(ordered[1:] >= ordered[:-1])  # contiguous cluster runs
    for c in range(4):
        d = dist.gather(1, perm)[0][ordered == c]
        assert torch.all(d[1:] >= d[:-1])  # within a cluster, nearest to the centre first
    # the 4 true groups are recovered
    assert len({tuple(sorted(torch.nonzero(assign[0] == c).flatten().tolist())) for c in range(4)}) == 4
    sizes = semantic_order(assign, dist, mask, 4, "size")
    assert torch.equal(sizes.sort(1).values, torch.arange(40)[None])


def _single(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs of ``model`` on the single bag ``x (N, d)``, batched as ``x[None]`` and unbatched back."""
    return {k: v[0] for k, v in model(x[None]).items()}


@pytest.mark.parametrize("query_rule", ["topk", "centroids"])
def test_permuting_input_permutes_attention(query_rule):
    model = _model(query_rule=query_rule).eval()
    _wake_conditioning(model)
    x = _clustered(37, seed=2)
    perm = torch.randperm(37, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out, out_p = _single(model, x), _single(model, x[perm])
    torch.testing.assert_close(out_p["attention"], out["attention"][perm], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out_p["logits"], out["logits"], atol=1e-5, rtol=1e-5)
    # the scan order is the same sequence of patches
    torch.testing.assert_close(x[perm][out_p["order"]], x[out["order"]])
    assert out["attention"].shape == (37,) and out["logits"].shape == (2,)


def test_reordering_changes_the_scan_and_is_undone():
    model = _model().eval()
    x = _clustered(30, seed=4)
    with torch.no_grad():
        out = _single(model, x)
        plain = _single(_model(reorder=False).eval(), x)
    assert not torch.equal(out["order"], torch.arange(30))  # a real reordering happened
    assert torch.equal(plain["order"], torch.arange(30))
    assert torch.isclose(out["attention"].sum(), torch.tensor(1.0))


def test_config_round_trip_and_strict_weights():
    model = _model(condition_on="delta", query_rule="centroids", cluster_order="size")
    clone = model_from_config_dict(json.loads(json.dumps(model.config_dict())))
    clone.load_state_dict(model.state_dict(), strict=True)
    x = _clustered(15)
    torch.testing.assert_close(clone.eval()(x[None])["logits"], model.eval()(x[None])["logits"])


@pytest.mark.parametrize(
    ("condition_on", "query_rule", "bidirectional"),
    [("delta_bc", "topk", True), ("delta", "centroids", True), ("bc", "topk", False), ("none", "topk", True)],
)
def test_padding_invariance(check_padding_invariance, condition_on, query_rule, bidirectional):
    model = _model(condition_on=condition_on, query_rule=query_rule, bidirectional=bidirectional)
    _wake_conditioning(model)
    check_padding_invariance(model, 32)


def test_conditioning_reaches_the_ssm():
    model = _model().eval()
    x = _clustered(20)
    with torch.no_grad():
        base = model(x[None])["logits"]
        _wake_conditioning(model)
        shifted = model(x[None])["logits"]
    assert not torch.allclose(base, shifted)
    with pytest.raises(ValueError, match="condition_on"):
        _model(condition_on="gamma")


def test_trains_on_tiny_bags(tiny_dataset):
    model = _model(n_layers=1)
    bags = list(tiny_dataset.bags("train"))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    epoch_loss = []
    for _ in range(5):
        total = 0.0
        for bag in bags:
            out = model.loss(collate([bag], hr=False))
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            total += out["loss"].item()
        epoch_loss.append(total / len(bags))
    assert epoch_loss[-1] < 0.6 * epoch_loss[0], epoch_loss
    # a batch of several slides works too
    batch = collate(bags[:3], hr=False)
    out = model(**model.inputs(batch))
    assert out["logits"].shape == (3, 2) and out["attention"].shape == batch["mask"].shape


def test_checkpointed_scan_gives_the_same_model_outputs_and_gradients(monkeypatch):
    """The memory-lean scan is a drop-in: same logits and parameter gradients as the parallel one."""
    import functools

    import zoo.nn.mamba
    from zoo.nn.scan import selective_scan

    # segments of 64 steps: three per sequence of 150
    monkeypatch.setattr(zoo.nn.mamba, "selective_scan", functools.partial(selective_scan, segment=64))
    torch.manual_seed(0)
    feats = torch.randn(1, 150, 16)
    grads, logits = {}, {}
    for backend in ("parallel", "checkpointed"):
        torch.manual_seed(1)
        model = create_model("semamil", in_dim=16, hidden=8, n_layers=1, scan_backend=backend)
        out = model(feats)["logits"]
        out.logsumexp(-1).sum().backward()
        logits[backend] = out.detach()
        grads[backend] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    torch.testing.assert_close(logits["checkpointed"], logits["parallel"], rtol=1e-5, atol=1e-5)
    assert grads["parallel"].keys() == grads["checkpointed"].keys()
    for name, g in grads["parallel"].items():
        torch.testing.assert_close(grads["checkpointed"][name], g, rtol=1e-4, atol=1e-5)
