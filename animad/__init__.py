"""animad: drop a dataset folder before bed, wake up to a shortlist of the best Anima LoRA epochs."""

__version__ = "0.1.0"
