"""Every supported Hugging Face family through import and export, in one process (test helper
of tests/conversion/test_families.py; writes a JSON report).

For each family, a small random model that transformers builds with the real config fields of
a released model (Llama 3.2's llama3 RoPE scaling, Mistral-7B-v0.1's sliding window, Qwen2.5's
QKV biases and tied embeddings, Qwen3's QK-norm and head_dim apart from hidden / heads), saved
sharded, with a Llama-3-style tokenizer (a BOS its post-processor adds) or a Qwen-style one
(none): import (``tools/convert_checkpoint.py --from hf``, in process); this project's logits on
a 2,112-token sequence and its greedy continuation of a prompt; export, sharded; transformers'
logits of the source and of the exported folder, and its greedy continuation.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from megatron_ixt.conversion.export import export_to_hf, load_full_model
from megatron_ixt.conversion.import_hf import import_from_hf
from megatron_ixt.evaluation.generation import Request, SamplingConfig, generate
from megatron_ixt.runtime.distributed import destroy_distributed

SEQ = 2112  # past 2,000: where Llama 3's scaling changes the rotation of the slow frequencies
NEW_TOKENS = 16
LLAMA3_CHAT = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' "
               "+ m['content'] + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
               "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def tokenizer_files(folder: str, texts: list[str], style: str) -> None:
    """A byte-level BPE ``tokenizer.json`` and its ``tokenizer_config.json``: ``llama3`` (a BOS
    added by the post-processor, a chat template that writes ``{{ bos_token }}``) or ``qwen``
    (nothing added, ChatML)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = (["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
                if style == "llama3" else ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    if style == "llama3":
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
            special_tokens=[("<|begin_of_text|>", 0)])
        config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "chat_template": LLAMA3_CHAT}
    else:
        config = {"bos_token": None, "eos_token": "<|im_end|>", "chat_template": CHATML}
    os.makedirs(folder, exist_ok=True)
    tokenizer.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 8192, **config}, f)


def hf_model(family: str, vocab: int):
    """(model, tokenizer style): the family's config class with its released models' fields."""
    import transformers as tf

    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=8192, rms_norm_eps=1e-5)
    if family == "llama3":  # Llama 3.2 1B: tied, llama3 scaling with factor 32
        config = tf.LlamaConfig(**{**common, "max_position_embeddings": 131072}, tie_word_embeddings=True, rope_parameters=LLAMA3_ROPE,
                                bos_token_id=0, eos_token_id=2)
        model, style = tf.LlamaForCausalLM(config), "llama3"
    elif family == "mistral":  # Mistral-7B-v0.1: a 4,096-token window, untied
        config = tf.MistralConfig(**{**common, "max_position_embeddings": 32768}, sliding_window=4096,
                                  tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                  bos_token_id=0, eos_token_id=2)
        model, style = tf.MistralForCausalLM(config), "llama3"
    elif family == "qwen2":  # Qwen2.5 0.5B: QKV biases, tied, sliding_window set but unused
        config = tf.Qwen2Config(**common, tie_word_embeddings=True, use_sliding_window=False, sliding_window=4096,
                                max_window_layers=21, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                                eos_token_id=2)
        model, style = tf.Qwen2ForCausalLM(config), "qwen"
    elif family == "qwen3":  # Qwen3: QK-norm, head_dim 32 where hidden / heads is 16, untied
        config = tf.Qwen3Config(**common, head_dim=32, tie_word_embeddings=False, use_sliding_window=False,
                                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, eos_token_id=2)
        model, style = tf.Qwen3ForCausalLM(config), "qwen"
    else:
        raise ValueError(family)
    torch.manual_seed(0)
    with torch.no_grad():  # spread the weights (biases and norms included) so every mapping matters
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else 0.1 * torch.randn_like(p))
    return model.eval(), style


def run_family(family: str, texts: list[str], work: str) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, ckpt, exported = (os.path.join(work, family, name) for name in ("hf", "ckpt", "exported"))
    os.makedirs(source)
    model, style = hf_model(family, vocab=600)
    tokenizer_files(source, texts, style)
    model.save_pretrained(source, max_shard_size="200KB")  # sharded, as released models are
    hf_tok = AutoTokenizer.from_pretrained(source)
    summary = import_from_hf(source, ckpt, seq_length=SEQ)
    destroy_distributed()

    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 600, (1, SEQ), generator=generator)
    prompt = hf_tok("def fibonacci(n):\n    if n < 2:")["input_ids"]
    cfg, _, tokenizer, ours = load_full_model(ckpt, {})
    our_logits = ours.logits(tokens)[..., :600].float()
    [completion] = generate(ours, tokenizer, [Request(prompt, NEW_TOKENS)], SamplingConfig(greedy=True))
    destroy_distributed()
    info = export_to_hf(ckpt, exported, max_shard_bytes=200_000)
    destroy_distributed()

    with torch.no_grad():
        theirs = model(tokens).logits
        again = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()(tokens).logits[..., :600]
        hf_ids = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False,
                                eos_token_id=tokenizer.eod, pad_token_id=tokenizer.eod)[0, len(prompt):].tolist()
    late = slice(2000, SEQ)
    report = {
        "summary": {k: summary[k] for k in ("document_start", "delimiters", "parameters")},
        "settings": {k: getattr(cfg.model, k) for k in ("use_rope_scaling", "rope_scaling_factor", "window_size",
                                                        "add_qkv_bias", "qk_layernorm", "kv_channels", "seq_length")},
        "import_diff": (our_logits - theirs).abs().max().item(),
        "import_diff_past_2000": (our_logits[:, late] - theirs[:, late]).abs().max().item(),
        "export_diff": (again - our_logits).abs().max().item(),
        "ours_greedy": completion.ids, "hf_greedy": hf_ids,
        "exported_config": json.load(open(os.path.join(exported, "config.json"))),
        "exported_files": sorted(os.listdir(exported)), "export": {k: info[k] for k in ("model_type", "bos", "document_start")},
    }
    if family == "qwen2":  # BF16 stays BF16: imported with --bf16, exported with --dtype bfloat16
        from megatron_ixt.conversion.safetensors_io import HFWeights

        import_from_hf(source, os.path.join(work, family, "ckpt_bf16"), seq_length=SEQ, bf16=True)
        destroy_distributed()
        export_to_hf(os.path.join(work, family, "ckpt_bf16"), exported + "_bf16", dtype="bfloat16")
        destroy_distributed()
        back, original = HFWeights(exported + "_bf16"), model.state_dict()
        report["bf16_round_trip_equal"] = all(
            back.dtype(name) == torch.bfloat16 and torch.equal(back.get(name)[:600], original[name].bfloat16()[:600])
            for name in back.keys())
    if family == "llama3":  # the same weights without the scaling: how much it moves late positions
        plain = type(model.config)(**{**model.config.to_dict(), "rope_parameters": {"rope_type": "default",
                                                                                     "rope_theta": 500000.0}})
        unscaled = type(model)(plain).eval()
        unscaled.load_state_dict(model.state_dict())
        with torch.no_grad():
            report["unscaled_diff_past_2000"] = (unscaled(tokens).logits[:, late] - theirs[:, late]).abs().max().item()
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", required=True, help="JSONL with a 'text' field (the tokenizers' training text)")
    parser.add_argument("--work", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--families", default="llama3,mistral,qwen2,qwen3")
    args = parser.parse_args()
    texts = [json.loads(line)["text"] for line in open(args.texts)][:300]
    report = {family: run_family(family, texts, args.work) for family in args.families.split(",")}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
