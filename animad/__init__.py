"""animad: drop a dataset folder before bed, wake up to a shortlist of the best Anima LoRA epochs."""

import logging

__version__ = "0.1.0"

# diffusers imports bitsandbytes whenever it is installed, and bitsandbytes then warns on every CPU
# machine that an optional 4-bit kernel package is missing. animad never uses 4-bit CPU kernels
# (AdamW8bit runs on CUDA only), so that line would only alarm users of `animad demo`.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
