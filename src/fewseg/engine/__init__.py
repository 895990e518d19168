"""Training, evaluation and checkpointing machinery."""
