"""External top-k SAE trainer (torch): reads embeddings from the database, writes a model version back."""

from saedb.trainer.config import TrainConfig

__all__ = ["TrainConfig"]
