"""Stage 6: measuring a model before and after training, offline: losses, generated answers, label metrics."""
