"""The encoder: padding invariance, skipped padding, lengths, and parity with transformers' Wav2Vec2BertModel."""

from __future__ import annotations

import pytest
import torch

from bestrq.models.conformer import ConformerEncoder, dynamic_compile_works
from bestrq.models.frontend import Conv2dSubsampling, PassThrough, StackedFrames
from bestrq.models.wav2vec2 import TransformerEncoder


def encoder(frontend: str = "stack", position: str = "relative_key", d: int = 64) -> ConformerEncoder:
    torch.manual_seed(0)
    fe = StackedFrames(80, d) if frontend == "stack" else Conv2dSubsampling(80, d, channels=8)
    return ConformerEncoder(fe, d, num_layers=3, num_heads=4, ffn_dim=128, conv_kernel=7, dropout=0.1,
                            position=position, left_context=8, right_context=3).eval()


@pytest.mark.parametrize("frontend,position", [("stack", "relative_key"), ("stack", "rotary"),
                                               ("conv2d", "relative_key")])
def test_batched_output_equals_each_utterance_alone(frontend, position):
    enc = encoder(frontend, position)
    lengths = torch.tensor([203, 160, 57, 9])
    feats = torch.randn(4, 203, 80, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = enc(feats, lengths)
        assert out.lengths.tolist() == [50, 40, 14, 2]
        assert len(out.hidden_states) == 4
        for i, n in enumerate(lengths.tolist()):
            alone = enc(feats[i : i + 1, :n], lengths[i : i + 1])
            t = alone.lengths.item()
            for h_batch, h_alone in zip(out.hidden_states, alone.hidden_states):
                diff = (h_batch[i, :t] - h_alone[0]).abs().max().item()
                assert diff <= 1e-5, diff
        assert out.padding_mask.tolist()[3][:3] == [False, False, True]


@pytest.mark.parametrize("kind", ["conformer", "conformer-rotary", "transformer"])
def test_skipping_padded_frames_gives_the_padded_layouts_outputs_and_gradients(kind):
    """The frame-wise layers see only valid frames, and nothing else changes, forward or backward.

    In float64: the two layouts sum a gradient over 106 or 200 rows in other orders, which in fp32 differs
    by a few units of its last place (2.6-3.9x under a 1e-6 bound on one CPU, with no margin to speak of
    for another CPU's blocking); in float64 the same bound is 1e-12, ~1500x what it gives."""
    g = [torch.Generator().manual_seed(seed) for seed in (1, 2)]
    if kind == "transformer":  # wav2vec 2.0's context network, on (B, T, D) inputs
        lengths, frames = torch.tensor([50, 40, 14, 2]), torch.randn(4, 50, 64, generator=g[0], dtype=torch.float64)
    else:  # fbank at 10 ms -> 40 ms frames
        lengths, frames = torch.tensor([203, 160, 57, 9]), torch.randn(4, 203, 80, generator=g[0], dtype=torch.float64)
    weights = torch.randn(4, 50, 64, generator=g[1], dtype=torch.float64)
    results = []
    for skip in (True, False):
        if kind == "transformer":
            torch.manual_seed(0)
            enc = TransformerEncoder(PassThrough(), 64, 3, 4, 128, 0.0, 16, 4).eval()
            first = enc.layers[0].feed_forward.intermediate_dense
        else:
            enc = encoder(position="rotary" if kind == "conformer-rotary" else "relative_key")
            first = enc.layers[0].ffn1.intermediate_dense
        enc.double()
        enc.skip_padding = skip
        rows = []
        first.register_forward_hook(lambda _m, inputs, _o, rows=rows: rows.append(inputs[0].shape[:-1].numel()))
        out = enc(frames, lengths)
        valid = ~out.padding_mask[..., None]
        loss = sum((h * weights * valid).sum() for h in out.hidden_states[1:])
        loss.backward()
        results.append((out, {n: p.grad for n, p in enc.named_parameters()}, rows[0]))
    (packed, packed_grads, packed_rows), (padded, padded_grads, padded_rows) = results
    assert packed_rows == 50 + 40 + 14 + 2 and padded_rows == 4 * 50  # padding skipped, or not
    valid = ~packed.padding_mask[..., None]
    for h_packed, h_padded in zip(packed.hidden_states, padded.hidden_states):
        assert ((h_packed - h_padded).abs() * valid).max() <= 1e-12
    for h in packed.hidden_states[1:]:
        assert (h * ~valid).abs().max() == 0  # zeros at padding
    # sums over many frames: rounding scales with the gradients (the key bias's is zero up to rounding)
    scale = max(g.abs().max() for g in padded_grads.values())
    for name, grad in padded_grads.items():
        assert (packed_grads[name] - grad).abs().max() <= 1e-12 * scale, name


def test_relative_key_bias_makes_attention_position_aware():
    enc = encoder()
    x = torch.randn(1, 80, 80, generator=torch.Generator().manual_seed(2)).repeat(1, 1, 1)
    x[:, 40:] = x[:, :40]  # the same 10 frames twice: only position tells them apart
    with torch.no_grad():
        h = enc(x, torch.tensor([80])).last
    assert (h[0, :10] - h[0, 10:20]).abs().max() > 1e-3


def test_zero_length_utterance_gives_finite_output():
    enc = encoder()
    with torch.no_grad():
        out = enc(torch.randn(2, 40, 80), torch.tensor([40, 0]))
    assert torch.isfinite(out.last).all() and out.lengths.tolist() == [10, 0]


def test_layer_layout_matches_transformers_wav2vec2bert():
    """The default encoder, weights copied by name, gives Wav2Vec2BertModel's hidden states."""
    transformers = pytest.importorskip("transformers")
    enc = encoder()
    with torch.no_grad():  # non-trivial norms and position table, so the comparison means something
        for name, p in enc.named_parameters():
            if "norm" in name or "distance" in name:
                p.add_(0.1 * torch.randn_like(p))
    config = transformers.Wav2Vec2BertConfig(
        hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
        feature_projection_input_dim=320, conv_depthwise_kernel_size=7, position_embeddings_type="relative_key",
        left_max_position_embeddings=8, right_max_position_embeddings=3, hidden_act="swish",
        layer_norm_eps=1e-5, add_adapter=False, use_intermediate_ffn_before_adapter=False)
    hf = transformers.Wav2Vec2BertModel(config).eval()
    mapped = {k.replace("frontend.", "feature_projection."): v for k, v in enc.state_dict().items()}
    mapped = {("encoder." + k if k.startswith("layers.") else k): v for k, v in mapped.items()}
    missing, unexpected = hf.load_state_dict(mapped, strict=False)
    assert not unexpected and all("masked_spec_embed" in m for m in missing), (missing, unexpected)

    lengths = torch.tensor([120, 77])
    feats = torch.randn(2, 120, 80, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = enc(feats, lengths)
        stacked = feats[:, :120].reshape(2, 30, 320)
        theirs = hf(stacked, attention_mask=~ours.padding_mask, output_hidden_states=True)
    for i, n in enumerate(ours.lengths.tolist()):
        diff = (ours.last[i, :n] - theirs.last_hidden_state[i, :n]).abs().max().item()
        assert diff < 1e-4, diff


def test_compiled_depthwise_convolution_computes_what_the_convolution_does(eager_and_compiled_forms):
    """Compiled, the depthwise convolution runs as a sum of shifted products; same outputs and grads."""
    from bestrq.models.conformer import ConvModule

    torch.manual_seed(0)
    module = ConvModule(16, 7, 0.0)
    x = torch.randn(3, 20, 16)
    weight = module.depthwise_conv.weight
    (out, *grads), (out_compiled, *grads_compiled) = eager_and_compiled_forms(module._depthwise, x, [weight])
    torch.testing.assert_close(out_compiled, out, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads_compiled, grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # left padding only: the first output frame sees the first input frame alone
    torch.testing.assert_close(out[:, 0], x[:, 0] * weight[:, 0, -1].detach())


def test_compiled_convolution_module_keeps_one_graph_across_batch_lengths(compiled_graphs):
    """torch.compile(dynamic=True): new batch lengths reuse the graph (a convolution's compiled
    backward would fix the first batch's length and compile again for every new one)."""
    from bestrq.models.conformer import ConvModule

    torch.manual_seed(0)

    def inputs(t):
        pad = torch.arange(t)[None, :] >= torch.tensor([t, t - 3])[:, None]
        return torch.randn(2, t, 8, requires_grad=True), pad

    assert compiled_graphs(ConvModule(8, 5, 0.0), inputs) == 1


class _ValidFrames(torch.nn.Module):
    """An encoder's last hidden states with the padding zeroed (padded frames hold no defined value)."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out = self.encoder(x, lengths)
        return out.last.masked_fill(out.padding_mask[..., None], 0.0)


@pytest.mark.skipif(not dynamic_compile_works(), reason=f"torch {torch.__version__} compiles these encoders "
                    "again for new batch lengths, or fails at them (see dynamic_compile_works)")
@pytest.mark.parametrize("kind", ["conformer relative_key", "conformer rotary", "transformer"])
def test_compiled_encoders_train_on_new_batch_lengths_with_one_graph(compiled_graphs, kind):
    """What ``train.compile=true`` runs: a whole encoder, forward and backward, over padded batches of
    three lengths; outputs match eager on the valid frames and the first graph serves them all
    (torch 2.11 failed here at the second length: "expected size 2==2, stride 17==21")."""
    torch.manual_seed(0)
    if kind == "transformer":
        encoder = TransformerEncoder(PassThrough(), 16, 1, 2, 32, dropout=0.0, pos_conv_kernel=4, pos_conv_groups=2)
    else:
        encoder = ConformerEncoder(PassThrough(), 16, 1, 2, 32, conv_kernel=5, dropout=0.0,
                                   position=kind.split()[1])

    def inputs(t):
        return torch.randn(2, t, 16, requires_grad=True), torch.tensor([t, t - 5])

    assert compiled_graphs(_ValidFrames(encoder.train()), inputs) == 1


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_blockwise_relative_key_attention_has_exact_gradients(p):
    """The query-block attention's hand-written backward (recomputed scores, the bias's gradient
    gathered per clipped distance, the same dropout masks redrawn) against autograd's numerical
    gradients, in float64, over blocks that do not divide T, with padding."""
    from bestrq.models.relative_attention import relative_key_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 11, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    weight = torch.randn(3 + 2 + 1, 4, generator=g, dtype=torch.float64, requires_grad=True)
    padding = torch.zeros(2, 11, dtype=torch.bool)
    padding[1, 7:] = True
    torch.manual_seed(5)  # the dropout seed is drawn from the global generator: the same in every call

    def fn(q, k, v, weight):
        torch.manual_seed(5)
        return relative_key_attention(q, k, v, weight, padding, 3, 2, p, block=4)

    assert torch.autograd.gradcheck(fn, (q, k, v, weight), eps=1e-6, atol=1e-5)


def test_blockwise_relative_key_attention_computes_the_materialised_bias_attention(monkeypatch):
    """Clips longer than a block take the query-block path (no (B, H, T, T) bias); its outputs and
    gradients are the materialised path's, with padding, for every parameter of the encoder. In
    float64, so that a wrong term cannot hide in fp32 rounding: the gradients agree to 1e-12 there
    (in fp32 the small ones differ by rounding, up to 1e-5 of 1e-3)."""
    from bestrq.models import relative_attention

    enc = encoder().double()  # dropout 0 in eval mode; the block path is eager only
    x = torch.randn(3, 120, 80, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lengths = torch.tensor([120, 97, 50])

    monkeypatch.setattr(relative_attention, "CPU_BLOCKS", 1)  # above one block, as on a GPU
    calls, blocks_path = [], relative_attention.relative_key_attention
    monkeypatch.setattr(relative_attention, "relative_key_attention",
                        lambda *a, **k: calls.append(1) or blocks_path(*a, **k))

    def run(block):
        monkeypatch.setattr(relative_attention, "BLOCK", block)
        enc.zero_grad()
        out = enc(x, lengths)
        valid = ~out.padding_mask
        (out.last[valid].square().sum() + out.hidden_states[1][valid].sum()).backward()
        return out.last[valid].detach(), {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}

    materialised, grads = run(10_000)
    assert not calls
    blocks, block_grads = run(7)  # 30 frames after subsampling: 5 blocks, the last short
    assert len(calls) == 3  # every layer
    assert torch.allclose(blocks, materialised, atol=1e-10)
    assert grads.keys() == block_grads.keys() and any("distance_embedding" in n for n in grads)
    for name, g in grads.items():
        assert torch.allclose(block_grads[name], g, atol=1e-10), name


def test_blockwise_hidden_states_match_the_materialised_path_in_fp32(monkeypatch):
    """As the encoder runs in training and extraction (fp32), every hidden state of the query-block
    path is the materialised path's within 1e-5, padded frames left out."""
    from bestrq.models import relative_attention

    enc = encoder().eval()
    x = torch.randn(3, 120, 80, generator=torch.Generator().manual_seed(2))
    lengths = torch.tensor([120, 97, 50])
    monkeypatch.setattr(relative_attention, "CPU_BLOCKS", 1)
    calls, blocks_path = [], relative_attention.relative_key_attention
    monkeypatch.setattr(relative_attention, "relative_key_attention",
                        lambda *a, **k: calls.append(1) or blocks_path(*a, **k))
    outputs = []
    for block in (10_000, 7):  # materialised, then 5 query blocks
        monkeypatch.setattr(relative_attention, "BLOCK", block)
        with torch.no_grad():
            out = enc(x, lengths)
        outputs.append([h[~out.padding_mask] for h in out.hidden_states])
    assert len(calls) == 3  # every layer of the second run took the block path
    for materialised, blocks in zip(*outputs):
        assert torch.allclose(blocks, materialised, atol=1e-5, rtol=0)


def test_the_query_block_path_takes_long_clips_only():
    """Above one block on a GPU; on a CPU, where its extra passes cost time and memory is rarely the
    limit, above CPU_BLOCKS blocks only."""
    from bestrq.models import relative_attention as ra

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not ra.applies(ra.BLOCK, cuda) and ra.applies(ra.BLOCK + 1, cuda)
    assert not ra.applies(ra.BLOCK * ra.CPU_BLOCKS, cpu) and ra.applies(ra.BLOCK * ra.CPU_BLOCKS + 1, cpu)
