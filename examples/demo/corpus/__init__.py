"""The demo corpus: code, math and prose documents from offline sources, with realistic
broken variants (``builder.py`` ties the sources together; docs/feedback.md lists them
with their licenses).

    # with examples/demo on sys.path (build_corpus.py and run_demo.py put it there)
    from corpus import CorpusConfig, build_demo_corpus
    build_demo_corpus(CorpusConfig(output=Path("demo.jsonl"), max_docs=3000, seed=0))
"""

from .builder import CorpusConfig, build_demo_corpus

__all__ = ["CorpusConfig", "build_demo_corpus"]
