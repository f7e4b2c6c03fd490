"""The chat template: ``tokenizer_config.json``'s ``chat_template`` rendered as transformers does.

transformers' ``apply_chat_template`` compiles the template in a jinja2
``ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)`` with the
``loopcontrols`` extension and its ``{% generation %}`` tag, replaces the ``tojson`` filter with
one that keeps non-ASCII text (``ensure_ascii=False``), adds the globals ``raise_exception`` and
``strftime_now``, and renders with ``messages``, ``tools``, ``documents``,
``add_generation_prompt`` and the tokenizer's special-token attributes (``bos_token``,
``eos_token``, ``unk_token``, ``pad_token``, ``additional_special_tokens``, ...). This module does
the same, and turns every failure into a named error:

- a template that does not compile, an undefined variable, ``raise_exception(...)`` or a Python
  error raised while rendering: :class:`ChatTemplateError` (with the template's message);
- what the sandbox refuses (an underscore attribute such as ``__class__``, a mutating method such
  as ``list.append``, a ``range`` over 100,000): :class:`SandboxViolation`. One deliberate
  difference from transformers: jinja2 renders a *bare* unsafe attribute (``{{ x.__class__ }}``)
  as an empty string and only fails when it is used further; here it fails at once, since no
  honest template reads such attributes.

The prompt assembly of MiniCPM-V's ``chat()`` (``minicpmv-e2e.md`` §2.1) is :func:`chat_messages`:
an optional system message (``--system``; an empty one counts as none, as ``chat()`` tests it
with ``if system_prompt``) then one user message. :func:`build_prompt` renders it, or with
``raw=True`` (``--raw-prompt``) returns the prompt text untouched: no template, no system
message, no generation prompt.

Example::

    template = ChatTemplate(tokenizer.chat_template)
    text = template.render(chat_messages("What is it?"), special_tokens={"eos_token": "<|im_end|>"})
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, NoReturn

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.sandbox
from jinja2.exceptions import SecurityError

from wstream.errors import ChatTemplateError, InputError, SandboxViolation

# Python errors a template's own code can raise while rendering (bad arithmetic, a wrong index,
# a wrong type); anything else is a bug here, not in the template, and is left to propagate.
_RENDER_ERRORS = (TypeError, ValueError, ArithmeticError, LookupError, AttributeError)


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: transformers' AssistantTracker tag.

    transformers uses it to record which characters are assistant output (for a training mask);
    rendering is unchanged by it, so here it only renders its body.
    """

    tags = {"generation"}  # noqa: RUF012 (jinja2 declares it a class-level set)

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_render_body")
        return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _render_body(self, caller: Callable[[], str]) -> str:
        return caller()


class _Sandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """The immutable sandbox, failing at the first unsafe attribute rather than rendering ''."""

    def unsafe_undefined(self, obj: Any, attribute: str) -> NoReturn:
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )


def _raise_exception(message: str) -> NoReturn:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # transformers' filter: jinja2's own escapes HTML characters and forces ASCII.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _range(*args: int) -> range:
    try:
        return jinja2.sandbox.safe_range(*args)
    except OverflowError as exc:  # the sandbox's MAX_RANGE guard
        raise SecurityError(str(exc)) from None


def _environment() -> jinja2.Environment:
    env = _Sandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["range"] = _range
    return env


class ChatTemplate:
    """A compiled chat template. Rendering is thread-safe (jinja2 templates are)."""

    def __init__(self, source: str) -> None:
        if not isinstance(source, str) or not source:
            raise ChatTemplateError(f"chat_template: {source!r:.60} is not a non-empty string")
        self.source = source
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ChatTemplateError(
                f"chat_template: syntax error at line {exc.lineno}: {exc.message}"
            ) from None

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        special_tokens: Mapping[str, Any] | None = None,
        **variables: Any,
    ) -> str:
        """The prompt text for ``messages``, as ``apply_chat_template(tokenize=False)`` gives it.

        ``special_tokens`` is the tokenizer's attribute map (``SpecialTokens.template_variables``);
        ``variables`` are extra template variables (transformers' ``**kwargs``) and win over it.
        """
        context: dict[str, Any] = {**(special_tokens or {}), **variables}
        context.setdefault("tools", None)
        context.setdefault("documents", None)
        try:
            return self._template.render(
                messages=[dict(m) for m in messages],
                add_generation_prompt=add_generation_prompt,
                **context,
            )
        except SecurityError as exc:
            raise SandboxViolation(f"chat_template: refused by the sandbox: {exc}") from None
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"chat_template: {exc}") from None
        except RecursionError:
            raise ChatTemplateError("chat_template: recursion too deep") from None
        except _RENDER_ERRORS as exc:
            raise ChatTemplateError(f"chat_template: {type(exc).__name__}: {exc}") from None


def chat_messages(prompt: str, *, system: str | None = None) -> list[dict[str, str]]:
    """``[system?, user]`` as MiniCPM-V's ``chat()`` builds them (an empty system is none)."""
    messages = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    return messages


def build_prompt(
    prompt: str,
    *,
    template: ChatTemplate | None,
    system: str | None = None,
    raw: bool = False,
    special_tokens: Mapping[str, Any] | None = None,
) -> str:
    """The text to tokenize: the rendered chat, or ``prompt`` itself when ``raw``.

    ``--raw-prompt`` with ``--system`` is refused (a raw prompt has nowhere to put it), and so is
    a templated prompt when the model has no ``chat_template``.
    """
    if raw:
        if system:
            raise InputError("--system: cannot be combined with --raw-prompt (no template)")
        return prompt
    if template is None:
        raise ChatTemplateError(
            "tokenizer_config.json: no chat_template; pass --raw-prompt to send the text as is"
        )
    return template.render(
        chat_messages(prompt, system=system),
        add_generation_prompt=True,
        special_tokens=special_tokens,
    )
