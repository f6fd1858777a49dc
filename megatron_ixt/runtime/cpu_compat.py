"""CPU compatibility layer for megatron-core.

megatron-core is written for CUDA: it allocates with ``device=torch.cuda.current_device()``
or ``device="cuda"``, keeps its tensor-parallel RNG streams in CUDA generators, calls
``torch.cuda.synchronize()`` and asserts ``param.grad.type() == 'torch.cuda.FloatTensor'``
in gradient clipping. None of that is needed for the *math*: TP and PP forward/backward,
the pipeline schedules, DDP and the optimizer run unchanged on CPU tensors over gloo.

This module is the one place in megatron_ixt that patches anything, and it is only ever
activated by :func:`megatron_ixt.runtime.distributed.initialize_distributed` when the run
is on CPU. On CUDA nothing here executes, so the GPU path is plain megatron-core with NCCL
(``tests/test_cpu_compat.py`` checks that).

What it does, and nothing more:

1. Each megatron-core module (those in ``_CUDA_NAMING_MODULES`` are imported first, then
   every ``megatron.core`` module loaded at that point: training, checkpoints, and inference,
   whose KV cache and pipeline receive buffers are allocated on ``torch.cuda.current_device()``)
   gets a *module-local* view of
   ``torch`` (:class:`_CpuTorchView`) in which ``device="cuda"`` / ``torch.cuda.current_device()``
   resolve to the CPU and ``torch.cuda.synchronize``/``empty_cache`` are no-ops. The real
   ``torch`` module is untouched, so no other library sees a difference.
2. The model-parallel RNG tracker keeps its named streams as CPU generator states
   (:class:`CpuRNGStatesTracker`), so dropout inside TP regions and weight init forked per
   TP rank behave exactly as the CUDA tracker would.
3. Gradient clipping by total norm: the same math as megatron-core's
   ``clip_grad_by_total_norm_fp32`` without its CUDA-tensor assertion.
4. BF16 and FP16 training: megatron-core's mixed-precision optimizer accepts only parameters whose
   ``type()`` names a CUDA tensor. While it wraps the parameters, each CPU parameter answers
   with the CUDA name of its dtype (an attribute on that parameter, removed right after);
   the optimizer's math (fp32 main params, copies back to BF16) is device-agnostic.
5. Tied embeddings with pipeline parallelism (SmolLM2, Llama 3.2): to give the last stage's
   copy of the word embedding the first stage's values, megatron-core moves it with
   ``Tensor.cuda()`` and all-reduces it over the embedding group. While the model sets up
   those layers, ``Tensor.cuda()`` leaves a tensor where it is (restored right after); the
   all-reduce runs over gloo.
6. FP16 loss scaling: megatron-core's grad scalers (``optimizer/grad_scaler.py``) keep the
   scale, its floor and factors as ``device='cuda'`` tensors (item 1 puts them on the CPU),
   and restoring a checkpoint moves the saved scale with ``Tensor.cuda()``, which, as in
   item 5, leaves it where it is while ``DynamicGradScaler.load_state_dict`` runs.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import types
from typing import Any

import torch

logger = logging.getLogger(__name__)

_ACTIVE = False

# megatron-core modules on the training, evaluation and checkpoint paths that allocate on
# "cuda" or call torch.cuda.*; imported before patching so none is missed.
_CUDA_NAMING_MODULES = (
    "megatron.core.transformer.utils",
    "megatron.core.fusions.fused_softmax",
    "megatron.core.tensor_parallel.data",
    "megatron.core.tensor_parallel.utils",
    "megatron.core.inference.communication_utils",
    # Inference (evaluation/engine.py's Decoder): the pipeline receive buffers of the wrapper;
    # the KV cache itself is allocated in transformer.attention.
    "megatron.core.inference.model_inference_wrappers.abstract_model_inference_wrapper",
    "megatron.core.dist_checkpointing.strategies.async_utils",
    "megatron.core.dist_checkpointing.strategies.filesystem_async",
    "megatron.core.dist_checkpointing.strategies.fully_parallel",
    "megatron.core.parallel_state",
    "megatron.core.utils",
    "megatron.core.tensor_parallel.layers",
    "megatron.core.tensor_parallel.mappings",
    "megatron.core.tensor_parallel.random",
    "megatron.core.tensor_parallel.cross_entropy",
    "megatron.core.models.gpt.gpt_model",
    "megatron.core.models.common.embeddings.rotary_pos_embedding",
    "megatron.core.models.common.embeddings.language_model_embedding",
    "megatron.core.models.common.language_module.language_module",
    "megatron.core.transformer.attention",
    "megatron.core.transformer.dot_product_attention",
    "megatron.core.transformer.transformer_layer",
    "megatron.core.transformer.transformer_block",
    "megatron.core.transformer.module",
    "megatron.core.distributed.distributed_data_parallel",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.distributed.finalize_model_grads",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.grad_scaler",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.pipeline_parallel.p2p_communication",
    "megatron.core.dist_checkpointing.strategies.torch",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver",
    "megatron.core.dist_checkpointing.exchange_utils",
    "megatron.core.dist_checkpointing.validation",
    "megatron.core.dist_checkpointing.serialization",
    "megatron.core.rerun_state_machine",
)

_FACTORIES = (
    "tensor", "zeros", "ones", "empty", "full", "arange", "rand", "randn", "randint",
    "zeros_like", "ones_like", "empty_like", "full_like", "as_tensor",
)


def _cpu_device(device: Any) -> Any:
    """Map any CUDA device designation (``"cuda"``, ``"cuda:0"``, ``0``, ``torch.device('cuda')``)
    to the CPU; leave everything else alone."""
    if isinstance(device, int) and not isinstance(device, bool):
        return torch.device("cpu")
    if isinstance(device, str) and device.startswith("cuda"):
        return torch.device("cpu")
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    return device


def _redirect_factory(fn):
    def factory(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _cpu_device(kwargs["device"])
        # pin_memory needs a CUDA runtime; it is meaningless for CPU-resident tensors.
        kwargs.pop("pin_memory", None)
        return fn(*args, **kwargs)

    factory.__name__ = fn.__name__
    return factory


class _CpuCudaView(types.SimpleNamespace):
    """What ``torch.cuda`` looks like from inside a patched megatron-core module."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cuda, name)


def _make_cuda_view() -> _CpuCudaView:
    view = _CpuCudaView()
    view.current_device = lambda: torch.device("cpu")
    view.synchronize = lambda *a, **k: None
    view.empty_cache = lambda: None
    view.get_rng_state = lambda *a, **k: torch.get_rng_state()
    view.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    view.manual_seed = lambda seed: torch.manual_seed(seed)
    view.memory_allocated = lambda *a, **k: 0
    view.max_memory_allocated = lambda *a, **k: 0
    view.nvtx = types.SimpleNamespace(range_push=lambda *a, **k: None, range_pop=lambda *a, **k: None)
    return view


class _CpuTorchView(types.ModuleType):
    """A stand-in for the ``torch`` module inside one megatron-core module: attribute access
    falls through to the real torch, except tensor factories (CUDA devices -> CPU) and
    ``torch.cuda`` (a CPU-backed view)."""

    def __init__(self) -> None:
        super().__init__("torch")
        for name in _FACTORIES:
            setattr(self, name, _redirect_factory(getattr(torch, name)))
        self.cuda = _make_cuda_view()

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


class CpuRNGStatesTracker:
    """Named RNG streams kept as CPU generator states (megatron-core's tracker keeps CUDA
    generator states). Same interface as ``CudaRNGStatesTracker``: ``add``, ``fork``,
    ``get_states``, ``set_states``, ``reset``."""

    def __init__(self, *args, **kwargs) -> None:
        self.reset()

    def is_initialized(self) -> bool:
        return self._is_initialized

    def reset(self) -> None:
        self._is_initialized = False
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()

    def get_states(self) -> dict[str, torch.Tensor]:
        return dict(self.states_)

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self._is_initialized = True
        self.states_ = states

    def add(self, name: str, seed: int) -> None:
        self._is_initialized = True
        if seed in self.seeds_:
            raise Exception(f"seed {seed} already exists")
        if name in self.states_:
            raise Exception(f"rng state {name} already exists")
        self.seeds_.add(seed)
        self.states_[name] = torch.Generator().manual_seed(seed).get_state()

    @contextlib.contextmanager
    def fork(self, name: str = "model-parallel-rng"):
        if name not in self.states_:
            raise Exception(f"rng state {name} is not added")
        outer = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(outer)


def _clip_grad_by_total_norm_fp32(parameters, max_norm, total_norm, use_decoupled_grad=False):
    """megatron-core's ``clip_grad_by_total_norm_fp32`` minus the CUDA-type assertion."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    attr = "decoupled_grad" if use_decoupled_grad else "grad"
    grads = [getattr(p, attr).detach() for p in parameters if getattr(p, attr, None) is not None]
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0 and grads:
        torch._foreach_mul_(grads, clip_coeff)


_CUDA_TYPE_NAMES = {torch.float32: "torch.cuda.FloatTensor", torch.float16: "torch.cuda.HalfTensor",
                    torch.bfloat16: "torch.cuda.BFloat16Tensor"}


def _accepting_cpu_params(init):
    """Wrap ``Float16OptimizerWithFloat16Params.__init__`` so that it accepts CPU parameters."""

    def wrapped(self, optimizer, *args, **kwargs):
        shadowed = []
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.device.type == "cpu" and param.dtype in _CUDA_TYPE_NAMES:
                    param.type = (lambda name: lambda *a, **k: name)(_CUDA_TYPE_NAMES[param.dtype])
                    shadowed.append(param)
        try:
            init(self, optimizer, *args, **kwargs)
        finally:
            for param in shadowed:
                del param.type

    return wrapped


def _keeping_tensors_on_cpu(method):
    """``method`` with ``Tensor.cuda()`` returning the tensor itself while it runs (item 5)."""
    def wrapped(*args, **kwargs):
        original = torch.Tensor.cuda
        torch.Tensor.cuda = lambda tensor, *_, **__: tensor
        try:
            return method(*args, **kwargs)
        finally:
            torch.Tensor.cuda = original

    return wrapped


def activate() -> None:
    """Make megatron-core runnable on CPU. Idempotent. Refuses to run when CUDA is in use,
    so that no CPU workaround can ever leak into a GPU run."""
    global _ACTIVE
    if _ACTIVE:
        return
    if torch.cuda.is_available():
        raise RuntimeError("the CPU compatibility layer must not be activated on a CUDA machine")

    for name in _CUDA_NAMING_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:  # optional pieces (e.g. modules needing TE) may not import
            pass
    view = _CpuTorchView()
    patched = 0
    for name, module in list(sys.modules.items()):
        if name.startswith("megatron.core") and getattr(module, "torch", None) is torch:
            module.torch = view
            patched += 1

    from megatron.core.optimizer import clip_grads, optimizer
    from megatron.core.tensor_parallel import random as mp_random

    clip_grads.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm_fp32
    optimizer.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm_fp32
    float16 = optimizer.Float16OptimizerWithFloat16Params
    float16.__init__ = _accepting_cpu_params(float16.__init__)
    from megatron.core.models.common.language_module.language_module import LanguageModule

    LanguageModule.setup_embeddings_and_output_layer = _keeping_tensors_on_cpu(
        LanguageModule.setup_embeddings_and_output_layer)
    from megatron.core.optimizer.grad_scaler import DynamicGradScaler

    DynamicGradScaler.load_state_dict = _keeping_tensors_on_cpu(DynamicGradScaler.load_state_dict)

    # Activation recomputation (CheckpointFunction) saves the "CUDA" RNG state and replays it
    # in the backward pass: on CPU that generator is torch's default one, which dropout draws
    # from here (the tracker below swaps it for the model-parallel streams).
    mp_random._get_cuda_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    mp_random._set_cuda_rng_state = lambda state, *args, **kwargs: torch.set_rng_state(state)
    # Install the CPU tracker as *the* tracker; initialize_rng_tracker() then returns early.
    mp_random._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
    mp_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True

    _ACTIVE = True
    logger.info("megatron-core CPU compatibility layer active (%d modules see a CPU-backed torch.cuda)", patched)


def is_active() -> bool:
    return _ACTIVE
