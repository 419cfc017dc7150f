"""Float32 products through the faster library (kernels/products.py): the same numbers whichever
library runs them, decisions measured once and kept per context, nn.Linear layers routed without
changing their parameters."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tinyscale.kernels import products
from tinyscale.training.head_loss import HeadLoss, softmax_xent_grad

pytestmark = pytest.mark.skipif(not products.available(), reason="this torch has no oneDNN linear operator")


@pytest.fixture
def forced(monkeypatch, tmp_path):
    """force(name): every new shape goes to that library, decisions kept in tmp_path."""
    def force(name: str) -> None:
        monkeypatch.setattr(products, "choose", lambda timings: name)
        monkeypatch.setattr(products, "_decisions", products.Decisions(tmp_path / name))
        (tmp_path / name).mkdir(exist_ok=True)
    return force


@pytest.mark.parametrize("library", ["mkl", "onednn", "mkl-swapped", "onednn-swapped"])
def test_product_equals_matmul_for_contiguous_and_transposed_operands(forced, library):
    forced(library)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(70, 48, generator=g), torch.randn(33, 48, generator=g)
    for x, y in [(a, b), (b.t().contiguous().t(), a.t().contiguous().t()), (a.t().contiguous().t(), b)]:
        want = x.double() @ y.double().t()
        assert torch.allclose(products.product(x, y).double(), want, rtol=1e-5, atol=1e-5)
    c, d = torch.randn(70, 33, generator=g), torch.zeros(48, 33)
    out = torch.ones(33, 48)
    products.product_into(out, c.t(), a.t(), add=True)
    assert torch.allclose(out.double(), 1 + c.double().t() @ a.double(), rtol=1e-5, atol=1e-5)
    products.product_into(d, a.t(), c.t())
    assert torch.allclose(d.double(), a.double().t() @ c.double(), rtol=1e-5, atol=1e-5)
    assert set(products.decisions().chosen.values()) == {library}


def test_onednn_is_kept_only_where_it_wins_by_the_margin():
    assert products.choose({"mkl": 1.0, "onednn": 0.5}) == "onednn"
    assert products.choose({"mkl": 1.0, "onednn": 1.0 / products.MARGIN + 0.01}) == "mkl"
    assert products.choose({"mkl": 1.0, "onednn": 1.5}) == "mkl"
    # Of four ways, the fastest, if it beats MKL's a @ b.T by the margin.
    four = {"mkl": 1.0, "onednn": 0.7, "mkl-swapped": 0.9, "onednn-swapped": 0.5}
    assert products.choose(four) == "onednn-swapped"
    assert products.choose({"mkl": 1.0, "onednn": 1.0, "mkl-swapped": 0.99, "onednn-swapped": 0.97}) == "mkl"


def test_decisions_are_measured_once_and_kept_per_context(tmp_path, monkeypatch):
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    a, b = torch.randn(16, 8), torch.randn(4, 8)
    first = products.Decisions(tmp_path)
    first.library(a, b)
    assert set(first.timings[products._key(a, b)]) == {"mkl", "onednn", "mkl-swapped", "onednn-swapped"}

    def no_measuring(*args, **kwargs):
        raise AssertionError("a stored decision was measured again")

    monkeypatch.setattr(products, "measure", no_measuring)
    again = products.Decisions(tmp_path)
    assert again.library(a, b) is products.LIBRARIES[first.chosen[products._key(a, b)]]
    # Under another instruction set the stored decision is not used, and both are kept.
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setattr(products, "measure", lambda candidates: {"mkl": 2.0, "onednn": 1.0})
    products.Decisions(tmp_path).library(a, b)
    stored = json.loads((tmp_path / products.DECISION_FILE).read_text())
    assert len(stored) == 2 and any("ATEN_CPU_CAPABILITY=avx2" in k for k in stored)


def test_processes_starting_together_take_the_first_decision_and_keep_each_others(tmp_path, monkeypatch):
    a, b, c = torch.randn(16, 8), torch.randn(4, 8), torch.randn(5, 8)
    first, second = products.Decisions(tmp_path), products.Decisions(tmp_path)  # both before any decision
    monkeypatch.setattr(products, "measure", lambda candidates: {"mkl": 2.0, "onednn": 1.0})
    first.library(a, b)
    # The second would measure MKL faster, but takes the stored decision for the shape without measuring.
    monkeypatch.setattr(products, "measure", lambda candidates: {"mkl": 1.0, "onednn": 2.0})
    assert second.library(a, b) is products.LIBRARIES["onednn"]
    second.library(a, c)  # a shape of its own: stored beside the first's
    chosen = json.loads((tmp_path / products.DECISION_FILE).read_text())[second.context]["chosen"]
    assert chosen == {products._key(a, b): "onednn", products._key(a, c): "mkl"}


def test_an_unreadable_decisions_file_only_means_measuring_again(tmp_path):
    (tmp_path / products.DECISION_FILE).write_text("{not json")
    d = products.Decisions(tmp_path)
    d.library(torch.randn(4, 3), torch.randn(5, 3))
    assert len(json.loads((tmp_path / products.DECISION_FILE).read_text())[d.context]["chosen"]) == 1


def test_a_shape_onednn_refuses_is_computed_by_mkl(tmp_path, monkeypatch):
    def refuse(a, b):
        raise RuntimeError("mkldnn: unsupported shape")

    monkeypatch.setitem(products.LIBRARIES, "onednn", refuse)
    monkeypatch.setattr(products, "_decisions", products.Decisions(tmp_path))
    a, b = torch.randn(8, 5), torch.randn(3, 5)
    assert torch.allclose(products.product(a, b), a @ b.t())
    key = products._key(a, b)
    assert products.decisions().chosen[key] in ("mkl", "mkl-swapped")
    assert products.decisions().timings[key]["onednn"] == products.decisions().timings[key]["onednn-swapped"] == float("inf")


def _net(bias: bool) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 20, bias=bias), nn.GELU(), nn.Linear(20, 6, bias=bias))


@pytest.mark.parametrize("bias", [False, True])
def test_routed_linears_compute_nn_linear_and_its_gradients(forced, monkeypatch, bias):
    forced("onednn")
    monkeypatch.setattr(products, "enabled", lambda: True)
    plain, routed = _net(bias), _net(bias)
    assert products.route_linears(routed) == 2
    assert all(type(m) is products.RoutedLinear for m in routed if isinstance(m, nn.Linear))
    assert routed.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(3, 5, 12)
    for net in (plain, routed):
        net(x).square().sum().backward()
    assert torch.allclose(routed(x), plain(x), atol=1e-5)
    with torch.no_grad():  # serving's path: no autograd bookkeeping
        assert torch.allclose(routed(x), plain(x), atol=1e-5)
    for p, q in zip(plain.parameters(), routed.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast keeps PyTorch's own product
        assert routed(x).dtype == torch.bfloat16


def test_the_head_loss_is_the_same_through_either_library(forced, monkeypatch):
    g = torch.Generator().manual_seed(1)
    h, w = torch.randn(50, 16, generator=g), torch.randn(40, 16, generator=g)
    targets = torch.randint(0, 40, (50,), generator=g)
    results = []
    for library in ("mkl", "onednn"):
        forced(library)
        monkeypatch.setattr(products, "enabled", lambda: True)
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        loss = HeadLoss.apply(hh, ww, targets, torch.float32, 16, softmax_xent_grad)
        loss.backward()
        results.append((loss.detach(), hh.grad, ww.grad))
    want = nn.functional.cross_entropy(h @ w.t(), targets)
    assert torch.allclose(results[0][0], want, atol=1e-5)
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_a_decision_covers_an_octave_of_row_counts_and_one_layout():
    w = torch.randn(6, 8)
    key = products._key
    assert key(torch.randn(33, 8), w) == key(torch.randn(64, 8), w) != key(torch.randn(65, 8), w)
    assert key(torch.randn(1, 8), w) != key(torch.randn(2, 8), w)
    assert key(torch.randn(8, 4).t(), w) != key(torch.randn(4, 8), w)  # a transposed view is another product
