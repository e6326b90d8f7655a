"""The step replayer of the tokenizer-API goldens, shared by their generator
(fixtures/tokenizer/generate_api_goldens.py, run with transformers) and tests/test_tokenizer_api.py (run on
deberta_xf), so that both run each step the same way. It imports neither transformers nor deberta_xf.

A step is [method, args, kwargs]: a tokenizer method ("__call__", "encode_plus", "pad", "add_tokens", ...), an
attribute ("attr:<name>"), a setter ("set:<name>"), a BatchEncoding method on the previous call's result
("enc:<name>"), "decode_prev" (decode the previous call's input_ids), "get_vocab_hash" / "get_vocab_top", or "pad"
whose `encoded_inputs` is built from the previous call's result ("prev": the BatchEncoding, "prev_rows": a list
of one-row encodings, "prev_dict": a dict of lists). An AddedToken argument is stored as {"AddedToken": {...}}.
"""

from __future__ import annotations

import hashlib
import json


def plain(value):
    """A result as the goldens store it: lists, numpy arrays as {"np": dtype, "value": ...}."""
    if hasattr(value, "data") and hasattr(value, "encodings"):  # a BatchEncoding: keep the key order
        value = dict(value.data)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if type(value).__module__ == "numpy":
        if hasattr(value, "dtype") and value.dtype == object:
            return {"np": "object", "value": [plain(v) for v in value]}
        return {"np": str(value.dtype), "value": value.tolist()} if hasattr(value, "tolist") else value.item()
    return value


def decode_arg(value):
    """A stored argument back to a Python value (AddedToken included)."""
    if isinstance(value, dict) and set(value) == {"AddedToken"}:
        from tokenizers import AddedToken

        return AddedToken(**value["AddedToken"])
    if isinstance(value, list):
        return [decode_arg(v) for v in value]
    if isinstance(value, dict):
        return {k: decode_arg(v) for k, v in value.items()}
    return value


def run_step(tok, prev, method: str, args: list, kwargs: dict):
    """One step on `tok`; `prev` is the last BatchEncoding. Returns (result, new prev)."""
    args, kwargs = decode_arg(args), decode_arg(kwargs)
    if method == "attr:__len__":
        return len(tok), prev
    if method.startswith("attr:"):
        return getattr(tok, method[5:]), prev
    if method == "decode_prev":
        return tok.decode(prev["input_ids"], **kwargs), prev
    if method == "get_vocab_hash":
        vocab = tok.get_vocab()
        digest = hashlib.sha256(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode("utf-8")).hexdigest()
        return {"size": len(vocab), "sha256": digest}, prev
    if method == "get_vocab_top":  # cheaper than the hash: the size and the entries from id 127990 up
        vocab = tok.get_vocab()
        return {"size": len(vocab), "top": sorted([k, i] for k, i in vocab.items() if i >= 127990)}, prev
    if method.startswith("set:"):
        setattr(tok, method[4:], args[0])
        return None, prev
    if method.startswith("enc:"):
        out = getattr(prev, method[4:])(*args, **kwargs)
        return (list(out) if isinstance(out, tuple) else out), prev
    if method == "pad":
        source = args[0]
        if source == "prev_rows":
            encoded = [{k: v[i] for k, v in prev.items()} for i in range(len(prev["input_ids"]))]
        elif source == "prev_dict":
            encoded = {k: list(v) for k, v in prev.items()}
        else:
            encoded = prev
        out = tok.pad(encoded, *args[1:], **kwargs)
        return out, out
    fn = tok if method == "__call__" else getattr(tok, method)
    out = fn(*args, **kwargs)
    return out, (out if hasattr(out, "encodings") else prev)


def replay(tok, steps) -> list:
    """Every step's `plain` result; an error as {"error": its type, "types": the names of the types it is an
    instance of, "message"} (a test passes when the reference's error type is among ours)."""
    outs, prev = [], None
    for method, args, kwargs in steps:
        try:
            out, prev = run_step(tok, prev, method, args, kwargs)
            outs.append(plain(out))
        except Exception as err:  # recorded: the replay expects the same error
            types = [cls.__name__ for cls in type(err).__mro__ if issubclass(cls, Exception)]
            outs.append({"error": type(err).__name__, "types": types, "message": str(err)})
    return outs
