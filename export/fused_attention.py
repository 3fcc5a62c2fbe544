"""Attention exported as ONNX Runtime's fused `com.microsoft.MultiHeadAttention`.

The TorchScript exporter writes diffusers' scaled-dot-product attention as MatMul -> Softmax
-> MatMul, which materialises a [batch, heads, tokens, tokens] score tensor: 0.5 GB for one
64x64-latent self-attention of SD 1.5. ONNX Runtime's contrib op MultiHeadAttention runs
flash attention on the CPU provider (tiled, no score tensor) when it gets separate 3-D
query / key / value [batch, tokens, hidden] and no mask, bias or past state. This module
gives diffusers' `Attention` layers a processor that keeps q, k, v in that 3-D layout and
calls `MultiHeadAttentionOp`, an autograd Function whose forward is PyTorch's own SDPA and
whose ONNX symbolic is the contrib op, so eager results are unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

DOMAIN = "com.microsoft"


class MultiHeadAttentionOp(torch.autograd.Function):
    """softmax(q k^T * scale) v on 3-D [batch, tokens, heads * head_dim] tensors."""

    @staticmethod
    def forward(ctx, query, key, value, heads: int, scale: float):
        batch, _, inner = query.shape
        head_dim = inner // heads
        q, k, v = (t.reshape(batch, -1, heads, head_dim).transpose(1, 2) for t in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        return out.transpose(1, 2).reshape(batch, -1, inner)

    @staticmethod
    def symbolic(g, query, key, value, heads: int, scale: float):
        out = g.op(f"{DOMAIN}::MultiHeadAttention", query, key, value, num_heads_i=heads, scale_f=scale)
        out.setType(query.type())
        return out


class FusedAttentionProcessor:
    """diffusers attention processor: projections as usual, the core through `MultiHeadAttentionOp`.

    Covers the attention of SD 1.x/2.x UNets and VAEs (self and cross, 3-D or 4-D inputs,
    optional group norm and residual). Masks, spatial norm or q/k norms are refused: those
    layers have no fused CPU kernel and keep diffusers' own processor.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if attention_mask is not None or attn.spatial_norm is not None or attn.norm_q is not None or attn.norm_k is not None:
            raise NotImplementedError("FusedAttentionProcessor: masks, spatial norm and q/k norms are not supported")
        residual = hidden_states
        four_d = hidden_states.ndim == 4
        if four_d:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        hidden_states = MultiHeadAttentionOp.apply(query, key, value, attn.heads, float(attn.scale))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if four_d:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextmanager
def fused_attention(*modules: torch.nn.Module):
    """Within the block, every diffusers `Attention` layer in `modules` uses the fused processor;
    the previous processors come back afterwards. Yields the number of layers switched."""
    from diffusers.models.attention_processor import Attention

    layers = [m for module in modules for m in module.modules() if isinstance(m, Attention)]
    for layer in layers:
        if layer.spatial_norm is not None or layer.norm_q is not None or layer.norm_k is not None:
            raise NotImplementedError(f"{type(layer).__name__}: an attention layer with spatial or q/k norm has no fused CPU kernel")
    previous = [layer.processor for layer in layers]
    try:
        for layer in layers:
            layer.set_processor(FusedAttentionProcessor())
        yield len(layers)
    finally:
        for layer, processor in zip(layers, previous):
            layer.set_processor(processor)
