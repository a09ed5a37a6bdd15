"""lm-evaluation-harness on a minimind model, in-process: `minimind eval MODEL --tasks NAMES`.

    pip install -e ".[eval]"                                         # lm-eval, an optional extra
    minimind eval out/sft --tasks arc_easy,hellaswag --output_path results/   # public tasks (downloads their data)
    minimind eval out/sft --tasks my_task --include_path tasks/      # a task of your own: a YAML over local files

`MiniMindLM` is lm-eval's model interface (`lm_eval.api.model.TemplateLM`) over our model and tokenizer, so every
task type runs: log-likelihood and multiple choice (`loglikelihood`), perplexity (`loglikelihood_rolling`) and
generation (`generate_until`, greedy through the decode engine). Text is tokenized as lm-eval's Hugging Face models
do: no bos token added, a context's trailing spaces moved to the continuation, an empty context replaced by the
bos token. The same tokens go to `minimind serve` when lm-eval's `local-completions` model is pointed at it with
this model's tokenizer (`tokenizer_backend=huggingface,tokenizer=MODEL`), and both score them with
`minimind.eval.perplexity.score_tokens`, so the two routes give the same numbers.
"""

import json
from pathlib import Path

try:
    from lm_eval.api.model import TemplateLM
except ImportError:  # the class below needs lm-eval; `run_tasks` says how to install it
    TemplateLM = object

INSTALL = 'lm-evaluation-harness is not installed; install it with pip install -e ".[eval]" (or pip install lm-eval)'


class MiniMindLM(TemplateLM):
    """A minimind model as lm-eval's LM: log-likelihoods from one forward pass per batch of (context +
    continuation) token sequences, greedy generation with the decode engine."""

    def __init__(self, model, tokenizer, batch_size: int = 16, max_length: int | None = None):
        super().__init__()
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.max_length = max_length or model.config.max_position_embeddings

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """What stands for an empty context: the bos token (every pretraining document starts with it), as lm-eval's
        Hugging Face models choose."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string, add_special_tokens=False)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: (cache key, context ids, continuation ids) -> (sum of the continuation's log-probabilities,
        whether each of its tokens is the model's argmax). A sequence longer than the context window loses its
        oldest tokens, as lm-eval's own models do."""
        import torch
        from tqdm import tqdm

        from .perplexity import score_tokens

        out = []
        bar = tqdm(total=len(requests), desc="loglikelihood", disable=disable_tqdm or None)
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start:start + self.batch_size]
            sequences = [(context + continuation)[-self.max_length:] for _, context, continuation in chunk]
            with torch.inference_mode():
                scores = score_tokens(self.model, sequences, top=0)
            for (_, _, continuation), score in zip(chunk, scores):
                n = len(continuation)
                out.append((float(sum(score["logprobs"][-n:])), bool(all(score["greedy"][-n:]))))
                bar.update(1)
        bar.close()
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """The whole text's log-likelihood, in disjoint windows of the context window (perplexity tasks)."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        totals = []
        for request in requests:
            (text,) = request.args
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                context_len=1)]
            scores = self._loglikelihood_tokens([(None, c, t) for c, t in windows], disable_tqdm=True)
            totals.append(sum(s for s, _ in scores))
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy answers, ended by the request's `until` strings or `max_gen_toks` tokens."""
        from ..infer.generate import generate_text

        answers = []
        for request in requests:
            context, settings = request.args
            settings = dict(settings or {})
            until = settings.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(settings.get("max_gen_toks", 256))
            ids = self.tok_encode(context)[-(self.max_length - max_new):]
            text = generate_text(self.model, self.tokenizer, [ids], max_new_tokens=max_new, do_sample=False,
                                 stop_strings=until or None)[0]
            answers.append(text)
        return answers


def run_tasks(model, tokenizer, tasks: list[str], include_path: str | None = None, num_fewshot: int | None = None,
              limit: int | None = None, batch_size: int = 16, output_path: str | None = None,
              log_samples: bool = False) -> dict:
    """Run lm-eval's `tasks` (names, or names of YAML tasks under `include_path`) on the model in-process; returns
    lm-eval's results dict (results, versions, n-shot, configs ...). `output_path`: also write it as JSON (a file,
    or a directory that gets results.json)."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ImportError(INSTALL) from None

    manager = None
    if include_path:  # indexing lm-eval's own thousands of task files takes a while: skip it when yours suffice
        manager = TaskManager(include_path=include_path, include_defaults=False)
        if any(t not in manager.all_tasks for t in tasks):
            manager = None
    manager = manager or TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = f" or under {include_path}" if include_path else " (give --include_path DIR for your own YAML tasks)"
        raise ValueError(f"--tasks {','.join(unknown)}: no such lm-eval task{where}; `lm-eval ls tasks` lists "
                         "lm-eval's own")
    results = lm_eval.simple_evaluate(MiniMindLM(model, tokenizer, batch_size=batch_size), tasks=list(tasks),
                                      num_fewshot=num_fewshot, limit=limit, task_manager=manager,
                                      log_samples=log_samples, bootstrap_iters=0)
    if output_path:
        path = Path(output_path)
        if path.suffix != ".json":
            path.mkdir(parents=True, exist_ok=True)
            path = path / "results.json"
        path.write_text(json.dumps(results, indent=2, default=str, ensure_ascii=False) + "\n", encoding="utf-8")
    return results


def results_table(results: dict) -> str:
    """lm-eval's own Markdown table of the results."""
    from lm_eval.utils import make_table

    return make_table(results)
