"""Fine-tune an exported BEST-RQ encoder for speech recognition with transformers' Wav2Vec2BertForCTC.

    bestrq export runs/bestrq_tiny exports/bestrq_tiny
    python examples/finetune_ctc.py exports/bestrq_tiny data/demo --steps 300

Characters are the output units (the train split's transcripts give the alphabet, index 0
is the CTC blank); the whole model is trained with AdamW, the encoder at a tenth of the
head's learning rate. Prints the training loss as it goes and the greedy-decoding CER and
WER on part of the dev split before and after. Only transformers, torch and jiwer are used
beyond reading the manifest, so the loop carries over to any transformers training setup.
"""

from __future__ import annotations

import argparse
import random

import jiwer
import soundfile as sf
import torch
from transformers import AutoFeatureExtractor, Wav2Vec2BertForCTC

from bestrq.data.manifest import load_split


def read(cuts, limit: int | None = None) -> list[tuple[torch.Tensor, str]]:
    items = []
    for cut in list(cuts)[:limit]:
        audio, rate = sf.read(cut.recording.sources[0].source, dtype="float32")
        start, end = round(cut.start * rate), round((cut.start + cut.duration) * rate)
        items.append((audio[start:end], cut.supervisions[0].text.lower()))
    return items


def batches(items, seconds: float, rng: random.Random):
    """Shuffled batches of about ``seconds`` of audio each, forever."""
    while True:
        order = items[:]
        rng.shuffle(order)
        batch, total = [], 0.0
        for audio, text in order:
            batch.append((audio, text))
            total += len(audio) / 16000
            if total >= seconds:
                yield batch
                batch, total = [], 0.0


def transcribe(model, extractor, items, alphabet) -> list[str]:
    model.eval()
    out = []
    with torch.no_grad():
        for audio, _ in items:
            inputs = extractor(audio, sampling_rate=16000, return_tensors="pt")
            ids = model(**inputs).logits[0].argmax(-1).tolist()
            chars = [alphabet[i] for j, i in enumerate(ids) if i != 0 and (j == 0 or i != ids[j - 1])]
            out.append("".join(chars).strip())
    model.train()
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a folder written by `bestrq export --to hf`")
    p.add_argument("data", help="a bestrq manifest folder with train and dev splits (texts in supervisions)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-3, help="head learning rate (the encoder gets a tenth)")
    p.add_argument("--batch-seconds", type=float, default=40.0)
    p.add_argument("--eval-clips", type=int, default=40, help="dev clips decoded before and after")
    p.add_argument("--out", default=None, help="save the fine-tuned model here (save_pretrained)")
    args = p.parse_args(argv)
    torch.manual_seed(0)

    train, dev = read(load_split(args.data, "train")), read(load_split(args.data, "dev"), args.eval_clips)
    alphabet = ["<blank>"] + sorted({c for _, text in train for c in text})
    index = {c: i for i, c in enumerate(alphabet)}
    extractor = AutoFeatureExtractor.from_pretrained(args.model)
    model = Wav2Vec2BertForCTC.from_pretrained(
        args.model, vocab_size=len(alphabet), pad_token_id=0, ctc_loss_reduction="mean", ctc_zero_infinity=True,
        mask_time_length=3, layerdrop=0.0)  # SpecAugment: 120 ms spans (the default 10 frames is 400 ms here)
    head = [p for n, p in model.named_parameters() if n.startswith("lm_head")]
    body = [p for n, p in model.named_parameters() if not n.startswith("lm_head")]
    optimizer = torch.optim.AdamW([{"params": head, "lr": args.lr}, {"params": body, "lr": args.lr / 10}])

    def score(tag: str) -> tuple[float, float]:
        hyps, refs = transcribe(model, extractor, dev, alphabet), [t for _, t in dev]
        cer, wer = jiwer.cer(refs, hyps), jiwer.wer(refs, [h or "-" for h in hyps])
        print(f"{tag}: dev CER {100 * cer:.1f}%, WER {100 * wer:.1f}% ({len(dev)} clips)", flush=True)
        return cer, wer

    cer_before, _ = score("before")
    model.train()
    losses = []
    for step, batch in zip(range(1, args.steps + 1), batches(train, args.batch_seconds, random.Random(0))):
        inputs = extractor([a for a, _ in batch], sampling_rate=16000, return_tensors="pt")
        labels = torch.nn.utils.rnn.pad_sequence(
            [torch.tensor([index[c] for c in t if c in index]) for _, t in batch], batch_first=True,
            padding_value=-100)
        loss = model(**inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        losses.append(loss.item())
        if step == 1 or step % 10 == 0 or step == args.steps:
            print(f"step {step}: CTC loss {loss.item():.3f}", flush=True)
    cer_after, wer_after = score("after")
    if args.out:
        model.save_pretrained(args.out)
        extractor.save_pretrained(args.out)
    return {"first_loss": losses[0], "last_loss": losses[-1], "cer_before": cer_before, "cer_after": cer_after,
            "wer_after": wer_after}


if __name__ == "__main__":
    main()
