"""lm-evaluation-harness, for real and offline, on small tasks defined by local YAML over local JSONL files (multiple
choice, log-likelihood, generation, rolling perplexity): `minimind eval MODEL --tasks` in-process, and lm-eval's own
`local-completions` model against `minimind serve`, give the same accuracies, log-likelihoods and generated text."""

import json

import lm_eval
import pytest
from helpers import save_model_dir, tiny_model
from lm_eval.tasks import TaskManager
from test_serve import start_server

from minimind.checkpoint import load_model
from minimind.cli import main
from minimind.eval.harness import run_tasks
from minimind.serve.app import create_app

pytestmark = pytest.mark.usefixtures("one_thread")

TASKS = ["tiny_mc", "tiny_ll", "tiny_gen", "tiny_roll"]  # every kind of request: log-likelihood, generation, rolling


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_model_dir(tiny_model(seed=3, max_position_embeddings=128), tmp_path_factory.mktemp("model"))


def write_task(d, name, rows, spec):
    """A task as a user writes one: rows in `name`.jsonl, and `name`.yaml reading them with `spec` (YAML lines)."""
    (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (d / f"tiny_{name}.yaml").write_text(
        f"task: tiny_{name}\ndataset_path: json\ntest_split: test\ndataset_kwargs:\n  data_files:\n"
        f"    test: {d / f'{name}.jsonl'}\n{spec}", encoding="utf-8")


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """Four tasks as a user writes them: YAML files that read JSONL files beside them."""
    d = tmp_path_factory.mktemp("tasks")
    mc = [{"question": f"What is {i} plus one?", "choices": [f"It is {i + 1}.", f"It is {i + 5}.", "Blue sky."],
           "answer": i % 3} for i in range(8)]
    ll = [{"context": "In the beginning God created the heaven and the", "target": " earth."},
          {"context": "Hello, how are", "target": " you?"}, {"context": "One, two,", "target": " three"},
          {"context": "", "target": "Good morning"}]  # an empty context: lm-eval puts the bos token there
    gen = [{"question": f"Count on from {i}:", "answer": f" {i + 1}"} for i in range(3)]
    roll = [{"text": "In the beginning God created the heaven and the earth."}, {"text": "Hello there, friend."}]
    write_task(d, "mc", mc, "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
               "doc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    write_task(d, "ll", ll, "output_type: loglikelihood\ndoc_to_text: '{{context}}'\ndoc_to_target: '{{target}}'\n"
               "metric_list:\n  - metric: perplexity\n  - metric: acc\n")
    write_task(d, "gen", gen, "output_type: generate_until\ndoc_to_text: '{{question}}'\ndoc_to_target: '{{answer}}'\n"
               "generation_kwargs:\n  until: ['\\n\\n', '.']\n  max_gen_toks: 6\n  do_sample: false\n"
               "metric_list:\n  - metric: exact_match\n")
    write_task(d, "roll", roll, "output_type: loglikelihood_rolling\ndoc_to_text: '{{text}}'\n"
               "doc_to_target: '{{text}}'\nmetric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n")
    return d


def metrics(results) -> dict:
    return {task: {k: v for k, v in r.items() if "," in k and "stderr" not in k}
            for task, r in results["results"].items()}


def loglikelihoods(results) -> dict:
    """task -> the log-likelihood lm-eval got for each request, in order (the log-likelihood tasks)."""
    return {task: [float(resp[0][0]) for s in sorted(samples, key=lambda s: s["doc_id"]) for resp in s["resps"]]
            for task, samples in results["samples"].items() if task in ("tiny_mc", "tiny_ll")}


def generated(results) -> list[str]:
    return [s["resps"][0][0] for s in sorted(results["samples"]["tiny_gen"], key=lambda s: s["doc_id"])]


def test_in_process_and_through_the_server_agree(model_dir, task_dir, tmp_path, capsys):
    out = tmp_path / "results.json"
    main(["eval", str(model_dir), "--tasks", ",".join(TASKS), "--include_path", str(task_dir), "--device", "cpu",
          "--output_path", str(out)])
    table = capsys.readouterr().out
    assert "|tiny_mc|" in table.replace(" ", "") and "acc_norm" in table and "perplexity" in table
    written = json.loads(out.read_text())
    cli_metrics = metrics(written)
    assert set(cli_metrics) == set(TASKS) and written["n-samples"]["tiny_mc"]["effective"] == 8

    model, tokenizer = load_model(str(model_dir))
    ours = run_tasks(model, tokenizer, TASKS, include_path=str(task_dir), log_samples=True, batch_size=3)
    assert metrics(ours) == cli_metrics

    server, thread, url = start_server(create_app(model, tokenizer, model_name="tiny", max_batch=4))
    try:
        theirs = lm_eval.simple_evaluate(
            "local-completions", model_args={"model": "tiny", "base_url": url + "/v1/completions",
                                             "tokenizer_backend": "huggingface", "tokenizer": str(model_dir),
                                             "max_length": 128, "batch_size": 4, "max_retries": 1},
            tasks=TASKS, task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
            bootstrap_iters=0, log_samples=True)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    a, b = loglikelihoods(ours), loglikelihoods(theirs)
    assert {t: len(v) for t, v in a.items()} == {t: len(v) for t, v in b.items()} == {"tiny_mc": 8 * 3, "tiny_ll": 4}
    for task in a:
        assert max(abs(x - y) for x, y in zip(a[task], b[task])) < 1e-4, task
    assert generated(ours) == generated(theirs) and all(generated(ours))  # greedy text, the same through both
    m, t = metrics(ours), metrics(theirs)
    for task in TASKS:
        assert m[task].keys() == t[task].keys()
        for k in m[task]:
            assert abs(m[task][k] - t[task][k]) <= 1e-6 * max(1.0, abs(m[task][k])), (task, k)
    assert 0 < m["tiny_mc"]["acc,none"] < 1  # neither all right nor all wrong: the comparison means something


def test_eval_tasks_errors(model_dir, task_dir, capsys):
    with pytest.raises(SystemExit):
        main(["eval", str(model_dir), "--tasks", "tiny_mc", "--data", str(task_dir / "mc.jsonl")])
    assert "not both" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", str(model_dir), "--tasks", " , "])
    assert "give one or more lm-eval task names" in capsys.readouterr().err
