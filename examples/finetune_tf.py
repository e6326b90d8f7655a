"""Fine-tune a DeBERTa-v2/v3 sequence classifier for a few steps with TensorFlow / Keras 3 and save it.

    python examples/finetune_tf.py [CHECKPOINT] [OUTPUT]     # defaults: fixtures/tiny-deberta-v3, finetuned-tf

The same few labelled sentences, steps and AdamW settings as finetune_torch.py and finetune_flax.py; the saved
checkpoint (tf_model.h5 + config + tokenizer files) converts to the other frameworks and passes
``deberta-xf parity``.
"""

import os
import sys

import keras
import numpy as np
import tensorflow as tf

import deberta_xf

HERE = os.path.dirname(os.path.abspath(__file__))
TEXTS = ["A wonderful, moving film.", "Dull and far too long.", "I would watch it again tomorrow.",
         "The plot makes no sense at all."]
LABELS = [1, 0, 1, 0]
STEPS, LR = 3, 1e-4


def main(checkpoint: str, output: str) -> None:
    tf.random.set_seed(0)
    tokenizer = deberta_xf.DebertaV2TokenizerFast.from_pretrained(checkpoint)
    model = deberta_xf.create_model("tf", "sequence-classification", checkpoint=checkpoint)
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="np"))
    labels = np.array(LABELS)
    optimizer = keras.optimizers.AdamW(learning_rate=LR, weight_decay=0.01)
    for step in range(STEPS):
        with tf.GradientTape() as tape:
            # dropout on; the loss is per example ([batch]) as in the reference TF: its mean is what Keras minimises
            loss = tf.reduce_mean(model(**batch, labels=labels, training=True).loss)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        print(f"step {step}: loss {float(loss):.4f}")
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    print(f"saved {output}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, os.pardir, "fixtures", "tiny-deberta-v3"),
         sys.argv[2] if len(sys.argv) > 2 else "finetuned-tf")
