"""The output head's cross-entropy without materialising all the logits, and the kernel each chunk
runs in (the C++ one on the CPU when it is built, else PyTorch's, compiled when asked).

The training loop calls `lm_loss` only; which kernel runs is decided here.
"""

from __future__ import annotations

import functools

import torch

from tinyscale.config import TrainConfig
from tinyscale.kernels import cpu_kernels, products


def softmax_xent_grad(logits: torch.Tensor, targets: torch.Tensor, scale: float,
                      dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, scale * (softmax - onehot) in `dtype`) of one chunk of logits.

    Written as one function so that `torch.compile` can fuse it into two passes over the chunk
    (row max and sum of exponentials, then the gradient); eagerly it is a handful of passes.
    """
    logits = logits.float()
    top = logits.amax(dim=-1, keepdim=True)
    exp = (logits - top).exp_()
    total = exp.sum(dim=-1, keepdim=True)
    loss = (top + total.log() - logits.gather(1, targets[:, None])).sum()
    grad = exp.div_(total).scatter_add_(1, targets[:, None], exp.new_full((len(targets), 1), -1.0))
    return loss, grad.mul_(scale).to(dtype)


@functools.cache
def _compiled_xent_grad():
    return torch.compile(softmax_xent_grad, dynamic=False)


def _kernel_xent_grad(kernels, logits: torch.Tensor, targets: torch.Tensor, scale: float,
                      dtype: torch.dtype) -> tuple[float, torch.Tensor]:
    """softmax_xent_grad in one C++ pass per row (kernels/loss.cpp); overwrites the chunk's logits."""
    logits = logits.float().contiguous()
    loss = kernels.softmax_xent_grad_(logits, targets.long().contiguous(), scale)
    return loss, logits.to(dtype)


def xent_grad_fn(compile_: bool, device: torch.device | None = None):
    """The chunk kernel of HeadLoss: on the CPU the C++ one when it is built (docs/speed.md has what
    it saves), else softmax_xent_grad, compiled once per process when asked (one fixed shape per
    run, plus the last, shorter chunk)."""
    if device is not None and device.type == "cpu" and (kernels := cpu_kernels()) is not None:
        return functools.partial(_kernel_xent_grad, kernels)
    return _compiled_xent_grad() if compile_ else softmax_xent_grad


class HeadLoss(torch.autograd.Function):
    """Mean cross-entropy of `h @ weight.T` against `targets`, without materialising all the logits.

    For tiny models the output head and softmax dominate the step: [tokens, vocab] logits in float32
    are far larger than anything else and every pass over them is memory-bound. Here rows go through
    in chunks small enough to stay in cache, and since the loss is the last operation, the gradients
    for h and weight are computed in the forward pass (softmax - onehot per chunk); backward only
    scales them. Matmuls run in `dtype` (bfloat16 under autocast), softmax in float32.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype,
                chunk: int, xent_grad) -> torch.Tensor:
        n = h.shape[0]
        with torch.autocast(h.device.type, enabled=False):
            hc, wc = h.detach().to(dtype), weight.detach().to(dtype)
            grad_h = torch.empty(h.shape, dtype=dtype, device=h.device)
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device)
            total = torch.zeros((), dtype=torch.float32, device=h.device)
            routed = products.applies(hc, wc) and products.enabled()
            for i in range(0, n, chunk):
                hi = hc[i:i + chunk]
                logits = products.product(hi, wc) if routed else hi @ wc.t()
                loss, g = xent_grad(logits, targets[i:i + chunk], 1.0 / n, dtype)
                total += loss
                if routed:  # float32 on the CPU, in the library that runs each product faster here
                    products.product_into(grad_h[i:i + chunk], g, wc.t())
                    products.product_into(grad_w, g.t(), hi.t(), add=True)
                    continue
                torch.mm(g, wc, out=grad_h[i:i + chunk])  # in place: no copy of each chunk's product
                if dtype == torch.float32:
                    grad_w.addmm_(g.t(), hi)
                else:  # bfloat16 products, summed in float32
                    grad_w += g.t() @ hi
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (h.dtype, weight.dtype)
        return total / n

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return (grad_h * grad_out).to(ctx.dtypes[0]), (grad_w * grad_out).to(ctx.dtypes[1]), None, None, None, None


def lm_loss(net: torch.nn.Module, head: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor,
            cfg: TrainConfig) -> torch.Tensor:
    """Mean next-token loss of one micro-batch; `net` is the (wrapped) model, `head` its output layer."""
    h = net(x, hidden=True).flatten(0, 1)
    dtype = torch.bfloat16 if cfg.dtype == "bf16" else torch.float32
    # ~3 MB of float32 logits per chunk and CPU thread (192 rows at a 4096-token vocabulary): at 4 MB the
    # 64-wide model's head took 25% longer on one core (the chunk's logits no longer stay in cache
    # between the product, the softmax and the two gradient products). The rows are shared among the
    # threads, so each thread keeps its 3 MB: on 2 cores 384 rows made the 288-wide model's whole step
    # 0.7-1.2% faster than 192 (the 64-wide one's unchanged), and on one core 192 stays 0.5-0.8% faster.
    threads = torch.get_num_threads() if h.device.type == "cpu" else 1
    chunk = max(64, (3 << 18) // head.out_features) * threads
    return HeadLoss.apply(h, head.weight, y.flatten(), dtype, chunk, xent_grad_fn(cfg.compile, h.device))
