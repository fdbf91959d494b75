"""The training loop shared by the teacher and every distillation stage, its objectives and checkpoints."""
