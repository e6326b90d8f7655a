"""Fine-tune a DeBERTa-v2/v3 sequence classifier for a few steps with Flax NNX + optax and save it.

    python examples/finetune_flax.py [CHECKPOINT] [OUTPUT]     # defaults: fixtures/tiny-deberta-v3, finetuned-flax

The same few labelled sentences, steps and AdamW settings as finetune_torch.py and finetune_tf.py; the saved
checkpoint (flax_model.msgpack + config + tokenizer files) converts to the other frameworks and passes
``deberta-xf parity``.
"""

import os
import sys

import numpy as np
import optax
from flax import nnx

import deberta_xf

HERE = os.path.dirname(os.path.abspath(__file__))
TEXTS = ["A wonderful, moving film.", "Dull and far too long.", "I would watch it again tomorrow.",
         "The plot makes no sense at all."]
LABELS = [1, 0, 1, 0]
STEPS, LR = 3, 1e-4


def main(checkpoint: str, output: str) -> None:
    tokenizer = deberta_xf.DebertaV2TokenizerFast.from_pretrained(checkpoint)
    model = deberta_xf.create_model("flax", "sequence-classification", checkpoint=checkpoint)
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="np"))
    labels = np.array(LABELS)
    optimizer = nnx.Optimizer(model, optax.adamw(LR, weight_decay=0.01), wrt=nnx.Param)
    model.train()  # dropout on

    @nnx.jit
    def train_step(model, optimizer, batch, labels):
        loss, grads = nnx.value_and_grad(lambda m: m(**batch, labels=labels).loss)(model)
        optimizer.update(model, grads)
        return loss

    for step in range(STEPS):
        loss = train_step(model, optimizer, batch, labels)
        print(f"step {step}: loss {float(loss):.4f}")
    model.eval()
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    print(f"saved {output}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, os.pardir, "fixtures", "tiny-deberta-v3"),
         sys.argv[2] if len(sys.argv) > 2 else "finetuned-flax")
