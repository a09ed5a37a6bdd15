"""Generation speed of minimind's decode loop vs Hugging Face `LlamaForCausalLM.generate`, same weights, same run.

Greedy decoding of a random-weight model (`min_new_tokens` = `max_new_tokens`, so both run every step): decode
tokens/s at batch 1 and 8 (new tokens over the whole `generate` call, prefill included) and prefill tokens/s
(`generate` with one new token). Calls alternate between the two implementations, round after round, and the
best round of each counts, so that noise from other processes hits both alike. Both outputs are checked equal.

    python benchmarks/generate.py                          # small preset, CPU, 32-token prompt, 256 new tokens
    python benchmarks/generate.py --threads 1 --rounds 5
    python benchmarks/generate.py --compile                # also minimind with torch.compile (compiles first)
    python benchmarks/generate.py --device cuda --dtype bf16
    python benchmarks/generate.py --quantize               # also minimind with int8 weights (minimind/quantize.py)
    python benchmarks/generate.py --llama_cpp              # against llama.cpp instead (see llama_cpp_main)
"""

import argparse
import os
import platform
import statistics
import tempfile
import time

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
    p.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    p.add_argument("--new", type=int, default=256, help="new tokens")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="add minimind with torch.compile of the decode step")
    p.add_argument("--quantize", action="store_true", help="add minimind with int8 weights (and +compile)")
    p.add_argument("--llama_cpp", action="store_true",
                   help="compare with llama.cpp (llama-cpp-python) on the GGUF files `minimind export` writes")
    p.add_argument("--pairs", default="fp32,bf16,int8,int4", help="with --llama_cpp: precision pairings to run")
    p.add_argument("--thread_counts", default="2,1", help="with --llama_cpp: thread counts to run")
    p.add_argument("--llama_extra_buffers", choices=("auto", "on", "off"), default="auto",
                   help="with --llama_cpp: llama.cpp's extra weight buffer types (repacked weights, AMX); auto: off "
                        "on a CPU with AMX, where llama-cpp-python 0.3.36's AMX q8_0 product crashes (segfault in "
                        "ggml_backend_amx_mul_mat)")
    args = p.parse_args()
    if args.llama_cpp:
        return llama_cpp_main(args)
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
        import copy

        from minimind.quantize import quantize_int8
        int8 = quantize_int8(copy.deepcopy(ours))
    print(f"{args.preset} preset, {args.dtype}, device {args.device}, prompt {args.prompt}, {args.new} new tokens, "
          f"greedy; torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads")

    def ours_fn(ids, n, compile=False, model=ours):  # the same call as Hugging Face's (eos from the generation config)
        return lambda: model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, compile=compile)

    def hf_fn(ids, n):
        return lambda: hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        ids = torch.randint(3, config.vocab_size, (batch, args.prompt), device=device)
        a, b = ours_fn(ids, args.new)(), hf_fn(ids, args.new)()
        same = torch.equal(a, b)
        for what, n, tokens in (("decode", args.new, batch * args.new), ("prefill", 1, batch * args.prompt)):
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
                agree = (q == a).all(dim=0).long().cumprod(0).sum().item() - args.prompt if n > 1 else 0
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


# Each pairing: minimind's model precision and the GGUF precisions of the same weights that llama.cpp runs against it.
PAIRS = {"fp32": ("fp32", ("f32",)), "bf16": ("bf16", ("bf16", "f16")), "int8": ("int8", ("q8_0",)),
         "int4": ("int4", ("q4_1", "q4_0"))}


def llama_cpp_main(args):
    """minimind's compiled decode against llama.cpp, batch 1, same weights, same prompt, greedy, in one process.

    The model (random weights, seed 0) is exported with minimind's own GGUF exporter (`minimind.export.gguf`) in
    each precision; llama.cpp runs it through llama-cpp-python (`Llama.generate` with greedy sampling, the prompt
    given as token ids, so both see the same tokens). Timed: the whole call, prompt then `--new` tokens; rate = new
    tokens / time. The implementations alternate call by call, `--rounds` times; the table gives the median and the
    range of each, and the ratio of medians. Tokens: how many of the new tokens agree with minimind's (in order
    from the first)."""
    import copy

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

    from minimind.export.gguf import export_gguf
    from minimind.infer.generate import generate
    from minimind.quantize import quantize_int4, quantize_int8
    from minimind.tokenizer import load_tokenizer

    config = preset(args.preset)
    torch.manual_seed(0)
    base = MiniMindForCausalLM(config).eval()
    tokenizer = load_tokenizer()
    prompt = torch.randint(3, config.vocab_size, (1, args.prompt), generator=torch.Generator().manual_seed(1))
    n = args.new
    folder = tempfile.mkdtemp(prefix="minimind-bench-")
    print(f"{args.preset} preset, batch 1, prompt {args.prompt} + {n} new tokens, greedy; torch {torch.__version__}, "
          f"{cpu_name()}; llama.cpp's extra buffer types {'on' if extra else 'off'}; load average "
          f"{os.getloadavg()[0]:.1f} at the start")
    reference = generate(base, prompt, max_new_tokens=n, min_new_tokens=n)[0, args.prompt:]  # eager fp32
    rows = []
    for pair in args.pairs.split(","):
        ours_dtype, gguf_dtypes = PAIRS[pair]
        make = {"fp32": lambda: copy.deepcopy(base), "bf16": lambda: copy.deepcopy(base).to(torch.bfloat16),
                "int8": lambda: quantize_int8(copy.deepcopy(base)),
                "int4": lambda: quantize_int4(copy.deepcopy(base))}[ours_dtype]
        files = {}
        for dtype in gguf_dtypes:
            files[dtype] = os.path.join(folder, f"{dtype}.gguf")
            export_gguf(base, tokenizer, files[dtype], dtype=dtype, force=True)
        for threads in [int(t) for t in args.thread_counts.split(",")]:
            torch.set_num_threads(threads)
            model = make()  # a fresh copy compiles afresh: Inductor's kernels keep the thread count they compiled with

            def ours(model=model):
                return generate(model, prompt, max_new_tokens=n, min_new_tokens=n, compile=True)[0, args.prompt:]
            fns = {f"minimind {ours_dtype}": ours}
            for dtype, path in files.items():
                llm = Llama(path, n_ctx=args.prompt + n + 16, n_threads=threads, n_threads_batch=threads,
                            n_batch=args.prompt, verbose=False)

                def theirs(llm=llm):
                    llm.reset()
                    out = []
                    for token in llm.generate(prompt[0].tolist(), top_k=1, temp=0.0, repeat_penalty=1.0):
                        out.append(token)
                        if len(out) == n:
                            break
                    return torch.tensor(out)
                fns[f"llama.cpp {dtype}"] = theirs
            start = time.perf_counter()
            tokens = {name: fn() for name, fn in fns.items()}  # warm-up (minimind compiles here, once a precision)
            print(f"({pair}, {threads} threads: warm-up {time.perf_counter() - start:.0f} s)", flush=True)
            times = {name: [] for name in fns}
            for _ in range(args.rounds):
                for name, fn in fns.items():
                    times[name].append(timed(fn, torch.device("cpu")))
            ours_name = f"minimind {ours_dtype}"
            ours_rate = statistics.median(n / t for t in times[ours_name])
            for name in fns:
                rates = [n / t for t in times[name]]
                agree = int((tokens[name] == tokens[ours_name]).long().cumprod(0).sum())
                agree_ref = int((tokens[name] == reference).long().cumprod(0).sum())
                rows.append((pair, threads, name, statistics.median(rates), min(rates), max(rates),
                             ours_rate / statistics.median(rates), agree, agree_ref))
                print(f"  {pair} {threads} threads {name}: median {rows[-1][3]:,.0f} tok/s "
                      f"({min(rates):,.0f}-{max(rates):,.0f}); tokens equal minimind's: {agree}/{n}, "
                      f"eager fp32's: {agree_ref}/{n}", flush=True)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    print("\n| pairing | threads | implementation | tok/s median | range | minimind / this | "
          "first tokens = minimind's | = eager fp32's |\n|---|---|---|---|---|---|---|---|")
    for pair, threads, name, med, lo, hi, ratio, agree, agree_ref in rows:
        print(f"| {pair} | {threads} | {name} | {med:,.0f} | {lo:,.0f}-{hi:,.0f} | {ratio:.2f}x | {agree}/{n} | "
              f"{agree_ref}/{n} |")


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
