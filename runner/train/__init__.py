"""Stage 5: the one session builder (model, tokenizer, adapters, trainer) every command uses, each task's trainer
code, callbacks, and where an interrupted run resumes."""
