"""Pre-training speed, side by side: our BEST-RQ and wav2vec 2.0 against the peers a user would pick.

    bestrq bench                                      (or: make bench, python bench/pretrain_speed.py)
    bestrq bench --sizes tiny --rounds 3
    bestrq bench --device cuda --precision bf16 --sizes tiny paper [--compile]

Models, at matched encoder sizes (same layers, width, heads, FFN):
  bestrq (ours)        fbank -> stacked frames -> Conformer, random-projection targets
  wav2vec2 (ours)      conv waveform encoder -> Transformer, Gumbel quantizer, contrastive loss
  wav2vec2 (hf)        transformers' Wav2Vec2ForPreTraining built from a config (random init)
  bestrq (speechbrain) SpeechBrain's RandomProjectionQuantizer, compute_mask, conv front-end and
                       Conformer, wired as its LibriSpeech BEST-RQ recipe

Batches are clips in random order (mixed lengths, about half padding, which our encoders skip
and the peers compute), or with ``--batching bucketed`` sorted by length first, as a
duration-bucketing sampler would batch them (little padding).

Every model trains on the same batches of audio, one training step each in turn (forward,
backward, clipping, AdamW), so drifts of the machine hit all alike. Masks and distractors
of the peers are drawn before the timer starts, as their data loaders would; ours are drawn
inside the step; every batch is on the model's device before the timer starts. Reported:
mean step time, audio seconds per second, peak memory (CUDA: the allocator's peak during a
step above what all models keep resident, plus this model's weights and optimizer state;
CPU: the peak resident memory a fresh process adds for that model, from a separate process
per model), FLOPs per step (torch's FLOP counter, forward + backward, averaged over the
timed batches) and model FLOPs utilisation: achieved FLOP/s over the matmul FLOP/s this
machine reaches in the same run. With ``--compile``, the graphs each model compiled inside
its timed steps are printed too: their compile time is in those steps (a model whose
compiled graph is tied to one batch length compiles again for each new length).

SpeechBrain imports torchaudio at start-up, and PyPI's torchaudio pins its own torch. The
modules used here are pure PyTorch, so where torchaudio does not load, this script puts a
stand-in module named torchaudio in ``sys.modules`` (this process only, and it says so).
SpeechBrain needs ``pip install --no-deps speechbrain hyperpyyaml ruamel.yaml`` (``make bench``
does it). Without speechbrain or transformers the corresponding rows are skipped and said so.
"""

from .run import main

__all__ = ["main"]
