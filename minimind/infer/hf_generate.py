"""Hugging Face's calling convention for generation: `model.generate(input_ids, attention_mask=...,
max_new_tokens=..., do_sample=..., ...)` lands in `hf_generate`, which runs minimind's own decode loop and returns
the prompts plus the new tokens as a LongTensor (B, T + n). Features of Hugging Face's `generate` that the loop
does not have (beam search, ...) are refused with a clear error; `transformers.GenerationMixin.generate(model,
...)` still runs Hugging Face's own loop on our model.
"""

import torch

from ..model import MiniMindForCausalLM
from .generate import generate, stream

# --- Hugging Face's calling convention -----------------------------------------------------------------------------

# generate() settings taken from kwargs or a GenerationConfig, by their Hugging Face names.
HF_SETTINGS = ("max_new_tokens", "max_length", "min_new_tokens", "do_sample", "temperature", "top_k", "top_p",
               "repetition_penalty", "eos_token_id", "pad_token_id", "stop_strings", "num_return_sequences",
               "use_cache")


# Hugging Face defaults applied when neither the call nor the model's generation_config says otherwise.
HF_DEFAULTS = {"max_length": 20, "do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0,
               "repetition_penalty": 1.0, "min_new_tokens": 0, "num_return_sequences": 1, "use_cache": True}


# GenerationConfig fields we do not implement: fine at these (default) values, an error at any other.
HF_IGNORED = {"num_beams": 1, "num_beam_groups": 1, "output_attentions": False, "output_hidden_states": False,
              "output_scores": False, "output_logits": False, "return_dict_in_generate": False, "min_length": 0,
              "length_penalty": 1.0, "early_stopping": False, "typical_p": 1.0, "no_repeat_ngram_size": 0,
              "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "renormalize_logits": False, "remove_invalid_values": False,
              "synced_gpus": False}


# Bookkeeping fields, whatever their value.
HF_BOOKKEEPING = ("bos_token_id", "decoder_start_token_id", "transformers_version", "_from_model_config")


def hf_generate(model, inputs=None, generation_config=None, streamer=None, **kwargs):
    """`model.generate(...)`: Hugging Face's arguments mapped onto `generate`. Returns (B, T + n) LongTensor.

    Settings come from the call, then `generation_config` (a GenerationConfig), then `model.generation_config`,
    then Hugging Face's defaults (max_length 20; top_k 50 when sampling). Also takes minimind's `seed`,
    `generator`, `tokenizer` (for `stop_strings`), `compile`, and `stream=True` (with `tokenizer`, one prompt):
    then it returns an iterator of text pieces instead of tokens. Beam search, logits processors and other
    Hugging Face features are refused with a clear error; `transformers.GenerationMixin.generate(model, ...)`
    still runs Hugging Face's own loop on this model."""
    input_ids = prompt_ids(inputs, kwargs)
    attention_mask = kwargs.pop("attention_mask", None)
    own = {k: kwargs.pop(k) for k in ("seed", "generator", "tokenizer", "compile") if k in kwargs}
    as_text_stream = kwargs.pop("stream", False)
    settings = hf_settings(model, generation_config, kwargs)
    max_new = new_token_budget(settings, input_ids.shape[1])
    n_seq = settings["num_return_sequences"]
    if as_text_stream:  # an iterator of text pieces for one prompt
        return stream_one(model, input_ids, attention_mask, max_new, settings, own)
    if n_seq > 1:
        if not settings["do_sample"]:
            raise ValueError("num_return_sequences > 1 needs do_sample=True (greedy gives the same sequence)")
        input_ids = input_ids.repeat_interleave(n_seq, dim=0)
        attention_mask = attention_mask.repeat_interleave(n_seq, dim=0) if attention_mask is not None else None
    return generate(model, input_ids, attention_mask, max_new_tokens=max_new, do_sample=settings["do_sample"],
                    temperature=settings["temperature"], top_k=settings["top_k"], top_p=settings["top_p"],
                    repetition_penalty=settings["repetition_penalty"], min_new_tokens=settings["min_new_tokens"],
                    eos_token_id=settings.get("eos_token_id"), pad_token_id=settings.get("pad_token_id"),
                    stop_strings=settings.get("stop_strings"), streamer=streamer,
                    use_cache=settings["use_cache"], **own)


def prompt_ids(inputs, kwargs: dict) -> torch.Tensor:
    """The prompt tokens (B, T), from `inputs` or `input_ids` (popped from kwargs), one prompt (T,) made a batch
    of one. A ValueError when there are none, both, or not an integer tensor."""
    input_ids = kwargs.pop("input_ids", None)
    if inputs is not None and input_ids is not None:
        raise ValueError("generate() got both `inputs` and `input_ids`; pass one")
    input_ids = inputs if inputs is not None else input_ids
    if input_ids is None:
        raise ValueError("generate() needs input_ids (B, T): the prompt tokens")
    if not torch.is_tensor(input_ids) or input_ids.dtype not in (torch.long, torch.int, torch.int32):
        raise ValueError("generate() takes input_ids as an integer tensor (B, T) of token ids")
    return input_ids[None] if input_ids.dim() == 1 else input_ids


def hf_settings(model, generation_config, kwargs: dict) -> dict:
    """The generation settings (HF_SETTINGS names): the call's `kwargs` over `generation_config` over
    `model.generation_config` over HF_DEFAULTS. A setting we do not implement, at a value other than its default,
    is refused: a ValueError for a GenerationConfig field, a TypeError for an argument."""
    settings = {}
    for source in (model.generation_config, generation_config):
        if source is None:
            continue
        if not hasattr(source, "to_dict"):
            raise ValueError(f"generation_config must be a transformers.GenerationConfig, got {type(source).__name__}")
        for key, value in source.to_diff_dict().items():  # the fields set, not every default
            if key in HF_SETTINGS:
                if value is not None:
                    settings[key] = value
            elif key not in HF_BOOKKEEPING and value is not None and value != HF_IGNORED.get(key, ...):
                raise ValueError(f"generation_config.{key}={value!r} is not supported by minimind's generate "
                                 f"(supported: {', '.join(HF_SETTINGS)}); use transformers.GenerationMixin."
                                 "generate(model, ...) for Hugging Face's own loop")
    unknown = [k for k, v in kwargs.items() if k not in HF_SETTINGS and k not in HF_BOOKKEEPING
               and v is not None and not (k in HF_IGNORED and v == HF_IGNORED[k])]  # None / a default: fine
    if unknown:
        raise TypeError(f"generate() got unsupported argument(s) {', '.join(sorted(unknown))}; supported: "
                        f"input_ids, attention_mask, {', '.join(HF_SETTINGS)}, seed, generator, tokenizer, "
                        "streamer, stream, compile, generation_config (Hugging Face's own loop: "
                        "transformers.GenerationMixin.generate(model, ...))")
    settings.update({k: v for k, v in kwargs.items() if k in HF_SETTINGS and v is not None})
    for key, value in HF_DEFAULTS.items():
        settings.setdefault(key, value)
    return settings


def new_token_budget(settings: dict, prompt_length: int) -> int:
    """max_new_tokens, or what max_length leaves after the prompt (a ValueError when that is nothing)."""
    max_new = settings.get("max_new_tokens")
    if max_new is None:
        max_new = settings["max_length"] - prompt_length
        if max_new <= 0:
            raise ValueError(f"max_length ({settings['max_length']}) leaves no room after the {prompt_length}-token "
                             "prompt; set max_new_tokens")
    return max_new


def stream_one(model, input_ids: torch.Tensor, attention_mask, max_new: int, settings: dict, own: dict):
    """`stream=True`: an iterator of text pieces for the one prompt of input_ids (1, T) (its unpadded tokens),
    through `stream`; needs `tokenizer` in `own` (minimind's own arguments)."""
    if own.get("tokenizer") is None:
        raise ValueError("stream=True needs the tokenizer to make text: pass tokenizer=...")
    if input_ids.shape[0] != 1 or settings["num_return_sequences"] > 1:
        raise ValueError("stream=True streams one prompt; for a batch use minimind.infer.generate.stream_batch")
    prompt = input_ids[0] if attention_mask is None else input_ids[0][attention_mask[0].bool()]
    return stream(model, own.pop("tokenizer"), prompt.tolist(), max_new, do_sample=settings["do_sample"],
                  temperature=settings["temperature"], top_k=settings["top_k"], top_p=settings["top_p"],
                  repetition_penalty=settings["repetition_penalty"], min_new_tokens=settings["min_new_tokens"],
                  eos_token_id=settings.get("eos_token_id", []), stop_strings=settings.get("stop_strings"),
                  use_cache=settings["use_cache"], **own)


def generate_method(self, inputs=None, generation_config=None, streamer=None, **kwargs):
    """Hugging Face's calling convention (input_ids, attention_mask, max_new_tokens, do_sample, temperature,
    top_k, top_p, repetition_penalty, eos_token_id, stop_strings + tokenizer, ...) plus `seed`, run by minimind's
    own decode loop. Returns a LongTensor (B, T + n): the prompts, then the new tokens; with `stream=True` and
    `tokenizer=`, an iterator of text pieces of one prompt's continuation instead."""
    return hf_generate(self, inputs, generation_config, streamer=streamer, **kwargs)


MiniMindForCausalLM.generate = generate_method
