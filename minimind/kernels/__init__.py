"""Code that exists only for CPU speed, kept apart from the model so that `minimind/model.py` reads as the
architecture alone. Everything here is optional: where it cannot run (no C++ compiler, not x86-64 Linux, a CPU
without AVX-512, `MINIMIND_CPU_KERNELS=0`), the model computes the same results through PyTorch, only slower.

- `attention`: attention written for torch.compile on a CPU: one-query attention for decode steps, causal
  attention with a hand-written backward for compiled bf16 training (`use_fast_attention`).
- `build`: compiles and loads the C++ kernels of `csrc/` once per machine and torch version (`vector_ops`).
- `matvec`: one-row matrix products: minimind's fp32/bf16/int8 kernels as torch ops, and the reductions Inductor
  fuses (`with_matvecs`, `use_row_kernels`).
- `native`: the whole batch-1 decode step of a dense model as one C++ call (`native_step`).

The decode engine (`minimind.infer.engine`) and the trainer (`minimind.train.parallel.wrap`) install these where
they apply; nothing below this package (the model, quantization, the KV cache) imports it.
"""

from .attention import use_fast_attention
from .build import vector_ops
from .matvec import use_row_kernels, with_matvecs
from .native import native_problem, native_step

__all__ = ["native_problem", "native_step", "use_fast_attention", "use_row_kernels", "vector_ops", "with_matvecs"]
