"""The BEST-RQ objective: only masked frames carry loss; targets come from clean features."""

from __future__ import annotations

import torch

from bestrq.config import load_config
from bestrq.features import stack_frames
from bestrq.masking import span_mask
from bestrq.objectives.bestrq import build_bestrq, code_statistics, masked_prediction_loss

SMALL = ["encoder.d_model=32", "encoder.num_layers=1", "encoder.num_heads=2", "encoder.ffn_dim=64",
         "encoder.dropout=0.0", "quantizer.codebook_size=64"]


def model_and_batch(seed: int = 0):
    torch.manual_seed(seed)
    model = build_bestrq(load_config(None, SMALL)).eval()
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([32000, 24000, 12000])
    waves = torch.zeros(3, 32000)
    for i, n in enumerate(lengths.tolist()):
        waves[i, :n] = 0.1 * torch.randn(n, generator=g)
    return model, waves, lengths


class Recorder(torch.nn.Module):
    """Stands in for the quantizer: records its input; returns ``table[mask]`` when given a table."""

    def __init__(self, real, table=None, mask=None):
        super().__init__()
        self.real, self.table, self.mask, self.seen = real, table, mask, None
        self.num_codebooks, self.codebook_size = real.num_codebooks, real.codebook_size

    def forward(self, x):
        self.seen = x.clone()
        return self.real(x) if self.table is None else self.table[self.mask]


def forward_mask(model, lengths, seed, num_frames):
    """The mask the forward draws: its generator makes the mask first."""
    frame_lengths = model.features.output_lengths(lengths)
    return span_mask(torch.div(frame_lengths, 4, rounding_mode="floor"), num_frames, model.mask_spec,
                     torch.Generator().manual_seed(seed))


def test_only_masked_frames_are_quantised_from_the_clean_features():
    model, waves, lengths = model_and_batch()
    rec = Recorder(model.quantizer)
    model.quantizer = rec
    model(waves, lengths, torch.Generator().manual_seed(1))
    feats, frame_lengths = model.input_features(waves, lengths)
    clean, _ = stack_frames(feats, frame_lengths, 4)
    mask = forward_mask(model, lengths, 1, clean.shape[1])
    assert 0 < mask.sum() < (~mask).sum() + mask.sum()
    assert torch.equal(rec.seen, clean[mask])


def test_changing_targets_of_unmasked_frames_leaves_the_loss_unchanged():
    model, waves, lengths = model_and_batch()
    feats, frame_lengths = model.input_features(waves, lengths)
    clean, _ = stack_frames(feats, frame_lengths, 4)
    table = model.quantizer(clean)  # (B, T4, K): every frame's code
    mask = forward_mask(model, lengths, 9, clean.shape[1])
    real = model.quantizer
    out = model(waves, lengths, torch.Generator().manual_seed(9))
    model.quantizer = Recorder(real, table, mask)
    assert torch.equal(model(waves, lengths, torch.Generator().manual_seed(9)).loss, out.loss)
    scrambled = table.clone()
    scrambled[~mask] = torch.randint(0, 64, scrambled[~mask].shape)
    assert not torch.equal(scrambled, table)
    model.quantizer = Recorder(real, scrambled, mask)
    assert torch.equal(model(waves, lengths, torch.Generator().manual_seed(9)).loss, out.loss)
    changed = table.clone()
    changed[mask] = (changed[mask] + 1) % 64  # changing a masked target does change it
    model.quantizer = Recorder(real, changed, mask)
    assert not torch.equal(model(waves, lengths, torch.Generator().manual_seed(9)).loss, out.loss)


def test_masked_input_frames_are_noise_and_unmasked_frames_untouched():
    model, waves, lengths = model_and_batch()
    seen = {}
    real_forward = model.encoder.forward

    def spy(feats, lens, **kw):  # kw: the chunked attention of a streaming encoder
        seen["x"] = feats
        return real_forward(feats, lens, **kw)

    model.encoder.forward = spy
    model(waves, lengths, torch.Generator().manual_seed(3))
    feats, _ = model.input_features(waves, lengths)
    mask = forward_mask(model, lengths, 3, feats.shape[1] // 4).repeat_interleave(4, dim=1)
    x = seen["x"][:, : mask.shape[1]]
    clean = feats[:, : mask.shape[1]]
    assert torch.equal(x[~mask], clean[~mask])
    noise = x[mask]
    assert abs(noise.std().item() - 0.1) < 0.01 and abs(noise.mean().item()) < 0.01


def test_loss_is_cross_entropy_over_masked_frames_and_codebooks():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(10, 2, 16, generator=g)
    targets = torch.randint(0, 16, (10, 2), generator=g)
    loss, acc = masked_prediction_loss(logits, targets)
    manual = -torch.log_softmax(logits, -1).gather(-1, targets[..., None]).mean()
    torch.testing.assert_close(loss, manual)
    assert acc.item() == (logits.argmax(-1) == targets).float().mean().item()
    usage, entropy, hist = code_statistics(torch.tensor([[0], [0], [1], [3]]), 4)
    assert usage.item() == 0.75 and abs(entropy.item() - 1.5) < 1e-9 and hist.tolist() == [[2, 1, 0, 1]]


def test_gradients_flow_only_from_masked_frames():
    model, waves, lengths = model_and_batch()
    captured = {}
    real_forward = model.encoder.forward

    def spy(feats, lens, **kw):
        out = real_forward(feats, lens, **kw)
        out.last.retain_grad()
        captured["h"] = out.last
        return out

    model.encoder.forward = spy
    out = model(waves, lengths, torch.Generator().manual_seed(5))
    out.loss.backward()
    mask = forward_mask(model, lengths, 5, captured["h"].shape[1])
    grad = captured["h"].grad.abs().sum(-1)
    assert torch.all(grad[~mask] == 0) and torch.all(grad[mask] > 0)


# Where a training step waits for the device (a host sync on CUDA): each is needed, and listed
# here so that a new one is a decision, not an accident (docs/implementation.md, "Host syncs").
#   packing      models/conformer.py: whether the batch has padding, and its valid frames' rows
#   masked rows  the masked frames' rows, found once per step and gathered by index after
#   distractors  wav2vec 2.0: the most masked frames of an utterance, sizing the (B, M, M) cosines
HOST_SYNCS = {
    "bestrq_tiny": {("__bool__", "models/conformer.py"), ("nonzero", "models/conformer.py"),
                    ("nonzero", "objectives/bestrq.py")},
    "wav2vec2_tiny": {("__bool__", "models/conformer.py"), ("nonzero", "models/conformer.py"),
                      ("nonzero", "objectives/wav2vec2.py"), ("item", "objectives/wav2vec2.py")},
}


def _host_syncs(step) -> list[tuple[str, str]]:
    """The calls of ``step()`` that make the host wait for the device: reading a value (item,
    bool, int, tolist), a data-dependent size (nonzero, a boolean index), or a copy from the host
    (torch.tensor); as (function, file) pairs, files relative to the package."""
    import traceback

    from torch.overrides import TorchFunctionMode

    reads = {torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__,
             torch.Tensor.__index__, torch.Tensor.tolist, torch.Tensor.nonzero, torch.nonzero,
             torch.masked_select, torch.Tensor.masked_select, torch.tensor, torch.as_tensor, torch.Tensor.cpu}
    seen = []

    class Spy(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            index = args[1] if func is torch.Tensor.__getitem__ else None
            parts = index if isinstance(index, tuple) else (index,)
            boolean = any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)
            if func in reads or boolean:
                ours = [f for f in traceback.extract_stack()[:-1] if "/src/bestrq/" in f.filename]
                if ours:
                    seen.append((func.__name__, ours[-1].filename.split("/src/bestrq/")[1]))
            return func(*args, **(kwargs or {}))

    with Spy():
        step()
    return seen


def test_a_training_step_waits_for_the_device_only_where_it_must():
    """On CUDA every host sync stalls the queue of kernels; the step's syncs are the listed ones
    (a CPU-only path, the quantizer's NumPy argmax, aside)."""
    from bestrq.objectives import build_model
    from bestrq.train.loop import Meter, _any_ranks

    small = ["encoder.d_model=32", "encoder.num_layers=2", "encoder.num_heads=2", "encoder.ffn_dim=64"]
    waves = 0.1 * torch.randn(3, 32000, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([32000, 24000, 16000])  # padded: the packed path
    for name, expected in HOST_SYNCS.items():
        torch.manual_seed(0)
        model = build_model(load_config(name, small)).train()
        meter, outs = Meter(torch.device("cpu")), []

        def step(model=model, meter=meter, outs=outs):
            out = model(waves, lengths, torch.Generator().manual_seed(1), 0)
            out.loss.backward()
            meter.add(out, 2.5)  # the loop's running sums of the logged metrics: no sync until logged
            outs.append(_any_ranks([False, True], torch.device("cpu")))  # the stop flags: one process
            outs.append(out)

        seen = _host_syncs(step)
        found = [s for s in seen if s[1] != "quantizer.py"]  # NumPy's argmax: on CPU only
        assert set(found) == expected and len(found) == len(expected), (name, sorted(found))  # each once
        assert meter.reduce()["audio_seconds"] == 2.5 and outs
