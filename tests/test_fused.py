"""The fused training kernels on the CPU (kernels/fused.cpp, kernels/fused.py): RMSNorm, SwiGLU and
rotary + causal attention from the packed projection give PyTorch's plain path's outputs and gradients."""

import copy
import platform
import shutil

import pytest
import torch
import torch.nn.functional as F

from tinyscale.kernels import cpu_kernels
from tinyscale.model import RMSNorm, Transformer, model_config


@pytest.fixture(scope="module")
def built():
    if cpu_kernels() is None:
        assert not (shutil.which("c++") and platform.machine() == "x86_64"), "the C++ kernels did not build"
        pytest.skip("no C++ compiler here: training uses PyTorch's operators, which other tests cover")


def _grads(module, inputs, fn):
    """(output, gradients of the inputs and of the module's parameters) for a fixed output gradient."""
    leaves = [x.clone().requires_grad_() for x in inputs]
    y = fn(module, *leaves)
    y.backward(torch.linspace(-1, 1, y.numel()).view_as(y).cos())
    return y.detach(), [x.grad for x in leaves] + [p.grad for p in module.parameters()]


def _assert_same(a, b, tol=1e-5):
    torch.testing.assert_close(a[0], b[0], atol=tol, rtol=tol)
    for ga, gb in zip(a[1], b[1], strict=True):
        torch.testing.assert_close(ga, gb, atol=tol, rtol=tol)


@pytest.mark.parametrize("dim", [288, 37])
def test_rms_norm_kernel_matches_pytorch(built, dim):
    from tinyscale.kernels.fused import rms_norm

    torch.manual_seed(dim)
    norm = RMSNorm(dim, 1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 29, dim) * 3
    ref = _grads(norm, [x], lambda m, x: m(x))
    fused = copy.deepcopy(norm)
    fused.fused = rms_norm
    _assert_same(_grads(fused, [x], lambda m, x: m(x)), ref)


@pytest.mark.parametrize("hidden", [768, 13])
def test_swiglu_kernel_matches_pytorch(built, hidden):
    from tinyscale.kernels.fused import swiglu_activation

    torch.manual_seed(hidden)
    h = torch.randn(5, 11, 2 * hidden) * 4
    h[0, 0, :8] = torch.tensor([-100.0, -30.0, -10.0, -1e-3, 0.0, 1e-3, 30.0, 100.0])  # both sigmoid branches
    plain = _grads(torch.nn.Module(), [h], lambda m, h: F.silu(h.chunk(2, -1)[0]) * h.chunk(2, -1)[1])
    fused = _grads(torch.nn.Module(), [h], lambda m, h: swiglu_activation(h))
    _assert_same(fused, plain)
    h16 = h.bfloat16()  # under autocast: computed in float32, rounded to bfloat16 once
    plain16 = _grads(torch.nn.Module(), [h16.float()], lambda m, h: F.silu(h.chunk(2, -1)[0]) * h.chunk(2, -1)[1])
    fused16 = _grads(torch.nn.Module(), [h16], lambda m, h: swiglu_activation(h))
    assert fused16[0].dtype == fused16[1][0].dtype == torch.bfloat16
    torch.testing.assert_close(fused16[0].float(), plain16[0].bfloat16().float(), atol=1e-6, rtol=8e-3)  # 1 ulp
    torch.testing.assert_close(fused16[1][0].float(), plain16[1][0].bfloat16().float(), atol=1e-2, rtol=1e-2)
    assert swiglu_activation(h.half()) is None  # other dtypes keep PyTorch's path


@pytest.mark.parametrize("hidden", [24, 13])  # 13: the gradient's transpose has a partial 8 x 8 tile
def test_gated_up_matches_the_plain_mlp(built, hidden):
    """fc and the activation as one operator (its own weight gradient): the MLP's output and every
    gradient as PyTorch's; with a bias it leaves the MLP to PyTorch."""
    from tinyscale.kernels.fused import gated_up
    from tinyscale.model import SwiGLU

    torch.manual_seed(hidden)
    plain = SwiGLU(40, hidden, bias=False)
    fused = copy.deepcopy(plain)
    fused.fused = gated_up
    x = torch.randn(3, 7, 40)
    out, grads = _grads(fused, [x], lambda m, x: m(x))
    _assert_same((out, grads), _grads(plain, [x], lambda m, x: m(x)))
    assert all(g.is_contiguous() for g in grads)
    assert gated_up(SwiGLU(40, hidden, bias=True), x) is None


@pytest.mark.parametrize(("hd", "rotary"), [(48, True), (16, True), (32, False)])
def test_packed_attention_matches_pytorch(built, hd, rotary):
    """Rotary positions + causal attention from the packed projection, against model.Attention's own
    path (PyTorch's rotary and scaled_dot_product_attention): output and every gradient."""
    from tinyscale.kernels.fused import packed_attention

    torch.manual_seed(hd)
    family = "llama" if rotary else "neo"
    cfg = model_config(None, vocab_size=64, max_seq_len=40, family=family, d_model=2 * hd, n_heads=2, n_layers=1)
    model = Transformer(cfg)
    attn = model.blocks[0].attn
    x = torch.randn(3, 37, cfg.d_model)
    rope = (model.rope_cos[:37], model.rope_sin[:37]) if rotary else None
    ref = _grads(attn, [x], lambda m, x: m(x, rope, None, 0, None, True))
    fused = copy.deepcopy(attn)
    fused.packed_attention = packed_attention
    _assert_same(_grads(fused, [x], lambda m, x: m(x, rope, None, 0, None, True)), ref)


def _step(model, idx, targets, bf16=False):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = F.cross_entropy(model(idx).float().flatten(0, 1), targets.flatten())
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("bf16", [False, True])
def test_a_model_through_the_kernels_has_the_plain_loss_and_gradients(built, bf16):
    from tinyscale.kernels.fused import use_fused_kernels

    torch.manual_seed(0)
    cfg = model_config(None, vocab_size=97, max_seq_len=48, d_model=96, n_heads=2, n_layers=2)
    plain = Transformer(cfg)
    fused = copy.deepcopy(plain)
    assert use_fused_kernels(fused)
    assert all(b.attn.packed_attention is not None and b.mlp.fused is not None for b in fused.blocks)
    idx, targets = torch.randint(0, 97, (2, 2, 48)).unbind(0)
    loss, grads = _step(fused, idx, targets, bf16)
    ref_loss, ref_grads = _step(plain, idx, targets, bf16)
    tol = 2e-2 if bf16 else 1e-5  # bf16: the plain path rounds rotated q, k and the activation to bf16
    assert float(loss) == pytest.approx(float(ref_loss), rel=tol / 10)
    for name, g in grads.items():
        scale = ref_grads[name].abs().max()
        assert (g - ref_grads[name]).abs().max() <= tol * scale, name


def test_under_compile_only_the_attention_is_routed(built):
    from tinyscale.kernels.fused import use_fused_kernels

    model = Transformer(model_config(None, vocab_size=64, max_seq_len=16, d_model=32, n_heads=2, n_layers=1))
    assert use_fused_kernels(model, compiled=True)
    block = model.blocks[0]
    assert block.attn.packed_attention is not None  # a custom operator: Inductor cannot fuse through it
    assert block.attn_norm.fused is None and block.mlp.fused is None  # Inductor fuses these itself
    odd = Transformer(model_config(None, vocab_size=64, max_seq_len=16, d_model=40, n_heads=2, n_layers=1))
    assert use_fused_kernels(odd)
    assert odd.blocks[0].attn.packed_attention is None  # head size 20: the kernel is not built for it


def test_compiled_training_keys_its_caches_to_the_operators(tmp_path):
    # A graph cached by torch.compile for an earlier version of the operators (another number of
    # outputs) must not be reused: the trainer tags the caches with a hash of what defines them.
    compiler_config = pytest.importorskip("torch.compiler.config", reason="cache tags need torch >= 2.6")
    from tinyscale import kernels
    from tinyscale.config import TrainConfig
    from tinyscale.train import build_model

    for name in (*kernels.SOURCES, *kernels.HEADERS, "causal.py", "fused.py"):
        shutil.copy(kernels.HERE / name, tmp_path / name)
    before = kernels.operators_fingerprint(tmp_path)
    assert before == kernels.operators_fingerprint()
    (tmp_path / "fused.py").write_text((tmp_path / "fused.py").read_text() + "\n# changed\n")
    assert kernels.operators_fingerprint(tmp_path) != before

    mcfg = model_config(None, vocab_size=64, max_seq_len=16, d_model=32, n_heads=2, n_layers=1)
    with compiler_config.patch(cache_key_tag="users-own"):  # torch's own patch: its config is no plain module
        build_model(mcfg, TrainConfig(data=".", compile=False), torch.device("cpu"))
        assert compiler_config.cache_key_tag == "users-own"  # eager training leaves it alone
        build_model(mcfg, TrainConfig(data=".", compile=True), torch.device("cpu"))
        tag = f"users-own tinyscale-ops-{before}-{torch.backends.cpu.get_cpu_capability().lower()}"
        assert compiler_config.cache_key_tag == f"{tag}-t{torch.get_num_threads()}"


def test_compiled_graphs_are_keyed_to_the_instruction_set_and_threads(monkeypatch):
    # torch 2.13 reuses a graph cached under ATEN_CPU_CAPABILITY=avx2 at the CPU's AVX-512, which
    # corrupted the heap: the tag must change with the capability in effect and with the threads,
    # and replace the package's earlier tag rather than pile up.
    compiler_config = pytest.importorskip("torch.compiler.config", reason="cache tags need torch >= 2.6")
    from tinyscale import kernels

    threads = torch.get_num_threads()
    with compiler_config.patch(cache_key_tag="users-own"):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
        kernels.tag_compile_caches()
        native = compiler_config.cache_key_tag
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
        kernels.tag_compile_caches()
        emulated = compiler_config.cache_key_tag
        monkeypatch.setattr(torch, "get_num_threads", lambda: 7)
        kernels.tag_compile_caches()
        seven = compiler_config.cache_key_tag
    assert native.startswith("users-own tinyscale-ops-") and native.endswith(f"-avx512-t{threads}")
    assert emulated == native.replace("-avx512-", "-avx2-")
    assert seven.endswith("-avx2-t7") and seven.count("tinyscale-ops-") == 1


@pytest.mark.parametrize("threads, message", [("0", "must be at least 1, got 0"), ("2,x", "not an integer: 'x'")])
def test_attention_bench_refuses_bad_thread_counts_in_one_line(threads, message, monkeypatch, capsys):
    import sys
    from pathlib import Path

    bench_dir = Path(__file__).resolve().parents[1] / "bench"
    monkeypatch.syspath_prepend(str(bench_dir))
    import attention_speed

    monkeypatch.setattr(sys, "argv", ["attention_speed.py", "--threads", threads])
    with pytest.raises(SystemExit) as ended:
        attention_speed.main()
    assert ended.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)
