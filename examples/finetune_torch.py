"""Fine-tune a DeBERTa-v2/v3 sequence classifier for a few steps with PyTorch and save it.

    python examples/finetune_torch.py [CHECKPOINT] [OUTPUT]     # defaults: fixtures/tiny-deberta-v3, finetuned-torch

The same few labelled sentences, steps and AdamW settings as finetune_tf.py and finetune_flax.py; the saved
checkpoint (model.safetensors + config + tokenizer files) converts to the other frameworks and passes
``deberta-xf parity``.
"""

import os
import sys

import torch

import deberta_xf

HERE = os.path.dirname(os.path.abspath(__file__))
TEXTS = ["A wonderful, moving film.", "Dull and far too long.", "I would watch it again tomorrow.",
         "The plot makes no sense at all."]
LABELS = [1, 0, 1, 0]
STEPS, LR = 3, 1e-4


def main(checkpoint: str, output: str) -> None:
    torch.manual_seed(0)
    tokenizer = deberta_xf.DebertaV2TokenizerFast.from_pretrained(checkpoint)
    model = deberta_xf.create_model("torch", "sequence-classification", checkpoint=checkpoint)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    labels = torch.tensor(LABELS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    model.train()  # dropout on
    for step in range(STEPS):
        optimizer.zero_grad()
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        print(f"step {step}: loss {loss.item():.4f}")
    model.eval()
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    print(f"saved {output}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, os.pardir, "fixtures", "tiny-deberta-v3"),
         sys.argv[2] if len(sys.argv) > 2 else "finetuned-torch")
