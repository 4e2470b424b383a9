"""YAML that remembers where things are: mappings and sequences carry 1-based lines.

Plain YAML (SafeLoader) with three additions a services.yaml needs: each
mapping knows the line of each key and the text of each scalar value as
written (``branch: 1.10`` is "1.10"), duplicate keys are errors (YAML would
silently keep the last one), and nesting is bounded, so a hostile file is an
error with a line, not a RecursionError.
"""
from __future__ import annotations

from typing import Any, Iterator

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from deploytools.errors import ConfigError

# services.yaml needs 5 levels (services.<name>.env.<NAME>); anchors and
# merges add a few. Far below Python's recursion limit.
MAX_DEPTH = 50


class Map(dict):
    """A YAML mapping that remembers the line of each key and the text of scalar values."""

    line: int
    key_lines: dict
    raw: dict

    @classmethod
    def empty(cls, line: int | None) -> "Map":
        m = cls()
        m.line, m.key_lines, m.raw = line, {}, {}  # type: ignore[assignment]
        return m


class Seq(list):
    line: int
    item_lines: list
    raw: list


def _raw(node: Node) -> str | None:
    return node.value if isinstance(node, ScalarNode) else None


class _LineLoader(yaml.SafeLoader):
    """SafeLoader whose mappings and sequences carry 1-based line numbers.

    Keys are always the text as written (`on:` stays "on", `8000:` "8000").
    """

    _depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        # The composer recurses once per level: stop well before Python's limit.
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep, where a "
                                "services.yaml needs 5", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_map(loader: _LineLoader, node: MappingNode) -> Iterator[Map]:
    data = Map.empty(node.start_mark.line + 1)
    yield data
    loader.flatten_mapping(node)  # `<<: *anchor` merges; explicit keys come last and win
    for key_node, value_node in node.value:
        key = key_node.value
        data[key] = loader.construct_object(value_node)
        data.key_lines[key] = key_node.start_mark.line + 1
        data.raw[key] = _raw(value_node)


def _construct_seq(loader: _LineLoader, node: SequenceNode) -> Iterator[Seq]:
    data = Seq()
    data.line = node.start_mark.line + 1
    data.item_lines = [n.start_mark.line + 1 for n in node.value]
    data.raw = [_raw(n) for n in node.value]
    yield data
    data.extend(loader.construct_object(n) for n in node.value)


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def _check_keys(node: Node, where: str, path: str, seen: set) -> None:
    """Duplicate and non-scalar keys, found on the node tree: YAML would keep the last one."""
    if id(node) in seen:  # an alias: checked where it was defined
        return
    seen.add(id(node))
    if isinstance(node, MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, ScalarNode):
                raise ConfigError(f"{where or 'top level'}: a key must be a plain name, "
                                  "not a list or a mapping.", path=path, line=line)
            if key_node.tag == "tag:yaml.org,2002:merge":
                _check_keys(value_node, where, path, seen)
                continue
            key = key_node.value
            if key in first:
                raise ConfigError(
                    f"{where or 'top level'}: duplicate key {key!r} (first on line {first[key]}); "
                    "YAML would silently keep only the last one. Remove or merge one of them.",
                    path=path, line=line)
            first[key] = line
            _check_keys(value_node, f"{where}.{key}" if where else key, path, seen)
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            _check_keys(item, f"{where}[{i}]", path, seen)


def parse_yaml(text: str, path: str) -> Any:
    """The document in `text` as Map, Seq and scalars; a ConfigError naming `path` and the
    line for anything that is not plain YAML."""
    try:
        loader = _LineLoader(text)
    except yaml.reader.ReaderError as e:  # a control character: no mark, only a position
        line = text.count("\n", 0, e.position) + 1
        raise ConfigError(f"invalid YAML: character {e.character:#x} is not allowed in a YAML "
                          "file; remove it.", path=path, line=line) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_keys(node, "", path, set())
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or e.context or "cannot parse"
        context = ""
        if e.context and e.context_mark and e.problem_mark:
            context = f" ({e.context} at line {e.context_mark.line + 1})"
        col = f", column {mark.column + 1}" if mark else ""
        if isinstance(e, yaml.constructor.ConstructorError):
            hint = " services.yaml takes plain YAML: no tags such as !!python."
        elif isinstance(e, yaml.composer.ComposerError):
            hint = ""
        else:
            hint = " Check the indentation, colons, brackets and quotes here and just above."
        raise ConfigError(f"invalid YAML{col}: {problem}{context}.{hint}",
                          path=path, line=mark.line + 1 if mark else None) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {' '.join(str(e).split())}.", path=path) from None
    finally:
        loader.dispose()
