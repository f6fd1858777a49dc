"""Convert checkpoints to and from Hugging Face (Llama-style models).

    python tools/convert_checkpoint.py --to hf --load CKPT --output HF_DIR
    python tools/convert_checkpoint.py --from hf --input HF_DIR --save CKPT --tensor-model-parallel-size 2

See megatron_ixt/conversion/ and the README section "Bring your own tokenizer, data and model".
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_ixt.conversion.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
