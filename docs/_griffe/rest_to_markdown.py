"""A griffe extension: sn_jax's reST-flavoured docstrings, rendered as Markdown.

The docstrings are Google style (parsed by mkdocstrings-python) but use a few reST constructs
that Markdown would show verbatim. Before parsing, this rewrites, in each docstring:

- cross-reference roles, :func:`name` (also :class:, :mod:, :data:, ...), to inline code
  (``~a.b`` shows ``b``, as in Sphinx);
- :math:`...` to inline math and ``.. math::`` blocks to display math (pymdownx.arithmatex);
- ``.. warning::`` and ``.. note::`` to Google-style admonition sections;
- a paragraph ending in ``::`` (or ``:``) followed by a blank line and an indented block to a
  fenced code block (a Google-style section has no blank line after its title);
- an ``Example:`` section title to ``Examples:``, the title griffe reads as doctest examples;
- an argument entry that documents several names at once (``strides, padding: as in
  flax.linen.Conv.``) to one entry per name, so each is checked against the signature.

The docstrings themselves are left as written; only what the site shows changes.

It also marks ``from module import name as name`` re-exports public (the convention of
``griffe-public-redundant-alias``), so the stable paths (``sn_jax.attacks.pgd``, not
``sn_jax.attacks._gradient.pgd``) list every function they re-export, new ones included.
"""

from __future__ import annotations

import ast
import re
import textwrap
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|obj|exc|const):`([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_EXAMPLE_TITLE = re.compile(r"^( *)Example:[ \t]*$", re.MULTILINE)
_SECTION = re.compile(r"^(?P<indent> *)(?:Args|Arguments|Parameters|Attributes):\s*$")
_GROUPED = re.compile(r"^(?P<indent> +)(?P<names>\*{0,2}\w+(?:, \*{0,2}\w+)+): (?P<rest>.*)$")
_DIRECTIVE = re.compile(r"^(?P<indent> *)\.\. (?P<name>math|warning|note)::(?P<rest>.*)$")


def _role_text(match: re.Match) -> str:
  target = match.group(1).strip()
  if target.startswith("~"):
    target = target[1:].rsplit(".", 1)[-1]
  return f"`{target}`"


def _indented_block(lines: list[str], start: int, indent: int) -> int:
  """The index after the block of lines indented deeper than ``indent`` from ``start``."""
  end = start
  while end < len(lines) and (
    not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent
  ):
    end += 1
  while end > start and not lines[end - 1].strip():
    end -= 1
  return end


def _rewrite_blocks(text: str) -> str:
  lines = text.split("\n")
  out: list[str] = []
  i = 0
  while i < len(lines):
    line = lines[i]
    directive = _DIRECTIVE.match(line)
    if directive:
      indent, name = directive["indent"], directive["name"]
      end = _indented_block(lines, i + 1, len(indent))
      body = textwrap.dedent("\n".join(lines[i + 1 : end])).strip("\n")
      first = directive["rest"].strip()
      if name == "math":
        math = "\n".join(part for part in (first, body) if part)
        out += [f"{indent}\\[", *(indent + m for m in math.split("\n")), f"{indent}\\]"]
      else:
        content = "\n".join(part for part in (first, body) if part)
        out += [f"{indent}{name.capitalize()}:"]
        out += [f"{indent}    {c}" if c else "" for c in content.split("\n")]
      i = end
      continue
    if line.rstrip().endswith(":") and i + 1 < len(lines) and not lines[i + 1].strip():
      indent = len(line) - len(line.lstrip())
      end = _indented_block(lines, i + 1, indent)
      if end > i + 1:
        prefix = line.rstrip().removesuffix("::").rstrip(":").rstrip()
        if prefix.strip():
          out += [prefix + ":", ""]
        code = textwrap.dedent("\n".join(lines[i + 2 : end]))
        pad = " " * indent
        out += [f"{pad}```", *(pad + c if c else "" for c in code.split("\n")), f"{pad}```"]
        i = end
        continue
    out.append(line)
    i += 1
  return "\n".join(out)


def _split_grouped_entries(text: str) -> str:
  lines = text.split("\n")
  out: list[str] = []
  in_section = False
  section_indent = 0
  i = 0
  while i < len(lines):
    line = lines[i]
    section = _SECTION.match(line)
    if section:
      in_section, section_indent = True, len(section["indent"])
    elif line.strip() and len(line) - len(line.lstrip()) <= section_indent:
      in_section = False
    grouped = _GROUPED.match(line) if in_section else None
    if grouped:
      end = _indented_block(lines, i + 1, len(grouped["indent"]))
      for name in grouped["names"].split(", "):
        out += [f"{grouped['indent']}{name}: {grouped['rest']}", *lines[i + 1 : end]]
      i = end
      continue
    out.append(line)
    i += 1
  return "\n".join(out)


def rest_to_markdown(text: str) -> str:
  """The docstring ``text`` with its reST constructs rewritten as Markdown."""
  text = _split_grouped_entries(_rewrite_blocks(text))
  text = _EXAMPLE_TITLE.sub(r"\1Examples:", text)
  text = _MATH_ROLE.sub(lambda m: f"\\({m.group(1)}\\)", text)
  return _ROLE.sub(_role_text, text)


class RestToMarkdown(griffe.Extension):
  """Rewrites each object's docstring with :func:`rest_to_markdown` when it is loaded."""

  def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
    del kwargs
    if obj.docstring is not None:
      obj.docstring.value = rest_to_markdown(obj.docstring.value)


class PublicRedundantAliases(griffe.Extension):
  """Marks ``from module import name as name`` public, as a type checker reads it."""

  def on_alias_instance(self, *, node: Any, alias: griffe.Alias, **kwargs: Any) -> None:
    del kwargs
    if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
      name.asname == alias.name and name.name.rsplit(".", 1)[-1] == alias.name
      for name in node.names
    ):
      alias.public = True
