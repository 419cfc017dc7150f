"""TransformerLens parity: a llama-family run exported to Hugging Face (`tinyscale export`) and loaded
into TransformerLens (4.x: `TransformerBridge.boot_transformers(path, hf_model=...)`, the successor of
`HookedTransformer.from_pretrained(..., hf_model=...)`) gives the same residual stream, attention
pattern and MLP activation at every layer as tinyscale's hooks, and the same loss change when one
head is zero-ablated."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers", reason="the export needs transformers (hf extra)")
pytest.importorskip("transformer_lens", reason="TransformerLens is not installed (dev extra)")
from test_export import TEXT, make_run  # noqa: E402  (the same tiny run folder the export tests use)
from tinyscale.export import export_hf  # noqa: E402
from tinyscale.interpret.hooks import ablating, record  # noqa: E402

TOL = 1e-4


def _bridge(tmp_path, run):
    import transformers
    from transformer_lens.model_bridge import TransformerBridge

    out = export_hf(run, tmp_path / "hf")
    # Eager attention, so the bridge can read the probabilities (TransformerLens forces it too).
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32,
                                                           attn_implementation="eager").eval()
    return TransformerBridge.boot_transformers(str(out), hf_model=hf, dtype=torch.float32, device="cpu")


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tl")
    run, model, tok = make_run(tmp, "llama", tie=False, seed=3)
    bridge = _bridge(tmp, run)
    ids = torch.tensor([tok.encode(TEXT[0]).ids + tok.encode(TEXT[1]).ids])
    return model, bridge, ids


def test_activations_equal_tinyscale_hooks_at_every_layer(parity):
    model, bridge, ids = parity
    n = model.cfg.n_layers
    names = ["embed"] + [f"blocks.{i}{k}" for i in range(n) for k in ("", ".attn.pattern", ".mlp.act", ".attn.heads")]
    ours = record(model, ids, names)
    logits, cache = bridge.run_with_cache(ids)
    assert (logits - model(ids)).abs().max() < TOL and logits.std() > 0.1
    assert (cache["hook_embed"] - ours["embed"]).abs().max() < TOL
    for i in range(n):
        pairs = [(f"blocks.{i}.hook_resid_post", f"blocks.{i}"),  # residual stream after the block
                 (f"blocks.{i}.attn.hook_pattern", f"blocks.{i}.attn.pattern"),  # [B, heads, query, key]
                 (f"blocks.{i}.mlp.hook_post", f"blocks.{i}.mlp.act"),  # silu(gate) * up, per neuron
                 (f"blocks.{i}.attn.hook_z", f"blocks.{i}.attn.heads")]  # each head's output, [B, T, heads, hd]
        for theirs, mine in pairs:
            a, b = cache[theirs], ours[mine]
            assert a.shape == b.shape, (theirs, a.shape, b.shape)
            assert (a - b).abs().max() < TOL, theirs
            assert b.abs().max() > 1e-3  # non-trivial values
    assert (cache[f"blocks.{n - 1}.attn.hook_pattern"].sum(-1) - 1).abs().max() < 1e-5


def _loss(logits, ids):
    return F.cross_entropy(logits[0, :-1], ids[0, 1:]).item()


@pytest.mark.parametrize("layer,head", [(0, 1), (1, 0)])
def test_zero_ablating_a_head_changes_the_loss_the_same_in_both(parity, layer, head):
    model, bridge, ids = parity
    clean_logits = model(ids)
    clean = _loss(clean_logits, ids)
    with ablating(model, {f"blocks.{layer}.attn.head.{head}": torch.zeros(model.cfg.head_dim)}):
        ablated = model(ids)

    def zero(z, hook):
        z[:, :, head] = 0
        return z

    bridged = bridge.run_with_hooks(ids, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", zero)])
    ours, theirs = _loss(ablated, ids) - clean, _loss(bridged, ids) - clean
    # A random-init head moves the loss by ~1e-3 nats: compared at fp32 precision, far below that.
    assert abs(ours - theirs) < 1e-5 and abs(ours) > 1e-4
    assert (ablated - bridged).abs().max() < TOL and (ablated - clean_logits).abs().max() > 1e-2
