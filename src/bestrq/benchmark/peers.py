"""The models timed: ours and the peers a user would pick, each behind one ``Runner`` interface, at
matched sizes; and the stand-in for torchaudio that SpeechBrain's import needs where it cannot load."""

from __future__ import annotations

import importlib.machinery
import sys
import types

import torch
import torch.nn.functional as F

from .batches import Batch

# matched encoder sizes; `conv` etc. size wav2vec 2.0's own parts (as our presets)
SIZES = {
    "tiny": {"layers": 4, "d_model": 144, "heads": 4, "ffn": 576, "conv": 128, "codevector": 128, "final": 64,
             "dropout": 0.0},
    "paper": {"layers": 12, "d_model": 576, "heads": 8, "ffn": 2048, "conv": 512, "codevector": 256, "final": 256,
              "dropout": 0.1},
}
MODELS = ("bestrq-ours", "wav2vec2-ours", "wav2vec2-hf", "bestrq-sb")
# on request (--models): our BEST-RQ computing the padded frames too, to measure what skipping them gains here
EXTRA_MODELS = ("bestrq-padded",)
LABELS = {"bestrq-ours": "BEST-RQ (ours)", "wav2vec2-ours": "wav2vec 2.0 (ours)",
          "wav2vec2-hf": "wav2vec 2.0 (transformers)", "bestrq-sb": "BEST-RQ (SpeechBrain)",
          "bestrq-padded": "BEST-RQ (ours, padding computed)"}


class Runner:
    """One model and its optimizer; ``step`` runs one training step on a prepared batch."""

    name: str
    model: torch.nn.Module

    def prepare(self, batch: Batch) -> object:
        return batch

    def loss(self, prepared: object) -> torch.Tensor:
        raise NotImplementedError

    def setup_optimizer(self, lr: float = 1e-4) -> None:
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=lr)

    def step(self, prepared: object, autocast) -> float:
        with autocast:
            loss = self.loss(prepared)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


class Ours(Runner):
    def __init__(self, objective: str, size: dict, device: torch.device, compile_: bool) -> None:
        from bestrq.config import load_config
        from bestrq.objectives import build_model

        s = size
        sets = [f"encoder.num_layers={s['layers']}", f"encoder.d_model={s['d_model']}",
                f"encoder.num_heads={s['heads']}", f"encoder.ffn_dim={s['ffn']}", f"encoder.dropout={s['dropout']}"]
        if objective == "wav2vec2":
            sets += ["encoder.kind=transformer", f"wav2vec2.conv_channels={[s['conv']] * 7}",
                     f"wav2vec2.codevector_dim={s['codevector']}", f"wav2vec2.final_dim={s['final']}",
                     f"wav2vec2.dropout_input={s['dropout']}", f"wav2vec2.dropout_features={s['dropout']}"]
        self.cfg = load_config("bestrq_base" if objective == "bestrq" else "wav2vec2_base", sets)
        torch.manual_seed(0)
        self.model = build_model(self.cfg).to(device).train()
        if compile_:
            self.model.encoder.compile(dynamic=True)
        self.device, self.count = device, 0
        self.setup_optimizer()

    def prepare(self, batch: Batch) -> Batch:
        """The batch on the model's device (as for the peers, the copy is outside the timed step)."""
        return Batch(batch.waves.to(self.device), batch.lengths.to(self.device))

    def loss(self, batch: Batch) -> torch.Tensor:
        self.count += 1
        g = torch.Generator(device=self.device).manual_seed(self.count)
        return self.model(batch.waves, batch.lengths, g, self.count).loss


class HFWav2Vec2(Runner):
    def __init__(self, size: dict, device: torch.device, compile_: bool) -> None:
        import transformers
        from transformers.models.wav2vec2 import modeling_wav2vec2 as m

        s = size
        self._m = m
        self.config = transformers.Wav2Vec2Config(
            hidden_size=s["d_model"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
            intermediate_size=s["ffn"], conv_dim=[s["conv"]] * 7, feat_extract_norm="group", conv_bias=False,
            do_stable_layer_norm=False, num_codevector_groups=2, num_codevectors_per_group=320,
            codevector_dim=s["codevector"], proj_codevector_dim=s["final"], num_negatives=100,
            mask_time_prob=0.65, mask_time_length=10, hidden_dropout=s["dropout"], attention_dropout=s["dropout"],
            activation_dropout=0.0, feat_proj_dropout=s["dropout"], feat_quantizer_dropout=s["dropout"],
            layerdrop=0.0, diversity_loss_weight=0.1, attn_implementation="sdpa")
        torch.manual_seed(0)
        self.model = transformers.Wav2Vec2ForPreTraining(self.config).to(device).train()
        if compile_:
            self.model.wav2vec2.encoder.compile(dynamic=True)
        self.device = device
        self.setup_optimizer()

    def prepare(self, batch: Batch) -> object:
        """Masks and distractors as transformers' pre-training data collator draws them (NumPy, on CPU)."""
        m = self._m
        frames = self.model._get_feat_extract_output_lengths(batch.lengths)
        t = int(self.model._get_feat_extract_output_lengths(torch.tensor(batch.waves.shape[1])))
        sub_attention = (torch.arange(t)[None, :] < frames[:, None]).long()
        mask = m._compute_mask_indices((len(frames), t), 0.65, 10, attention_mask=sub_attention, min_masks=2)
        negatives = m._sample_negative_indices((len(frames), t), 100, mask)
        return (batch.waves.to(self.device), torch.from_numpy(mask).to(self.device),
                torch.from_numpy(negatives).to(self.device))

    def loss(self, prepared) -> torch.Tensor:
        waves, mask, negatives = prepared
        out = self.model(waves, mask_time_indices=mask, sampled_negative_indices=negatives)
        return out.loss / mask.sum()  # transformers sums over masked frames; its training script divides


STAND_IN = "0.0+bestrq-bench-stand-in"


def _torchaudio_or_stand_in() -> None:
    """Import torchaudio; where it does not load, put a stand-in module in its place (this process only).

    A torchaudio built for the torch installed here (a GPU image's, say) is used as it is. PyPI's
    torchaudio beside our CPU torch fails to load, and is often not installed at all; the stand-in
    then records why in ``reason``.
    """
    if "torchaudio" in sys.modules:
        return
    try:
        import torchaudio  # noqa: F401
    except (ImportError, OSError, RuntimeError) as e:  # a build for another torch: undefined symbols
        for name in [m for m in sys.modules if m.split(".")[0] == "torchaudio"]:
            del sys.modules[name]  # what loaded before the failure
        stand_in = types.ModuleType("torchaudio")
        stand_in.__version__ = STAND_IN
        stand_in.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
        stand_in.reason = f"{type(e).__name__}: {e}".splitlines()[0]
        sys.modules["torchaudio"] = stand_in


def import_speechbrain():
    """Import SpeechBrain, with a stand-in torchaudio module where the real one does not load."""
    _torchaudio_or_stand_in()
    import logging

    logging.getLogger("speechbrain").setLevel(logging.ERROR)
    import speechbrain

    return speechbrain


class SBBestRQ(Runner):
    """SpeechBrain's BEST-RQ pre-training step, wired as its LibriSpeech recipe's train.py."""

    def __init__(self, size: dict, device: torch.device, compile_: bool) -> None:
        import_speechbrain()
        from speechbrain.lobes.features import Fbank
        from speechbrain.lobes.models.BESTRQ import compute_mask
        from speechbrain.lobes.models.convolution import ConvolutionFrontEnd
        from speechbrain.lobes.models.transformer.TransformerASR import EncoderWrapper, TransformerASR
        from speechbrain.nnet.linear import Linear
        from speechbrain.nnet.quantisers import RandomProjectionQuantizer
        from speechbrain.processing.features import InputNormalization

        s = size
        self.compute_mask = compute_mask
        torch.manual_seed(0)
        self.fbank = Fbank(sample_rate=16000, n_fft=400, n_mels=80).to(device)
        self.normalize = InputNormalization(norm_type="sentence").to(device)
        cnn = ConvolutionFrontEnd(input_shape=(8, 10, 80), num_blocks=2, num_layers_per_block=1,
                                  out_channels=(128, 32), kernel_sizes=(3, 3), strides=(2, 2),
                                  residuals=(False, False))
        transformer = TransformerASR(
            input_size=640, tgt_vocab=8192, d_model=s["d_model"], nhead=s["heads"], num_encoder_layers=s["layers"],
            num_decoder_layers=0, d_ffn=s["ffn"], dropout=s["dropout"], activation=torch.nn.GELU,
            conformer_activation=torch.nn.GELU, encoder_module="conformer", attention_type="RelPosMHAXL",
            normalize_before=True, causal=False)
        self.cnn, self.wrapper = cnn.to(device), EncoderWrapper(transformer).to(device)
        if compile_:
            self.wrapper.compile(dynamic=True)
        self.quantizer = RandomProjectionQuantizer(320, 16, 8192).to(device)
        self.linear = Linear(input_size=s["d_model"], n_neurons=8192).to(device)
        self.model = torch.nn.ModuleList([self.cnn, self.wrapper, self.linear, self.quantizer])
        self.device = device
        self.setup_optimizer()

    def prepare(self, batch: Batch) -> object:
        """The recipe's collate function: relative lengths and one mask for the batch (its shortest clip)."""
        frames = (batch.lengths // 160 + 1).tolist()
        t = batch.waves.shape[1] // 160 + 1
        mask = self.compute_mask((len(frames), t, 80), frames, 0.15, 4)
        return (batch.waves.to(self.device), (batch.lengths / batch.waves.shape[1]).to(self.device),
                mask.to(self.device))

    def loss(self, prepared) -> torch.Tensor:
        wavs, wav_lens, mask = prepared
        with torch.autocast(wavs.device.type, enabled=False):
            feats = self.fbank(wavs)
            feats = self.normalize(feats, wav_lens, epoch=0)
        b, t, c = feats.shape
        feats = F.pad(feats, (0, 0, 0, (4 - t % 4) % 4))  # the recipe's pad_feats
        mask = mask[mask < feats.shape[1]]
        mask_idx = mask[::4] // 4
        targets = self.quantizer(feats.view(b, feats.shape[1] // 4, -1)[:, mask_idx, :])
        noise = torch.normal(0.0, 0.1, size=(b, mask.shape[0], c), device=feats.device)
        feats[:, mask, :] = noise
        enc = self.wrapper(self.cnn(feats), wav_lens)
        logits = self.linear(enc)[:, mask_idx, :]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def build(name: str, size: dict, device: torch.device, compile_: bool) -> Runner:
    if name == "bestrq-ours":
        return Ours("bestrq", size, device, compile_)
    if name == "wav2vec2-ours":
        return Ours("wav2vec2", size, device, compile_)
    if name == "bestrq-padded":
        runner = Ours("bestrq", size, device, compile_)
        runner.model.encoder.skip_padding = False
        return runner
    if name == "wav2vec2-hf":
        return HFWav2Vec2(size, device, compile_)
    return SBBestRQ(size, device, compile_)


def available(name: str) -> str | None:
    """None if the model can run here, else why not."""
    try:
        if name == "wav2vec2-hf":
            import transformers  # noqa: F401
        if name == "bestrq-sb":
            import_speechbrain()
    except ImportError as e:
        return f"{e} (pip install --no-deps speechbrain hyperpyyaml ruamel.yaml)"
    except Exception as e:  # noqa: BLE001 - a peer that fails to import is skipped, and said why
        return f"{type(e).__name__}: {e}"
    return None
