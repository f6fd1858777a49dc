"""The numerics flags on the tiny model, in one process (test helper of
tests/training/test_numerics_flags.py). Writes a JSON of what each check measured; the
test asserts on it.

- ``loss``: one ``train_step`` (megatron-core's schedule, DDP, optimizer) over 4 one-sample
  micro-batches of packed SFT data, with and without ``--calculate-per-token-loss``: the DDP
  gradient buffers, against the gradients of both objectives computed here with autograd from
  the model's per-token losses (loss masks as given, and all ones: equal token counts).
- ``decoupled``: each parameter's learning rate at the end of warm-up and of decay.
- ``layernorm_1p``: stored gammas at initialisation, losses against the plain norms with the
  same effective gamma, the exported and re-imported norm weights.
- ``bf16_grad_reduce``: the DDP gradient buffer dtype with and without ``--grad-reduce-in-bf16``.

    python tests/scripts/numerics_probe.py OUT.json SFT_PREFIX TOKENIZER_MODEL CACHE_DIR
"""

import json
import sys

import torch

from megatron_ixt.config.cli import parse_config
from megatron_ixt.config.validate import validate
from megatron_ixt.data.batch import Batch, boundary_field
from megatron_ixt.model.gpt import build_model_chunks
from megatron_ixt.runtime.distributed import destroy_distributed, initialize_distributed
from megatron_ixt.runtime.kernels import kernel_plan
from megatron_ixt.training.setup import build_ddp_model, build_optimizer
from megatron_ixt.training.step import StepContext, forward_step, train_step

TINY = "examples/configs/tiny.yaml"
state = {"layout": None}


def setup(flags):
    cfg, _ = parse_config(["--config", TINY, "--eval-interval", "0", *flags])
    validate(cfg, 1, cuda=False)
    plan = kernel_plan(cfg)
    if state["layout"] is None:
        state["layout"] = initialize_distributed(cfg, plan)
    return cfg, plan, state["layout"]


class Stream:
    """What ``train_step`` reads: the schedule's data iterator over fixed micro-batches."""

    def __init__(self, batches):
        self.batches = batches

    def iterators(self):
        return iter(self.batches)


def params_of(model):
    inner = model.module.module if hasattr(model.module, "module") else model.module
    return dict(inner.named_parameters())


def loss_modes(prefix, tokenizer_model, cache):
    from megatron_ixt.data.datasets import build_datasets
    from megatron_ixt.tokenizers.build import tokenizer_from_config

    flags = ["--sft", "--data-path", prefix, "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model",
             tokenizer_model, "--seq-length", "512", "--micro-batch-size", "1", "--global-batch-size", "4",
             "--clip-grad", "0", "--split", "100,0,0", "--data-cache-path", cache, "--lr-warmup-iters", "0",
             "--train-iters", "4", "--num-workers", "0"]
    cfg, plan, layout = setup(flags)
    tokenizer = tokenizer_from_config(cfg.tokenizer)
    train, _, _ = build_datasets(cfg, tokenizer)
    samples = [train[i] for i in range(4)]
    ctx = StepContext(plan.document_masks, tokenizer.eod, layout, boundary_field(True))
    out = {}
    for masks in ("sft", "ones"):
        batches = [Batch(tokens=s["tokens"][None], labels=s["labels"][None], position_ids=s["position_ids"][None],
                         loss_mask=(s["loss_mask"] if masks == "sft" else torch.ones_like(s["loss_mask"]))[None].float())
                   for s in samples]
        # The reference: per-token losses of the same initial model, both objectives by autograd.
        [ref] = build_model_chunks(cfg, layout, plan, tokenizer.vocab_size)
        names = [n for n, p in ref.named_parameters()]
        counts = [b.loss_mask.sum() for b in batches]
        objectives, expected = {}, {}
        for name in ("per_token", "per_sample"):
            # A forward pass per objective: megatron-core's cross entropy backward runs once.
            losses = [forward_step(ctx, iter([b]), ref)[0].float().view(-1) for b in batches]
            sums = [(l * b.loss_mask.view(-1)).sum() for l, b in zip(losses, batches)]
            objective = (sum(sums) / sum(counts) if name == "per_token"
                         else sum(s / c for s, c in zip(sums, counts)) / len(batches))
            expected[name] = dict(zip(names, torch.autograd.grad(objective, list(ref.parameters()))))
            objectives[name] = objective.detach()
        case = {"counts": [c.item() for c in counts],
                "objectives": {k: v.item() for k, v in objectives.items()}}
        for per_token in (True, False):
            cfg.training.calculate_per_token_loss = per_token
            model = build_ddp_model(cfg, layout, plan, tokenizer.vocab_size)
            optimizer, scheduler = build_optimizer(cfg, model)
            result = train_step(cfg, ctx, Stream(batches), 4, model, optimizer, scheduler)
            got = {n: p.main_grad for n, p in params_of(model[0]).items()}
            lm = result.reports["lm loss"]
            mode = "per_token" if per_token else "per_sample"
            case[mode] = {
                "reported_lm_loss": (lm[0] / lm[1]).item(),
                # max |got - expected| / max |expected| over all parameters, for each objective
                **{f"error_vs_{name}": max((got[n] - g).abs().max().item() for n, g in exp.items())
                   / max(g.abs().max().item() for g in exp.values()) for name, exp in expected.items()},
            }
        out[masks] = case
    return out


def decoupled_lr():
    out = {}
    for tied in (False, True):
        cfg, plan, layout = setup(["--mock-data", "--lr", "0.002", "--min-lr", "0.0002", "--decoupled-lr", "0.01",
                                   "--decoupled-min-lr", "0.001", "--lr-warmup-iters", "2", "--train-iters", "10",
                                   "--lr-decay-style", "linear",
                                   *([] if not tied else ["--no-untie-embeddings-and-output-weights"])])
        model = build_ddp_model(cfg, layout, plan, 509)
        optimizer, scheduler = build_optimizer(cfg, model)
        names = {id(p): n for n, p in params_of(model[0]).items()}
        phases = {}
        for phase, iters in (("warmup_end", 2), ("decay_end", 8)):
            scheduler.step(increment=iters * cfg.training.global_batch_size)
            phases[phase] = {names[id(p)]: group["lr"] for group in optimizer.param_groups for p in group["params"]}
        out["tied" if tied else "untied"] = phases
    return out


def layernorm_1p():
    from megatron_ixt.conversion.llama import export_plan, import_plan

    flags = ["--mock-data", "--qk-layernorm"]
    cfg, plan, layout = setup([*flags, "--apply-layernorm-1p"])
    plain_cfg, _, _ = setup(flags)
    [zero] = build_model_chunks(cfg, layout, plan, 509)
    [plain] = build_model_chunks(plain_cfg, layout, plan, 509)
    norms = [n for n, _ in zero.named_parameters() if "norm" in n]
    out = {"norms": norms, "init_max_abs": max(dict(zero.named_parameters())[n].abs().max().item() for n in norms)}
    tokens = torch.randint(0, 509, (2, 64), generator=torch.Generator().manual_seed(0))
    labels, positions = torch.roll(tokens, -1, 1), torch.arange(64).expand(2, -1)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        # The same effective gamma 1 + r: r stored zero-centred, 1 + r stored plain.
        for name in norms:
            r = 0.3 * torch.randn(dict(zero.named_parameters())[name].shape, generator=generator)
            dict(zero.named_parameters())[name].copy_(r)
            dict(plain.named_parameters())[name].copy_(1 + r)
        a, b = zero(tokens, positions, None, labels=labels), plain(tokens, positions, None, labels=labels)
    out["loss_1p"], out["loss_plain"] = a.mean().item(), b.mean().item()
    out["loss_max_diff"] = (a - b).abs().max().item()
    # Export of the zero-centred model, in fp32 and from BF16 weights: the plain model's gammas.
    for dtype in (torch.float32, torch.bfloat16):
        state = {k: v.to(dtype) for k, v in zero.state_dict().items() if not k.endswith("_extra_state")}
        plain_state = {k: v.to(dtype) for k, v in plain.state_dict().items() if not k.endswith("_extra_state")}
        exported = {hf: extract(state[src]) for hf, src, extract in export_plan(cfg.model, 509)}
        reference = {hf: extract(plain_state[src]).float() for hf, src, extract in export_plan(plain_cfg.model, 509)}
        out[f"export_max_diff_{str(dtype)[6:]}"] = max((exported[k].float() - reference[k]).abs().max().item()
                                                        for k in exported)
        out[f"export_norm_names_{str(dtype)[6:]}"] = sorted(k for k in exported if "norm" in k)
    # Import back into a zero-centred model: the stored values again.
    [back] = build_model_chunks(cfg, layout, plan, 509, initialize=False)
    params = dict(back.named_parameters())
    with torch.no_grad():
        for name, fill in import_plan(cfg.model, 509).items():
            fill(params[name].data, lambda hf_name: exported[hf_name])
    zero_params = dict(zero.named_parameters())
    out["import_max_diff"] = max((params[n].float() - zero_params[n].bfloat16().float()).abs().max().item()
                                 for n in norms)
    return out


def bf16_grad_reduce():
    out = {}
    for flag in ([], ["--grad-reduce-in-bf16"]):
        cfg, plan, layout = setup(["--mock-data", "--bf16", *flag, "--micro-batch-size", "2", "--global-batch-size", "2"])
        model = build_ddp_model(cfg, layout, plan, 509)
        optimizer, scheduler = build_optimizer(cfg, model)
        tokens = torch.randint(0, 509, (2, 64), generator=torch.Generator().manual_seed(0))
        batch = Batch(tokens=tokens, labels=torch.roll(tokens, -1, 1), position_ids=torch.arange(64).expand(2, -1),
                      loss_mask=torch.ones(2, 64))
        ctx = StepContext(plan.document_masks, 509, layout)
        result = train_step(cfg, ctx, Stream([batch]), 1, model, optimizer, scheduler)
        out["bf16" if flag else "fp32"] = {
            "buffer_dtypes": sorted({str(buffer.grad_dtype) for buffer in model[0].buffers}),
            "main_grad_dtypes": sorted({str(p.main_grad.dtype) for p in model[0].module.parameters()}),
            "skipped": result.skipped, "grad_norm": result.grad_norm}
    return out


def main() -> None:
    out_path, prefix, tokenizer_model, cache = sys.argv[1:5]
    results = {"loss": loss_modes(prefix, tokenizer_model, cache), "decoupled": decoupled_lr(),
               "layernorm_1p": layernorm_1p(), "bf16_grad_reduce": bf16_grad_reduce()}
    destroy_distributed()
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
