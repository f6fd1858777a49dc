"""The chat encoder of SFT (megatron_ixt/tokenizers/chat.py): ids and the loss mask, token by
token, for a Hugging Face chat template (SmolLM2-Instruct's ChatML) and the default one,
single- and multi-turn, with and without feedback in the system message."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_ixt.evaluation.control import control_prefix
from megatron_ixt.tokenizers.build import build_tokenizer
from megatron_ixt.tokenizers.chat import (FEEDBACK, LOSS, PLAIN, ChatTemplate, ChatTemplateError,
                                          chat_template_for, encode_conversation, render_ids, variant)

SINGLE = [{"role": "user", "content": "What is 12 * 7?"}, {"role": "assistant", "content": "12 * 7 = 84.\n#### 84"}]
MULTI = [{"role": "system", "content": "Be brief."}, *SINGLE,
         {"role": "user", "content": "And 12 * 8?"}, {"role": "assistant", "content": "96"}]


def _runs(ids, mask, tokenizer) -> list[str]:
    """The decoded runs of consecutive tokens where ``mask`` holds."""
    runs, current = [], []
    for i, m in zip(ids.tolist(), mask.tolist()):
        if m:
            current.append(i)
        elif current:
            runs.append(tokenizer.detokenize(current))
            current = []
    if current:
        runs.append(tokenizer.detokenize(current))
    return runs


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2):
    return build_tokenizer("HuggingFaceTokenizer", str(smollm2))


@pytest.mark.parametrize("messages", [SINGLE, MULTI], ids=["single", "multi"])
def test_hf_template_ids_and_mask(smollm2, smollm2_tokenizer, messages):
    from transformers import AutoTokenizer

    template = chat_template_for(smollm2_tokenizer)
    assert template.origin == "tokenizer"
    ids, roles = render_ids(smollm2_tokenizer, template, messages)
    hf = AutoTokenizer.from_pretrained(smollm2)

    def theirs(conversation, **options) -> list:
        return list(hf.apply_chat_template(conversation, tokenize=True, return_dict=False, **options))

    assert ids.tolist() == theirs(messages)  # the ids transformers gives, special tokens included
    # Token by token: the trained runs are exactly each assistant turn as ChatML renders it
    # (content, <|im_end|>, newline); everything else (system, default system prompt, user
    # turns, role markers, generation prompts) is masked.
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    assert _runs(ids, roles & LOSS, smollm2_tokenizer) == [a + "<|im_end|>\n" for a in answers]
    # Each assistant turn spans, in transformers' own encoding, from the end of the
    # conversation before it with the generation prompt to the end of the conversation with it.
    expected = np.zeros(len(ids), dtype=bool)
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            expected[len(theirs(messages[:i], add_generation_prompt=True)):len(theirs(messages[:i + 1]))] = True
    assert ((roles & LOSS) != 0).tolist() == expected.tolist()


def test_hf_template_with_feedback(smollm2_tokenizer):
    """Feedback goes at the end of the system message (a new one when there is none); the
    stored sequence holds both variants: dropping the FEEDBACK tokens gives exactly the
    unconditioned ids, dropping the PLAIN ones the conditioned ids (SmolLM2's template puts
    its default system prompt in the unconditioned variant only)."""
    template = chat_template_for(smollm2_tokenizer)
    feedback = control_prefix(smollm2_tokenizer, "quality", 5)
    for messages in (SINGLE, MULTI):
        ids, roles = encode_conversation(smollm2_tokenizer, template, messages, feedback, eod=smollm2_tokenizer.eod)
        with_fb, with_roles = render_ids(smollm2_tokenizer, template, messages, feedback)
        plain, plain_roles = render_ids(smollm2_tokenizer, template, messages)
        assert variant(ids, roles, True)[0].tolist() == with_fb.tolist()
        assert variant(ids, roles, False)[0].tolist() == plain.tolist()
        # ChatML ends turns with <|im_end|>, SmolLM2's eos: no EOD is appended.
        assert len(ids) == len(with_fb) + np.count_nonzero(roles & PLAIN)
        assert ids[roles == FEEDBACK].tolist() == feedback  # the delimiter ids themselves, never from text
        assert not (roles[(roles & FEEDBACK) != 0] & LOSS).any()
        assert _runs(*variant(ids, roles, True)[:1], variant(ids, roles, True)[1] & LOSS, smollm2_tokenizer) == \
            _runs(plain, plain_roles & LOSS, smollm2_tokenizer)
        text = smollm2_tokenizer.detokenize(with_fb)
        system = messages[0]["content"] if messages[0]["role"] == "system" else ""
        assert f"<|im_start|>system\n{system}<|feedback|>Quality: 5/5<|/feedback|><|im_end|>" in text
        assert (with_roles & LOSS).any()


def test_default_template_mask_by_hand(sp_model):
    """The default template with a SentencePiece tokenizer: the ids and mask built by hand,
    run by run (the runs between the feedback ids are encoded whole)."""
    tokenizer = build_tokenizer("SentencePieceTokenizer", sp_model)
    template = chat_template_for(tokenizer)
    assert template.origin == "default"
    feedback = control_prefix(tokenizer, "quality", 4)
    ids, roles = encode_conversation(tokenizer, template, MULTI, feedback, eod=tokenizer.eod)
    head = "<|system|>\nBe brief."
    body = ("\n<|user|>\nWhat is 12 * 7?\n<|assistant|>\n" + "12 * 7 = 84.\n#### 84\n"
            + "<|user|>\nAnd 12 * 8?\n<|assistant|>\n" + "96\n")
    head_ids, (body_ids, starts) = tokenizer.tokenize(head), tokenizer.encode_with_offsets(body)
    expected_ids = head_ids + feedback + body_ids + [tokenizer.eod]
    first = body.index("12 * 7 = 84.")
    first_end = body.index("<|user|>\nAnd")
    second = body.rindex("96\n")
    trained = [first <= s < first_end or s >= second for s in starts]
    expected_roles = [0] * len(head_ids) + [FEEDBACK] * len(feedback) + [LOSS if t else 0 for t in trained] + [LOSS]
    assert ids.tolist() == expected_ids
    assert roles.tolist() == expected_roles
    # Without feedback the system message stays as it was: the unconditioned variant.
    plain, _ = render_ids(tokenizer, template, MULTI)
    assert variant(ids, roles, False)[0].tolist() == plain.tolist() + [tokenizer.eod]
    assert _runs(ids, roles & LOSS, tokenizer) == ["12 * 7 = 84.\n#### 84\n", "96\n" + tokenizer.detokenize([tokenizer.eod])]


def test_template_that_is_not_turn_by_turn_is_refused(sp_model):
    tokenizer = build_tokenizer("SentencePieceTokenizer", sp_model)
    # Renders the last message first: the rendering up to a turn is not a prefix of the whole.
    reversed_template = ChatTemplate("{% for m in messages|reverse %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
                                     "tokenizer")
    with pytest.raises(ChatTemplateError, match="turn by turn"):
        render_ids(tokenizer, reversed_template, SINGLE)


def test_strftime_now_as_transformers_provides_it(monkeypatch):
    """Llama 3.x templates date their system message with transformers' ``strftime_now``."""
    import datetime

    from megatron_ixt.tokenizers import chat

    monkeypatch.setattr(chat, "_now", lambda: datetime.datetime(2026, 7, 26, 9, 30))
    template = ChatTemplate("Today Date: {{ strftime_now('%d %b %Y') }}\n{% for m in messages %}{{ m['role'] }}: "
                            "{{ m['content'] }}\n{% endfor %}", "tokenizer")
    assert template.render(SINGLE) == "Today Date: 26 Jul 2026\nuser: What is 12 * 7?\nassistant: 12 * 7 = 84.\n#### 84\n"


def test_text_holding_the_private_use_character_keeps_it_and_one_feedback(smollm2, smollm2_tokenizer):
    """The feedback's place is marked without a character a message may hold: a message with
    U+E000 (and text looking like the mark) keeps it, in SFT encoding and in --chat generation,
    and the feedback goes in once. Expected ids: transformers' apply_chat_template."""
    from transformers import AutoTokenizer

    from megatron_ixt.evaluation.control import chat_context

    user = "Is \ue000 a private-use character? \ue000[feedback 0]\ue000"
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": user},
                {"role": "assistant", "content": "Yes: \ue000 is U+E000."}]
    hf = AutoTokenizer.from_pretrained(smollm2)

    def theirs(conversation, **options):
        ids = hf.apply_chat_template(conversation, tokenize=True, return_dict=False, **options)
        return list(ids)

    template = chat_template_for(smollm2_tokenizer)
    feedback = [smollm2_tokenizer.feedback_open_id, 42, smollm2_tokenizer.feedback_close_id]
    plain, _ = render_ids(smollm2_tokenizer, template, messages)
    assert plain.tolist() == theirs(messages)
    ids, roles = render_ids(smollm2_tokenizer, template, messages, feedback)
    fed = (roles & FEEDBACK) != 0
    assert ids[fed].tolist() == feedback  # once, in the system message
    assert ids[~fed].tolist() == theirs(messages)
    context = chat_context(smollm2_tokenizer, user, feedback, system="Be brief.")
    expected = theirs(messages[:2], add_generation_prompt=True)
    start = len(theirs(messages[:1])) - 2  # the feedback ends the system message, before <|im_end|>\n
    assert context == expected[:start] + feedback + expected[start:]


@pytest.fixture(scope="module")
def stdlib_files() -> list[str]:
    """The first 4,000 characters of the first 300 standard-library modules (licence headers,
    asterisk banners and all)."""
    import glob
    import sysconfig

    files = sorted(glob.glob(sysconfig.get_paths()["stdlib"] + "/*.py"))[:300]
    return [open(f, encoding="utf-8", errors="replace").read()[:4000] for f in files]


@pytest.fixture(scope="module")
def sp_unigram(tmp_path_factory, stdlib_files) -> str:
    """A 4,000-piece unigram SentencePiece model with default normalization (nmt_nfkc, extra
    whitespace removed): its segmentation reaches across the point where the feedback goes."""
    import sentencepiece

    prefix = str(tmp_path_factory.mktemp("unigram") / "uni")
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(stdlib_files), model_prefix=prefix,
                                             vocab_size=4000, model_type="unigram", minloglevel=2, num_threads=2)
    return prefix + ".model"


def test_conversations_whose_text_the_feedback_retokenizes_are_stored_for_both(sp_unigram, stdlib_files):
    """An assistant turn opening with a run of 72 asterisks (a licence header) and the rest of a
    real document, under the default template, with a unigram model: the feedback at the end of
    the system message changes how the text after it is segmented. Both variants must come
    back exactly, each as SentencePiece itself encodes the template's rendering (written out
    here by hand), and train the same assistant text; 300 documents, each with and without the
    asterisks (before, 7 of the 600 failed the whole preprocessing run)."""
    import sentencepiece

    tokenizer = build_tokenizer("SentencePieceTokenizer", sp_unigram)
    sp = sentencepiece.SentencePieceProcessor(model_file=sp_unigram)
    template = chat_template_for(tokenizer)
    feedback = [tokenizer.feedback_open_id, 7, 8, tokenizer.feedback_close_id]
    differing = 0
    for text in stdlib_files:
        for answer in ("*" * 72 + "\n" + text[:1160], text[:1235]):
            user = "Continue: " + " ".join(text.split()[:8])
            messages = [{"role": "system", "content": "You continue documents."},
                        {"role": "user", "content": user}, {"role": "assistant", "content": answer}]
            rest = f"\n<|user|>\n{user}\n<|assistant|>\n{answer}\n"
            plain = sp.encode("<|system|>\nYou continue documents." + rest) + [tokenizer.eod]
            conditioned = sp.encode("<|system|>\nYou continue documents.") + feedback + sp.encode(rest) + [tokenizer.eod]
            ids, roles = encode_conversation(tokenizer, template, messages, feedback, eod=tokenizer.eod)
            with_feedback, with_roles = variant(ids, roles, conditioned=True)
            without, without_roles = variant(ids, roles, conditioned=False)
            assert with_feedback.tolist() == conditioned and without.tolist() == plain
            trained = [tokenizer.detokenize(v[(r & LOSS) != 0].tolist()) for v, r in
                       ((with_feedback, with_roles), (without, without_roles))]
            assert trained[0] == trained[1] != ""  # the same text trains in both
            differing += bool((((roles & LOSS) != 0) & ((roles & (FEEDBACK | PLAIN)) != 0)).any())
    print(f"{differing} of 600 conversations stored each variant's own assistant tokens")
    assert differing > 0  # the case this test is about occurs


def test_a_sentencepiece_folder_keeps_its_chat_template(sp_model, tmp_path):
    """A tokenizer folder with tokenizer.model and a chat template in tokenizer_config.json
    (Llama 2's kind, with {{ bos_token }} and {{ eos_token }}): SFT uses that template, not the
    default, and the special tokens it spells out become their ids, as transformers splits on
    them (SentencePiece never makes <s> from text). Expected ids: SentencePiece's own
    encoding of the text between them."""
    import shutil

    import sentencepiece

    folder = tmp_path / "tokenizer"
    folder.mkdir()
    shutil.copy(sp_model, folder / "tokenizer.model")
    source = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
              "{% else %} {{ m['content'] }} {{ eos_token }}{% endif %}{% endfor %}")
    (folder / "tokenizer_config.json").write_text(
        '{"bos_token": "<s>", "eos_token": "</s>", "chat_template": %s}' % __import__("json").dumps(source))
    tokenizer = build_tokenizer("SentencePieceTokenizer", str(folder / "tokenizer.model"))
    template = chat_template_for(tokenizer)
    assert template.origin == "tokenizer"
    sp = sentencepiece.SentencePieceProcessor(model_file=sp_model)
    bos, eos = sp.piece_to_id("<s>"), sp.piece_to_id("</s>")
    ids, roles = render_ids(tokenizer, template, SINGLE)
    assert ids.tolist() == [bos, *sp.encode("[INST] What is 12 * 7? [/INST] 12 * 7 = 84.\n#### 84 "), eos]
    trained = ids[(roles & LOSS) != 0].tolist()
    assert trained[-1] == eos and sp.decode(trained[:-1]).strip() == "12 * 7 = 84.\n#### 84"
