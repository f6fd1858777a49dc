"""The two special tokens that delimit a feedback prefix.

A preprocessed annotated document is laid out as

    <|feedback|> [prefix text tokens] <|/feedback|> [document text tokens] [eod]

(see docs/DEVELOPING.md, "Token layout"). Both delimiters must be *single* tokens of the
tokenizer so that the prefix boundary is unambiguous and so that generation can block them.
They live in their own module because the tokenizers, the prefix renderer and the tokenizer
trainer all need them and none of those should import the others just for two strings.
"""

FEEDBACK_OPEN = "<|feedback|>"
"""Opens the feedback prefix."""

FEEDBACK_CLOSE = "<|/feedback|>"
"""Closes the feedback prefix; the document text starts right after it."""

FEEDBACK_DELIMITERS = (FEEDBACK_OPEN, FEEDBACK_CLOSE)
