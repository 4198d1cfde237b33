"""BEST-RQ component costs on this machine, with peers measured in the same run.

    python bench/bench_bestrq.py            (or: make bench)

Prints:
  * features: real-time factor of the log-mel fbank on one core, against kaldi-native-fbank
    (C++) on the same audio. Target: >= 200x real time per core.
  * quantizer + masking: their share of a full bestrq_tiny training step (forward, backward,
    AdamW) on a 60 s batch. Target: <= 2 %. Also the quantizer against a broadcast-distance
    nearest-neighbour search (the B x T x V x d tensor that src/bestrq/quantizer.py never builds).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def timed(fn, repeat: int, warmup: int = 2) -> float:
    """Median seconds of ``fn()`` over ``repeat`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_features(seconds: float, repeat: int) -> None:
    from bestrq.features import LogMelFbank

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    n = int(seconds * 16000)
    waves = 0.1 * torch.randn(8, n, generator=g)
    lengths = torch.full((8,), n)
    fbank = LogMelFbank()
    t = timed(lambda: fbank(waves, lengths), repeat)
    ours = 8 * seconds / t
    line = f"features   : {ours:8.0f}x real time on 1 core (target >= 200)"
    try:
        import kaldi_native_fbank as knf

        opts = knf.FbankOptions()
        opts.frame_opts.dither = 0.0
        opts.mel_opts.num_bins = 80
        samples = (waves[0] * 32768).tolist()

        def peer():
            f = knf.OnlineFbank(opts)
            f.accept_waveform(16000, samples)
            f.input_finished()
            return [f.get_frame(i) for i in range(f.num_frames_ready)]

        tp = timed(peer, repeat)
        line += f"; kaldi-native-fbank {seconds / tp:8.0f}x -> ours/peer = {ours / (seconds / tp):.2f}"
    except ImportError:
        line += "; kaldi-native-fbank not installed (pip install kaldi-native-fbank) for the peer"
    print(line)
    torch.set_num_threads(threads)


def bench_step(repeat: int) -> None:
    from bestrq.config import load_config
    from bestrq.features import stack_frames
    from bestrq.masking import span_mask
    from bestrq.objectives.bestrq import build_bestrq
    from bestrq.train.optim import build_optimizer

    cfg = load_config("bestrq_tiny")
    torch.manual_seed(0)
    model = build_bestrq(cfg).train()
    opt = build_optimizer(model, cfg.optim)
    g = torch.Generator().manual_seed(1)
    batch_seconds = cfg.data.max_batch_duration
    per = 6.0
    b = int(batch_seconds // per)
    waves = 0.1 * torch.randn(b, int(per * 16000), generator=g)
    lengths = torch.full((b,), waves.shape[1])

    def step():
        out = model(waves, lengths, torch.Generator().manual_seed(2))
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with torch.no_grad():
        feats, frame_lengths = model.input_features(waves, lengths)
        stacked, target_lengths = stack_frames(feats, frame_lengths, cfg.features.stack)

    def quantize_and_mask():  # what the step does: mask, then quantise the masked frames only
        mask = span_mask(target_lengths, stacked.shape[1], model.mask_spec, torch.Generator().manual_seed(3))
        return model.quantizer(stacked[mask])

    t_step = timed(step, repeat)
    t_qm = timed(quantize_and_mask, repeat * 4)
    t_all = timed(lambda: model.quantizer(stacked), repeat * 4)
    masked = span_mask(target_lengths, stacked.shape[1], model.mask_spec, torch.Generator().manual_seed(3))
    print(f"tiny step  : {t_step * 1000:8.1f} ms for {b} x {per:.0f} s ({batch_seconds / t_step:.0f} s of audio/s, "
          f"{torch.get_num_threads()} threads)")
    print(f"quantizer + masking: {t_qm * 1000:.2f} ms = {100 * t_qm / t_step:.2f} % of the step (target <= 2 %; "
          f"{masked.float().mean():.0%} of frames masked)")
    print(f"             quantising every frame instead: {t_all * 1000:.2f} ms = {100 * t_all / t_step:.2f} %")

    q = model.quantizer
    x = stacked[:2]  # a smaller input: the broadcast peer materialises (N, V, d)

    def broadcast_peer():
        z = torch.nn.functional.normalize(x @ q.projection[0], dim=-1)  # (B, T, d)
        d = (z[:, :, None, :] - q.codebooks[0][None, None]).square().sum(-1)  # (B, T, V)
        return d.argmin(-1)

    assert torch.equal(broadcast_peer(), q(x)[..., 0])
    tb, to = timed(broadcast_peer, repeat), timed(lambda: q(x), repeat * 4)
    print(f"quantizer vs broadcast-distance peer on {x.shape[0] * x.shape[1]} frames: {to * 1000:.2f} ms vs "
          f"{tb * 1000:.2f} ms -> {tb / to:.1f}x faster")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--seconds", type=float, default=10.0, help="seconds of audio per utterance for features")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench_features(args.seconds, args.repeat)
    bench_step(args.repeat)


if __name__ == "__main__":
    main()
