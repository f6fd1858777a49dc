"""Model, DDP, optimizer and learning-rate schedule: all megatron-core, configured here."""

from __future__ import annotations

from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig as McoreOptimizerConfig
from megatron.core.optimizer import get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_ixt.config.batch_schedule import schedule_steps
from megatron_ixt.config.schema import Config
from megatron_ixt.model.gpt import build_model_chunks, params_dtype
from megatron_ixt.runtime.distributed import ParallelLayout
from megatron_ixt.runtime.kernels import KernelPlan


def build_ddp_model(cfg: Config, layout: ParallelLayout, plan: KernelPlan,
                    vocab_size: int) -> list[DistributedDataParallel]:
    """Model chunks (in ``Float16Module`` under BF16/FP16) wrapped in megatron-core DDP
    (contiguous grad buffers, bucketed all-reduce or reduce-scatter over the data-parallel
    group), as Megatron-LM's ``get_model`` builds them."""
    chunks = build_model_chunks(cfg, layout, plan, vocab_size)
    ddp_config = DistributedDataParallelConfig(
        # Megatron-LM's accumulate_allreduce_grads_in_fp32: fp32 grad buffers under BF16 unless
        # --grad-reduce-in-bf16. Under FP16, Megatron-LM's default is FP16 buffers; here they
        # stay fp32 (its --accumulate-allreduce-grads-in-fp32), since a per-token loss sums
        # the micro-batch's tokens before the division and FP16 gradients would overflow.
        grad_reduce_in_fp32=not cfg.optimizer.grad_reduce_in_bf16,
        overlap_grad_reduce=cfg.optimizer.overlap_grad_reduce,
        overlap_param_gather=cfg.optimizer.overlap_param_gather,
        # With interleaving, all chunks' parameter all-gathers start together (Megatron-LM's setting).
        align_param_gather=plan.align_param_gather,
        use_distributed_optimizer=cfg.optimizer.use_distributed_optimizer,
        # The distributed optimizer all-gathers the FP8 weights (Megatron-LM's --fp8-param-gather).
        fp8_param_gather=cfg.model.fp8_param_gather,
        # A non-finite step is skipped on the optimizer's global grad norm (training/step.py)
        # instead of aborting the run, as this check would.
        check_for_nan_in_grad=False,
    )
    model = []
    for i, chunk in enumerate(chunks):
        model.append(DistributedDataParallel(
            config=chunk.config, ddp_config=ddp_config, module=chunk,
            # Only the first chunk's buckets overlap with backward of the interleaved schedule.
            disable_bucketing=i > 0,
        ))
    config = chunks[0].config
    config.finalize_model_grads_func = finalize_model_grads
    if cfg.optimizer.overlap_grad_reduce:
        config.no_sync_func = [m.no_sync for m in model] if len(model) > 1 else model[0].no_sync
        config.grad_sync_func = [m.start_grad_sync for m in model] if len(model) > 1 else model[0].start_grad_sync
    if cfg.optimizer.overlap_param_gather:
        config.param_sync_func = [m.start_param_sync for m in model] if len(model) > 1 else model[0].start_param_sync
    return model


def build_optimizer(cfg: Config, model) -> tuple:
    """megatron-core's optimizer (Adam with decoupled weight decay, fp32 master weights under
    BF16/FP16, FP16 loss scaling, gradient clipping by global norm; the embedding and output
    layer at --decoupled-lr) and its parameter scheduler, stepped in samples."""
    o, t = cfg.optimizer, cfg.training
    optimizer = get_megatron_optimizer(
        McoreOptimizerConfig(
            optimizer=o.optimizer,
            lr=o.lr,
            min_lr=o.min_lr,
            weight_decay=o.weight_decay,
            adam_beta1=o.adam_beta1,
            adam_beta2=o.adam_beta2,
            adam_eps=o.adam_eps,
            clip_grad=o.clip_grad,
            # megatron-core's standard parameter groups give the parameters tagged
            # is_embedding_or_output_parameter (input embedding, output layer; the shared weight
            # when tied) max_lr/min_lr of their own, which the scheduler reads per group.
            decoupled_lr=o.decoupled_lr,
            decoupled_min_lr=o.decoupled_min_lr,
            bf16=cfg.model.bf16,
            fp16=cfg.model.fp16,
            params_dtype=params_dtype(cfg.model),
            loss_scale=o.loss_scale,
            initial_loss_scale=o.initial_loss_scale,
            min_loss_scale=o.min_loss_scale,
            loss_scale_window=o.loss_scale_window,
            hysteresis=o.hysteresis,
            use_distributed_optimizer=o.use_distributed_optimizer,
            overlap_param_gather=o.overlap_param_gather,
            decoupled_weight_decay=True,
        ),
        model,
    )
    # The schedules multiply each micro-batch's loss by the FP16 loss scale before backward
    # (1 otherwise), as Megatron-LM's setup_model_and_optimizer wires it.
    model[0].config.grad_scale_func = optimizer.scale_loss
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=o.lr,
        min_lr=o.min_lr,
        lr_decay_style=o.lr_decay_style,
        start_wd=o.weight_decay,
        end_wd=o.weight_decay,
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=True,
        override_opt_param_scheduler=False,
        lr_wsd_decay_style=o.lr_wsd_decay_style,
        **schedule_steps(cfg),
    )
    return optimizer, scheduler

