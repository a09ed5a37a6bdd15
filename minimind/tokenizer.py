"""The tokenizer: byte-level BPE trained with Hugging Face `tokenizers`, loaded as a `transformers` fast tokenizer.

Special tokens sit at MiniMind's ids: 0 `<|endoftext|>` (padding), 1 `<|im_start|>` (begin of a document or a
message), 2 `<|im_end|>` (end of one). The thinking and tool markers (`MARKERS`: `<think>`, `<tool_call>`,
`<tool_response>` and their closing tags) are single tokens at the last ids (6394-6399 in the shipped one). The
chat template is ChatML, with tools, tool calls and thinking (`CHAT_TEMPLATE`):

    <|im_start|>system\\nYou are helpful.<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n

The package ships the 6400-token tokenizer that `minimind tokenizer train --vocab_size 6400` builds on the
built-in corpus (`minimind/assets/tokenizer/`). Byte-level means every string round-trips, whatever its language.
`tokenizer_config.json` names `PreTrainedTokenizerFast`, which both transformers 4.x and 5.x load.

    minimind tokenizer train --data corpus/ --vocab_size 32000 --out my-tokenizer
"""

import hashlib
import itertools
import json
from collections.abc import Iterable
from pathlib import Path

from .io import atomic_write

SHIPPED = Path(__file__).parent / "assets" / "tokenizer"

PAD, BOS, EOS = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS]  # ids 0, 1, 2

# The markers of thinking and tool use (Qwen3's, as the public MiniMind uses them). The shipped tokenizer and the
# ones `train_tokenizer` makes hold each as one token, at the last ids of the vocabulary; they are not "special"
# (decoding keeps them, so the text a model writes can be parsed: `minimind.data.parse`). A tokenizer without
# them (older models) spells them with ordinary tokens and works the same.
MARKERS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]

# The chat template before thinking and tool use: plain ChatML. A tokenizer that carries it (older models) is
# loaded with CHAT_TEMPLATE instead (`load_tokenizer`), which gives the same text for the same plain messages.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{- raise_exception(\"unknown role '\" + message['role'] + \"'; expected system, user or assistant\") }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# ChatML with tools, tool calls, tool results and thinking (see minimind/data/messages.py for the rules):
# - tools (OpenAI's list of {"type": "function", "function": {...}}): one JSON line each in the system turn;
# - an assistant turn: `<think>\nreasoning\n</think>\n\n` when it has reasoning_content, its content, then each
#   tool call as `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, a line apart;
# - tool results: consecutive `tool` messages make one user turn of `<tool_response>\n...\n</tool_response>`;
# - enable_thinking (a template variable): true opens `<think>\n` after the generation prompt, false writes an
#   empty thinking block there, unset leaves the choice to the model.
CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages and messages[0]['role'] == 'system' and messages[0]['content'] %}"
    "{{- messages[0]['content'] + '\\n\\n' }}"
    "{%- endif %}"
    "{{- '# Tools\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\\n</tools>\\nTo call a tool, write <tool_call>\\n{\"name\": ..., \"arguments\": {...}}\\n</tool_call>'"
    " + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- set role = message['role'] %}"
    "{%- if role not in ['system', 'user', 'assistant', 'tool'] %}"
    "{{- raise_exception(\"unknown role '\" + role + \"'; expected system, user, assistant or tool\") }}"
    "{%- elif role == 'tool' %}"
    "{%- if loop.first or loop.previtem['role'] != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message['content'] + '\\n</tool_response>' }}"
    "{%- if loop.last or loop.nextitem['role'] != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- elif role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if message.get('reasoning_content') %}"
    "{{- '<think>\\n' + message['reasoning_content'] + '\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{{- message['content'] or '' }}"
    "{%- for call in message.get('tool_calls') or [] %}"
    "{%- if not loop.first or message['content'] %}{{- '\\n' }}{%- endif %}"
    "{%- set fn = call['function'] if call['function'] is defined else call %}"
    "{%- if fn['arguments'] is string %}"
    "{%- set body = '{\"name\": ' + (fn['name'] | tojson) + ', \"arguments\": ' + fn['arguments'] + '}' %}"
    "{%- else %}"
    "{%- set body = {'name': fn['name'], 'arguments': fn['arguments']} | tojson %}"
    "{%- endif %}"
    "{{- '<tool_call>\\n' + body + '\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif not (role == 'system' and loop.first and tools) %}"
    "{{- '<|im_start|>' + role + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- elif enable_thinking is defined and enable_thinking %}{{- '<think>\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path, model_max_length: int = 32768,
                    split_digits: int = 0):
    """Train a byte-level BPE tokenizer on `texts` and save it to `out_dir` as a Hugging Face tokenizer directory
    (tokenizer.json, tokenizer_config.json, special_tokens_map.json). Returns the loaded tokenizer.
    `split_digits` N: digits are read in groups of at most N, left to right, each group one token (1: every digit
    its own token, as LLaMA's tokenizer; 3: 0-999 as GPT-4's), so that a number reads the same after a space, a
    quote or a newline, and a small model copying numbers (arguments, results) copies a few whole tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    least = 256 + len(SPECIAL_TOKENS) + len(MARKERS)
    if vocab_size < least:
        raise ValueError(f"vocab_size {vocab_size} is too small: a byte-level BPE needs at least {least} tokens "
                         f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens + {len(MARKERS)} markers)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if split_digits:
        groups = pre_tokenizers.Split(Regex(rf"\d{{1,{int(split_digits)}}}"), behavior="isolated")
        tok.pre_tokenizer = pre_tokenizers.Sequence([groups, tok.pre_tokenizer])
        # every group of digits seen often enough to become one token, whatever the corpus holds
        numbers = " ".join(f"{i:0{n}d}" for n in range(1, int(split_digits) + 1) for i in range(10 ** n))
        texts = itertools.chain([numbers] * 1000, texts)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(MARKERS), special_tokens=SPECIAL_TOKENS,
                                  show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    for i, token in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(token) == i, f"special token {token} landed at id {tok.token_to_id(token)}, not {i}"
    # The markers take the last ids (a corpus too small for vocab_size - len(MARKERS) merges leaves them lower).
    tok.add_tokens([AddedToken(m, normalized=False, special=False) for m in MARKERS])

    out = Path(out_dir)
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": PAD}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",  # not 5.x's "TokenizersBackend", which 4.x cannot load
        **special,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "added_tokens_decoder": {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True}
                                 for i, t in enumerate(SPECIAL_TOKENS)}
        | {str(tok.token_to_id(m)): {"content": m, "lstrip": False, "normalized": False, "rstrip": False,
                                     "single_word": False, "special": False} for m in MARKERS},
        "chat_template": CHAT_TEMPLATE,
    }
    with atomic_write(out, directory=True) as tmp:  # no half-written tokenizer on a full disk or a kill
        tok.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                                   encoding="utf-8")
        (tmp / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    return load_tokenizer(out)


def load_tokenizer(path: str | Path | None = None):
    """A `transformers` fast tokenizer from a tokenizer directory, a model/output directory holding tokenizer files,
    or a tokenizer.json file; None gives the shipped 6400-token tokenizer.

    A tokenizer without a pad token pads with its eos token; one without a chat template, or with the plain ChatML
    one of older models, gets CHAT_TEMPLATE (the same text for plain messages; it knows tools and thinking)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(SHIPPED if path is None else path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such tokenizer file or directory")
    if path.is_file():
        if path.suffix != ".json":
            raise ValueError(f"{path}: not a tokenizer; expected a tokenizer directory or a tokenizer.json file")
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path))
    else:
        if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
            raise FileNotFoundError(f"{path}: no tokenizer.json or tokenizer_config.json in this directory")
        # AutoTokenizer reads a model directory's config.json: register its model type (torch-free), or transformers
        # warns that it does not know "minimind".
        from transformers import AutoConfig

        from .config import MiniMindConfig
        AutoConfig.register("minimind", MiniMindConfig, exist_ok=True)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot load the tokenizer ({str(e).splitlines()[0]})") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{path}: a fast (tokenizer.json) tokenizer is needed, got {type(tokenizer).__name__}")
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None or tokenizer.chat_template == CHATML_TEMPLATE:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tokenizer(tokenizer, out_dir: str | Path) -> None:
    """`save_pretrained`, made loadable by transformers 4.x as well as 5.x: tokenizer_config.json names
    `PreTrainedTokenizerFast` (5.x writes "TokenizersBackend", which 4.x refuses) and holds the chat template."""
    out = Path(out_dir)
    with atomic_write(out, directory=True) as tmp:  # no half-written tokenizer on a full disk or a kill
        tokenizer.save_pretrained(str(tmp))
        path = tmp / "tokenizer_config.json"
        config = json.loads(path.read_text(encoding="utf-8"))
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        for key in ("backend", "is_local", "local_files_only"):  # 5.x bookkeeping, meaningless to 4.x
            config.pop(key, None)
        if tokenizer.chat_template:
            config["chat_template"] = tokenizer.chat_template
            (tmp / "chat_template.jinja").unlink(missing_ok=True)
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if tokenizer.chat_template:
        (out / "chat_template.jinja").unlink(missing_ok=True)  # an earlier save's: the config holds the template


def tokenizer_hash(tokenizer) -> str:
    """A short fingerprint of everything that decides a tokenizer's ids (vocabulary, merges, special tokens)."""
    cached = getattr(tokenizer, "_minimind_hash", None)
    if cached is None:
        h = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode("utf-8"))
        h.update(repr((tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)).encode())
        cached = h.hexdigest()[:16]
        tokenizer._minimind_hash = cached
    return cached


def check_tokenizer_fits(tokenizer, config) -> None:
    """Raise ValueError at start-up when the tokenizer's ids do not all fit the model's embedding table."""
    size = len(tokenizer)
    if tokenizer.all_special_ids:
        size = max(size, max(tokenizer.all_special_ids) + 1)
    if size > config.vocab_size:
        raise ValueError(f"the tokenizer has {size} tokens but the model's vocab_size is {config.vocab_size}: "
                         f"token ids would index past the embedding table; use --vocab_size {size} (or more), "
                         f"or a tokenizer with at most {config.vocab_size} tokens")
