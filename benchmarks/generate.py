"""Generation speed of minimind's decode engine: its default path at batch 1 on a CPU, against llama.cpp on the
GGUF files `minimind export` writes, and against Hugging Face `LlamaForCausalLM.generate`.

The default table (`python benchmarks/generate.py`, optionally `--llama_cpp`): batch 1, greedy, random weights (seed
0), the same prompt token ids for every implementation, for each precision of the `--preset` model (fp32, bf16,
int8, int4) and of the mixture-of-experts `--moe_preset`, at a 32-token prompt and at a 1,024-token one (`--prompts`),
then `--new` new tokens. From each call: the first token's time (the prefill: prefill tok/s = prompt / that time),
the decode rate after it ((new - 1) / the rest: at the long prompt, decoding at 1,024-1,152 tokens of context) and
the whole call's rate (new / the whole call, the figure issue 29 quoted). Implementations: `minimind` (the default
path, `generate` with no flags: the eager prefill, then the native one-row step), `minimind eager steps` (the
default before it: every step through the model's forward, `DecodeBatch(native=False)`), with `--compile`
`minimind compile` (`compile=True`), with `--llama_cpp` llama.cpp (llama-cpp-python, `pip install -e .[bench]`,
which builds llama.cpp from source) on the same weights exported in each matching GGUF precision. They alternate
call by call for `--rounds` rounds, after one warm-up call each; medians. The warm-up of the default path is the
model's first call: its first- and second-token times are printed (the second includes building the native step).

    python benchmarks/generate.py                          # the default path's table (small, small-moe)
    python benchmarks/generate.py --compile --rounds 5     # also compile=True (compiles first: minutes)
    python benchmarks/generate.py --llama_cpp --thread_counts 2,1   # against llama.cpp
    python benchmarks/generate.py --hf                     # vs Hugging Face generate, batches 1 and 8
    python benchmarks/generate.py --hf --compile --quantize --device cuda --dtype bf16
"""

import argparse
import copy
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass

import torch
from transformers import LlamaForCausalLM

from minimind import MiniMindForCausalLM, preset
from minimind.export.hf import llama_config


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def matmul_floor(model, batch, device, rounds) -> float:
    """Steps/s of the decode step's matrix products alone (every Linear once, on a (batch, 1, in) input): the
    weights must stream through the core once per step whatever the code around them does."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = {m.in_features: torch.randn(batch, 1, m.in_features, device=device, dtype=m.weight.dtype)
              for m in linears}

    def step():
        for m in linears:
            torch.nn.functional.linear(inputs[m.in_features], m.weight)
    with torch.inference_mode():
        step()
        best = min(timed(lambda: [step() for _ in range(20)], device) for _ in range(rounds)) / 20
    return 1 / best




def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--moe_preset", default="small-moe", help="the table's mixture-of-experts model ('': none)")
    p.add_argument("--pairs", default="fp32,bf16,int8,int4", help="the table's precisions of --preset")
    p.add_argument("--moe_pairs", default="fp32,int8", help="the table's precisions of --moe_preset")
    p.add_argument("--prompts", default="32,1024", help="prompt lengths (--hf: the first)")
    p.add_argument("--new", type=int, default=128, help="new tokens")
    p.add_argument("--thread_counts", default="2", help="thread counts to run the table at")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="add minimind with compile=True (compiles first)")
    p.add_argument("--no_eager_steps", action="store_true", help="leave out the default before the native step")
    p.add_argument("--llama_cpp", action="store_true",
                   help="add llama.cpp (llama-cpp-python) on the GGUF files `minimind export` writes")
    p.add_argument("--llama_extra_buffers", choices=("auto", "on", "off"), default="auto",
                   help="with --llama_cpp: llama.cpp's extra weight buffer types (repacked weights, AMX); auto: off "
                        "on a CPU with AMX, where llama-cpp-python 0.3.36's AMX q8_0 product crashes (segfault in "
                        "ggml_backend_amx_mul_mat)")
    p.add_argument("--hf", action="store_true", help="instead: minimind vs Hugging Face generate, batches --batches")
    p.add_argument("--batches", default="1,8", help="with --hf")
    p.add_argument("--device", default="cpu", help="with --hf")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"), help="with --hf")
    p.add_argument("--threads", type=int, default=None, help="with --hf: torch threads (default: torch's own)")
    p.add_argument("--quantize", action="store_true", help="with --hf: add minimind with int8 weights")
    args = p.parse_args()
    return hf_main(args) if args.hf else table_main(args)


@dataclass
class Call:
    """One generation call: seconds to its first token and for the rest, and its new tokens."""
    first: float
    rest: float
    tokens: list[int]


def timed_call(tokens) -> Call:
    """Run a token iterator to its end, timing its first token and the rest."""
    start = time.perf_counter()
    out, first = [], None
    for token in tokens:
        out.append(int(token))
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    return Call(first - start, end - first, out)


def minimind_tokens(model, prompt, n, compile=False):
    """minimind's default path (`generate_tokens` with no flags), or compile=True: its new tokens one by one."""
    from minimind.infer.generate import generate_tokens

    return (t[0] for t in generate_tokens(model, prompt, max_new_tokens=n, compile=compile))


def eager_step_tokens(model, prompt, n):
    """The default before the native step: the eager prefill, then every step through the model's forward."""
    from minimind.infer.engine import DecodeBatch, eval_mode

    batch = DecodeBatch(model, native=False)
    with eval_mode(model):
        yield batch.add(prompt, capacity=prompt.shape[1] + n)[0]
        for _ in range(n - 1):
            yield batch.step()[0]


def llama_tokens(llm, prompt, n):
    """llama.cpp's greedy generation of n tokens after `prompt` (token ids), one by one."""
    llm.reset()
    for i, token in enumerate(llm.generate(prompt[0].tolist(), top_k=1, temp=0.0, repeat_penalty=1.0)):
        yield token
        if i + 1 == n:
            break


# Each precision of minimind's model and the GGUF precisions of the same weights that llama.cpp runs against it.
PAIRS = {"fp32": ("f32",), "bf16": ("bf16", "f16"), "int8": ("q8_0",), "int4": ("q4_1", "q4_0")}


def first_call(fn) -> tuple[float, float]:
    """Seconds to the first and to the second token of a call."""
    start = time.perf_counter()
    tokens = iter(fn())
    next(tokens)
    one = time.perf_counter() - start
    next(tokens)
    two = time.perf_counter() - start
    for _ in tokens:
        pass
    return one, two


def table_main(args):
    """The default table (see the module docstring): per model, precision, thread count and prompt length, each
    implementation's median first-token time, prefill, decode and whole-call rates."""
    from minimind.quantize import quantize_int4, quantize_int8

    llama = llama_cpp_setup(args) if args.llama_cpp else None
    prompts = [int(n) for n in args.prompts.split(",")]
    n = args.new
    print(f"batch 1, prompts {args.prompts} tokens + {n} new, greedy; torch {torch.__version__}, {cpu_name()}; "
          f"load average {os.getloadavg()[0]:.1f} at the start" +
          (f"; llama.cpp's extra buffer types {'on' if llama['extra'] else 'off'}" if llama else ""), flush=True)
    models = [(args.preset, args.pairs)] + ([(args.moe_preset, args.moe_pairs)] if args.moe_preset else [])
    rows = []
    for name, pairs in models:
        config = preset(name)
        torch.manual_seed(0)
        base = MiniMindForCausalLM(config).eval()
        inputs = {T: torch.randint(3, config.vocab_size, (1, T), generator=torch.Generator().manual_seed(1))
                  for T in prompts}
        for pair in pairs.split(","):
            make = {"fp32": lambda: copy.deepcopy(base), "bf16": lambda: copy.deepcopy(base).to(torch.bfloat16),
                    "int8": lambda: quantize_int8(copy.deepcopy(base)),
                    "int4": lambda: quantize_int4(copy.deepcopy(base))}[pair]
            files = llama_cpp_files(llama, base, name, pair) if llama else {}
            for threads in [int(t) for t in args.thread_counts.split(",")]:
                torch.set_num_threads(threads)
                model = make()  # fresh: its first call below is the default path's first (and compile's first)
                llms = {dtype: llama["Llama"](path, n_ctx=max(prompts) + n + 16, n_threads=threads,
                                              n_threads_batch=threads, n_batch=max(prompts), verbose=False)
                        for dtype, path in files.items()}
                for T, prompt in inputs.items():
                    fns = {"minimind": lambda: minimind_tokens(model, prompt, n)}
                    if not args.no_eager_steps:
                        fns["minimind eager steps"] = lambda: eager_step_tokens(model, prompt, n)
                    if args.compile:
                        fns["minimind compile"] = lambda: minimind_tokens(model, prompt, n, compile=True)
                    for dtype, llm in llms.items():
                        fns[f"llama.cpp {dtype}"] = lambda llm=llm: llama_tokens(llm, prompt, n)
                    start = time.perf_counter()
                    if T == prompts[0]:  # the model's first call, on the default path
                        one, two = first_call(fns["minimind"])
                        print(f"  ({name} {pair}, {threads} threads: the first call's first token in {one * 1000:.0f}"
                              f" ms, its second in {two * 1000:.0f} ms)", flush=True)
                    warm = {impl: timed_call(fn()) for impl, fn in fns.items()}  # (compile=True compiles here)
                    print(f"  ({name} {pair}, {threads} threads, prompt {T}: warm-up {time.perf_counter() - start:.0f}"
                          f" s)", flush=True)
                    calls = {impl: [] for impl in fns}
                    for _ in range(args.rounds):
                        for impl, fn in fns.items():
                            calls[impl].append(timed_call(fn()))
                    rates = {}
                    for impl in fns:
                        first = statistics.median(c.first for c in calls[impl])
                        decode = statistics.median((n - 1) / c.rest for c in calls[impl])
                        whole = statistics.median(n / (c.first + c.rest) for c in calls[impl])
                        rates[impl] = (decode, whole)
                        ours = rates["minimind"]
                        agree = leading_equal(warm[impl].tokens, warm["minimind"].tokens)
                        rows.append((name, pair, threads, T, impl, first * 1000, T / first, decode, whole,
                                     ours[0] / decode, ours[1] / whole, agree))
                        print(f"  {name} {pair} {threads} threads prompt {T} {impl}: first token {first * 1000:.0f} "
                              f"ms, decode {decode:,.0f} tok/s, whole call {whole:,.0f} tok/s; tokens equal "
                              f"minimind's: {agree}/{n}", flush=True)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    print("\n| model | weights | threads | prompt | implementation | first token ms | prefill tok/s | decode tok/s | "
          "whole call tok/s | minimind / this, decode | minimind / this, whole | first tokens = minimind's |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, pair, threads, T, impl, ms, prefill, decode, whole, r_decode, r_whole, agree in rows:
        print(f"| {name} | {pair} | {threads} | {T} | {impl} | {ms:,.0f} | {prefill:,.0f} | {decode:,.0f} | "
              f"{whole:,.0f} | {r_decode:.2f}x | {r_whole:.2f}x | {agree}/{n} |")


def leading_equal(a: list[int], b: list[int]) -> int:
    """How many tokens a and b share from the first on."""
    count = 0
    for x, y in zip(a, b):
        if x != y:
            break
        count += 1
    return count


def llama_cpp_setup(args) -> dict:
    """llama-cpp-python's `Llama`, with its extra buffer types as --llama_extra_buffers says, and a scratch folder."""
    import llama_cpp.llama_cpp as llama_lib
    from llama_cpp import Llama

    extra = args.llama_extra_buffers == "on" or (args.llama_extra_buffers == "auto" and not cpu_has_amx())
    if not extra:  # Llama() takes no argument for it: its model parameters come from this function
        default_params = llama_lib.llama_model_default_params

        def model_params():
            params = default_params()
            params.use_extra_bufts = False
            return params
        llama_lib.llama_model_default_params = model_params
    return {"Llama": Llama, "extra": extra, "folder": tempfile.mkdtemp(prefix="minimind-bench-")}


def llama_cpp_files(llama: dict, model, name: str, pair: str) -> dict[str, str]:
    """`model` exported by minimind's own GGUF writer in each GGUF precision that `pair` runs against."""
    from minimind.export.gguf import export_gguf
    from minimind.tokenizer import load_tokenizer

    files = {}
    for dtype in PAIRS[pair]:
        files[dtype] = os.path.join(llama["folder"], f"{name}-{dtype}.gguf")
        export_gguf(model, load_tokenizer(), files[dtype], dtype=dtype, force=True)
    return files


def hf_main(args):
    """minimind's `generate` against Hugging Face's, same weights, batches --batches: decode tokens/s (new tokens over
    the whole call, prefill included) and prefill tokens/s (one new token). Calls alternate between the two, round
    after round, and the best round of each counts; both outputs are checked equal."""
    prompt = int(args.prompts.split(",")[0])
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    config = preset(args.preset)
    torch.manual_seed(0)
    ours = MiniMindForCausalLM(config).to(device, dtype).eval()
    hf = LlamaForCausalLM(llama_config(config)).to(device, dtype).eval()
    hf.config._attn_implementation = "sdpa"
    hf.load_state_dict(ours.state_dict())
    if args.quantize:
        from minimind.quantize import quantize_int8
        int8 = quantize_int8(copy.deepcopy(ours))
    print(f"{args.preset} preset, {args.dtype}, device {args.device}, prompt {prompt}, {args.new} new tokens, "
          f"greedy; torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads")

    def ours_fn(ids, n, compile=False, model=ours):  # the same call as Hugging Face's (eos from the generation config)
        return lambda: model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, compile=compile)

    def hf_fn(ids, n):
        return lambda: hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        ids = torch.randint(3, config.vocab_size, (batch, prompt), device=device)
        a, b = ours_fn(ids, args.new)(), hf_fn(ids, args.new)()
        same = torch.equal(a, b)
        for what, n, tokens in (("decode", args.new, batch * args.new), ("prefill", 1, batch * prompt)):
            fns = {"minimind": ours_fn(ids, n), "hf": hf_fn(ids, n)}
            if args.compile:
                fns["minimind+compile"] = ours_fn(ids, n, compile=True)
                start = time.perf_counter()
                c = fns["minimind+compile"]()  # compiles (dynamic shapes: once for all lengths)
                print(f"(torch.compile: first call {time.perf_counter() - start:.0f} s; same tokens as eager: "
                      f"{'yes' if torch.equal(c, ours_fn(ids, n)()) else 'NO'})")
            if args.quantize:
                fns["minimind int8"] = ours_fn(ids, n, model=int8)
                q = fns["minimind int8"]()
                agree = (q == a).all(dim=0).long().cumprod(0).sum().item() - prompt if n > 1 else 0
                if n > 1:
                    print(f"(int8: the first {agree} of {n} new tokens equal fp32's in every row)")
                if args.compile:
                    fns["minimind int8+compile"] = ours_fn(ids, n, compile=True, model=int8)
                    fns["minimind int8+compile"]()
            for fn in fns.values():  # warm-up
                fn()
            best = {name: float("inf") for name in fns}
            for _ in range(args.rounds):
                for name, fn in fns.items():
                    best[name] = min(best[name], timed(fn, device))
            rate = {name: tokens / t for name, t in best.items()}
            rows.append((what, batch, rate, same))
            print(f"  {what} batch {batch}: " + ", ".join(f"{k} {v:,.0f} tok/s" for k, v in rate.items()), flush=True)
            if what == "decode":
                floor = batch * matmul_floor(ours, batch, device, args.rounds)
                print(f"  (decode bound: the step's matmuls alone, eager, batch {batch}: {floor:,.0f} tok/s)")

    names = list(rows[0][2])
    ours_names = [n for n in names if n != "hf"]
    print("\n| measure | batch | " + " | ".join(f"{n} tok/s" for n in names) + " | " +
          " | ".join(f"{n} / HF" for n in ours_names) + " | minimind = HF tokens |")
    print("|---|---|" + "---|" * (len(names) + len(ours_names)) + "---|")
    for what, batch, rate, same in rows:
        print(f"| {what} | {batch} | " + " | ".join(f"{rate[n]:,.0f}" for n in names) + " | " +
              " | ".join(f"{rate[n] / rate['hf']:.2f}x" for n in ours_names) + f" | {'yes' if same else 'NO'} |")




def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":")[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def cpu_has_amx() -> bool:
    return "amx_int8" in cpu_flags()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":")[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        name = ""
    return f"{name or platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


if __name__ == "__main__":
    main()
