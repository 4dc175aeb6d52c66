"""The fused head: the training loss of the output layer without ever forming the B x T x V logits.

`fused_cross_entropy(h, W, targets, ...)` equals F.cross_entropy(F.linear(h, W), targets, ignore_index=-1) up to
float rounding; it works chunk by chunk, so only one chunk's logits are alive at a time.
"""
import math

import torch
from torch.nn import functional as F


# The fused head's chunk: the largest power of two of tokens whose fp32 logits fit this budget. On a CPU, chunks
# that stay near the caches are fastest (128 tokens at V = 50,304, see results/bench/); on a GPU a chunk must be
# big enough to keep the matmul efficient (2,048 tokens = 8 chunks per 16 x 1024 micro-batch).
HEAD_CHUNK_BYTES = {"cpu": 32 * 2 ** 20, "cuda": 512 * 2 ** 20}


def head_chunk_size(vocab_size: int, device_type: str) -> int:
    budget = HEAD_CHUNK_BYTES.get(device_type, HEAD_CHUNK_BYTES["cuda"])
    return 2 ** max(4, int(math.log2(budget / (4 * vocab_size))))


class FusedLinearCrossEntropy(torch.autograd.Function):
    """mean_i CE(h_i W^T, t_i) over the rows with t_i != -1, computed chunk by chunk: never more than one chunk
    of logits alive, and no separate log_softmax pass.

    For each chunk the forward computes logits (in `dtype`, the autocast precision), their softmax and loss in
    fp32, and right away the gradients: dlogits = softmax - onehot, dh = dlogits W, dW += dlogits^T h (fp32
    accumulator). The backward only scales them by the incoming gradient. Same numbers as
    F.cross_entropy(F.linear(h, W)) up to float rounding; the price is that dh and dW (the size of h and W) are
    kept from forward to backward, which is far less than the B x T x V logits.
    """

    @staticmethod
    def forward(ctx, h, weight, targets, chunk: int, dtype):
        acc = torch.promote_types(dtype, torch.float32)  # softmax, loss and dW accumulate in at least fp32
        with torch.autocast(h.device.type, enabled=False):
            hc, wc = h.to(dtype), weight.to(dtype)
            keep = (targets != -1).to(acc)
            n = keep.sum().clamp(min=1.0)
            safe = targets.clamp(min=0)[:, None]
            loss = torch.zeros((), dtype=acc, device=h.device)
            dh = torch.empty_like(h)
            dw = torch.zeros(weight.shape, dtype=acc, device=weight.device)
            for s in range(0, h.shape[0], chunk):
                # one softmax kernel instead of logsumexp + subtract + exp: ~1.6x faster per chunk on a CPU
                p = torch.softmax((hc[s:s + chunk] @ wc.t()).to(acc), dim=1)
                k, t = keep[s:s + chunk], safe[s:s + chunk]
                # -log p_target; clamped at the smallest normal float so an absurd logit gap (> 87 nats in fp32,
                # a diverged run) gives a huge finite loss rather than inf
                loss = loss - (p.gather(1, t)[:, 0].clamp_min(torch.finfo(acc).tiny).log() * k).sum()
                # d(mean loss) / d logits = (softmax - onehot) * k / n, in the matmul dtype. Compiled, out of place:
                # an in-place update of the fp32 softmax makes Inductor materialise it, while this form fuses into
                # one pass that writes the gradient directly in `dtype`. Eager, in place: two fewer passes over the
                # chunk's logits (the head is 1.26x faster on a CPU).
                if torch.compiler.is_compiling():
                    g = (p.scatter_add(1, t, -k[:, None]) * (k / n)[:, None]).to(dtype)
                else:
                    g = p.scatter_add_(1, t, -k[:, None]).mul_((k / n)[:, None]).to(dtype)
                dh[s:s + chunk] = g @ wc
                if dtype == acc:
                    dw.addmm_(g.t(), hc[s:s + chunk])  # (the accumulator, not the softmax: in place is fine)
                else:
                    dw += (g.t() @ hc[s:s + chunk]).to(acc)
        ctx.save_for_backward(dh, dw.to(weight.dtype))
        return loss / n

    @staticmethod
    def backward(ctx, grad_loss):
        dh, dw = ctx.saved_tensors
        return dh * grad_loss, dw * grad_loss, None, None, None


def chunked_cross_entropy(h, weight, targets, chunk: int, dtype):
    """The fused head's loss without gradients (evaluation): same chunks, same numbers."""
    acc = torch.promote_types(dtype, torch.float32)
    total = torch.zeros((), dtype=acc, device=h.device)
    with torch.autocast(h.device.type, enabled=False):
        hc, wc = h.to(dtype), weight.to(dtype)
        for s in range(0, h.shape[0], chunk):
            total = total + F.cross_entropy((hc[s:s + chunk] @ wc.t()).to(acc), targets[s:s + chunk],
                                            ignore_index=-1, reduction="sum")
    return total / (targets != -1).sum().clamp(min=1)


def fused_cross_entropy(h, weight, targets):
    """(N, d) hidden states, (V, d) head weight, (N,) targets (-1 = ignore) -> mean cross-entropy. Logits are
    computed in the autocast dtype when autocast is on; with gradients needed, they are computed in the forward."""
    dev = h.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype
    args = (h, weight, targets, head_chunk_size(weight.size(0), dev), dtype)
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return FusedLinearCrossEntropy.apply(*args)
    return chunked_cross_entropy(*args)
