"""Stage 1: a recipe file -> merged (extends, --set) -> checked against the schema -> a frozen Recipe. No torch."""
