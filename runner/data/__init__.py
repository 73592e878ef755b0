"""Stage 4: data sources loaded and mapped to the task's canonical columns, rows checked, chat turns rendered and
masked, the data check's report, the tokenization cache."""
