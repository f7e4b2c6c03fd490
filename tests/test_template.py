"""The chat template rendered as transformers renders it, and refused when hostile."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from qwen_vocab import CHAT_TEMPLATE, minicpmv_tokenizer

from wstream.errors import ChatTemplateError, InputError, SandboxViolation
from wstream.pipeline.template import ChatTemplate, build_prompt, chat_messages

USER = [{"role": "user", "content": "What is in this image?"}]


def test_the_minicpmv_template_without_a_system_prompt() -> None:
    text = build_prompt("What is in this image?", template=ChatTemplate(CHAT_TEMPLATE))
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is in this image?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_the_minicpmv_template_with_a_system_prompt() -> None:
    template = ChatTemplate(CHAT_TEMPLATE)
    text = build_prompt("Hi", template=template, system="Answer in French.")
    assert text == (
        "<|im_start|>system\nAnswer in French.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # chat() treats an empty system prompt as none: the template's default system message
    assert build_prompt("Hi", template=template, system="") == build_prompt("Hi", template=template)


def test_the_rendered_image_prompt_tokenizes_to_the_reference_ids() -> None:
    # minicpmv-e2e.md §4.2: a 448x448 photo (one slice), no system prompt -> 11 + 84 ids.
    tok = minicpmv_tokenizer()
    assert tok.chat_template is not None
    content = "<image_id>0</image_id><image>" + "<unk>" * 64 + "</image>\nWhat is in this image?"
    text = build_prompt(
        content,
        template=ChatTemplate(tok.chat_template),
        special_tokens=tok.special.template_variables(),
    )
    ids = tok.encode(text)
    assert len(ids) == 95
    assert ids[:11] == [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198]
    assert ids[11:19] == [151644, 872, 198, 151658, 15, 151659, 151646, 128244]
    assert ids[-13:] == [
        151647,
        198,
        3838,
        374,
        304,
        419,
        2168,
        30,
        151645,
        198,
        151644,
        77091,
        198,
    ]


def test_generation_prompt_and_multi_turn() -> None:
    template = ChatTemplate(CHAT_TEMPLATE)
    turns = [
        *USER,
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "Sure?"},
    ]
    text = template.render(turns, add_generation_prompt=False)
    assert text.endswith(
        "<|im_start|>assistant\nA cat.<|im_end|>\n<|im_start|>user\nSure?<|im_end|>\n"
    )


def test_raw_prompt_skips_the_template() -> None:
    assert build_prompt("<|im_start|>x", template=ChatTemplate(CHAT_TEMPLATE), raw=True) == (
        "<|im_start|>x"
    )
    assert build_prompt("plain", template=None, raw=True) == "plain"
    with pytest.raises(InputError, match="--system: cannot be combined with --raw-prompt"):
        build_prompt("x", template=None, raw=True, system="be nice")
    with pytest.raises(ChatTemplateError, match="no chat_template; pass --raw-prompt"):
        build_prompt("x", template=None)


def test_the_variables_transformers_passes() -> None:
    source = (
        "{{ bos_token }}|{{ eos_token }}|{{ additional_special_tokens | length }}|"
        "{{ tools is none }}|{{ documents is none }}|{{ add_generation_prompt }}|{{ extra }}"
    )
    special = {"bos_token": "<s>", "eos_token": "</s>", "additional_special_tokens": ["<a>", "<b>"]}
    text = ChatTemplate(source).render(USER, special_tokens=special, extra=7)
    assert text == "<s>|</s>|2|True|True|True|7"


def test_transformers_environment_features() -> None:
    # tojson keeps non-ASCII and takes transformers' keyword arguments
    tojson = ChatTemplate("{{ messages[0] | tojson(sort_keys=True) }}")
    assert (
        tojson.render([{"role": "user", "content": "é<>"}]) == '{"content": "é<>", "role": "user"}'
    )
    # loop controls
    loop = ChatTemplate(
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
        "{{ m.content }}{% endfor %}"
    )
    assert loop.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) == "a"
    # transformers' {% generation %} tag renders its body
    assert ChatTemplate("{% generation %}x{% endgeneration %}y").render(USER) == "xy"
    # strftime_now
    year = ChatTemplate("{{ strftime_now('%Y') }}").render(USER)
    assert abs(int(year) - datetime.datetime.now().year) <= 1
    # trim_blocks + lstrip_blocks: block tags leave no whitespace behind
    blocks = ChatTemplate("  {% for m in messages %}\n{{ m.role }}\n  {% endfor %}\nend")
    assert blocks.render(USER) == "user\nend"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ raise_exception.__globals__ }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ messages.append({'role': 'x'}) }}",
        "{{ messages[0].update({'role': 'x'}) }}",
        "{{ messages.__len__() }}",
        "{% for i in range(10 ** 6) %}{% endfor %}",
        "{{ self.__init__.__globals__ }}",
    ],
)
def test_hostile_templates_are_refused_by_the_sandbox(source: str) -> None:
    with pytest.raises(SandboxViolation, match="refused by the sandbox"):
        ChatTemplate(source).render(USER)


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("{{ raise_exception('Conversation roles must alternate') }}", "roles must alternate"),
        ("{% if %}", "syntax error at line 1"),
        ("{% for m in messages %}", "syntax error"),
        ("{{ nope.field }}", "'nope' is undefined"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{{ messages[5].content }}", "no element 5"),
        ("{{ 'a' + 1 }}", "TypeError"),
    ],
)
def test_template_errors_are_named(source: str, match: str) -> None:
    with pytest.raises(ChatTemplateError, match=match):
        ChatTemplate(source).render(USER)


@pytest.mark.parametrize("bad", ["", None, 3])
def test_a_template_must_be_a_non_empty_string(bad: Any) -> None:
    with pytest.raises(ChatTemplateError, match="chat_template"):
        ChatTemplate(bad)


def test_chat_messages() -> None:
    assert chat_messages("q") == [{"role": "user", "content": "q"}]
    assert chat_messages("q", system="s") == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "q"},
    ]
