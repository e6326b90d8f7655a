"""Model outputs with attribute, key and index access, as the reference's ``ModelOutput``.

Fields left as ``None`` are not stored: ``out.loss`` is ``None`` when no labels were given, ``"loss" in out`` is
false, and ``out[0]`` is the first field that is set (``logits`` then), as in transformers.
"""

from __future__ import annotations

from typing import Any

class ModelOutput(dict):
    def __init__(self, *mapping: Any, **fields: Any):
        # A positional mapping / (key, value) pairs too, as dict: tf.function and tf.nest rebuild outputs that way.
        super().__init__((k, v) for k, v in dict(*mapping, **fields).items() if v is not None)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self.get(name)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, slice)):
            return self.to_tuple()[key]
        return super().__getitem__(key)

    def to_tuple(self) -> tuple:
        return tuple(self.values())

    def __repr__(self) -> str:
        def describe(v: Any) -> str:
            if isinstance(v, (tuple, list)):
                return f"({len(v)} x {describe(v[0]) if v else ''})"
            shape = getattr(v, "shape", None)
            return f"{type(v).__name__}{list(shape)}" if shape is not None else repr(v)

        inner = ", ".join(f"{k}={describe(v)}" for k, v in self.items())
        return f"ModelOutput({inner})"


def output_flags(config: Any, output_attentions: Any = None, output_hidden_states: Any = None,
                 return_dict: Any = None) -> tuple[bool, bool, bool]:
    """The call's ``output_attentions`` / ``output_hidden_states`` / ``return_dict``, each defaulting to the config's
    value when not passed (None), as the reference does (``return_dict`` from ``config.use_return_dict``)."""
    if output_attentions is None:
        output_attentions = getattr(config, "output_attentions", False)
    if output_hidden_states is None:
        output_hidden_states = getattr(config, "output_hidden_states", False)
    if return_dict is None:
        return_dict = getattr(config, "use_return_dict", None)
        if return_dict is None:
            return_dict = getattr(config, "return_dict", True) and not getattr(config, "torchscript", False)
    return bool(output_attentions), bool(output_hidden_states), bool(return_dict)


def finish(output: ModelOutput, return_dict: bool) -> ModelOutput | tuple:
    """The output object, or with ``return_dict=False`` the reference's tuple: its fields in order, None dropped."""
    return output if return_dict else output.to_tuple()
