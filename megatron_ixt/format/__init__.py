"""The document format: what a training document and its feedback prefix are, on the way in
(JSONL) and on disk (Megatron indexed datasets). Every later stage reads these; this package
imports nothing heavier than numpy and PyYAML, so the tools' ``--help`` stays fast.

* `document` - the JSONL document and its validator (`parse_document_line`, `Feedback`);
* `levels` - quality levels 1..5 (`quality_level`, `QualityThresholds`);
* `special_tokens` - the two feedback delimiters;
* `prefixes` - feedback -> prefix text and ids, from the YAML templates in `templates/`;
* `sources` - reading JSONL inputs (plain, .gz, .zst, globs) in line batches;
* `errors` - the errors that name file, line and field;
* `indexed_io` - the `.bin`/`.idx` files and their `.meta.json` / side files (the one writer
  and reader of each).

See docs/data.md.
"""
